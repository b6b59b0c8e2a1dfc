"""Zone resolution: explicit spec, FOOTPRINT_REGION, flagged default, closest matches."""

from __future__ import annotations

import warnings

import pytest

from footprint.pricing import (
    DefaultZoneWarning,
    UnknownZoneError,
    all_zones,
    list_zones,
    lookup_zone,
    resolve_zone,
    static_intensity,
)
from footprint.pricing.grid import grid_factors
from footprint.pricing.zones import _reset_default_warning


@pytest.fixture(autouse=True)
def _fresh_default_warning():
    _reset_default_warning()
    yield
    _reset_default_warning()


@pytest.mark.parametrize(
    ("spec", "zone_id", "grid"),
    [
        ("FRA", "FRA", "FRA"),
        ("fra", "FRA", "FRA"),
        ("France", "FRA", "FRA"),
        ("USA/california", "USA/california", "USA/california"),
        ("usa/California", "USA/california", "USA/california"),
        ("CAN/quebec", "CAN/quebec", "CAN/quebec"),
        ("swe/se3", "SWE/SE3", "SWE/SE3"),
        ("CHN/beijing", "CHN/beijing", "CHN/beijing"),
        ("CN-BJ", "CHN/beijing", "CHN/beijing"),
        ("CHN/Inner Mongolia", "CHN/inner mongolia", "CHN/inner mongolia"),
        ("CHN/neimenggu", "CHN/inner mongolia", "CHN/inner mongolia"),
        ("USA/CA", "USA/california", "USA/california"),
        ("aws:us-east-1", "aws:us-east-1", "USA/virginia"),
        (" AWS:US-EAST-1 ", "aws:us-east-1", "USA/virginia"),
        ("gcp:europe-west1", "gcp:europe-west1", "BEL"),
        ("azure:westeurope", "azure:westeurope", "NLD"),
        ("azure:westus3", "azure:westus3", "USA/arizona"),
        ("aws:eu-north-1", "aws:eu-north-1", "SWE/SE3"),
    ],
)
def test_explicit_specs(spec, zone_id, grid):
    zone = resolve_zone(spec, env={})
    assert (zone.id, zone.grid_zone, zone.is_default) == (zone_id, grid, False)


def test_env_is_used_when_no_spec_and_spec_wins():
    assert resolve_zone(None, env={"FOOTPRINT_REGION": "gcp:us-central1"}).id == "gcp:us-central1"
    assert resolve_zone("DEU", env={"FOOTPRINT_REGION": "FRA"}).id == "DEU"
    assert resolve_zone("", env={"FOOTPRINT_REGION": "FRA"}).id == "FRA"


def test_default_is_flagged_world_average_and_warns_once():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = resolve_zone(None, env={})
        second = resolve_zone(None, env={"FOOTPRINT_REGION": "  "})
    assert first.is_default and second.is_default and first.id == "WORLD"
    ours = [w for w in caught if issubclass(w.category, DefaultZoneWarning)]
    assert len(ours) == 1
    assert "FOOTPRINT_REGION" in str(ours[0].message)
    assert static_intensity(first).g_per_kwh == 475.0


def test_explicit_world_is_not_the_default():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        zone = resolve_zone("WORLD", env={})
    assert zone.id == "WORLD" and not zone.is_default


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("aws:us-east-9", "aws:us-east-1"),
        ("aws:eu-wset-1", "aws:eu-west-1"),
        ("gcp:europe-west", "gcp:europe-west1"),
        ("azure:west-europe", "azure:westeurope"),
        ("FRAA", "FRA"),
        ("USA/californa", "USA/california"),
        ("us-east-1", "aws:us-east-1"),
    ],
)
def test_unknown_zones_name_the_closest_known_ones(spec, expected):
    with pytest.raises(UnknownZoneError) as info:
        resolve_zone(spec, env={})
    assert expected in info.value.suggestions
    assert expected in str(info.value)
    assert isinstance(info.value, ValueError)


def test_unknown_cloud_region_suggests_only_that_providers_regions():
    with pytest.raises(UnknownZoneError) as info:
        lookup_zone("gcp:us-east-1")
    assert info.value.suggestions and all(s.startswith("gcp:") for s in info.value.suggestions)


def test_bare_subnational_codes_are_not_zones():
    # "CA" is California only as USA/CA; bare it must not silently mean a US state.
    with pytest.raises(UnknownZoneError):
        lookup_zone("CA")


def test_unknown_provider():
    with pytest.raises(UnknownZoneError, match="unknown cloud provider 'ibm'"):
        lookup_zone("ibm:us-south")


def test_unknown_env_region_raises_too():
    with pytest.raises(UnknownZoneError):
        resolve_zone(None, env={"FOOTPRINT_REGION": "Narnia"})


def test_every_cloud_region_resolves_to_a_zone_with_an_intensity():
    clouds = [z for z in all_zones() if z.kind == "cloud"]
    assert len(clouds) >= 130
    factors = grid_factors()
    for zone in clouds:
        assert zone.grid_zone in factors, zone
        intensity = static_intensity(zone)
        assert intensity.g_per_kwh > 0 and intensity.ref, zone


def test_aws_and_azure_regions_use_their_grid_factor_gcp_its_own():
    aws = lookup_zone("aws:eu-west-3")
    assert static_intensity(aws).g_per_kwh == grid_factors()["FRA"].g_per_kwh
    gcp = lookup_zone("gcp:europe-west9")
    assert static_intensity(gcp).g_per_kwh == 34.0
    fixed = static_intensity(lookup_zone("gcp:me-central1"))
    assert fixed.g_per_kwh == 575.0 and "me-cenrtal1" in fixed.ref


def test_list_zones_filters_and_carries_sources():
    everything = list_zones()
    assert {"country", "subnational", "cloud", "world"} <= {z["kind"] for z in everything}
    aws = list_zones("aws")
    assert aws and all(z["provider"] == "aws" for z in aws)
    virginia = next(z for z in aws if z["zone"] == "aws:us-east-1")
    assert virginia["grid_zone"] == "USA/virginia"
    assert virginia["intensity_g_per_kwh"] > 0 and virginia["intensity_ref"]
    assert virginia["price_per_kwh"] == pytest.approx(0.0895) and virginia["currency"] == "USD"
    fra = list_zones("FRA")
    assert any(z["zone"] == "FRA" and z["currency"] == "EUR" for z in fra)
    assert list_zones("no-such-zone-anywhere") == []
