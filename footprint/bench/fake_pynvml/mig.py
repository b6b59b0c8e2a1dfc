"""The fake ``pynvml``'s MIG slices: a ``FakeMigSlice`` is one MIG device (GPU instance +
compute instance) of a ``FakeGpu`` with MIG mode on, with its own true power, so the
truth per slice is known while NVML, as on real hardware, only measures the whole GPU.

NVML's behaviour mirrored here: a MIG device handle (``nvmlDeviceGetMigDeviceHandleByIndex``)
has a ``MIG-…`` UUID, a name ending in its profile (``… MIG 1g.10gb``), attributes with
its slice counts (``nvmlDeviceGetAttributes``) and its parent
(``nvmlDeviceGetDeviceHandleFromMigDeviceHandle``); energy, power and power limit on it
raise ``NVML_ERROR_NOT_SUPPORTED``: the energy counter is per physical GPU.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from footprint.sensors.simulated import LoadModel

_STEP_S = 0.001  # midpoint integration step of a power function (s)


@dataclass(eq=False)
class FakeMigSlice:
    """One MIG device. ``gpu_instance_slices``/``compute_instance_slices``: its size in
    the GPU's slices (a ``3g`` GPU instance split into ``1c.3g`` + ``2c.3g`` compute
    instances gives two devices with 3/1 and 3/2); ``power_w`` (W, constant or a function
    of the clock's time) or ``loads`` (exact): what this slice truly draws."""

    uuid: str
    gpu_instance_slices: int = 1
    compute_instance_slices: int | None = None  # None: the whole GPU instance
    memory_mb: int = 10240
    multiprocessor_count: int = 14
    power_w: float | Callable[[float], float] = 10.0
    loads: LoadModel | None = None
    gpu_instance_id: int = 0
    compute_instance_id: int = 0

    def __post_init__(self) -> None:
        if self.compute_instance_slices is None:
            self.compute_instance_slices = self.gpu_instance_slices
        if not 1 <= self.compute_instance_slices <= self.gpu_instance_slices <= 8:
            raise ValueError("MIG slices: need 1 <= compute slices <= GPU instance slices <= 8")

    @property
    def profile(self) -> str:
        """The profile name NVML puts in the device name (``1g.10gb``, ``1c.3g.40gb``)."""
        memory_gb = max(1, round(self.memory_mb / 1024))
        gi = f"{self.gpu_instance_slices}g.{memory_gb}gb"
        ci = self.compute_instance_slices
        return gi if ci == self.gpu_instance_slices else f"{ci}c.{gi}"

    def power_at_w(self, t_s: float) -> float:
        if self.loads is not None:
            return self.loads.power_w(t_s)
        return self.power_w(t_s) if callable(self.power_w) else float(self.power_w)

    def energy_between_j(self, t0_s: float, t1_s: float) -> float:
        """True energy in J this slice drew between two times on the GPU's clock."""
        if t1_s <= t0_s:
            return 0.0
        if self.loads is not None:
            return self.loads.energy_j(t0_s, t1_s)
        if not callable(self.power_w):
            return float(self.power_w) * (t1_s - t0_s)
        steps = max(1, math.ceil((t1_s - t0_s) / _STEP_S))
        h_s = (t1_s - t0_s) / steps
        return h_s * sum(self.power_w(t0_s + (k + 0.5) * h_s) for k in range(steps))


class FakeMigAttributes:
    """What ``nvmlDeviceGetAttributes`` returns (``c_nvmlDeviceAttributes``'s fields)."""

    def __init__(self, mig: FakeMigSlice | None, multiprocessors: int, memory_mb: int) -> None:
        self.multiprocessorCount = mig.multiprocessor_count if mig else multiprocessors
        self.sharedCopyEngineCount = 1
        self.sharedDecoderCount = 0
        self.sharedEncoderCount = 0
        self.sharedJpegCount = 0
        self.sharedOfaCount = 0
        self.gpuInstanceSliceCount = mig.gpu_instance_slices if mig else 0
        self.computeInstanceSliceCount = mig.compute_instance_slices if mig else 0
        self.memorySizeMB = mig.memory_mb if mig else memory_mb


def mig_energy_model(slices: list[FakeMigSlice], board_w: float) -> Callable[[float, float], float]:
    """The parent GPU's exact energy between two times: its own draw outside the slices
    (``board_w``, W) plus every slice's."""

    def energy_between_j(t0_s: float, t1_s: float) -> float:
        own_j = board_w * max(0.0, t1_s - t0_s)
        return own_j + sum(s.energy_between_j(t0_s, t1_s) for s in slices)

    return energy_between_j
