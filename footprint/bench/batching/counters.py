"""The GPUs the runtime reads while the engine's steps load them, on one of the code
paths users run (the names of ``footprint bench accuracy``'s paths):

- ``simulated``: the simulated sensor (``workload=manual``), its counter exact;
- ``nvml``: footprint's real ``NvmlSensor`` over a fake ``pynvml`` (installed as
  ``sys.modules["pynvml"]`` for the run) whose counter reports whole mJ and changes every
  100 ms, its tick phase not announced;
- ``nvml-part-time``: the same counter observing only 25 ms of each 100 ms and scaling
  it up, as A100/H100 counters do (Yang et al., SC'24); footprint is told the window.

Both draw the same power: idle, plus the engine's power above idle, exactly.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from footprint._clock import ManualClock
from footprint.bench.accuracy_scenarios import PART_TIME_WINDOW_S, PATHS, UPDATE_PERIOD_S
from footprint.bench.fake_pynvml import FakeClock, FakeGpu, fake_uuids, make_fake_pynvml
from footprint.demo.costs import StepCosts
from footprint.demo.models import GPU_NAME
from footprint.runtime.local import Runtime
from footprint.sensors.simulated import LoadModel, SimulatedSensor

__all__ = ["PATHS", "Counters", "Loadable", "counters"]

SIMULATED = (
    "simulated:gpus={gpus},idle_w={idle:g},busy_w={cap:g},noise=0,seed={seed},"
    "workload=manual,name={name}"
)


class Loadable(Protocol):
    """A GPU's load: steps of it in time, and its exact energy (J) between two times."""

    def add_step(self, t_s: float, delta: float) -> None: ...


@dataclass
class Counters:
    """The settings that make the runtime read these GPUs, and the GPUs' load models
    (``loads``: once the runtime opened its sensors)."""

    path: str
    settings: dict[str, Any]
    _fake_loads: list[LoadModel] | None = None

    def loads(self, runtime: Runtime) -> list[Loadable]:
        """Each GPU's load, by index."""
        if self._fake_loads is not None:
            return list(self._fake_loads)
        sensor = runtime.gpu_sensor
        assert isinstance(sensor, SimulatedSensor)
        return list(sensor.gpus)

    def true_energy_j(self, runtime: Runtime, t0_s: float, t1_s: float) -> float:
        """What the GPUs drew from ``t0_s`` to ``t1_s``, exactly (J)."""
        if self._fake_loads is not None:
            return sum(load.energy_j(t0_s, t1_s) for load in self._fake_loads)
        sensor = runtime.gpu_sensor
        assert isinstance(sensor, SimulatedSensor)
        return sum(gpu.true_energy_j(t0_s, t1_s) for gpu in sensor.gpus)


class _RunClock(FakeClock):
    """The fake GPUs' clock: the runtime's manual one."""

    def __init__(self, clock: ManualClock) -> None:
        self._clock = clock

    def now_s(self) -> float:
        return self._clock.monotonic_s()

    def advance(self, dt_s: float) -> None:
        raise TypeError("the run's manual clock moves the fake GPUs")


@contextmanager
def counters(path: str, costs: StepCosts, clock: ManualClock, seed: int) -> Iterator[Counters]:
    """The GPUs of ``path`` for a run on ``clock``; a fake ``pynvml`` is installed for
    the run and the module imported before is put back after it."""
    if path not in PATHS:
        raise ValueError(f"unknown path {path!r}; known: {', '.join(PATHS)}")
    if path == "simulated":
        spec = SIMULATED.format(
            gpus=costs.gpus, idle=costs.idle_w, cap=costs.cap_w, seed=seed, name=GPU_NAME
        )
        yield Counters(path, {"sensor": spec})
        return
    part_time = path == "nvml-part-time"
    rng = random.Random(seed)
    loads = [LoadModel(costs.idle_w, costs.cap_w) for _ in range(costs.gpus)]
    gpus = [
        FakeGpu(
            uuid,
            name=GPU_NAME,
            loads=load,
            counter_update_period_s=UPDATE_PERIOD_S,
            counter_window_s=PART_TIME_WINDOW_S if part_time else None,
            counter_phase_s=rng.uniform(0.0, UPDATE_PERIOD_S),
            power_limit_w=costs.cap_w,
        )
        for uuid, load in zip(fake_uuids(costs.gpus, seed), loads, strict=True)
    ]
    module = make_fake_pynvml(gpus, clock=_RunClock(clock))
    settings: dict[str, Any] = {"sensor": "nvml"}
    if part_time:
        settings["counter_window_s"] = PART_TIME_WINDOW_S
    missing = object()
    before = sys.modules.get("pynvml", missing)
    sys.modules["pynvml"] = module
    try:
        yield Counters(path, settings, loads)
    finally:
        if before is missing:
            sys.modules.pop("pynvml", None)
        else:
            sys.modules["pynvml"] = before  # type: ignore[assignment]
