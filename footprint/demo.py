"""``footprint demo``: a week of multi-model inference on simulated GPUs, then the report.

Everything goes through the real ``footprint.query`` API, sampler, resolver, pricing and
SQLite store; only the GPUs and the passing of time are simulated (and say so:
``energy_source="simulated"``). Time comes from a ``ManualClock`` starting at a fixed
epoch, so a week of traffic runs in seconds and the same seed gives the same database
rows and the same report, byte for byte, on any machine.

The workload: three models of different sizes sharing two GPUs (a small LLM on GPU 0, a
mixture-of-experts LLM across both, a speech model on GPU 1), bursts of concurrent
requests whose rate follows the hour of day and the day of the week, streaming outputs
(time to first token recorded) and a few failed requests.
"""

from __future__ import annotations

import heapq
import math
import os
import random
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from footprint import tracking
from footprint._clock import ManualClock
from footprint._runtime import ANNOUNCE_MARGIN_S, Runtime
from footprint.config import Settings
from footprint.sensors.simulated import SimulatedSensor
from footprint.storage.store import normalize_db_url


@dataclass(frozen=True)
class DemoModel:
    """A model of the demo: its GPUs, the load one request puts on them, its speed."""

    name: str
    gpus: tuple[int, ...]
    load: float  # share of a GPU's dynamic power one request draws (batching: < 1)
    prefill_s_per_token: float
    decode_s_per_token: float
    input_tokens: tuple[int, int]
    output_tokens: tuple[int, int]
    weight: float  # share of the traffic


MODELS = (
    DemoModel("llama-3-8b", (0,), 0.45, 0.00012, 0.022, (40, 1500), (20, 350), 0.55),
    DemoModel("mixtral-8x7b", (0, 1), 0.85, 0.00035, 0.041, (100, 3000), (40, 500), 0.25),
    DemoModel("whisper-large-v3", (1,), 0.6, 0.0011, 0.004, (250, 1500), (20, 260), 0.20),
)

DEMO_SENSOR = (
    "simulated:gpus=2,idle_w=70,busy_w=700,noise=0.02,seed={seed},workload=manual,"
    "name=NVIDIA H100 80GB HBM3"
)
DEMO_REGION = "aws:us-east-1"
# Monday 2 March 2026, 00:00 UTC: the simulated week starts here, whatever today is.
DEMO_EPOCH = datetime(2026, 3, 2, tzinfo=timezone.utc)
DEMO_DAYS = 7
DEMO_TAG = '"demo": true'

POLL_S = 0.05  # sampler period while any request runs (the real default)
IDLE_POLL_S = 60.0  # while nothing runs, one read a minute is enough (idle is linear)
CYCLE_S = 60.0  # how often the resolver/writer cycle runs, in simulated seconds
KEEP_WARM_S = 120.0  # GPUs are released after two minutes without traffic
COLD_START_S = 20.0  # and provisioned this long before the request that needs them
ERROR_RATE = 0.015

# Relative request rate by UTC hour (a US-centred service) and by weekday (Mon..Sun).
HOURLY = (
    0.35, 0.3, 0.25, 0.2, 0.2, 0.25, 0.35, 0.5, 0.7, 0.85, 0.95, 1.0,
    1.0, 1.0, 1.0, 1.0, 0.95, 0.9, 0.85, 0.8, 0.7, 0.6, 0.5, 0.4,
)  # fmt: skip
WEEKDAY = (1.0, 1.05, 1.1, 1.05, 0.95, 0.55, 0.45)


@dataclass
class _Request:
    model: DemoModel
    arrival_s: float  # offset from the epoch, simulated seconds
    input_tokens: int
    output_tokens: int
    fails: bool

    @property
    def prefill_s(self) -> float:
        return 0.05 + self.input_tokens * self.model.prefill_s_per_token

    @property
    def duration_s(self) -> float:
        return self.prefill_s + self.output_tokens * self.model.decode_s_per_token


def plan_workload(queries: int, seed: int, days: int = DEMO_DAYS) -> list[_Request]:
    """The requests of the simulated period, by arrival time (deterministic per seed)."""
    rng = random.Random(seed)
    slots = [(d, h) for d in range(days) for h in range(24)]
    weights = [WEEKDAY[d % 7] * HOURLY[h] for d, h in slots]
    models = list(MODELS)
    requests: list[_Request] = []
    while len(requests) < queries:
        day, hour = rng.choices(slots, weights)[0]
        t = day * 86400.0 + hour * 3600.0 + rng.uniform(0, 3600.0)
        # A burst: several users at once, so requests overlap on the shared GPUs.
        for _ in range(min(queries - len(requests), 1 + int(rng.expovariate(1 / 2.5)))):
            model = rng.choices(models, [m.weight for m in models])[0]
            requests.append(
                _Request(
                    model=model,
                    arrival_s=t,
                    input_tokens=_tokens(rng, model.input_tokens),
                    output_tokens=_tokens(rng, model.output_tokens),
                    fails=rng.random() < ERROR_RATE,
                )
            )
            t += rng.expovariate(1 / 1.5)
    requests.sort(key=lambda r: r.arrival_s)
    # Keep the whole workload inside the period: a late burst is pulled back.
    limit = days * 86400.0 - 120.0
    for r in requests:
        r.arrival_s = min(r.arrival_s, limit)
    return requests


def _tokens(rng: random.Random, bounds: tuple[int, int]) -> int:
    """Log-uniform between the bounds: many short requests, some long ones."""
    low, high = bounds
    return int(round(math.exp(rng.uniform(math.log(low), math.log(high)))))


def prepare_db(db: str) -> str:
    """The SQLite path for the demo; an earlier demo database there is replaced.

    Refuses (ValueError) a file that holds anything but demo rows, so the demo never
    destroys real measurements.
    """
    url = normalize_db_url(db)
    if not url.startswith("sqlite:///"):
        raise ValueError("the demo writes a SQLite file: give a path or sqlite:///path")
    path = url.removeprefix("sqlite:///")
    if path in ("", ":memory:"):
        raise ValueError("the demo needs a database file, not an in-memory database")
    if os.path.exists(path):
        try:
            con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                (foreign,) = con.execute(
                    "SELECT COUNT(*) FROM queries WHERE tags NOT LIKE ?", (f"%{DEMO_TAG}%",)
                ).fetchone()
            finally:
                con.close()
        except sqlite3.Error as exc:
            if "no such table" not in str(exc):
                raise ValueError(f"{path} exists and is not a footprint database") from None
            foreign = 0
        if foreign:
            raise ValueError(f"{path} holds {foreign} non-demo queries; give the demo another --db")
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(path + suffix):
                os.remove(path + suffix)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    return path


def run_demo(
    db: str,
    queries: int = 1200,
    seed: int = 1,
    concurrency: int = 8,
    days: int = DEMO_DAYS,
) -> dict[str, Any]:
    """Simulate the workload into a fresh database and summarise what it wrote.

    ``concurrency`` caps how many requests run at once (later ones queue, as behind a
    server's admission limit).
    """
    if queries < 1:
        raise ValueError("queries must be at least 1")
    if days < 1:
        raise ValueError("days must be at least 1")
    path = prepare_db(db)
    requests = plan_workload(queries, seed, days)
    clock = ManualClock(monotonic_s=1000.0, wall_s=DEMO_EPOCH.timestamp())
    settings = Settings(
        db=path,
        sensor=DEMO_SENSOR.format(seed=seed),
        region=DEMO_REGION,
        cpu=False,
        sampling_period_s=POLL_S,
        flush_interval_s=CYCLE_S,
    )
    simulation = _Simulation(settings, clock, seed, concurrency)
    try:
        simulation.run(requests)
    finally:
        tracking.shutdown()  # final sample, cycle and write through the real runtime
    summary = summarize(path, simulation.host, simulation.pid)
    summary["db"] = db
    summary["period"] = {"since": DEMO_EPOCH.isoformat(), "days": days}
    summary["warm_windows"] = simulation.windows
    return summary


class _Simulation:
    """Discrete-event loop over simulated time: arrivals, first tokens, ends.

    The GPUs are provisioned while there is traffic and released after
    ``KEEP_WARM_S`` without any (scale to zero, as serverless GPU platforms do): each
    warm window is one runtime, from its first sample to its final flush, so the idle
    energy in the records is that of GPUs that were really held.
    """

    def __init__(self, settings: Settings, clock: ManualClock, seed: int, concurrency: int):
        self.settings = settings
        self.clock = clock
        self.rng = random.Random(seed * 7919 + 17)
        self.concurrency = concurrency
        self.runtime: Runtime | None = None
        self.sensor: SimulatedSensor | None = None
        self.host = ""
        self.pid = 0
        self.windows = 0
        self.running = 0
        self.waiting: list[_Request] = []
        self.events: list[tuple[float, int, str, Any]] = []
        self._seq = 0
        self.last_busy_s = clock.monotonic_s()
        self.next_cycle_s = 0.0

    # -- warm windows ----------------------------------------------------------------
    def _provision(self) -> None:
        runtime = Runtime(self.settings, self.clock)
        if runtime.store is None:
            raise RuntimeError(f"cannot open the demo database {self.settings.db}")
        sensor = runtime.gpu_sensor
        assert isinstance(sensor, SimulatedSensor)
        _install(runtime)
        self.runtime, self.sensor = runtime, sensor
        self.host, self.pid = runtime.host, runtime.pid
        self.windows += 1
        runtime.gpu_sampler.sample_once()
        self.next_cycle_s = self.clock.monotonic_s() + CYCLE_S

    def _release(self) -> None:
        tracking.shutdown()
        self.runtime = self.sensor = None

    # -- events ----------------------------------------------------------------------
    def _push(self, t: float, kind: str, payload: Any) -> None:
        heapq.heappush(self.events, (t, self._seq, kind, payload))
        self._seq += 1

    def _start(self, request: _Request) -> None:
        assert self.sensor is not None
        self.running += 1
        now = self.clock.monotonic_s()
        model = request.model
        handle = tracking.query(model=model.name, gpus=list(model.gpus), demo=True)
        handle.__enter__()
        duration = request.duration_s
        if request.fails:  # fails part-way: a timeout after some of the work
            duration *= self.rng.uniform(0.2, 0.8)
        for gpu in model.gpus:
            self.sensor.gpus[gpu].add_load(now, now + duration, model.load)
        if request.prefill_s < duration:
            self._push(now + request.prefill_s, "first", handle)
        self._push(now + duration, "end", (request, handle))

    def _end(self, request: _Request, handle: Any) -> None:
        self.running -= 1
        self.last_busy_s = self.clock.monotonic_s()
        if request.fails:
            error = TimeoutError("simulated upstream timeout")
            handle.__exit__(TimeoutError, error, None)
        else:
            handle.set_tokens(input=request.input_tokens, output=request.output_tokens)
            handle.__exit__(None, None, None)
        if self.waiting:
            self._start(self.waiting.pop(0))

    def _advance_to(self, target: float) -> None:
        """Move the clock to ``target``, sampling (and cycling) as the runtime would."""
        clock = self.clock
        while clock.monotonic_s() < target:
            now = clock.monotonic_s()
            busy = self.running > 0 or now - self.last_busy_s < 1.0
            assert self.runtime is not None
            sampler = self.runtime.gpu_sampler
            step = sampler.next_wait_s() * self.rng.uniform(1.0, 1.1) if busy else IDLE_POLL_S
            clock.advance(min(step, target - now))
            sampler.sample_once()
            if clock.monotonic_s() >= self.next_cycle_s:
                self.runtime.cycle(until_s=clock.monotonic_s() - ANNOUNCE_MARGIN_S)
                self.next_cycle_s = clock.monotonic_s() + CYCLE_S

    def run(self, requests: list[_Request]) -> None:
        origin = self.clock.monotonic_s()
        for request in requests:
            self._push(origin + request.arrival_s, "arrive", request)
        while self.events:
            target = self.events[0][0]
            idle = self.runtime is not None and self.running == 0 and not self.waiting
            if idle and target - self.clock.monotonic_s() > KEEP_WARM_S + COLD_START_S:
                self._advance_to(self.clock.monotonic_s() + KEEP_WARM_S)
                self._release()
            if self.runtime is None:
                self.clock.advance(max(0.0, target - COLD_START_S - self.clock.monotonic_s()))
                self._provision()
            self._advance_to(target)
            _, _, kind, payload = heapq.heappop(self.events)
            if kind == "arrive":
                if self.running < self.concurrency:
                    self._start(payload)
                else:
                    self.waiting.append(payload)
            elif kind == "first":
                payload.first_token()
            else:
                self._end(*payload)
        # Keep warm a little after the last request, then release the GPUs.
        if self.runtime is not None:
            self._advance_to(self.clock.monotonic_s() + 2.0)


def _install(runtime: Runtime) -> None:
    """Make ``runtime`` the one ``footprint.query`` uses, without its background threads.

    The runtime's sampler and writer threads wait in real time; on a simulated clock the
    demo drives them itself (``sample_once`` and ``cycle``) so every sample lands at a
    reproducible simulated instant.
    """
    tracking.install_runtime(runtime)


def summarize(db: str, host: str, pid: int) -> dict[str, Any]:
    """Totals and per-model figures of the rows one process wrote."""
    path = normalize_db_url(db).removeprefix("sqlite:///")
    con = sqlite3.connect(Path(path))
    try:
        measured_j, idle_j, lost_j = con.execute(
            "SELECT COALESCE(SUM(measured_energy_j), 0), COALESCE(SUM(idle_energy_j), 0), "
            "COALESCE(SUM(lost_energy_j), 0) FROM idle_energy WHERE host = ? AND pid = ?",
            (host, pid),
        ).fetchone()
        models = {}
        for name, n, errors, energy_j, gpu_s, tokens_in, tokens_out in con.execute(
            "SELECT model, COUNT(*), SUM(status != 'ok'), COALESCE(SUM(energy_j), 0), "
            "COALESCE(SUM(gpu_seconds), 0), COALESCE(SUM(input_tokens), 0), "
            "COALESCE(SUM(output_tokens), 0) FROM queries WHERE host = ? AND pid = ? "
            "GROUP BY model ORDER BY model",
            (host, pid),
        ):
            models[name] = {
                "queries": n,
                "errors": errors,
                "energy_j": energy_j,
                "gpu_seconds": gpu_s,
                "input_tokens": tokens_in,
                "output_tokens": tokens_out,
                "j_per_output_token": energy_j / tokens_out if tokens_out else None,
            }
    finally:
        con.close()
    attributed_j = sum(m["energy_j"] for m in models.values())
    return {
        "db": db,
        "queries": sum(m["queries"] for m in models.values()),
        "measured_energy_j": measured_j,
        "attributed_energy_j": attributed_j,
        "idle_energy_j": idle_j,
        "lost_energy_j": lost_j,
        "conservation_error_j": measured_j - attributed_j - idle_j - lost_j,
        "energy_source": "simulated",
        "models": models,
    }
