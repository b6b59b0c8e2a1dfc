"""Simulated GPUs behind the ``Sensor`` interface, loaded by the tracked calls or by hand."""

from __future__ import annotations

from footprint._clock import SYSTEM_CLOCK, Clock
from footprint.sensors.base import ENERGY_SIMULATED, DeviceInfo, Sensor
from footprint.sensors.simulated.gpu import SimulatedGpu
from footprint.sensors.simulated.spec import SimulatedGpuSpec


class SimulatedSensor(Sensor):
    """Simulated GPUs behind the ``Sensor`` interface; never chosen implicitly."""

    def __init__(self, spec: SimulatedGpuSpec | None = None, clock: Clock = SYSTEM_CLOCK):
        self.spec = spec or SimulatedGpuSpec()
        self.clock = clock
        self.gpus = [SimulatedGpu(i, self.spec) for i in range(self.spec.gpus)]
        self._devices = [
            DeviceInfo(
                index=i,
                uuid=f"GPU-sim{self.spec.seed:04d}-0000-4000-8000-{i:012d}",
                name=self.spec.name,
                kind="gpu",
                energy_method=ENERGY_SIMULATED,
                max_power_w=self.spec.busy_w,
            )
            for i in range(self.spec.gpus)
        ]

    @property
    def devices(self) -> list[DeviceInfo]:
        return self._devices

    @property
    def counter_update_period_s(self) -> float:
        return self.spec.update_period_s

    @property
    def counter_window_s(self) -> float | None:
        return self.spec.observed_window_s if self.spec.part_time else None

    @property
    def counter_lag_s(self) -> float:
        return self.spec.lag_s

    def read_energy_j(self) -> list[float | None]:
        now_s = self.clock.monotonic_s() - self.spec.lag_s
        return [gpu.counter_mj(now_s) / 1000.0 for gpu in self.gpus]

    def begin_load(self, devices: tuple[int, ...], t_s: float) -> None:
        """A tracked call started at ``t_s`` on these devices: load 1.0 each until it ends."""
        now_s = self.clock.monotonic_s()
        for index in devices:
            self.gpus[index].begin_call(t_s, now_s)

    def end_load(self, devices: tuple[int, ...], t_s: float) -> None:
        """The call that ``begin_load`` announced ended at ``t_s``."""
        now_s = self.clock.monotonic_s()
        for index in devices:
            self.gpus[index].end_call(t_s, now_s)

    def oddities(self) -> dict[str, int]:
        """What the GPUs refused, moved or forgot (``workload=spans``), summed."""
        names = ("refused_times", "unmatched_ends", "clamped_steps", "forgotten_steps")
        return {name: sum(getattr(gpu, name) for gpu in self.gpus) for name in names}

    def run(self, seconds: float, load: float = 1.0, devices: list[int] | None = None) -> None:
        """Workload helper: load the devices for ``seconds`` and sleep that long."""
        start_s = self.clock.monotonic_s()
        for index in range(len(self.gpus)) if devices is None else devices:
            self.gpus[index].add_load(start_s, start_s + seconds, load)
        self.clock.sleep(seconds)
