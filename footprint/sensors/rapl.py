"""CPU package energy from Linux RAPL, read through the powercap sysfs tree.

Each top-level package domain (``intel-rapl:N``, or ``amd-rapl:N`` where a driver uses
that prefix, with a ``name`` file reading ``package-N``) has a cumulative ``energy_uj``
counter in µJ that wraps at ``max_energy_range_uj``. Sub-domains (core, uncore, dram),
``psys`` and the ``intel-rapl-mmio`` duplicate of the package are left out, so nothing is
counted twice. CPU energy is reported apart from GPU energy.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from footprint.sensors.base import ENERGY_COUNTER, DeviceInfo, Sensor, SensorError

DEFAULT_POWERCAP_ROOT = "/sys/class/powercap"

_PACKAGE_DIR = re.compile(r"(intel-rapl|amd-rapl):([0-9]+)")
_PACKAGE_NAME = re.compile(r"package-([0-9]+)")


@dataclass
class _Domain:
    """One package domain: its directory and the state that keeps its series monotonic."""

    path: Path
    name: str
    max_energy_range_uj: int | None
    origin_uj: int = 0
    last_raw_uj: int = 0
    wrap_offset_uj: int = 0

    def read_raw_uj(self) -> int:
        return int((self.path / "energy_uj").read_text().strip())

    def cumulative_uj(self, raw_uj: int) -> int:
        """µJ since the origin; a counter that went down wrapped (or, range unknown, reset)."""
        if raw_uj < self.last_raw_uj:
            self.wrap_offset_uj += self.max_energy_range_uj or self.last_raw_uj
        self.last_raw_uj = raw_uj
        return raw_uj + self.wrap_offset_uj - self.origin_uj


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _discover(root: Path) -> list[_Domain]:
    """The package domains under ``root``, in package order; ``SensorError`` if none."""
    if not root.is_dir():
        raise SensorError(
            f"no RAPL powercap tree at {root} (not Linux, RAPL driver not loaded, "
            "or /sys not mounted in this container)"
        )
    try:
        entries = sorted(root.iterdir())
    except OSError as err:
        raise SensorError(f"cannot list the RAPL powercap tree at {root}: {err}") from err
    by_package: dict[int, _Domain] = {}
    for entry in entries:
        if not _PACKAGE_DIR.fullmatch(entry.name):
            continue
        try:
            name = (entry / "name").read_text().strip()
        except OSError:
            continue
        match = _PACKAGE_NAME.fullmatch(name)
        if match is None or int(match.group(1)) in by_package:
            continue
        range_uj = _read_int(entry / "max_energy_range_uj")
        by_package[int(match.group(1))] = _Domain(
            path=entry, name=name, max_energy_range_uj=range_uj if range_uj else None
        )
    if not by_package:
        raise SensorError(f"no RAPL package domain (package-N) under {root}")
    return [by_package[package] for package in sorted(by_package)]


class RaplSensor(Sensor):
    """Cumulative CPU package energy in J per socket, from RAPL ``energy_uj`` (µJ).

    Raises ``SensorError`` with a readable reason when the tree is missing, has no package
    domain, or its counters cannot be read (``energy_uj`` is root-only on kernels with the
    CVE-2020-8694 fix).
    """

    def __init__(self, root: str | Path = DEFAULT_POWERCAP_ROOT) -> None:
        self.root = Path(root)
        self._domains = _discover(self.root)
        self._read_errors = 0
        for domain in self._domains:
            energy_path = domain.path / "energy_uj"
            try:
                raw_uj = domain.read_raw_uj()
            except PermissionError as err:
                raise SensorError(
                    f"RAPL energy counters are readable only by root ({energy_path}: "
                    "permission denied; energy_uj is mode 0400 since the CVE-2020-8694 fix); "
                    "run as root or grant read access to the energy_uj files"
                ) from err
            except (OSError, ValueError) as err:
                raise SensorError(f"cannot read RAPL counter {energy_path}: {err}") from err
            domain.origin_uj = domain.last_raw_uj = raw_uj
        self._devices = [
            DeviceInfo(
                index=position,
                uuid=f"cpu-{domain.name}",
                name=f"CPU {domain.name}",
                kind="cpu",
                energy_method=ENERGY_COUNTER,
            )
            for position, domain in enumerate(self._domains)
        ]

    @property
    def devices(self) -> list[DeviceInfo]:
        return list(self._devices)

    @property
    def read_errors(self) -> int:
        return self._read_errors

    def read_energy_j(self) -> list[float | None]:
        """Cumulative J per package since the sensor was created; None where a read failed."""
        energies_j: list[float | None] = []
        for domain in self._domains:
            try:
                raw_uj = domain.read_raw_uj()
            except (OSError, ValueError):
                self._read_errors += 1
                energies_j.append(None)
                continue
            energies_j.append(domain.cumulative_uj(raw_uj) / 1_000_000)
        if all(e is None for e in energies_j):
            raise SensorError(f"RAPL: every package read failed under {self.root}")
        return energies_j


def open_rapl(root: str | Path = DEFAULT_POWERCAP_ROOT) -> tuple[RaplSensor | None, str]:
    """A RAPL sensor, or ``(None, reason)`` when the tree is missing or unreadable."""
    try:
        return RaplSensor(root), ""
    except SensorError as err:
        return None, str(err)
