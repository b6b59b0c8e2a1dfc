"""Every stored record carries its CO2e, its cost and the factors used."""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import rows

import footprint
from footprint.cli import main
from footprint.pricing import (
    DefaultZoneWarning,
    UnknownZoneError,
    lookup_zone,
    static_intensity,
)
from footprint.tracking import get_runtime

REPO = Path(__file__).resolve().parent.parent
SIM = "simulated:gpus=1,idle_w=60,busy_w=400,seed=1,name=NVIDIA H100 80GB HBM3"


def _one_record(tmp_path, **settings):
    db = tmp_path / "p.db"
    footprint.configure(db=str(db), sensor=SIM, cpu=False, **settings)

    @footprint.track(model="m")
    def infer():
        get_runtime().gpu_sensor.run(0.2)

    infer()
    footprint.flush()
    (row,) = rows(db)
    return row


def test_record_has_co2e_from_the_zone_intensity_and_pue(tmp_path):
    row = _one_record(tmp_path, region="FRA", provider="on_premise")
    fra = static_intensity(lookup_zone("FRA")).g_per_kwh
    assert row["zone"] == "FRA" and row["intensity_source"] == "static"
    assert row["intensity_g_per_kwh"] == pytest.approx(fra)
    assert row["pue"] == pytest.approx(1.58)
    kwh = row["energy_j"] / 3.6e6
    assert row["co2e_g"] == pytest.approx(kwh * 1.58 * fra)
    assert row["currency"] == "EUR" and row["energy_cost"] == pytest.approx(
        kwh * 1.58 * row["price_per_kwh"]
    )
    # On premise the GPU is owned by default: the H100's purchase price amortised per hour
    # (regions/gpu_capex.csv), never a cloud price, times the query's GPU-seconds.
    assert row["ownership"] == "owned" and "owned" in row["gpu_price_source"]
    assert row["usd_per_gpu_hour"] == pytest.approx(33_600 / (5 * 8760))
    assert row["compute_cost"] == pytest.approx(row["gpu_seconds"] * row["usd_per_gpu_hour"] / 3600)
    assert row["embodied_co2e_g"] > 0


def test_record_in_a_cloud_region_is_rented_at_that_providers_price(tmp_path):
    row = _one_record(tmp_path, region="aws:us-east-1")
    assert row["ownership"] == "rented" and row["usd_per_gpu_hour"] == pytest.approx(6.88)
    assert "p5.48xlarge" in row["gpu_price_source"]
    assert row["compute_cost"] == pytest.approx(row["gpu_seconds"] * 6.88 / 3600)
    assert row["energy_cost"] is not None  # shown beside compute_cost, not part of it


def test_record_ownership_setting_and_unknown_prices_stay_null(tmp_path):
    row = _one_record(tmp_path, region="FRA", ownership="rented")  # rented from whom?
    assert row["ownership"] == "rented"
    assert row["usd_per_gpu_hour"] is None and row["compute_cost"] is None
    assert "no shipped rental price" in row["gpu_price_source"]
    (tmp_path / "b").mkdir()
    row = _one_record(tmp_path / "b", region="AFG", ownership="owned")  # no electricity price
    assert row["ownership"] == "owned" and row["usd_per_gpu_hour"] > 0
    assert row["energy_cost"] is None and row["energy_cost_usd"] is None


def test_user_overrides_win_and_are_applied(tmp_path):
    row = _one_record(
        tmp_path,
        region="aws:us-east-1",
        price_per_kwh=0.5,
        currency="EUR",
        pue=1.3,
        usd_per_gpu_hour=2.0,
        market_intensity_g_per_kwh=10.0,
    )
    kwh = row["energy_j"] / 3.6e6
    assert (row["pue"], row["price_per_kwh"], row["currency"]) == (1.3, 0.5, "EUR")
    assert row["energy_cost"] == pytest.approx(kwh * 1.3 * 0.5)
    assert row["compute_cost"] == pytest.approx(row["gpu_seconds"] * 2.0 / 3600)
    assert row["market_co2e_g"] == pytest.approx(kwh * 1.3 * 10.0)
    assert row["zone"] == "aws:us-east-1"
    virginia = static_intensity(lookup_zone("USA/virginia")).g_per_kwh
    assert row["intensity_g_per_kwh"] == pytest.approx(virginia)


def test_hourly_csv_takes_precedence_for_the_hours_it_covers(tmp_path):
    hour = dt.datetime.now(dt.timezone.utc).replace(minute=0, second=0, microsecond=0)
    path = tmp_path / "hourly.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["timestamp", "zone", "gco2e_per_kwh"])
        for h in (hour - dt.timedelta(hours=1), hour, hour + dt.timedelta(hours=1)):
            writer.writerow([h.strftime("%Y-%m-%dT%H:%M:%SZ"), "DEU", "123.5"])
    row = _one_record(tmp_path, region="DEU", hourly_intensity_csv=str(path))
    assert row["intensity_source"] == "hourly"
    assert row["intensity_g_per_kwh"] == 123.5


def test_no_region_uses_the_flagged_default_and_warns(tmp_path):
    from footprint.pricing.zones import _reset_default_warning

    _reset_default_warning()  # the warning is once per process
    with pytest.warns(DefaultZoneWarning, match="(?i)world"):
        row = _one_record(tmp_path)
    assert row["zone"] == "WORLD"
    assert row["co2e_g"] > 0


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"pue": 0.9}, "PUE must be >= 1"),
        ({"price_per_kwh": -1, "currency": "EUR"}, "price_per_kwh"),
        ({"price_per_kwh": float("nan"), "currency": "EUR"}, "price_per_kwh"),
        ({"price_per_kwh": 0.2}, "currency"),
        ({"region": "aws:us-east-9"}, "aws:us-east-1"),
        ({"provider": "ibm"}, "provider"),
    ],
)
def test_bad_pricing_settings_fail_at_configuration(settings, message):
    with pytest.raises(ValueError, match=message):
        footprint.configure(**settings)


def test_unknown_region_error_names_closest(tmp_path):
    with pytest.raises(UnknownZoneError, match="closest"):
        footprint.configure(region="Frnace")


def test_malformed_hourly_csv_fails_at_configuration_with_line(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text(
        "timestamp,zone,gco2e_per_kwh\n2026-01-01T00:00:00Z,FRA,50\n2026-01-01T01:00:00Z,FRA,lots\n"
    )
    with pytest.raises(ValueError, match=r"bad.csv.*3"):
        footprint.configure(hourly_intensity_csv=str(path))
    with pytest.raises(ValueError, match=r"bad.csv.*3"):
        footprint.Tracker(hourly_intensity_csv=str(path))


def test_an_hourly_csv_spoiled_after_configuration_is_reported_when_the_pricer_starts(tmp_path):
    """configure() reads the file once to check it; the pricer reads it again as the
    tracker starts (never the settings: replace() reads nothing). Spoiled in between:
    calls are still recorded, unpriced, with a warning naming the line."""
    path = tmp_path / "bad.csv"
    path.write_text("timestamp,zone,gco2e_per_kwh\n2026-01-01T00:00:00Z,FRA,50\n")
    footprint.configure(
        db=str(tmp_path / "p.db"),
        sensor=SIM,
        cpu=False,
        region="FRA",
        hourly_intensity_csv=str(path),
    )
    with open(path, "a") as f:
        f.write("2026-01-01T01:00:00Z,FRA,lots\n")

    @footprint.track(model="m")
    def infer():
        get_runtime().gpu_sensor.run(0.2)

    with pytest.warns(footprint.FootprintWarning, match=r"no CO2e or cost: .*bad.csv, line 3"):
        infer()
        footprint.flush()
    (row,) = rows(tmp_path / "p.db")
    assert row["energy_j"] > 0 and row["co2e_g"] is None


def test_regions_cli_lists_every_cloud_region(capsys):
    main(["regions", "--json"])
    listed = {z["zone"]: z for z in json.loads(capsys.readouterr().out)["zones"]}
    with (REPO / "regions" / "cloud_regions.csv").open() as f:
        cloud = [f"{r['provider']}:{r['region']}" for r in csv.DictReader(f)]
    assert {"aws", "azure", "gcp"} <= {c.split(":")[0] for c in cloud}
    missing = [c for c in cloud if c not in listed]
    assert not missing
    assert all(listed[c]["intensity_g_per_kwh"] > 0 for c in cloud)
    from codecarbon.core.util import backup  # noqa: F401 - only to prove codecarbon is there

    mix = json.loads(
        (
            Path(__import__("codecarbon").__file__).parent
            / "data/private_infra/global_energy_mix.json"
        ).read_text()
    )
    assert not [iso for iso in mix if iso not in listed]


def test_regions_cli_filter_and_unknown(capsys):
    main(["regions", "aws", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert out["count"] >= 30 and all(z["provider"] == "aws" for z in out["zones"])
    east = next(z for z in out["zones"] if z["zone"] == "aws:us-east-1")
    assert east["grid_zone"] == "USA/virginia"
    with pytest.raises(SystemExit) as exited:
        main(["regions", "qqqqqq"])
    assert exited.value.code == 1  # no match, like grep


@pytest.mark.slow
def test_wheel_ships_regions_and_works_outside_the_tree(tmp_path):
    """Build the wheel, install it in a fresh venv, run `footprint regions FRA --json`."""
    wheels = tmp_path / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(wheels),
            str(REPO),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = wheels.glob("footprint-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next((venv / "lib").glob("python3*/site-packages"))
    import zipfile

    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        assert "footprint/_regions/cloud_regions.csv" in names
        zf.extractall(site)  # what pip does for a pure-Python wheel
    # Dependencies come from the test environment, behind the wheel's own copy.
    deps = [p for p in sys.path if p.endswith("site-packages")]
    (site / "zz_deps.pth").write_text("\n".join(deps) + "\n")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "FOOTPRINT_REGIONS_DIR")}
    done = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import footprint, sys; from footprint.cli import main; "
            "print(footprint.__file__, file=sys.stderr); main(['regions', 'FRA', '--json'])",
        ],
        cwd=outside,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert str(site) in done.stderr  # the installed copy, not the source tree
    zones = {z["zone"]: z for z in json.loads(done.stdout)["zones"]}
    assert zones["FRA"]["intensity_g_per_kwh"] > 0
    assert zones["FRA"]["price_per_kwh"] > 0


def test_every_demo_record_has_co2e_and_cost(tmp_path):
    db = tmp_path / "demo.db"
    main(["demo", "--db", str(db), "--out", str(tmp_path / "out"), "--queries", "40", "--json"])
    got = rows(
        db,
        "SELECT co2e_g, embodied_co2e_g, energy_cost, energy_cost_usd, compute_cost, "
        "zone, pue, intensity_source FROM queries",
    )
    assert len(got) == 40
    for row in got:
        assert all(
            row[k] is not None and row[k] >= 0
            for k in ("co2e_g", "embodied_co2e_g", "energy_cost", "energy_cost_usd", "compute_cost")
        )
        assert row["zone"] == "aws:us-east-1" and row["pue"] >= 1


def test_the_daemon_refuses_to_start_with_a_malformed_hourly_csv(tmp_path):
    import os
    import subprocess
    import sys

    path = tmp_path / "bad.csv"
    path.write_text("timestamp,zone,gco2e_per_kwh\n2026-01-01T00:00:00Z,FRA,lots\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOOTPRINT_")}
    env.update(FOOTPRINT_HOURLY_INTENSITY_CSV=str(path), XDG_RUNTIME_DIR=str(tmp_path))
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "footprint",
            "daemon",
            "--socket",
            str(tmp_path / "d.sock"),
            "--db",
            str(tmp_path / "d.db"),
            "--http",
            "off",
            "--sensor",
            "none",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert "bad.csv" in out.stderr and "2" in out.stderr
