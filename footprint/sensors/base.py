"""The sensor interface: cumulative energy in joules per device.

A sensor knows a fixed list of devices (found when it is created) and, when read, returns
one cumulative energy figure per device. Cumulative means monotonic: a sensor that sees a
hardware counter reset or wrap keeps its own series going up. Sampling, timing and
attribution live elsewhere (``footprint.sampling``, ``footprint.attribution``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

# How a device's energy is obtained; stored in each record as ``energy_source``.
ENERGY_COUNTER = "counter"  # hardware cumulative energy counter (NVML total energy, RAPL)
ENERGY_POWER = "power"  # instantaneous power polled and integrated (trapezoid)
ENERGY_SIMULATED = "simulated"  # the simulated GPU; only ever from an explicit choice
ENERGY_MISSING = "missing"  # no sensor could be read: no energy recorded


class SensorError(RuntimeError):
    """A read failed; the sampler records it and carries on."""


@dataclass(frozen=True)
class DeviceInfo:
    """One measured device.

    ``uuid`` is the stable identity (``GPU-…`` for NVIDIA GPUs, ``cpu-package-N`` for
    RAPL); ``index`` is the position in the sensor's device list (the CUDA index as the
    process sees it for GPUs); ``energy_method`` is one of the ``ENERGY_*`` constants.
    """

    index: int
    uuid: str
    name: str
    kind: str  # "gpu" or "cpu"
    energy_method: str
    # The most the device can draw, in W (NVML's enforced power limit, the simulator's
    # busy power): bounds what an unmeasured stretch can hold. None: not known.
    max_power_w: float | None = None
    # Who made it ("NVIDIA", "AMD"; None: the sensor does not say).
    vendor: str | None = None
    # Other devices whose energy this one's reading holds: a dual-GCD MI250X reports the
    # package on its first die and 0 on the second. ``covers_uuids``: every such die;
    # ``covers_indices``: the indices of those this process sees. A call on any of them is
    # a call on this device (its energy cannot be split between the dies).
    covers_indices: tuple[int, ...] = ()
    covers_uuids: tuple[str, ...] = ()
    # A MIG slice (NVIDIA): the physical GPU whose counter it reads, its MIG profile
    # (``1g.10gb``) and its share of that GPU's energy (its compute slices over those of
    # every MIG device on the GPU); None for a whole device.
    parent_uuid: str | None = None
    profile: str | None = None
    share: float | None = None


class Sensor(ABC):
    """Cumulative energy per device, in joules."""

    @property
    @abstractmethod
    def devices(self) -> list[DeviceInfo]:
        """The devices this sensor reads, in the order ``read_energy_j`` returns them."""

    @abstractmethod
    def read_energy_j(self) -> list[float | None]:
        """Cumulative energy in J per device since an arbitrary origin.

        ``None`` for a device whose read failed this time (the failure is counted in
        ``read_errors``). Raises ``SensorError`` only when nothing at all could be read.
        """

    @property
    def read_errors(self) -> int:
        """Number of failed device reads since the sensor was created."""
        return 0

    @property
    def counter_update_period_s(self) -> float | None:
        """How often the underlying counter changes, when known (None: unknown)."""
        return None

    @property
    def counter_window_s(self) -> float | None:
        """How much of each update period the counter observes, in s, when it is known to
        see only part of it (A100/H100: about 25 ms of 100 ms); None: all of it, or unknown."""
        return None

    @property
    def counter_lag_s(self) -> float:
        """How long after the instant a value describes it becomes readable, in s (0: at
        once, or unknown). The sampler stamps values that much earlier."""
        return 0.0

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the library handle, if any."""


class NullSensor(Sensor):
    """No devices: what ``auto`` gives on a machine with no GPU."""

    def __init__(self, reason: str = "no GPU found") -> None:
        self.reason = reason

    @property
    def devices(self) -> list[DeviceInfo]:
        return []

    def read_energy_j(self) -> list[float | None]:
        return []
