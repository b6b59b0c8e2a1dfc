"""``footprint demo``: a week of LLM serving on simulated H100s, then the report.

Everything goes through the real ``footprint.query`` API, sampler, resolver, pricing and
SQLite store; only the GPUs and the passing of time are simulated (and say so:
``energy_source="simulated"``). Time comes from ``ManualClock``s starting at a fixed
epoch, so a week of traffic runs in seconds and the same seed gives the same database
rows and the same report, byte for byte, on any machine.

What is simulated is what serving looks like:

* **Models and GPUs.** Llama 3.1 8B on one H100 per replica and Llama 3.1 70B on four
  (tensor parallel), served by a vLLM-like engine: the configurations the ML.ENERGY
  benchmark measured (below). The scheduler has a pool of H100 80GB GPUs (``gpus``,
  8 by default: one HGX node).
* **Continuous batching.** Each replica runs one batch whose membership changes at every
  arrival and completion: a request joins the running batch when admitted (up to the
  engine's ``max_num_seqs``; later ones queue), is prefilled in one engine step (in
  chunks of ``PREFILL_CHUNK_TOKENS``), then gets one output token per step until it
  ends. Step time and GPU power follow the batch size, from published measurements:
  with ``B`` requests in the batch a replica produces ``T(B)`` output tokens/s in all
  (``T(B)/B`` for each request) and draws ``P(B)`` watts. Every membership change moves
  the simulated GPUs to ``P(B)`` (``SimulatedGpu.add_step``), so the sampled counters
  see what a batched server draws, and footprint's attribution splits it among the
  requests in the batch.
* **A scheduler that holds and releases GPUs.** A model's first queued request starts a
  replica (a cold start: its GPUs are held, at idle power, while the weights load);
  another one starts while the queue would take the running replicas longer than a
  cold start to serve (one cold start at a time, if the pool has free GPUs; idle
  replicas of another model give theirs back); a replica idle for ``KEEP_WARM_S`` is
  released. Requests go to the least-loaded replica with room. Only held GPUs are
  measured: each replica's held window is one ``Runtime`` whose simulated sensor is that
  replica's GPUs, from provisioning to release. The summary gives each model's held and
  busy GPU-hours.
* **Traffic.** Requests come in bursts (a product's peak, a batch job, an agent fan-out:
  hundreds to thousands of requests within minutes), a few a day: their start follows
  the hour of the day, their size the day of the week. A burst's arrival rate ramps up
  over two cold starts to 0.8-2.5 times what one replica serves at its batch limit, so
  queues, and with them replicas, rise and fall. Prompt and response lengths are
  log-uniform, with means near the ML.ENERGY chat workload's (242 input and 677 output
  tokens). 1.5 % of the requests fail part-way (a client timeout) and leave the batch.

Figures and where they come from (the demo's own choices are marked *assumption*):

* ``T(B)`` and ``P(B)``: The ML.ENERGY Benchmark v3.0 (vLLM 0.11.1, December 2025),
  Llama 3.1 8B on 1x H100 and 70B on 4x H100, read off the figures "Token throughput vs.
  batch size" and "Average GPU power vs. batch size" of J.-W. Chung, "LLM Inference
  Energy: A Longitudinal Analysis", ML.ENERGY blog, 2026-02-09,
  https://ml.energy/blog/measurement/energy/llm-inference-energy-a-longitudinal-analysis
  (the figures' data: github.com/ml-energy/blog, docs/posts/assets/llm-energy-over-time/).
  Their ratio is the post's energy per output token, e.g. 8B at batch 64: 610 W /
  5147 tokens/s = 0.12 J (0.20 J with vLLM 0.5.4 in v2.0). Method: J.-W. Chung et al.,
  "The ML.ENERGY Benchmark", NeurIPS 2025 Datasets and Benchmarks, arXiv:2505.06371.
  Below the smallest measured batch (16) throughput scales with the batch and power is
  interpolated linearly to idle (*assumption*: no measurement there).
* Batch limits (``max_num_seqs``): 128 for 8B (18 ms per step, 55 tokens/s per request)
  and 384 for 70B (72 ms per step): inside the 50 and 100 ms median inter-token latency
  constraints ML.ENERGY v3.0 compares configurations at (J.-W. Chung, "Reading the
  ML.ENERGY Leaderboard v3.0", ML.ENERGY blog, 2026-01-13).
* Request lengths: ML.ENERGY v3.0 Text Conversation, mean 717 output tokens; about 224
  input tokens (same post, 2026-01-13).
* GPU: NVIDIA H100 80GB HBM3 (SXM), 700 W power cap (nvidia-smi "Pwr:Usage/Cap" in
  github.com/wilicc/gpu-burn/issues/114, 2024; the TDP line of the ML.ENERGY power
  figure); idle (held, weights loaded, nothing running) 100 W (*assumption*: the same
  nvidia-smi output shows 140-145 W for H100s with 72 GB allocated at 0 % utilisation;
  an H100 with nothing loaded draws less).
* Cold starts 45 s (8B) and 120 s (70B), keep-warm 4 min, the scale-up rule, the burst
  sizes and rates: *assumptions* (scheduler policy and traffic).
* Money: ``USD_PER_GPU_HOUR`` = $2.99, Lambda Cloud on-demand 8x H100 SXM5
  (gpu_8x_h100_sxm5, $23.92/h / 8), SkyPilot catalog skypilot-org/skypilot-catalog
  catalogs/v7/lambda/vms.csv at 11580132cea293395776b033c8533714d42abb4e. The summary's
  $ per 1M output tokens is GPU-hours x that rate / output tokens (a rented GPU's price
  includes its electricity): "busy" with the GPU-seconds attributed to the requests,
  "held" with every GPU-hour the scheduler held. Hosted APIs charge $0.03-0.22 (8B) and
  $0.28-0.88 (70B) per 1M output tokens (tests/test_demo.py has the list and source).
  The report prices the same records with the factors of ``regions/`` instead.
"""

from __future__ import annotations

import heapq
import math
import os
import random
import sqlite3
from bisect import bisect_right
from collections import deque
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from footprint import tracking
from footprint._clock import ManualClock
from footprint.config import Settings
from footprint.runtime.local import ANNOUNCE_MARGIN_S, Runtime
from footprint.sensors.simulated import SimulatedSensor
from footprint.storage.store import normalize_db_url

# -- published measurements --------------------------------------------------------------

# (batch size = max_num_seqs, output tokens/s of the replica, average W of all its GPUs):
# ML.ENERGY Benchmark v3.0, vLLM 0.11.1, H100 (see the module docstring for the source).
LLAMA_8B_H100X1 = (
    (16, 1954, 513), (32, 3391, 560), (64, 5147, 610), (96, 6260, 644), (128, 7037, 669),
    (192, 8223, 688), (256, 9010, 691), (384, 9248, 687), (512, 9806, 688), (768, 9603, 685),
)  # fmt: skip
LLAMA_70B_H100X4 = (
    (16, 863, 1804), (32, 1487, 1794), (64, 2511, 2002), (96, 3244, 2102), (128, 3876, 2184),
    (192, 4461, 2293), (256, 4915, 2354), (384, 5319, 2344), (512, 5921, 2493),
    (768, 6507, 2535), (1024, 6827, 2548),
)  # fmt: skip

GPU_NAME = "NVIDIA H100 80GB HBM3"
GPU_TDP_W = 700.0  # H100 SXM power cap (nvidia-smi; see the module docstring)
GPU_IDLE_W = 100.0  # held, weights loaded, nothing running: assumption (see docstring)
USD_PER_GPU_HOUR = 2.99  # Lambda on-demand 8x H100 SXM5 $23.92/h / 8 (SkyPilot catalog)
USD_PER_GPU_HOUR_SOURCE = (
    "Lambda Cloud on-demand gpu_8x_h100_sxm5 $23.92/h / 8 GPUs, SkyPilot catalog "
    "skypilot-org/skypilot-catalog catalogs/v7/lambda/vms.csv at "
    "11580132cea293395776b033c8533714d42abb4e"
)
MEASUREMENTS_SOURCE = (
    "ML.ENERGY Benchmark v3.0 (vLLM 0.11.1), Llama 3.1 on H100: "
    "https://ml.energy/blog/measurement/energy/llm-inference-energy-a-longitudinal-analysis"
)


@dataclass(frozen=True)
class DemoModel:
    """A served model: its replicas, engine limits, measured speed and power, traffic."""

    name: str
    gpus_per_replica: int  # tensor parallel degree
    max_replicas: int
    max_num_seqs: int  # the engine's batch limit
    cold_start_s: float  # provisioning to ready (weights loaded): assumption
    measured: tuple[tuple[int, int, int], ...]  # (batch, tokens/s, W of the replica)
    weight: float  # share of the requests
    burst: tuple[int, int]  # requests in one burst of its traffic (log-uniform)

    def throughput(self, batch: int) -> float:
        """Output tokens/s of one replica running ``batch`` requests."""
        return _interpolate(self.measured, batch, 1, 0.0)

    def power_w(self, batch: int) -> float:
        """Average W of one replica's GPUs together with ``batch`` requests running."""
        return _interpolate(self.measured, batch, 2, GPU_IDLE_W * self.gpus_per_replica)

    def gpu_load(self, batch: int) -> float:
        """The simulator's load (0..1 of idle-to-TDP) of each GPU at that batch size."""
        per_gpu_w = self.power_w(batch) / self.gpus_per_replica
        return max(0.0, min(1.0, (per_gpu_w - GPU_IDLE_W) / (GPU_TDP_W - GPU_IDLE_W)))

    def step_s(self, batch: int) -> float:
        """Time of one engine step (one token for every request in the batch)."""
        return batch / self.throughput(batch)

    @property
    def requests_per_s(self) -> float:
        """What one replica completes per second at its batch limit (mean lengths)."""
        return self.throughput(self.max_num_seqs) / MEAN_OUTPUT_TOKENS


def _interpolate(
    points: tuple[tuple[int, int, int], ...], batch: int, column: int, at_zero: float
) -> float:
    """Linear in the batch size between measured points, towards ``at_zero`` below the
    first one, flat above the last one."""
    if batch <= 0:
        return at_zero
    if batch <= points[0][0]:
        return at_zero + (points[0][column] - at_zero) * batch / points[0][0]
    if batch >= points[-1][0]:
        return float(points[-1][column])
    i = bisect_right([p[0] for p in points], batch)
    lo, hi = points[i - 1], points[i]
    return lo[column] + (hi[column] - lo[column]) * (batch - lo[0]) / (hi[0] - lo[0])


MODELS = (
    DemoModel("llama-3.1-8b", 1, 4, 128, 45.0, LLAMA_8B_H100X1, 0.6, (512, 4096)),
    DemoModel("llama-3.1-70b", 4, 2, 384, 120.0, LLAMA_70B_H100X4, 0.4, (768, 3072)),
)

INPUT_TOKENS = (16, 1024)  # log-uniform: mean 242 (ML.ENERGY chat: about 224)
OUTPUT_TOKENS = (64, 2560)  # log-uniform: mean 677 (ML.ENERGY chat: 717)
MEAN_OUTPUT_TOKENS = (OUTPUT_TOKENS[1] - OUTPUT_TOKENS[0]) / math.log(
    OUTPUT_TOKENS[1] / OUTPUT_TOKENS[0]
)  # 677
PREFILL_CHUNK_TOKENS = 2048  # prompt tokens one engine step prefills (chunked prefill)
BURST_LOAD = (0.8, 2.5)  # peak arrival rate, in units of one replica's rate at its limit
BURST_RAMP = 2.0  # the rate rises to its peak over this many cold starts
KEEP_WARM_S = 240.0  # an idle replica is released after this long
SCALE_UP_BACKLOG = 1.0  # add a replica when the queue would take longer than a cold start
ERROR_RATE = 0.015

DEMO_SENSOR = (
    "simulated:gpus={gpus},idle_w={idle:g},busy_w={tdp:g},noise=0.02,seed={seed},"
    "workload=manual,name={name}"
)
DEMO_REGION = "aws:us-east-1"
# Monday 2 March 2026, 00:00 UTC: the simulated week starts here, whatever today is.
DEMO_EPOCH = datetime(2026, 3, 2, tzinfo=timezone.utc)
DEMO_DAYS = 7
DEMO_GPUS = 8
DEMO_QUERIES = 20_000  # enough for a few bursts a day that fill the batches
DEMO_TAG = '"demo": true'
CLOCK_ORIGIN_S = 1000.0  # monotonic time of the epoch on the simulated clocks

POLL_S = 0.05  # sampler period while any request runs (the real default)
IDLE_POLL_S = 10.0  # while nothing runs (idle is linear; the resolver learns idle power here)
CYCLE_S = 60.0  # how often the resolver/writer cycle runs, in simulated seconds

# When bursts come: relative weight of each UTC hour (a US-centred service) for their
# start, and relative size by weekday (Mon..Sun).
HOURLY = (
    0.35, 0.3, 0.25, 0.2, 0.2, 0.25, 0.35, 0.5, 0.7, 0.85, 0.95, 1.0,
    1.0, 1.0, 1.0, 1.0, 0.95, 0.9, 0.85, 0.8, 0.7, 0.6, 0.5, 0.4,
)  # fmt: skip
WEEKDAY = (1.0, 1.05, 1.1, 1.05, 0.95, 0.55, 0.45)


@dataclass(eq=False)
class _Request:
    id: int
    model: DemoModel
    arrival_s: float  # offset from the epoch, simulated seconds
    input_tokens: int
    output_tokens: int
    fails: bool
    fail_at: float = 1.0  # share of its steps done when a failing request gives up
    admit_s: float = math.nan  # joined a replica's batch
    first_s: float | None = None  # first output token
    end_s: float = math.nan

    @property
    def prefill_steps(self) -> int:
        return max(1, math.ceil(self.input_tokens / PREFILL_CHUNK_TOKENS))

    @property
    def steps(self) -> float:
        """Engine steps from admission to the end (the first output token comes out of
        the last prefill step)."""
        full = self.prefill_steps + self.output_tokens - 1
        return max(1.0, full * self.fail_at) if self.fails else float(full)


_STEP_EPS = 1e-6  # engine steps: what float rounding of simulated times may leave over


@dataclass(eq=False)
class _Replica:
    """One replica of a model: its held window, its running batch, its load steps."""

    slot: int  # its GPUs' identity (one simulated sensor per slot)
    model: DemoModel
    start_s: float  # provisioned: GPUs held from here
    ready_s: float
    end_s: float = math.inf  # released
    ready: bool = False
    batch: list[_Request] = field(default_factory=list)
    steps_done: float = 0.0  # engine steps since the replica started (virtual time)
    updated_s: float = 0.0
    targets: list[tuple[float, int, int, _Request]] = field(default_factory=list)
    version: int = 0
    idle_since_s: float = math.inf
    load_steps: list[tuple[float, int]] = field(default_factory=list)  # (time, batch size)
    requests: list[_Request] = field(default_factory=list)

    def advance(self, t: float) -> None:
        if self.batch:
            self.steps_done += (t - self.updated_s) / self.model.step_s(len(self.batch))
        self.updated_s = t

    def next_target_s(self) -> float | None:
        if not self.targets:
            return None
        steps = self.targets[0][0] - self.steps_done
        if steps <= _STEP_EPS:
            return self.updated_s
        return self.updated_s + steps * self.model.step_s(len(self.batch))


def plan_workload(queries: int, seed: int, days: int = DEMO_DAYS) -> list[_Request]:
    """The requests of the simulated period, by arrival time (deterministic per seed)."""
    rng = random.Random(seed)
    models = list(MODELS)
    requests: list[_Request] = []
    # Bursts end well inside the period (their queues drain and replicas are released).
    latest_start = max(0.0, days * 86400.0 - 5400.0)
    # Each model gets its share of the requests (its weight), in bursts of its size.
    budget = {m.name: math.floor(queries * m.weight) for m in models}
    budget[models[0].name] += queries - sum(budget.values())
    total = {name: max(1, n) for name, n in budget.items()}
    order: list[int] = []
    while len(requests) < queries:
        # Bursts go round the days in a shuffled order (every day gets its share, a
        # few bursts land on a few days), at the busy hours.
        if not order:
            order = list(range(days))
            rng.shuffle(order)
        day = order.pop()
        # The model furthest behind its share goes next (give or take), so bursts of
        # the models interleave over the period.
        model = max(
            (m for m in models if budget[m.name] > 0),
            key=lambda m: budget[m.name] / total[m.name] + rng.uniform(0.0, 0.2),
        )
        hour = rng.choices(range(24), HOURLY)[0]
        t = min(day * 86400.0 + hour * 3600.0 + rng.uniform(0, 3600.0), latest_start)
        size = round(_log_uniform(rng, *model.burst) * WEEKDAY[day % 7])
        peak = model.requests_per_s * rng.uniform(*BURST_LOAD)
        ramp_s = BURST_RAMP * model.cold_start_s
        start = t
        size = min(budget[model.name], max(1, size))
        budget[model.name] -= size
        for _ in range(size):
            fails = rng.random() < ERROR_RATE
            requests.append(
                _Request(
                    id=0,
                    model=model,
                    arrival_s=t,
                    input_tokens=round(_log_uniform(rng, *INPUT_TOKENS)),
                    output_tokens=round(_log_uniform(rng, *OUTPUT_TOKENS)),
                    fails=fails,
                    fail_at=rng.uniform(0.2, 0.8) if fails else 1.0,
                )
            )
            t += rng.expovariate(peak * min(1.0, 0.05 + (t - start) / ramp_s))
    requests.sort(key=lambda r: r.arrival_s)
    for n, r in enumerate(requests):
        r.id = n
    return requests


def _log_uniform(rng: random.Random, low: float, high: float) -> float:
    """Many small values, some large ones."""
    return math.exp(rng.uniform(math.log(low), math.log(high)))


class _Scheduler:
    """Continuous batching on replicas that a queue-driven autoscaler holds and releases.

    Pure simulation (no footprint code): it decides when each request is admitted to
    which replica, when its first token comes and when it ends, and when each replica's
    GPUs are held. ``_Replay`` then runs exactly that through the real runtime.
    """

    def __init__(self, gpus: int) -> None:
        self.pool = gpus
        self.free_gpus = gpus
        self.queues: dict[str, deque[_Request]] = {m.name: deque() for m in MODELS}
        self.replicas: list[_Replica] = []  # every held window, in provisioning order
        self.live: dict[str, list[_Replica]] = {m.name: [] for m in MODELS}
        self.events: list[tuple[float, int, str, Any]] = []
        self._seq = 0
        self.peak_gpus = 0
        first_slot = 0
        self.slots: dict[str, range] = {}
        for m in MODELS:
            self.slots[m.name] = range(first_slot, first_slot + m.max_replicas)
            first_slot += m.max_replicas

    def _push(self, t: float, kind: str, payload: Any) -> None:
        heapq.heappush(self.events, (t, self._seq, kind, payload))
        self._seq += 1

    def run(self, requests: list[_Request]) -> list[_Replica]:
        for request in requests:
            self._push(request.arrival_s, "arrive", request)
        while self.events:
            t, _, kind, payload = heapq.heappop(self.events)
            if kind == "arrive":
                self.queues[payload.model.name].append(payload)
                self._dispatch(payload.model, t)
                self._scale(t)
            elif kind == "ready":
                payload.ready = True
                payload.updated_s = t
                payload.idle_since_s = t
                self._dispatch(payload.model, t)
                self._after_change(payload, t)
            elif kind == "step":
                replica, version = payload
                if version == replica.version:
                    self._step(replica, t)
            elif kind == "idle":
                replica, version = payload
                if version == replica.version and not replica.batch and replica.ready:
                    self._release(replica, t)
                    self._scale(t)
        return self.replicas

    # -- batches ---------------------------------------------------------------------
    def _dispatch(self, model: DemoModel, t: float) -> None:
        """Admit queued requests to the least-loaded ready replicas with room."""
        queue = self.queues[model.name]
        while queue:
            room = [
                r for r in self.live[model.name] if r.ready and len(r.batch) < model.max_num_seqs
            ]
            if not room:
                return
            replica = min(room, key=lambda r: (len(r.batch), r.slot))
            request = queue.popleft()
            replica.advance(t)
            request.admit_s = t
            replica.batch.append(request)
            replica.requests.append(request)
            end, first = (
                replica.steps_done + request.steps,
                replica.steps_done + request.prefill_steps,
            )
            heapq.heappush(replica.targets, (end, 1, request.id, request))
            if first < end:
                heapq.heappush(replica.targets, (first, 0, request.id, request))
            self._after_change(replica, t)

    def _step(self, replica: _Replica, t: float) -> None:
        replica.advance(t)
        ended = False
        while replica.targets and replica.targets[0][0] <= replica.steps_done + _STEP_EPS:
            _, kind, _, request = heapq.heappop(replica.targets)
            if kind == 0:
                request.first_s = t
            else:
                request.end_s = t
                replica.batch.remove(request)
                ended = True
        if ended:
            self._dispatch(replica.model, t)
            self._scale(t)
        self._after_change(replica, t)

    def _after_change(self, replica: _Replica, t: float) -> None:
        """Record the batch size and schedule the replica's next event."""
        replica.version += 1
        size = len(replica.batch)
        steps = replica.load_steps
        if steps and steps[-1][0] == t:
            steps[-1] = (t, size)
        elif not steps or steps[-1][1] != size:
            steps.append((t, size))
        if replica.batch:
            replica.idle_since_s = math.inf
            when = replica.next_target_s()
            assert when is not None  # every request in a batch has its end ahead
            self._push(when, "step", (replica, replica.version))
        elif replica.ready:
            if not math.isfinite(replica.idle_since_s):
                replica.idle_since_s = t
            self._push(replica.idle_since_s + KEEP_WARM_S, "idle", (replica, replica.version))

    # -- holding and releasing GPUs ----------------------------------------------------
    def _scale(self, t: float) -> None:
        """Provision replicas for queues that wait: from zero as soon as a request does,
        one more while the backlog would take longer to serve than a cold start."""
        for model in MODELS:
            queue = self.queues[model.name]
            live = self.live[model.name]
            while queue and len(live) < model.max_replicas:
                if any(not r.ready for r in live):
                    break  # one cold start at a time: see what it brings first
                backlog_s = len(queue) / (len(live) * model.requests_per_s) if live else math.inf
                if backlog_s <= SCALE_UP_BACKLOG * model.cold_start_s:
                    break
                if not self._free(model.gpus_per_replica, model, t):
                    break
                self._provision(model, t)

    def _free(self, gpus: int, model: DemoModel, t: float) -> bool:
        """Whether ``gpus`` GPUs are free, releasing idle replicas of other models."""
        if self.free_gpus >= gpus:
            return True
        idle = sorted(
            (r for name, live in self.live.items() if name != model.name for r in live
             if r.ready and not r.batch),
            key=lambda r: (r.idle_since_s, r.slot),
        )  # fmt: skip
        for replica in idle:
            self._release(replica, t)
            if self.free_gpus >= gpus:
                return True
        return False

    def _provision(self, model: DemoModel, t: float) -> None:
        used = {r.slot for r in self.live[model.name]}
        slot = next(s for s in self.slots[model.name] if s not in used)
        replica = _Replica(slot, model, start_s=t, ready_s=t + model.cold_start_s)
        replica.load_steps.append((t, 0))
        self.live[model.name].append(replica)
        self.replicas.append(replica)
        self.free_gpus -= model.gpus_per_replica
        self.peak_gpus = max(self.peak_gpus, self.pool - self.free_gpus)
        self._push(replica.ready_s, "ready", replica)

    def _release(self, replica: _Replica, t: float) -> None:
        replica.end_s = t
        replica.version += 1
        self.live[replica.model.name].remove(replica)
        self.free_gpus += replica.model.gpus_per_replica


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
    queries: int = DEMO_QUERIES,
    seed: int = 1,
    concurrency: int = DEMO_GPUS,
    days: int = DEMO_DAYS,
) -> dict[str, Any]:
    """Simulate the workload into a fresh database and summarise what it wrote.

    ``concurrency`` is the number of H100s the scheduler may hold at once (the pool;
    at least the 4 a 70B replica needs).
    """
    if queries < 1:
        raise ValueError("queries must be at least 1")
    if days < 1:
        raise ValueError("days must be at least 1")
    widest = max(m.gpus_per_replica for m in MODELS)
    if concurrency < widest:
        raise ValueError(f"the demo needs a pool of at least {widest} GPUs (one 70B replica)")
    path = prepare_db(db)
    requests = plan_workload(queries, seed, days)
    scheduler = _Scheduler(concurrency)
    replicas = scheduler.run(requests)
    settings = Settings(
        db=path,
        sensor="none",
        region=DEMO_REGION,
        cpu=False,
        sampling_period_s=POLL_S,
        flush_interval_s=CYCLE_S,
    )
    replay = _Replay(settings, seed)
    try:
        for replica in sorted(replicas, key=lambda r: (r.start_s, r.slot)):
            replay.run(replica)
    finally:
        tracking.shutdown()  # final sample, cycle and write through the real runtime
    summary = summarize(path, replay.host, replay.pid)
    summary["db"] = db
    summary["period"] = {"since": DEMO_EPOCH.isoformat(), "days": days}
    summary["warm_windows"] = len(replicas)
    _add_serving(summary, requests, replicas, replay.devices, scheduler, replay.host, replay.pid)
    return summary


class _Replay:
    """Runs each replica's held window through the real runtime on a simulated clock.

    One ``Runtime`` per window, whose simulated sensor is the replica's GPUs: what it
    measures is exactly the GPUs the scheduler held, for as long as it held them. The
    requests enter and leave ``footprint.query`` at their simulated admission and end,
    and the batch's power is on the simulated GPUs (``add_step`` at every change).
    """

    def __init__(self, settings: Settings, seed: int) -> None:
        self.settings = settings
        self.seed = seed
        self.host = ""
        self.pid = 0
        self.devices: dict[str, str] = {}  # GPU UUID -> model

    def run(self, replica: _Replica) -> None:
        model = replica.model
        clock = ManualClock(
            monotonic_s=CLOCK_ORIGIN_S + replica.start_s,
            wall_s=DEMO_EPOCH.timestamp() + replica.start_s,
        )
        sensor_spec = DEMO_SENSOR.format(
            gpus=model.gpus_per_replica, idle=GPU_IDLE_W, tdp=GPU_TDP_W,
            seed=self.seed * 100 + replica.slot, name=GPU_NAME,
        )  # fmt: skip
        runtime = Runtime(replace(self.settings, sensor=sensor_spec), clock)
        if runtime.store is None:
            raise RuntimeError(f"cannot open the demo database {self.settings.db}")
        sensor = runtime.gpu_sensor
        assert isinstance(sensor, SimulatedSensor)
        tracking.install_runtime(runtime)
        self.host, self.pid = runtime.host, runtime.pid
        for device in sensor.devices:
            self.devices[device.uuid] = model.name
        previous = 0.0
        for t, size in replica.load_steps:
            load = model.gpu_load(size)
            for gpu in sensor.gpus:
                gpu.add_step(CLOCK_ORIGIN_S + t, load - previous)
            previous = load
        rng = random.Random(self.seed * 7919 + replica.slot * 104729 + int(replica.start_s))
        window = _Window(runtime, clock, rng)
        runtime.gpu_sampler.sample_once()
        events = []
        for r in replica.requests:
            events.append((r.admit_s, 2, r.id, "start", r))
            if r.first_s is not None:
                events.append((r.first_s, 1, r.id, "first", r))
            events.append((r.end_s, 0, r.id, "end", r))
        events.sort(key=lambda e: e[:3])
        handles: dict[int, Any] = {}
        gpus = list(range(model.gpus_per_replica))
        for t, _, _, kind, request in events:
            window.advance_to(CLOCK_ORIGIN_S + t)
            if kind == "start":
                handle = tracking.query(model=model.name, gpus=gpus, demo=True,
                                        replica=replica.slot)  # fmt: skip
                handle.__enter__()
                handles[request.id] = handle
                window.running += 1
            elif kind == "first":
                handles[request.id].first_token()
            else:
                handle = handles.pop(request.id)
                window.running -= 1
                window.last_busy_s = clock.monotonic_s()
                if request.fails:
                    error = TimeoutError("simulated client timeout")
                    handle.__exit__(TimeoutError, error, None)
                else:
                    handle.set_tokens(input=request.input_tokens, output=request.output_tokens)
                    handle.__exit__(None, None, None)
        window.advance_to(CLOCK_ORIGIN_S + replica.end_s)
        tracking.shutdown()  # the GPUs go back: last samples, cycle and write


class _Window:
    """Moves one runtime's clock forward, sampling and cycling as its threads would."""

    def __init__(self, runtime: Runtime, clock: ManualClock, rng: random.Random) -> None:
        self.runtime = runtime
        self.clock = clock
        self.rng = rng
        self.running = 0
        self.last_busy_s = -math.inf
        self.next_cycle_s = clock.monotonic_s() + CYCLE_S

    def advance_to(self, target: float) -> None:
        clock, sampler = self.clock, self.runtime.gpu_sampler
        while clock.monotonic_s() < target:
            now = clock.monotonic_s()
            busy = self.running > 0 or now - self.last_busy_s < 1.0
            step = sampler.next_wait_s() * self.rng.uniform(1.0, 1.1) if busy else IDLE_POLL_S
            clock.advance(min(step, target - now))
            sampler.sample_once()
            if clock.monotonic_s() >= self.next_cycle_s:
                self.runtime.cycle(until_s=clock.monotonic_s() - ANNOUNCE_MARGIN_S)
                self.next_cycle_s = clock.monotonic_s() + CYCLE_S


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


def _add_serving(
    summary: dict[str, Any],
    requests: list[_Request],
    replicas: list[_Replica],
    devices: dict[str, str],
    scheduler: _Scheduler,
    host: str,
    pid: int,
) -> None:
    """Held vs busy GPU-hours, batch sizes, waits and $ per 1M output tokens, per model.

    Busy GPU-hours are the GPU-seconds footprint attributed to the requests; held ones
    are the scheduler's (every GPU of every replica from provisioning to release, which
    is also exactly what the runtimes measured).
    """
    path = normalize_db_url(summary["db"]).removeprefix("sqlite:///")
    con = sqlite3.connect(Path(path))
    try:
        idle_by_device = dict(
            con.execute(
                "SELECT device_uuid, SUM(idle_energy_j) FROM idle_energy "
                "WHERE host = ? AND pid = ? GROUP BY device_uuid",
                (host, pid),
            )
        )
    finally:
        con.close()
    held_total = busy_total = 0.0
    for model in MODELS:
        m = summary["models"].get(model.name)
        if m is None:
            continue
        mine = [r for r in replicas if r.model is model]
        held_h = sum(r.end_s - r.start_s for r in mine) * model.gpus_per_replica / 3600.0
        busy_h = m["gpu_seconds"] / 3600.0
        idle_j = sum(j for uuid, j in idle_by_device.items() if devices.get(uuid) == model.name)
        waits = sorted(
            r.first_s - r.arrival_s for r in requests if r.model is model and r.first_s is not None
        )
        tokens = m["output_tokens"]
        m.update(
            gpus_per_replica=model.gpus_per_replica,
            max_num_seqs=model.max_num_seqs,
            replica_windows=len(mine),
            peak_replicas=_peak_overlap(mine),
            mean_batch_size=_mean_batch(mine),
            # From arrival: queueing (and a cold start, for the first of a burst) included.
            first_token_after_arrival_s={"p50": _percentile(waits, 0.5),
                                         "p95": _percentile(waits, 0.95)} if waits else None,
            held_gpu_hours=held_h,
            busy_gpu_hours=busy_h,
            idle_energy_j=idle_j,
            j_per_output_token_fully_loaded=(m["energy_j"] + idle_j) / tokens if tokens else None,
            usd_per_1m_output_tokens={
                "busy": busy_h * USD_PER_GPU_HOUR / tokens * 1e6 if tokens else None,
                "held": held_h * USD_PER_GPU_HOUR / tokens * 1e6 if tokens else None,
            },
        )  # fmt: skip
        held_total += held_h
        busy_total += busy_h
    summary["gpus"] = {
        "gpu": GPU_NAME,
        "pool": scheduler.pool,
        "peak_held": scheduler.peak_gpus,
        "idle_w": GPU_IDLE_W,
        "tdp_w": GPU_TDP_W,
        "held_gpu_hours": held_total,
        "busy_gpu_hours": busy_total,
        "utilization": busy_total / held_total if held_total else None,
        "usd_per_gpu_hour": USD_PER_GPU_HOUR,
        "usd_per_gpu_hour_source": USD_PER_GPU_HOUR_SOURCE,
        "measurements_source": MEASUREMENTS_SOURCE,
        "keep_warm_s": KEEP_WARM_S,
    }


def _mean_batch(replicas: list[_Replica]) -> float | None:
    """Requests in the batch, averaged over the time the replicas ran any."""
    weighted_s = running_s = 0.0
    for r in replicas:
        for (t0, size), (t1, _) in zip(r.load_steps, [*r.load_steps[1:], (r.end_s, 0)]):
            if size:
                weighted_s += size * (t1 - t0)
                running_s += t1 - t0
    return weighted_s / running_s if running_s else None


def _peak_overlap(replicas: list[_Replica]) -> int:
    """The most of these replicas held at the same time."""
    edges = sorted([(r.start_s, 1) for r in replicas] + [(r.end_s, -1) for r in replicas])
    held = peak = 0
    for _, change in edges:
        held += change
        peak = max(peak, held)
    return peak


def _percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
