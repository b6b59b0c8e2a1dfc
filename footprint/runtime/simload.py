"""Simulated GPUs loaded by the tracked calls (``simulated:workload=spans``).

The hot path tells the simulator when each call starts and ends on which GPUs. Only a
runtime whose sensor is simulated this way installs it: real GPUs' hot path never
goes through here. Calls made before the sensor is open are replayed to it once it is.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from footprint.runtime.spans import SpanQueue

# The daemon's simulated GPUs publish each tick this long after it (``lag_s``): clients
# send their calls' starts every 20 ms, but a busy client or daemon can take far longer
# (with 0.25 s, 5-9 % of the energy landed in later calls in the bench), and a load
# registered for a tick already read is carried into later ticks instead of its own.
DAEMON_SIMULATED_LAG_S = 1.0


def drives_simulator(sensor_spec: str) -> bool:
    """Whether the GPUs are simulated and loaded by the tracked calls (workload=spans)."""
    name, _, options = sensor_spec.partition(":")
    if name != "simulated":
        return False
    from footprint.sensors.simulated import SimulatedGpuSpec

    return SimulatedGpuSpec.parse(options).workload == "spans"


def with_daemon_lag(sensor_spec: str) -> str:
    """The daemon's sensor spec: spans reach the daemon after they start, so simulated
    ticks are published late enough for their loads to be known (the sampler stamps them
    back), unless the spec sets its own ``lag_s``."""
    if "lag_s=" in sensor_spec:
        return sensor_spec
    return sensor_spec + ("," if ":" in sensor_spec else ":") + f"lag_s={DAEMON_SIMULATED_LAG_S}"


class SimulatedLoad:
    """Each call's load on the simulated GPUs it runs on, from its start to its end."""

    def __init__(self, queue: SpanQueue) -> None:
        self._queue = queue
        self._early: list[tuple[bool, tuple | None, float]] | None = []
        self._lock = threading.Lock()
        self._slots: dict[tuple | None, tuple[int, ...]] = {}
        self._sensor: Any = None
        self._lookup: Callable[[tuple | None], tuple[tuple[int, ...], list]] | None = None

    def begin_call(self, gpus: tuple | None) -> tuple[int, float]:
        """``SpanQueue.begin``, and the simulated GPUs of the call take its load from
        its start."""
        span_id, start_s = SpanQueue.begin(self._queue, gpus)
        self.begin(gpus, start_s)
        return span_id, start_s

    def end_call(self, *span: Any) -> float:
        """``SpanQueue.end`` (same arguments), and the call's load leaves its GPUs."""
        end_s = SpanQueue.end(self._queue, *span)
        self.end(span[9], end_s)  # its gpus (the trace context may follow)
        return end_s

    def attach(
        self, sensor: Any, lookup: Callable[[tuple | None], tuple[tuple[int, ...], list]]
    ) -> None:
        """The sensor is open: load it from now on (``lookup`` gives a call's GPU slots),
        after the loads of the calls made so far."""
        self._sensor = sensor
        self._lookup = lookup
        with self._lock:
            early, self._early = self._early or [], None
            for begins, gpus, t_s in early:  # load steps are absolute: order is free
                (self.begin if begins else self.end)(gpus, t_s)

    def begin(self, gpus: tuple | None, t_s: float) -> None:
        """A call started at ``t_s``: load the simulated GPUs it runs on."""
        if self._early is not None:
            with self._lock:
                if self._early is not None:  # the sensor is not open yet
                    self._early.append((True, gpus, t_s))
                    return
        slots = self._slots.get(gpus)
        if slots is None:
            assert self._lookup is not None
            slots = self._slots[gpus] = self._lookup(gpus)[0]
        self._sensor.begin_load(slots, t_s)

    def end(self, gpus: tuple | None, t_s: float) -> None:
        """A call ended at ``t_s``: its load leaves its simulated GPUs."""
        if self._early is not None:
            with self._lock:
                if self._early is not None:
                    self._early.append((False, gpus, t_s))
                    return
        self._sensor.end_load(self._slots[gpus], t_s)
