"""CPU-only inference: with no GPU measured, a call's energy is its share of the CPU
packages' and DRAM's RAPL energy, resolved like a GPU's, priced and reported as its
model's energy (energy_source=cpu); RAPL counters this user cannot read are said once."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import ManualRun, rows
from test_sensor_rapl import add_domain

from footprint.config import Settings
from footprint.runtime.spans import FootprintWarning
from footprint.sensors import rapl

PACKAGE_IDLE_W, PACKAGE_BUSY_W, DRAM_W = 40.0, 100.0, 6.0
REAL_OPEN_RAPL = rapl.open_rapl


def cpu_tree(root: Path) -> Path:
    """A one-socket powercap tree with a DRAM sub-domain (links at the top level, as in
    /sys/class/powercap)."""
    root.mkdir()
    add_domain(root, "intel-rapl:0", "package-0", 0)
    add_domain(root, "intel-rapl:0/intel-rapl:0:0", "core", 0)
    add_domain(root, "intel-rapl:0/intel-rapl:0:2", "dram", 0)
    (root / "intel-rapl:0:2").symlink_to(root / "intel-rapl:0" / "intel-rapl:0:2")
    add_domain(root, "intel-rapl:1", "psys", 0)
    return root


def test_rapl_measures_each_packages_dram_as_a_device(tmp_path: Path) -> None:
    """On main the DRAM domain was left out."""
    root = cpu_tree(tmp_path / "powercap")
    sensor = rapl.RaplSensor(root)
    assert [(d.uuid, d.name) for d in sensor.devices] == [
        ("cpu-package-0", "CPU package-0"),
        ("cpu-dram-0", "DRAM of package 0"),
    ]
    (root / "intel-rapl:0" / "intel-rapl:0:2" / "energy_uj").write_text("3000000\n")
    assert sensor.read_energy_j() == [0.0, 3.0]


def test_unreadable_dram_leaves_the_packages_measured(tmp_path: Path, monkeypatch) -> None:
    root = cpu_tree(tmp_path / "powercap")
    real = rapl._Domain.read_raw_uj

    def read(domain: rapl._Domain) -> int:
        if domain.name.startswith("dram"):
            raise PermissionError("denied")
        return real(domain)

    monkeypatch.setattr(rapl._Domain, "read_raw_uj", read)
    sensor = rapl.RaplSensor(root)
    assert [d.uuid for d in sensor.devices] == ["cpu-package-0"]
    assert "permission denied" in sensor.skipped["cpu-dram-0"]


@pytest.fixture
def cpu_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """No GPU library; RAPL with a package and its DRAM, whose counters follow a power
    model on the run's manual clock: the package draws PACKAGE_BUSY_W while ``busy``."""
    monkeypatch.setitem(sys.modules, "pynvml", None)
    monkeypatch.setitem(sys.modules, "amdsmi", None)
    root = cpu_tree(tmp_path / "powercap")
    state = {"clock": None, "busy_since": None, "busy_j": 0.0, "t0": 1000.0}

    def now_s() -> float:
        return state["clock"].monotonic_s() if state["clock"] else state["t0"]  # type: ignore[union-attr]

    def package_j(t_s: float) -> float:
        extra = state["busy_j"]
        if state["busy_since"] is not None:
            extra += (PACKAGE_BUSY_W - PACKAGE_IDLE_W) * (t_s - state["busy_since"])
        return PACKAGE_IDLE_W * (t_s - state["t0"]) + extra

    def read(domain: rapl._Domain) -> int:
        t_s = now_s()
        joules = DRAM_W * (t_s - state["t0"]) if domain.name.startswith("dram") else package_j(t_s)
        return int(joules * 1_000_000)

    monkeypatch.setattr(rapl._Domain, "read_raw_uj", read)
    monkeypatch.setattr(rapl, "open_rapl", lambda root_=root: (rapl.RaplSensor(root), ""))

    def busy(on: bool) -> None:
        t_s = now_s()
        if on:
            state["busy_since"] = t_s
        else:
            state["busy_j"] += (PACKAGE_BUSY_W - PACKAGE_IDLE_W) * (t_s - state["busy_since"])
            state["busy_since"] = None

    state["busy"] = busy
    return state


def test_cpu_only_calls_get_cpu_energy_priced_and_reported(tmp_path, cpu_host) -> None:
    """On main every record of a CPU-only host had energy_j None (energy_source=missing)."""
    db = tmp_path / "cpu.db"
    with pytest.warns(FootprintWarning, match="energy_source=cpu"):
        run = ManualRun(Settings(db=str(db), sensor="auto", cpu=True, region="FRA"))
    cpu_host["clock"] = run.clock

    @run.tracker.track(model="small-llm")
    def call() -> None:
        cpu_host["busy"](True)
        run.advance(1.0)
        cpu_host["busy"](False)

    run.advance(3.0)
    for _ in range(5):
        call()
        run.advance(1.0)
    run.advance(2.0)
    run.close()
    got = rows(db)
    assert len(got) == 5
    for r in got:
        assert r["energy_source"] == "cpu"
        assert r["gpus"] == "[]" and r["gpu_seconds"] is None
        # The call alone on the CPU: the package's 100 W and the DRAM's 6 W for 1 s.
        assert r["energy_j"] == pytest.approx(PACKAGE_BUSY_W + DRAM_W, rel=0.05)
        assert abs(r["energy_j"] - 106.0) <= r["energy_uncertainty_j"] + 1e-9
        assert r["cpu_energy_j"] == pytest.approx(PACKAGE_BUSY_W, rel=0.05)  # package only
        assert r["co2e_g"] is not None and r["co2e_g"] > 0  # priced like GPU energy
    idle = {r["device_uuid"] for r in rows(db, "SELECT device_uuid FROM idle_energy")}
    assert idle == {"cpu-package-0", "cpu-dram-0"}


def test_cpu_only_report_shows_the_source(tmp_path, cpu_host, capsys) -> None:
    db = tmp_path / "cpu.db"
    with pytest.warns(FootprintWarning, match="energy_source=cpu"):
        run = ManualRun(Settings(db=str(db), sensor="auto", cpu=True, region="FRA"))
    cpu_host["clock"] = run.clock

    @run.tracker.track(model="small-llm")
    def call() -> None:
        cpu_host["busy"](True)
        run.advance(0.5)
        cpu_host["busy"](False)

    for _ in range(3):
        run.advance(1.0)
        call()
    run.advance(2.0)
    run.close()
    from footprint.cli import main

    capsys.readouterr()
    main(["report", "--db", str(db), "--format", "json"])
    report = json.loads(capsys.readouterr().out)
    (model,) = report["models"]
    assert model["energy_sources"] == {"cpu": 3}
    assert model["energy_kwh"] == pytest.approx(3 * 0.5 * 106.0 / 3.6e6, rel=0.05)
    assert any("energy_source=cpu" in note for note in report["notes"])
    # BoAmps says the energy was tracked with RAPL on the CPU, not on a GPU.
    main(["report", "--db", str(db), "--format", "boamps"])
    (boamps,) = json.loads(capsys.readouterr().out)
    (measure,) = boamps["measures"]
    assert measure["cpuTrackingMode"] == "rapl" and "gpuTrackingMode" not in measure
    assert measure["powerConsumption"] == pytest.approx(model["energy_kwh"])
    assert boamps["infrastructure"]["components"] == [{"componentType": "cpu", "nbComponent": 1}]


def test_unreadable_rapl_is_said_once_with_the_fix(tmp_path, monkeypatch) -> None:
    """On main the RAPL failure was dropped: no CPU energy and not a word about it."""
    monkeypatch.setitem(sys.modules, "pynvml", None)
    monkeypatch.setitem(sys.modules, "amdsmi", None)
    root = cpu_tree(tmp_path / "powercap")

    def denied(domain: rapl._Domain) -> int:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(rapl._Domain, "read_raw_uj", denied)
    monkeypatch.setattr(rapl, "open_rapl", lambda: REAL_OPEN_RAPL(root))
    db = tmp_path / "none.db"
    with pytest.warns(FootprintWarning) as caught:
        run = ManualRun(Settings(db=str(db), sensor="auto", cpu=True, region="FRA"))
        run.advance(1.0)
        run.close()
    texts = [str(w.message) for w in caught if "RAPL" in str(w.message)]
    assert len(texts) == 1
    assert "permission denied" in texts[0] and "chmod a+r /sys/class/powercap" in texts[0]


def test_devices_on_a_cpu_only_host_lists_package_and_dram(tmp_path, monkeypatch, capsys) -> None:
    from footprint.cli import main

    monkeypatch.setitem(sys.modules, "pynvml", None)
    monkeypatch.setitem(sys.modules, "amdsmi", None)
    root = cpu_tree(tmp_path / "powercap")
    monkeypatch.setattr(rapl, "open_rapl", lambda: REAL_OPEN_RAPL(root))
    main(["devices", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert out["calls_energy_from"] == "cpu"
    assert [(r["uuid"], r["energy_method"]) for r in out["devices"]] == [
        ("cpu-package-0", "counter"),
        ("cpu-dram-0", "counter"),
    ]
    assert out["devices"][1]["model"] == "DRAM of package 0"
    main(["devices"])
    assert "energy_source=cpu" in capsys.readouterr().out.replace("\n", " ")
