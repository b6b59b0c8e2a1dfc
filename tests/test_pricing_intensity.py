"""Grid intensity: static factors pinned to codecarbon's own computation, hourly CSV files."""

from __future__ import annotations

import datetime as dt

import pytest

from footprint.pricing import (
    DataFileError,
    HourlyIntensity,
    IntensitySource,
    lookup_zone,
    static_intensity,
)
from footprint.pricing.grid import grid_factors

codecarbon_emissions = pytest.importorskip("codecarbon.core.emissions")
from codecarbon.core.units import Energy  # noqa: E402
from codecarbon.external.geography import CloudMetadata, GeoMetadata  # noqa: E402
from codecarbon.input import DataSource  # noqa: E402


@pytest.fixture(scope="module")
def codecarbon():
    """codecarbon's Emissions object; returns its gCO2e for 1 kWh in a place."""
    emissions = codecarbon_emissions.Emissions(DataSource())
    one_kwh = Energy.from_energy(kWh=1.0)

    def grams(country: str, region: str | None = None) -> float:
        geo = GeoMetadata(country_iso_code=country, region=region)
        return emissions.get_private_infra_emissions(one_kwh, geo) * 1000.0

    def cloud_grams(provider: str, region: str) -> float:
        return emissions.get_cloud_emissions(one_kwh, CloudMetadata(provider, region)) * 1000.0

    grams.cloud = cloud_grams  # type: ignore[attr-defined]
    return grams


@pytest.mark.parametrize(
    ("zone", "country", "region"),
    [
        ("FRA", "FRA", None),
        ("USA", "USA", None),
        ("DEU", "DEU", None),
        ("IND", "IND", None),
        ("USA/california", "USA", "california"),
        ("USA/virginia", "USA", "virginia"),
        ("CAN/quebec", "CAN", "quebec"),
        ("CAN/alberta", "CAN", "alberta"),
        ("SWE/SE3", "SWE", "SE3"),
        ("NOR/NO1", "NOR", "NO1"),
        ("CHN/beijing", "CHN", "beijing"),
    ],
)
def test_static_factors_match_codecarbon(codecarbon, zone, country, region):
    ours = static_intensity(lookup_zone(zone))
    assert ours.source == "static"
    assert ours.g_per_kwh == pytest.approx(codecarbon(country, region), rel=1e-12)
    assert "codecarbon" in ours.ref


@pytest.mark.parametrize("region", ["europe-west1", "us-central1", "asia-northeast1"])
def test_gcp_factors_match_codecarbon(codecarbon, region):
    ours = static_intensity(lookup_zone(f"gcp:{region}"))
    assert ours.g_per_kwh == pytest.approx(codecarbon.cloud("gcp", region), rel=1e-12)


def test_aws_region_uses_its_state_factor(codecarbon):
    ours = static_intensity(lookup_zone("aws:us-east-1"))
    assert ours.g_per_kwh == pytest.approx(codecarbon("USA", "virginia"), rel=1e-12)


def test_every_codecarbon_country_is_a_zone():
    mix_countries = {z for z, f in grid_factors().items() if f.sub_region is None}
    assert len(mix_countries) > 200
    for iso3 in ("FRA", "USA", "JPN", "BRA", "ZAF"):
        assert lookup_zone(iso3).kind == "country"


def _csv(tmp_path, body: str):
    path = tmp_path / "hourly.csv"
    path.write_text("timestamp,zone,gco2e_per_kwh\n" + body, encoding="utf-8")
    return path


def test_hourly_values_cover_their_hours_only(tmp_path):
    path = _csv(
        tmp_path,
        "2025-03-01T10:00:00Z,FRA,31.5\n"
        "2025-03-01T11:00:00+00:00,FRA,42\n"
        "2025-03-01T10:00:00Z,aws:us-east-1,300\n",
    )
    hourly = HourlyIntensity.from_csv(path)
    source = IntensitySource(hourly=hourly)
    fra = lookup_zone("FRA")
    at = dt.datetime(2025, 3, 1, 10, 59, 59, tzinfo=dt.timezone.utc)
    got = source.lookup(fra, at)
    assert (got.g_per_kwh, got.source) == (31.5, "hourly")
    assert source.lookup(fra, at + dt.timedelta(seconds=1)).g_per_kwh == 42.0
    outside = source.lookup(fra, dt.datetime(2025, 3, 1, 12, tzinfo=dt.timezone.utc))
    assert outside.source == "static"
    assert outside.g_per_kwh == static_intensity(fra).g_per_kwh
    aws = source.lookup(lookup_zone("aws:us-east-1"), at)
    assert (aws.g_per_kwh, aws.source) == (300.0, "hourly")


def test_hourly_values_of_a_grid_zone_apply_to_its_cloud_regions(tmp_path):
    hourly = HourlyIntensity.from_csv(_csv(tmp_path, "2025-03-01T10:00:00Z,USA/virginia,123\n"))
    at = dt.datetime(2025, 3, 1, 10, 30, tzinfo=dt.timezone.utc)
    assert hourly.get(lookup_zone("azure:eastus"), at) == 123.0


@pytest.mark.parametrize(
    ("body", "line", "column"),
    [
        ("2025-03-01T10:00:00Z,FRA,31\nnot-a-date,FRA,30\n", 3, "timestamp"),
        ("2025-03-01T10:30:00Z,FRA,31\n", 2, "timestamp"),
        ("2025-03-01T10:00:00Z,ATLANTIS,31\n", 2, "zone"),
        ("2025-03-01T10:00:00Z,FRA,-5\n", 2, "gco2e_per_kwh"),
        ("2025-03-01T10:00:00Z,FRA,abc\n", 2, "gco2e_per_kwh"),
        ("2025-03-01T10:00:00Z,FRA,31\n2025-03-01T10:00:00Z,fra,32\n", 3, "timestamp"),
        ("2025-03-01T10:00:00Z,FRA\n", 2, "gco2e_per_kwh"),
    ],
)
def test_malformed_hourly_csv_names_file_line_column_and_applies_nothing(
    tmp_path, body, line, column
):
    good = HourlyIntensity.from_csv(_csv(tmp_path, "2025-03-01T09:00:00Z,FRA,10\n"))
    source = IntensitySource(hourly=good)
    bad = tmp_path / "bad.csv"
    bad.write_text("timestamp,zone,gco2e_per_kwh\n" + body, encoding="utf-8")
    with pytest.raises(DataFileError) as info:
        source.hourly = HourlyIntensity.from_csv(bad)
    err = info.value
    assert (err.path, err.line, err.column) == (str(bad), line, column)
    # nothing was applied: the previous table is still in place, untouched
    assert source.hourly is good and len(good) == 1


def test_unknown_zone_in_hourly_csv_suggests_close_ones(tmp_path):
    with pytest.raises(DataFileError, match="closest known: FRA"):
        HourlyIntensity.from_csv(_csv(tmp_path, "2025-03-01T10:00:00Z,FRAA,31\n"))
