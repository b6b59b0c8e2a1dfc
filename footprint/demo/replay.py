"""The scheduler's decisions run through the real runtime, on simulated clocks and GPUs.

One ``Runtime`` per replica window, whose simulated sensor is the replica's GPUs: what it
measures is exactly the GPUs the scheduler held, for as long as it held them. Every
engine step moves the simulated GPUs to that step's power (``Replica.power_steps``, the
cost model's step energy over its time; ``SimulatedGpu.add_step``), so the sampled
counters see what a batched server draws, prompts included, and footprint's attribution
splits it among the requests in the batch. The requests enter and
leave ``footprint.query`` at their simulated admission and end. The runtime is driven
only through its manual-clock API (``Runtime.sample``, ``next_sample_wait_s``, ``step``),
as its sampler and writer threads would drive it.
"""

from __future__ import annotations

import math
import os
import random
import sqlite3
from dataclasses import dataclass, replace
from typing import Any

from footprint import tracking
from footprint._clock import ManualClock
from footprint.config import Settings
from footprint.demo.models import GPU_IDLE_W, GPU_NAME, GPU_TDP_W
from footprint.demo.scheduler import Replica
from footprint.demo.workload import DEMO_EPOCH, Request
from footprint.runtime.local import Runtime
from footprint.sensors.simulated import SimulatedSensor
from footprint.storage.store import normalize_db_url

DEMO_SENSOR = (
    "simulated:gpus={gpus},idle_w={idle:g},busy_w={tdp:g},noise=0.02,seed={seed},"
    "workload=manual,name={name}"
)
DEMO_REGION = "aws:us-east-1"
DEMO_HOST = "demo-hgx-node"  # the simulated HGX node's host name, whatever machine runs it
DEMO_TAG = '"demo": true'  # in the tags of every query the demo records (``demo=True``)
CLOCK_ORIGIN_S = 1000.0  # monotonic time of the epoch on the simulated clocks

POLL_S = 0.05  # sampler period while any request runs (the real default)
IDLE_POLL_S = 10.0  # while nothing runs (idle is linear; the resolver learns idle power here)
CYCLE_S = 60.0  # how often the resolver/writer cycle runs, in simulated seconds


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
        foreign = _foreign_queries(path)
        if foreign:
            raise ValueError(f"{path} holds {foreign} non-demo queries; give the demo another --db")
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(path + suffix):
                os.remove(path + suffix)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    return path


def _foreign_queries(path: str) -> int:
    """How many queries of the SQLite file at ``path`` the demo did not record."""
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
        return 0
    return foreign


def demo_settings(path: str) -> Settings:
    """The runtime settings of every window (its sensor is set per replica). No CPU
    sampler: ``Runtime.sample`` then reads the simulated GPUs alone. The token rule
    (``attribution="tokens"``, which holds the first windows for the weights where the
    default ``auto`` splits them equally): every demo request reports its tokens and
    first token, and its records' wait costs nothing here."""
    return Settings(
        db=path,
        sensor="none",
        region=DEMO_REGION,
        cpu=False,
        sampling_period_s=POLL_S,
        flush_interval_s=CYCLE_S,
        attribution="tokens",
    )


@dataclass(frozen=True)
class _Event:
    """A request's admission (``start``), first token or end, in replay order."""

    t_s: float
    order: int  # at the same instant: ends first, then first tokens, then starts
    request_id: int
    kind: str
    request: Request


def _events(replica: Replica) -> list[_Event]:
    events = []
    for r in replica.requests:
        events.append(_Event(r.admit_s, 2, r.id, "start", r))
        if r.first_s is not None:
            events.append(_Event(r.first_s, 1, r.id, "first", r))
        events.append(_Event(r.end_s, 0, r.id, "end", r))
    events.sort(key=lambda e: (e.t_s, e.order, e.request_id))
    return events


class Replay:
    """Runs each replica's held window through the real runtime on a simulated clock."""

    def __init__(self, settings: Settings, seed: int) -> None:
        self.settings = settings
        self.seed = seed
        self.devices: dict[str, str] = {}  # GPU UUID -> model

    def run(self, replica: Replica) -> None:
        """One replica's window, from provisioning to release; its runtime shut down."""
        model = replica.model
        clock = ManualClock(
            monotonic_s=CLOCK_ORIGIN_S + replica.start_s,
            wall_s=DEMO_EPOCH.timestamp() + replica.start_s,
        )
        runtime = self._open_runtime(replica, clock)
        rng = random.Random(self.seed * 7919 + replica.slot * 104729 + int(replica.start_s))
        window = _Window(runtime, clock, rng)
        runtime.sample()
        handles: dict[int, Any] = {}
        gpus = list(range(model.gpus_per_replica))
        for event in _events(replica):
            window.advance_to(CLOCK_ORIGIN_S + event.t_s)
            request = event.request
            if event.kind == "start":
                handle = tracking.query(
                    model=model.name, gpus=gpus, demo=True, replica=replica.slot, team=request.team
                )
                handle.__enter__()
                handles[request.id] = handle
                window.running += 1
            elif event.kind == "first":
                handles[request.id].first_token()
            else:
                window.running -= 1
                window.last_busy_s = clock.monotonic_s()
                _end(handles.pop(request.id), request)
        window.advance_to(CLOCK_ORIGIN_S + replica.end_s)
        tracking.shutdown()  # the GPUs go back: last samples, cycle and write

    def _open_runtime(self, replica: Replica, clock: ManualClock) -> Runtime:
        """The window's runtime, installed, its simulated GPUs loaded as the batch was."""
        model = replica.model
        sensor_spec = DEMO_SENSOR.format(
            gpus=model.gpus_per_replica,
            idle=GPU_IDLE_W,
            tdp=GPU_TDP_W,
            seed=self.seed * 100 + replica.slot,
            name=GPU_NAME,
        )
        runtime = _NodeRuntime(replace(self.settings, sensor=sensor_spec), clock)
        if runtime.store is None:
            raise RuntimeError(f"cannot open the demo database {self.settings.db}")
        sensor = runtime.gpu_sensor
        assert isinstance(sensor, SimulatedSensor)
        tracking.install_runtime(runtime)
        for device in sensor.devices:
            self.devices[device.uuid] = model.name
        per_gpu_w = model.gpus_per_replica * (GPU_TDP_W - GPU_IDLE_W)
        previous = 0.0
        for t, above_idle_w in replica.power_steps:
            load = above_idle_w / per_gpu_w  # 0..1: each step draws within idle..cap
            for gpu in sensor.gpus:
                gpu.add_step(CLOCK_ORIGIN_S + t, load - previous)
            previous = load
        return runtime


class _NodeRuntime(Runtime):
    """A runtime on the simulated node: its records and idle rows name ``DEMO_HOST``, not
    the machine running the demo, so the same seed gives the same database anywhere."""

    @property
    def host(self) -> str:
        return DEMO_HOST

    @host.setter
    def host(self, _name: str) -> None:
        """The runtime sets the machine's name on start: the node keeps its own."""


def _end(handle: Any, request: Request) -> None:
    """Close a request's ``footprint.query``: its tokens, or the client's timeout."""
    if request.fails:
        error = TimeoutError("simulated client timeout")
        handle.__exit__(TimeoutError, error, None)
    else:
        handle.set_tokens(input=request.input_tokens, output=request.output_tokens)
        handle.__exit__(None, None, None)


class _Window:
    """Moves one runtime's clock forward, sampling and stepping as its threads would."""

    def __init__(self, runtime: Runtime, clock: ManualClock, rng: random.Random) -> None:
        self.runtime = runtime
        self.clock = clock
        self.rng = rng
        self.running = 0
        self.last_busy_s = -math.inf
        self.next_cycle_s = clock.monotonic_s() + CYCLE_S

    def advance_to(self, target: float) -> None:
        clock, runtime = self.clock, self.runtime
        while clock.monotonic_s() < target:
            now = clock.monotonic_s()
            busy = self.running > 0 or now - self.last_busy_s < 1.0
            step = (
                runtime.next_sample_wait_s() * self.rng.uniform(1.0, 1.1) if busy else IDLE_POLL_S
            )
            clock.advance(min(step, target - now))
            runtime.sample()
            if clock.monotonic_s() >= self.next_cycle_s:
                runtime.step()  # what is complete by now, less the announce margin
                self.next_cycle_s = clock.monotonic_s() + CYCLE_S
