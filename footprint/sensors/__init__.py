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
    "open_gpu_backends",
    "open_gpu_sensor",
]


def open_gpu_sensor(spec: str, clock: Clock = SYSTEM_CLOCK) -> tuple[Sensor, str]:
    """The GPU sensor for a validated spec, and why it has no devices ("" if it has).

    ``auto`` uses NVML when it finds an NVIDIA GPU, else amdsmi when it finds an AMD GPU,
    and never simulates; ``nvml`` and ``amd`` insist on one library (the reason says what
    failed); ``simulated[:options]`` and ``none`` are explicit.
    """
    name, _, options = spec.partition(":")
    if name == "simulated":
        from footprint.sensors.simulated import SimulatedGpuSpec, SimulatedSensor

        return SimulatedSensor(SimulatedGpuSpec.parse(options), clock=clock), ""
    if name == "none":
        return NullSensor("GPU measurement disabled (sensor=none)"), "sensor=none"
    reasons = []
    for vendor, sensor, reason in open_gpu_backends(name, first_only=True):
        if sensor is not None:
            return sensor, ""
        reasons.append(reason if name != "auto" else f"{vendor}: {reason}")
    reason = "; ".join(reasons)
    return NullSensor(reason), reason


def open_gpu_backends(name: str, first_only: bool = False) -> list[tuple[str, Sensor | None, str]]:
    """(vendor, sensor or None, why none) for each GPU library ``name`` uses, in ``auto``'s
    order (NVML, then amdsmi); with ``first_only``, stop at the first that found a GPU."""
    opened: list[tuple[str, Sensor | None, str]] = []
    if name in ("auto", "nvml"):
        from footprint.sensors.nvml import open_nvml

        nvml_sensor, reason = open_nvml()
        opened.append(("NVIDIA", nvml_sensor, reason))
        if nvml_sensor is not None and first_only:
            return opened
    if name in ("auto", "amd"):
        from footprint.sensors.amd import open_amd

        amd_sensor, reason = open_amd()
        opened.append(("AMD", amd_sensor, reason))
    return opened


def open_cpu_sensor() -> tuple[Sensor | None, str]:
    """RAPL package energy where readable, else None and the reason."""
    from footprint.sensors.rapl import open_rapl

    return open_rapl()
