"""The runtime's sensors and their samplers, opened, sampled, stopped and closed together.

GPUs first, then the CPU packages: one device slot each, and one resolver per slot.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

from footprint._clock import Clock
from footprint._forksafe import no_fork
from footprint.attribution import DeviceResolver
from footprint.config import Settings
from footprint.runtime.devices import DeviceSlots
from footprint.sampling import Sample, Sampler
from footprint.sensors import Sensor, open_cpu_sensor, open_gpu_sensor
from footprint.sensors.base import NullSensor
from footprint.sensors.rapl import RAPL_FIX, is_permission_problem


def _open_gpu(spec: str, clock: Clock) -> tuple[Sensor, str]:
    """The GPU sensor of ``spec``, and why there is none ("" if there is)."""
    try:
        return open_gpu_sensor(spec, clock)
    except Exception as exc:
        return NullSensor(str(exc)), f"{type(exc).__name__}: {exc}"


class Measuring:
    """The GPU sensor (``sensor_spec``), the CPU sensor (if ``settings.cpu``), a sampler
    each, their device slots and a resolver per slot.

    Opening reads nothing: the samplers take their first samples at ``start`` (or, on a
    manual clock, at each ``sample_once``).
    """

    def __init__(
        self,
        settings: Settings,
        clock: Clock,
        sensor_spec: str,
        warn_once: Callable[[str, str], None],
    ) -> None:
        with no_fork():  # imports a sensor's module on first use
            self.gpu_sensor, self.no_gpu_reason = _open_gpu(sensor_spec, clock)
            self.cpu_sensor: Sensor | None = None
            self.no_cpu_reason = "CPU energy disabled (cpu=false)"
            if settings.cpu:
                self.cpu_sensor, self.no_cpu_reason = open_cpu_sensor()
        period_s = settings.sampling_period_s
        self.gpu_sampler = Sampler(self.gpu_sensor, period_s, clock)
        self.cpu_sampler = Sampler(self.cpu_sensor, period_s, clock) if self.cpu_sensor else None
        cpu_devices = self.cpu_sensor.devices if self.cpu_sensor else []
        self.devices = DeviceSlots(self.gpu_sensor.devices, cpu_devices, warn_once)
        window_s = settings.counter_window_s
        if window_s is None:  # how much of each counter period the GPUs' counter observes
            window_s = self.gpu_sensor.counter_window_s
        self.resolvers = self._resolvers(window_s, settings)
        self.started_s = clock.monotonic_s()

    def _resolvers(self, window_s: float | None, settings: Settings) -> list[DeviceResolver]:
        n_gpu = len(self.devices.gpu_devices)
        rule, max_wait_s = settings.attribution, settings.max_span_age_s
        return [
            DeviceResolver(
                extrapolate_start=True,
                rule=rule if slot < n_gpu else "equal",  # CPU power is not the calls' tokens
                max_wait_s=max_wait_s,
                max_power_w=device.max_power_w,
                counter_period_s=self.gpu_sensor.counter_update_period_s if slot < n_gpu else None,
                counter_window_s=window_s if slot < n_gpu else None,
            )
            for slot, device in enumerate(self.devices.by_slot)
        ]

    def stale_gpus(self, now_s: float, stale_s: float) -> set[int]:
        """GPU slots with no sample for ``stale_s`` (none since opening, for that long)."""
        latest = self.gpu_sampler.latest_sample_times_s()
        return {
            slot
            for slot, t_s in enumerate(latest)
            if now_s - (self.started_s if t_s is None else t_s) > stale_s
        }

    def wait_first_samples(self, deadline_s: float) -> bool:
        """Wait until every GPU has its first sample, or ``time.monotonic()`` reaches
        ``deadline_s``; True if they have."""
        while any(t is None for t in self.gpu_sampler.latest_sample_times_s()):
            if time.monotonic() >= deadline_s:
                return False
            time.sleep(0.002)
        return True

    def _samplers(self) -> list[Sampler]:
        return [self.gpu_sampler] + ([self.cpu_sampler] if self.cpu_sampler else [])

    def start(self) -> None:
        """Start the sampler threads (first samples at once)."""
        for sampler in self._samplers():
            sampler.start()

    def stop(self, final_sample: bool, settle_after_s: float | None = None) -> None:
        """Stop the sampler threads (see ``Sampler.stop``)."""
        for sampler in self._samplers():
            sampler.stop(final_sample=final_sample, settle_after_s=settle_after_s)

    def stop_quietly(self) -> None:
        """Stop the sampler threads, with no last sample and no error."""
        for sampler in self._samplers():
            with contextlib.suppress(Exception):
                sampler.stop(final_sample=False)

    def sample_once(self) -> None:
        """Read the sensors once (a runtime on a manual clock)."""
        for sampler in self._samplers():
            sampler.sample_once()

    def sample_fresh(self) -> None:
        """A sample of each sensor taken now (see ``Sampler.sample_fresh``)."""
        for sampler in self._samplers():
            sampler.sample_fresh()

    def take_samples(
        self, on_gpu_samples: Callable[[list[list[Sample]]], None]
    ) -> tuple[list[list[Sample]], list[float], list[float | None]]:
        """Per device slot: the samples since the last call (the GPUs' handed to
        ``on_gpu_samples`` first), their timing uncertainty (s) and counter period (s)."""
        gpu_samples = self.gpu_sampler.drain()
        on_gpu_samples(gpu_samples)
        cpu_sampler = self.cpu_sampler
        samples = gpu_samples + (cpu_sampler.drain() if cpu_sampler else [])
        uncertainty_s = self.gpu_sampler.timing_uncertainty_s() + (
            cpu_sampler.timing_uncertainty_s() if cpu_sampler else []
        )
        periods_s = self.gpu_sampler.counter_periods_s() + (
            cpu_sampler.counter_periods_s() if cpu_sampler else []
        )
        return samples, uncertainty_s, periods_s

    def close(self) -> None:
        """Close the sensors, quietly."""
        for sensor in (self.gpu_sensor, self.cpu_sensor):
            if sensor is not None:
                with contextlib.suppress(Exception):
                    sensor.close()


def warn_about_sensors(
    measuring: Measuring, sensor_spec: str, warn_once: Callable[[str, str], None]
) -> None:
    """Say once what will not be measured: no GPU (the calls' energy is then the CPU's,
    where RAPL reads), RAPL counters this user cannot read (with the fix)."""
    gpu_reason, cpu_reason = measuring.no_gpu_reason, measuring.no_cpu_reason
    on_cpu = measuring.cpu_sensor is not None and not measuring.devices.gpu_devices
    if gpu_reason and sensor_spec.partition(":")[0] != "none":
        if on_cpu:
            warn_once(
                "no-gpu",
                f"footprint: no GPU measured ({gpu_reason}); the calls' energy is their "
                "share of the CPU packages' (and DRAM's) RAPL energy: energy_source=cpu",
            )
        else:
            warn_once("no-gpu", f"footprint: no GPU energy will be recorded: {gpu_reason}")
    if measuring.cpu_sensor is None and is_permission_problem(cpu_reason):
        warn_once("no-rapl", f"footprint: no CPU energy will be recorded: {cpu_reason}; {RAPL_FIX}")
