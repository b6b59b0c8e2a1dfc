"""Energy sensors: one small interface, one implementation per source."""

from __future__ import annotations

from footprint._clock import SYSTEM_CLOCK, Clock
from footprint.sensors.base import (
    ENERGY_COUNTER,
    ENERGY_MISSING,
    ENERGY_POWER,
    ENERGY_SIMULATED,
    DeviceInfo,
    NullSensor,
    Sensor,
    SensorError,
)

__all__ = [
    "ENERGY_COUNTER",
    "ENERGY_MISSING",
    "ENERGY_POWER",
    "ENERGY_SIMULATED",
    "DeviceInfo",
    "NullSensor",
    "Sensor",
    "SensorError",
    "open_gpu_sensor",
]


def open_gpu_sensor(spec: str, clock: Clock = SYSTEM_CLOCK) -> tuple[Sensor, str]:
    """The GPU sensor for a validated spec, and why it has no devices ("" if it has).

    ``auto`` uses NVML when it finds a GPU and never simulates; ``nvml`` insists on NVML
    (the reason says what failed); ``simulated[:options]`` and ``none`` are explicit.
    """
    name, _, options = spec.partition(":")
    if name == "simulated":
        from footprint.sensors.simulated import SimulatedGpuSpec, SimulatedSensor

        return SimulatedSensor(SimulatedGpuSpec.parse(options), clock=clock), ""
    if name == "none":
        return NullSensor("GPU measurement disabled (sensor=none)"), "sensor=none"
    from footprint.sensors.nvml import open_nvml

    sensor, reason = open_nvml()
    if sensor is None:
        return NullSensor(reason), reason
    return sensor, ""


def open_cpu_sensor() -> tuple[Sensor | None, str]:
    """RAPL package energy where readable, else None and the reason."""
    from footprint.sensors.rapl import open_rapl

    return open_rapl()
