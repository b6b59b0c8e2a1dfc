"""Settings: validation, sources and their precedence."""

from __future__ import annotations

import math

import pytest

import footprint
from footprint.config import resolve_settings


@pytest.mark.parametrize("period", [0, -1, math.nan, math.inf, True, 11])
def test_bad_sampling_period_is_rejected_with_allowed_range(period):
    with pytest.raises(
        ValueError, match=r"sampling_period_s must be a number of seconds in \(0, 10\]"
    ):
        footprint.configure(sampling_period_s=period)


def test_unknown_sensor_lists_allowed_values():
    with pytest.raises(ValueError, match="allowed: auto, nvml, amd, none, simulated"):
        footprint.configure(sensor="rocm")


def test_bad_simulated_option_is_rejected():
    with pytest.raises(ValueError, match="unknown option 'gpu=2'"):
        footprint.configure(sensor="simulated:gpu=2")
    with pytest.raises(ValueError, match="busy_w must be >= idle_w"):
        footprint.configure(sensor="simulated:idle_w=100,busy_w=50")


def test_unknown_setting_is_rejected():
    with pytest.raises(ValueError, match="unknown setting 'sampling'"):
        footprint.configure(sampling=1)


def test_precedence_configure_over_env_over_files(tmp_path):
    (tmp_path / "pyproject.toml").write_text(
        '[tool.footprint]\ndb = "from-pyproject.db"\nregion = "FRA"\nsampling_period_s = 0.2\n'
    )
    (tmp_path / "footprint.toml").write_text('db = "from-toml.db"\nsensor = "none"\n')
    env = {"FOOTPRINT_DB": "from-env.db", "FOOTPRINT_SAMPLING_PERIOD_S": "0.1", "OTHER": "x"}
    s = resolve_settings({}, environ=env, directory=tmp_path)
    assert (s.db, s.sensor, s.region, s.sampling_period_s) == ("from-env.db", "none", "FRA", 0.1)
    s = resolve_settings({"db": "explicit.db"}, environ=env, directory=tmp_path)
    assert s.db == "explicit.db"


def test_bad_env_value_names_the_setting(tmp_path):
    with pytest.raises(ValueError, match="sampling_period_s: not a number"):
        resolve_settings({}, environ={"FOOTPRINT_SAMPLING_PERIOD_S": "soon"}, directory=tmp_path)
    with pytest.raises(ValueError, match="cpu: expected true or false"):
        resolve_settings({}, environ={"FOOTPRINT_CPU": "maybe"}, directory=tmp_path)


def test_bad_env_sensor_disables_tracking_without_breaking_calls(monkeypatch, tmp_path):
    monkeypatch.setenv("FOOTPRINT_SENSOR", "quantum")
    monkeypatch.setenv("FOOTPRINT_DB", str(tmp_path / "x.db"))

    @footprint.track(model="m")
    def f():
        return 7

    with pytest.warns(footprint.FootprintWarning, match="tracking disabled: unknown sensor"):
        assert f() == 7
    assert f() == 7


def test_daemon_setting_is_not_silently_ignored(tmp_path):
    """A daemon address sends the spans there; one that is down is said, never raised."""
    from footprint.runtime.remote import DaemonClient
    from footprint.tracking import get_runtime

    footprint.configure(
        db=str(tmp_path / "d.db"),
        sensor="none",
        cpu=False,
        region="FRA",
        daemon="/nonexistent-footprint/d.sock",
        exit_deadline_s=0.5,
    )

    @footprint.track(model="m")
    def f():
        return 1

    with pytest.warns(footprint.FootprintWarning, match="cannot reach the footprint daemon"):
        assert f() == 1
        assert isinstance(get_runtime(), DaemonClient)
        footprint.flush()  # tries the daemon now
    assert footprint.stats()["pending_spans"] == 1


def test_daemon_setting_defaults_to_auto_and_checks_its_form(tmp_path):
    assert resolve_settings({}, environ={}, directory=tmp_path).daemon == "auto"
    assert resolve_settings({"daemon": None}, environ={}, directory=tmp_path).daemon == "auto"
    assert resolve_settings({}, environ={"FOOTPRINT_DAEMON": "off"}, directory=tmp_path).daemon == (
        "off"
    )
    with pytest.raises(ValueError, match="auto .*, off .*, a Unix socket path .* http://host:port"):
        footprint.configure(daemon="ftp://x")


# --- Settings are plain values; files are found from the working directory up ----------


def test_replace_reads_no_file(tmp_path):
    """The hourly CSV is the pricer's to read: a Settings outlives its file being moved."""
    from dataclasses import replace

    path = tmp_path / "hourly.csv"
    path.write_text("timestamp,zone,gco2e_per_kwh\n2026-01-01T00:00:00Z,FRA,50\n")
    settings = resolve_settings({"hourly_intensity_csv": str(path)}, environ={}, directory=tmp_path)
    path.unlink()
    moved = replace(settings, db="elsewhere.db", region="DEU")
    assert (moved.hourly_intensity_csv, moved.db) == (str(path), "elsewhere.db")


def test_settings_file_is_found_in_a_parent_folder(tmp_path, monkeypatch):
    (tmp_path / "footprint.toml").write_text('region = "FRA"\nsensor = "none"\n')
    below = tmp_path / "project" / "src"
    below.mkdir(parents=True)
    (tmp_path / "project" / "pyproject.toml").write_text('[project]\nname = "x"\n')  # no table
    s = resolve_settings({}, environ={}, directory=below)
    assert (s.region, s.sensor) == ("FRA", "none")
    assert s.config_files == (str(tmp_path / "footprint.toml"),)
    assert str(tmp_path / "footprint.toml") in s.config_source
    monkeypatch.chdir(below)  # the default: from the working directory up
    assert resolve_settings({}, environ={}).config_files == s.config_files


def test_the_first_folder_with_settings_wins(tmp_path):
    (tmp_path / "footprint.toml").write_text('region = "FRA"\n')
    project = tmp_path / "project"
    project.mkdir()
    (project / "pyproject.toml").write_text('[tool.footprint]\nsensor = "none"\n')
    s = resolve_settings({}, environ={}, directory=project)
    assert (s.region, s.sensor) == (None, "none")  # the parent's footprint.toml is not read
    assert s.config_files == (str(project / "pyproject.toml"),)


def test_no_settings_file_is_said(tmp_path):
    s = resolve_settings({}, environ={}, directory=tmp_path)
    assert s.config_files == () and s.config_source.startswith("none found")
    with pytest.raises(ValueError, match="unknown setting 'config_files'"):
        footprint.configure(config_files=("x",))


def test_electricitymaps_url_and_regions_dir_are_settings(tmp_path):
    env = {
        "FOOTPRINT_ELECTRICITYMAPS_URL": "http://127.0.0.1:9/v3",
        "FOOTPRINT_REGIONS_DIR": str(tmp_path / "regions"),
    }
    s = resolve_settings({}, environ=env, directory=tmp_path)
    assert s.electricitymaps_url == "http://127.0.0.1:9/v3"
    assert s.regions_dir == str(tmp_path / "regions")
    (tmp_path / "footprint.toml").write_text('electricitymaps_url = "https://em.example/v3"\n')
    s = resolve_settings({"regions_dir": "mine"}, environ={}, directory=tmp_path)
    assert (s.electricitymaps_url, s.regions_dir) == ("https://em.example/v3", "mine")
    with pytest.raises(ValueError, match="electricitymaps_url must be an http"):
        footprint.configure(electricitymaps_url="ftp://em.example")


def test_pricing_overrides_are_named_once():
    from dataclasses import fields

    from footprint.config import Settings
    from footprint.pricing import PRICING_OVERRIDES
    from footprint.pricing.pricer import PRICER_SETTINGS

    names = {f.name for f in fields(Settings)}
    assert len(PRICING_OVERRIDES) == 8 and set(PRICER_SETTINGS) <= names
    assert set(PRICING_OVERRIDES) <= set(PRICER_SETTINGS)


def test_devices_and_db_info_say_which_settings_file_applies(tmp_path):
    import os
    import subprocess
    import sys

    (tmp_path / "footprint.toml").write_text('region = "FRA"\n')
    below = tmp_path / "a" / "b"
    below.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOOTPRINT_")}
    env["FOOTPRINT_SENSOR"] = "none"
    from footprint.storage.store import Store

    Store(str(tmp_path / "x.db")).close()
    for command in (["devices"], ["db", "info", "--db", str(tmp_path / "x.db")]):
        out = subprocess.run(
            [sys.executable, "-m", "footprint", *command],
            cwd=below,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert str(tmp_path / "footprint.toml") in out.stdout, (command, out.stdout, out.stderr)
