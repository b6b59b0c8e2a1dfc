"""CPU package (and DRAM) energy from Linux RAPL, read through the powercap sysfs tree.

Each top-level package domain (``intel-rapl:N``, or ``amd-rapl:N`` where a driver uses
that prefix, with a ``name`` file reading ``package-N``) has a cumulative ``energy_uj``
counter in µJ that wraps at ``max_energy_range_uj``. A package's ``dram`` sub-domain
(``intel-rapl:N:M`` named ``dram``, on servers that expose it) is measured too, as a
device of its own (``cpu-dram-N``): memory energy is outside the package's. The other
sub-domains (core, uncore: inside the package), ``psys`` and the ``intel-rapl-mmio``
duplicate of the package are left out, so nothing is counted twice. With a GPU, CPU
energy is reported apart from GPU energy; without one, it is the calls' energy.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from footprint.sensors.base import ENERGY_COUNTER, DeviceInfo, Sensor, SensorError

DEFAULT_POWERCAP_ROOT = "/sys/class/powercap"

_PACKAGE_DIR = re.compile(r"(intel-rapl|amd-rapl):([0-9]+)")
_SUBDOMAIN_DIR = re.compile(r"(intel-rapl|amd-rapl):([0-9]+):([0-9]+)")
_PACKAGE_NAME = re.compile(r"package-([0-9]+)")
DRAM_UUID_PREFIX = "cpu-dram-"  # the uuid of package N's DRAM domain is cpu-dram-N
RAPL_FIX = (
    "fix: let this user read the counters, e.g. `sudo chmod a+r "
    "/sys/class/powercap/intel-rapl:*/energy_uj /sys/class/powercap/intel-rapl:*:*/energy_uj` "
    "(until reboot; a udev rule or a tmpfiles.d entry makes it last; in a container, "
    "mount /sys/class/powercap from a host where it is readable). Root-only since "
    "CVE-2020-8694: readable counters let local users observe power draw"
)


def is_permission_problem(reason: str) -> bool:
    """Whether a ``open_rapl`` reason is counters that exist but this user cannot read."""
    return "permission denied" in reason or "readable only by root" in reason


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
    drams = _dram_domains(root, entries, by_package)
    packages = sorted(by_package)
    return [by_package[p] for p in packages] + [drams[p] for p in packages if p in drams]


def _dram_domains(
    root: Path, entries: list[Path], by_package: dict[int, _Domain]
) -> dict[int, _Domain]:
    """The ``dram`` sub-domain of each package, by package number: top-level links
    (``intel-rapl:0:2``) or, where there are none, the directories inside the packages."""
    candidates = [e for e in entries if _SUBDOMAIN_DIR.fullmatch(e.name)]
    for package in by_package.values():
        try:
            candidates += [e for e in package.path.iterdir() if _SUBDOMAIN_DIR.fullmatch(e.name)]
        except OSError:
            continue
    drams: dict[int, _Domain] = {}
    for entry in candidates:
        try:
            name = (entry / "name").read_text().strip()
            parent = (entry.resolve().parent / "name").read_text().strip()
        except OSError:
            continue
        match = _PACKAGE_NAME.fullmatch(parent)
        if name != "dram" or match is None or int(match.group(1)) in drams:
            continue
        range_uj = _read_int(entry / "max_energy_range_uj")
        drams[int(match.group(1))] = _Domain(
            path=entry, name=f"dram-{match.group(1)}", max_energy_range_uj=range_uj or None
        )
    return drams


class RaplSensor(Sensor):
    """Cumulative CPU package energy in J per socket, then DRAM energy per socket where
    RAPL has a ``dram`` domain, from RAPL ``energy_uj`` (µJ).

    Raises ``SensorError`` with a readable reason when the tree is missing, has no package
    domain, or its counters cannot be read (``energy_uj`` is root-only on kernels with the
    CVE-2020-8694 fix).
    """

    def __init__(self, root: str | Path = DEFAULT_POWERCAP_ROOT) -> None:
        self.root = Path(root)
        self._domains = _discover(self.root)
        self._read_errors = 0
        self.skipped: dict[str, str] = {}  # a DRAM domain left out -> why
        for domain in list(self._domains):
            energy_path = domain.path / "energy_uj"
            try:
                raw_uj = domain.read_raw_uj()
            except (OSError, ValueError) as err:
                if not domain.name.startswith("dram-"):
                    raise _unreadable(energy_path, err) from err
                self._domains.remove(domain)  # the packages are measured without it
                self.skipped[f"cpu-{domain.name}"] = str(_unreadable(energy_path, err))
                continue
            domain.origin_uj = domain.last_raw_uj = raw_uj

        self._devices = [
            DeviceInfo(
                index=position,
                uuid=f"cpu-{domain.name}",
                name=f"DRAM of package {domain.name[5:]}"
                if domain.name.startswith("dram-")
                else f"CPU {domain.name}",
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


def _unreadable(energy_path: Path, err: Exception) -> SensorError:
    """Why a RAPL counter cannot be read, as a ``SensorError``."""
    if isinstance(err, PermissionError):
        return SensorError(
            f"RAPL energy counters are readable only by root ({energy_path}: "
            "permission denied; energy_uj is mode 0400 since the CVE-2020-8694 fix); "
            "run as root or grant read access to the energy_uj files"
        )
    return SensorError(f"cannot read RAPL counter {energy_path}: {err}")


def open_rapl(root: str | Path = DEFAULT_POWERCAP_ROOT) -> tuple[RaplSensor | None, str]:
    """A RAPL sensor, or ``(None, reason)`` when the tree is missing or unreadable."""
    try:
        return RaplSensor(root), ""
    except SensorError as err:
        return None, str(err)
