"""Continuous batching on replicas that a queue-driven autoscaler holds and releases.

Each replica runs one batch whose membership changes at every arrival and completion: a
request joins the running batch when admitted (up to the engine's ``max_num_seqs``;
later ones queue), is prefilled in one engine step (in chunks of
``PREFILL_CHUNK_TOKENS``), then gets one output token per step until it ends. Step time
follows the batch size (``DemoModel.step_s``).

A model's first queued request starts a replica (a cold start: its GPUs are held, at idle
power, while the weights load); another one starts while the queue would take the running
replicas longer than a cold start to serve (one cold start at a time, if the pool has
free GPUs; idle replicas of another model give theirs back); a replica idle for
``KEEP_WARM_S`` is released. Requests go to the least-loaded replica with room. The
keep-warm time and the scale-up rule are *assumptions* (scheduler policy).

Pure simulation (no footprint code): it decides when each request is admitted to which
replica, when its first token comes and when it ends, and when each replica's GPUs are
held. ``footprint.demo.replay`` then runs exactly that through the real runtime.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from footprint.demo.models import MODELS, DemoModel
from footprint.demo.workload import Request

DEMO_GPUS = 8  # the pool: one HGX node of H100 80GB
KEEP_WARM_S = 240.0  # an idle replica is released after this long
SCALE_UP_BACKLOG = 1.0  # add a replica when the queue would take longer than a cold start

_STEP_EPS = 1e-6  # engine steps: what float rounding of simulated times may leave over


@dataclass(eq=False)
class Replica:
    """One replica of a model: its held window, its running batch, its load steps."""

    slot: int  # its GPUs' identity (one simulated sensor per slot)
    model: DemoModel
    start_s: float  # provisioned: GPUs held from here
    ready_s: float
    end_s: float = math.inf  # released
    ready: bool = False
    batch: list[Request] = field(default_factory=list)
    steps_done: float = 0.0  # engine steps since the replica started (virtual time)
    updated_s: float = 0.0
    targets: list[tuple[float, int, int, Request]] = field(default_factory=list)
    version: int = 0
    idle_since_s: float = math.inf
    load_steps: list[tuple[float, int]] = field(default_factory=list)  # (time, batch size)
    requests: list[Request] = field(default_factory=list)

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


class Scheduler:
    """Replicas held and released as the queues need, each running one changing batch."""

    def __init__(self, gpus: int) -> None:
        self.pool = gpus
        self.free_gpus = gpus
        self.queues: dict[str, deque[Request]] = {m.name: deque() for m in MODELS}
        self.replicas: list[Replica] = []  # every held window, in provisioning order
        self.live: dict[str, list[Replica]] = {m.name: [] for m in MODELS}
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

    def run(self, requests: list[Request]) -> list[Replica]:
        """Serve ``requests`` (their times filled in); every replica window held."""
        handlers: dict[str, Callable[[Any, float], None]] = {
            "arrive": self._on_arrive,
            "ready": self._on_ready,
            "step": self._on_step,
            "idle": self._on_idle,
        }
        for request in requests:
            self._push(request.arrival_s, "arrive", request)
        while self.events:
            t, _, kind, payload = heapq.heappop(self.events)
            handlers[kind](payload, t)
        return self.replicas

    # -- events ------------------------------------------------------------------------
    def _on_arrive(self, request: Request, t: float) -> None:
        self.queues[request.model.name].append(request)
        self._dispatch(request.model, t)
        self._scale(t)

    def _on_ready(self, replica: Replica, t: float) -> None:
        replica.ready = True
        replica.updated_s = t
        replica.idle_since_s = t
        self._dispatch(replica.model, t)
        self._after_change(replica, t)

    def _on_step(self, payload: tuple[Replica, int], t: float) -> None:
        replica, version = payload
        if version == replica.version:
            self._step(replica, t)

    def _on_idle(self, payload: tuple[Replica, int], t: float) -> None:
        replica, version = payload
        if version == replica.version and not replica.batch and replica.ready:
            self._release(replica, t)
            self._scale(t)

    # -- batches -----------------------------------------------------------------------
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

    def _step(self, replica: Replica, t: float) -> None:
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

    def _after_change(self, replica: Replica, t: float) -> None:
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
            (
                r
                for name, live in self.live.items()
                if name != model.name
                for r in live
                if r.ready and not r.batch
            ),
            key=lambda r: (r.idle_since_s, r.slot),
        )
        for replica in idle:
            self._release(replica, t)
            if self.free_gpus >= gpus:
                return True
        return False

    def _provision(self, model: DemoModel, t: float) -> None:
        used = {r.slot for r in self.live[model.name]}
        slot = next(s for s in self.slots[model.name] if s not in used)
        replica = Replica(slot, model, start_s=t, ready_s=t + model.cold_start_s)
        replica.load_steps.append((t, 0))
        self.live[model.name].append(replica)
        self.replicas.append(replica)
        self.free_gpus -= model.gpus_per_replica
        self.peak_gpus = max(self.peak_gpus, self.pool - self.free_gpus)
        self._push(replica.ready_s, "ready", replica)

    def _release(self, replica: Replica, t: float) -> None:
        replica.end_s = t
        replica.version += 1
        self.live[replica.model.name].remove(replica)
        self.free_gpus += replica.model.gpus_per_replica
