"""The RAPL sensor against a fake powercap tree."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from footprint.sensors.base import ENERGY_COUNTER, SensorError
from footprint.sensors.rapl import RaplSensor, open_rapl

RANGE_UJ = 262_143_328_850


def add_domain(
    root: Path,
    directory: str,
    name: str,
    energy_uj: int,
    range_uj: int | None = RANGE_UJ,
) -> Path:
    path = root / directory
    path.mkdir(parents=True)
    (path / "name").write_text(name + "\n")
    (path / "energy_uj").write_text(f"{energy_uj}\n")
    if range_uj is not None:
        (path / "max_energy_range_uj").write_text(f"{range_uj}\n")
    return path


def set_energy(path: Path, energy_uj: int) -> None:
    (path / "energy_uj").write_text(f"{energy_uj}\n")


@pytest.fixture
def two_sockets(tmp_path: Path) -> tuple[Path, Path, Path]:
    (tmp_path / "intel-rapl").mkdir()
    pkg0 = add_domain(tmp_path, "intel-rapl:0", "package-0", 1_000)
    add_domain(tmp_path, "intel-rapl:0/intel-rapl:0:0", "core", 500)
    add_domain(tmp_path, "intel-rapl:0:1", "uncore", 7)
    pkg1 = add_domain(tmp_path, "intel-rapl:1", "package-1", 2_000)
    add_domain(tmp_path, "intel-rapl:2", "psys", 9_000)
    add_domain(tmp_path, "intel-rapl-mmio:0", "package-0", 3_000)
    return tmp_path, pkg0, pkg1


def test_discovers_top_level_packages_only(two_sockets: tuple[Path, Path, Path]) -> None:
    root, _, _ = two_sockets
    sensor = RaplSensor(root)
    assert [(d.index, d.uuid, d.kind, d.energy_method) for d in sensor.devices] == [
        (0, "cpu-package-0", "cpu", ENERGY_COUNTER),
        (1, "cpu-package-1", "cpu", ENERGY_COUNTER),
    ]


def test_reports_joules_from_microjoules(two_sockets: tuple[Path, Path, Path]) -> None:
    root, pkg0, pkg1 = two_sockets
    sensor = RaplSensor(root)
    assert sensor.read_energy_j() == [0.0, 0.0]
    set_energy(pkg0, 1_000 + 2_500_000)
    set_energy(pkg1, 2_000 + 1)
    assert sensor.read_energy_j() == [2.5, 0.000001]


def test_wrap_around_adds_the_range_exactly(tmp_path: Path) -> None:
    pkg = add_domain(tmp_path, "intel-rapl:0", "package-0", RANGE_UJ - 1_000)
    sensor = RaplSensor(tmp_path)
    set_energy(pkg, 500)
    assert sensor.read_energy_j() == [1_500 / 1_000_000]
    set_energy(pkg, 200)
    assert sensor.read_energy_j() == [(1_500 + RANGE_UJ - 300) / 1_000_000]


def test_counter_going_down_without_a_known_range_is_a_reset(tmp_path: Path) -> None:
    pkg = add_domain(tmp_path, "intel-rapl:0", "package-0", 10_000_000, range_uj=None)
    sensor = RaplSensor(tmp_path)
    set_energy(pkg, 12_000_000)
    assert sensor.read_energy_j() == [2.0]
    set_energy(pkg, 3_000_000)
    assert sensor.read_energy_j() == [5.0]


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    start_uj=st.integers(0, RANGE_UJ - 1),
    increments_uj=st.lists(st.integers(0, RANGE_UJ - 1), max_size=40),
)
def test_random_traces_with_wraps_sum_the_increments(
    tmp_path_factory: pytest.TempPathFactory, start_uj: int, increments_uj: list[int]
) -> None:
    root = tmp_path_factory.mktemp("powercap")
    pkg = add_domain(root, "intel-rapl:0", "package-0", start_uj)
    sensor = RaplSensor(root)
    total_uj, previous_j, value_uj = 0, 0.0, start_uj
    for increment_uj in increments_uj:
        total_uj += increment_uj
        value_uj = (value_uj + increment_uj) % RANGE_UJ
        set_energy(pkg, value_uj)
        [energy_j] = sensor.read_energy_j()
        assert energy_j == total_uj / 1_000_000
        assert energy_j >= previous_j
        previous_j = energy_j


def test_amd_rapl_layout_is_accepted(tmp_path: Path) -> None:
    pkg = add_domain(tmp_path, "amd-rapl:0", "package-0", 0)
    sensor = RaplSensor(tmp_path)
    assert [d.uuid for d in sensor.devices] == ["cpu-package-0"]
    set_energy(pkg, 4_000_000)
    assert sensor.read_energy_j() == [4.0]


def test_read_error_gives_none_counts_and_recovers(
    two_sockets: tuple[Path, Path, Path],
) -> None:
    root, pkg0, pkg1 = two_sockets
    sensor = RaplSensor(root)
    (pkg1 / "energy_uj").unlink()
    set_energy(pkg0, 1_000 + 1_000_000)
    assert sensor.read_energy_j() == [1.0, None]
    (pkg1 / "energy_uj").write_text("garbage\n")
    assert sensor.read_energy_j() == [1.0, None]
    assert sensor.read_errors == 2
    set_energy(pkg1, 2_000 + 3_000_000)
    assert sensor.read_energy_j() == [1.0, 3.0]
    assert sensor.read_errors == 2


def test_every_package_failing_raises_sensor_error(
    two_sockets: tuple[Path, Path, Path],
) -> None:
    root, pkg0, pkg1 = two_sockets
    sensor = RaplSensor(root)
    (pkg0 / "energy_uj").unlink()
    (pkg1 / "energy_uj").unlink()
    with pytest.raises(SensorError):
        sensor.read_energy_j()
    assert sensor.read_errors == 2


def test_permission_denied_gives_a_clear_reason(
    two_sockets: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, _, _ = two_sockets
    real_read_text = Path.read_text

    def root_only(self: Path, *args: object, **kwargs: object) -> str:
        if self.name == "energy_uj":
            raise PermissionError(13, "Permission denied", str(self))
        return real_read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", root_only)
    sensor, reason = open_rapl(root)
    assert sensor is None
    assert "readable only by root" in reason
    assert "energy_uj" in reason


def test_missing_tree_gives_a_reason(tmp_path: Path) -> None:
    sensor, reason = open_rapl(tmp_path / "absent")
    assert sensor is None
    assert "no RAPL powercap tree" in reason


def test_tree_without_package_domain_gives_a_reason(tmp_path: Path) -> None:
    add_domain(tmp_path, "intel-rapl:0", "psys", 0)
    sensor, reason = open_rapl(tmp_path)
    assert sensor is None
    assert "no RAPL package domain" in reason


def test_open_rapl_returns_a_working_sensor(two_sockets: tuple[Path, Path, Path]) -> None:
    root, pkg0, _ = two_sockets
    sensor, reason = open_rapl(root)
    assert reason == ""
    assert sensor is not None
    set_energy(pkg0, 1_000 + 7_000_000)
    assert sensor.read_energy_j() == [7.0, 0.0]
