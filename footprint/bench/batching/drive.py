"""The served requests through the real runtime, on a manual clock and GPUs that draw
exactly the engine's power: each step's energy spread over its time, idle power when no
step runs. The runtime reads them on one of the code paths users run (``counters``: the
simulated sensor, or the NVML sensor over a fake ``pynvml``). Each request is a
``footprint.query`` that starts at its arrival (what a client or proxy sees: queueing
included), marks its first token and ends with its token counts. The runtime is driven
as its sampler and writer threads would drive it (``Runtime.sample`` at the sampler's
cadence with a seeded 0-10 % jitter, ``Runtime.step`` every flush interval), under one
attribution rule: a ``Settings`` override. Its records are taken as the writer is handed them.
"""

from __future__ import annotations

import json
import random
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from footprint._clock import ManualClock
from footprint.attribution.weights import TokenWeights
from footprint.bench.batching.counters import Loadable, counters
from footprint.bench.batching.engine import Request, Served
from footprint.config import Settings
from footprint.demo.costs import StepCosts
from footprint.runtime.local import Runtime
from footprint.tracking import Tracker

ORIGIN_S = 1000.0  # monotonic time of the engine's time 0 on the simulated clock
WALL_ORIGIN_S = 1_767_225_600.0  # 2026-01-01T00:00:00Z
TAIL_S = 5.0  # after the last end, before the exit flush
REGION = "aws:us-east-1"


@dataclass(frozen=True)
class Rule:
    """An attribution rule the benchmark compares: a name and its settings."""

    name: str
    overrides: dict[str, Any]


RULES = (
    Rule("equal", {"attribution": "equal"}),  # equal split of each instant's busy energy
    Rule("tokens", {"attribution": "tokens"}),  # by token work, weights learned online
    # the default: by token work from the first call with counts; only full windows
    # wait for the weights, up to 240 s (then the last fit, or the step time, or split
    # equally, until they settle)
    Rule("auto", {"attribution": "auto"}),
)


@dataclass
class Driven:
    """What one rule made of one served run."""

    records: dict[int, dict[str, Any]]  # request id -> its record
    spans: int
    process_s: float  # CPU time of footprint's work: calls, sampling, resolving, writing
    cycles_process_s: float  # of which the writer's cycles: resolving, pricing, writing
    counter_j: float  # what the GPUs drew over the run, exactly (from ORIGIN_S)
    counted_s: float  # how long that run was
    # The token rule's weights per GPU at the end (F, α, β, γ; the last fit where none
    # was determined; None: not learned)
    weights: list[tuple[float, float, float, float] | None] = field(default_factory=list)


def _weights_in_use(weights: TokenWeights) -> tuple[float, float, float, float] | None:
    """The weights the token rule shares by: the determined fit, else the last one
    (what held windows get once they can wait no longer)."""
    return weights.theta if weights.theta is not None else weights.tentative


def load_gpus(gpus: list[Loadable], served: Served, costs: StepCosts, origin_s: float) -> None:
    """Make each GPU draw its share of the engine's power above idle, from ``origin_s``."""
    per_gpu_w = costs.gpus * (costs.cap_w - costs.idle_w)
    previous = 0.0
    for t_s, watts in served.power_steps:
        load = watts / per_gpu_w
        for gpu in gpus:
            gpu.add_step(origin_s + t_s, load - previous)
        previous = load


def _events(
    requests: list[Request], first_token: bool = True
) -> list[tuple[float, int, int, str, Request]]:
    """Each request's start, first token (unless not ``first_token``) and end, in order."""
    events = []
    for r in requests:
        events.append((r.arrival_s, 2, r.id, "start", r))
        if first_token:
            events.append((r.first_s, 1, r.id, "first", r))
        events.append((r.end_s, 0, r.id, "end", r))
    events.sort(key=lambda e: e[:3])
    return events


class _Driver:
    """Moves the clock, sampling and cycling when due (see ``conftest.ManualRun``)."""

    def __init__(self, runtime: Runtime, clock: ManualClock, seed: int) -> None:
        self.runtime, self.clock = runtime, clock
        self.rng = random.Random(seed)
        self.next_sample_s = clock.monotonic_s() + self._wait_s()
        self.cycle_s = runtime.settings.flush_interval_s
        self.next_cycle_s = clock.monotonic_s() + self.cycle_s
        self.cycles_s = 0.0  # CPU time spent in the runtime's cycles

    def _wait_s(self) -> float:
        return self.runtime.next_sample_wait_s() * self.rng.uniform(1.0, 1.1)

    def advance_to(self, t_s: float) -> None:
        clock, runtime = self.clock, self.runtime
        while True:
            due_s = min(self.next_sample_s, self.next_cycle_s)
            if due_s > t_s:
                break
            clock.advance(max(0.0, due_s - clock.monotonic_s()))
            if due_s == self.next_sample_s:
                runtime.sample()
                self.next_sample_s = clock.monotonic_s() + self._wait_s()
            if due_s == self.next_cycle_s:
                started = time.process_time()
                runtime.step()
                self.cycles_s += time.process_time() - started
                self.next_cycle_s += self.cycle_s
        clock.advance(max(0.0, t_s - clock.monotonic_s()))


def drive(
    served: Served,
    costs: StepCosts,
    rule: Rule,
    seed: int,
    path: str = "simulated",
    lead_s: float = 0.0,
    first_token: bool = True,
) -> Driven:
    """Run ``served`` through a fresh runtime under ``rule``, its GPUs read on ``path``
    (``counters.PATHS``), its first request ``lead_s`` after the runtime's first sample
    (idle until then); its records by request. Without ``first_token`` no request marks
    its first token (a call not streamed: only its token counts come back)."""
    clock = ManualClock(monotonic_s=ORIGIN_S, wall_s=WALL_ORIGIN_S)
    with (
        tempfile.TemporaryDirectory(prefix="footprint-batching-") as tmp,
        counters(path, costs, clock, seed) as gpus,
    ):
        # The first request arrives as the runtime takes its first sample (a fresh
        # process whose first footprint action is the call), or ``lead_s`` after it
        origin_s = ORIGIN_S + lead_s - min(r.arrival_s for r in served.requests)
        settings = replace(
            Settings(db=str(Path(tmp) / "batching.db"), cpu=False, region=REGION),
            **gpus.settings,
            **rule.overrides,
        )
        started = time.process_time()
        runtime = Runtime(settings, clock)
        tracker = Tracker(clock=clock)
        tracker.install(runtime)
        records: list[dict[str, Any]] = []
        runtime.on_records.append(lambda batch, _idle: records.extend(batch))
        setup_s = time.process_time() - started
        load_gpus(gpus.loads(runtime), served, costs, origin_s)
        process_s, cycles_s = _replay(
            runtime, tracker, clock, served, costs, origin_s, seed, first_token
        )
        weights = [_weights_in_use(resolver.weights) for resolver in runtime.resolvers]
        end_s = origin_s + served.end_s + TAIL_S
        counter_j = gpus.true_energy_j(runtime, ORIGIN_S, end_s)
    by_id = {json.loads(r["tags"])["request"]: r for r in records}
    return Driven(
        by_id,
        len(served.requests),
        process_s + setup_s,
        cycles_s,
        counter_j,
        end_s - ORIGIN_S,
        weights,
    )


def _replay(
    runtime: Runtime,
    tracker: Tracker,
    clock: ManualClock,
    served: Served,
    costs: StepCosts,
    origin_s: float,
    seed: int,
    first_token: bool = True,
) -> tuple[float, float]:
    """The requests' calls on the clock; returns the CPU time footprint's work took, and
    the part of it its cycles took (the exit flush included)."""
    cpu = time.process_time
    spent_s = 0.0
    t0 = cpu()
    runtime.sample()
    driver = _Driver(runtime, clock, seed)
    spent_s += cpu() - t0
    gpus = list(range(costs.gpus))
    handles: dict[int, Any] = {}
    for t_s, _, request_id, kind, request in _events(served.requests, first_token):
        t0 = cpu()
        driver.advance_to(origin_s + t_s)
        if kind == "start":
            handle = tracker.query(model=costs.model, gpus=gpus, request=request_id)
            handle.__enter__()
            handles[request_id] = handle
        elif kind == "first":
            handles[request_id].first_token()
        else:
            handle = handles.pop(request_id)
            if request.tells_tokens:
                handle.set_tokens(input=request.input_tokens, output=request.output_tokens)
            handle.__exit__(None, None, None)
        spent_s += cpu() - t0
    t0 = cpu()
    driver.advance_to(origin_s + served.end_s + TAIL_S)
    closing = cpu()
    tracker.close()
    done = cpu()
    return spent_s + done - t0, driver.cycles_s + done - closing
