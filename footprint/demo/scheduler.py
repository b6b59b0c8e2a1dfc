"""Continuous batching on replicas that a queue-driven autoscaler holds and releases.

Each replica serves one batch, engine step by engine step, whose membership changes at
every arrival and completion: a request joins the batch when admitted (up to the
engine's ``max_num_seqs``; later ones queue); each step makes one token for every
decoding sequence, then prefills prompt chunks (first come, first served) with what is
left of its token budget (chunked prefill); a request's first output token comes out of
the step that ends its prompt, then it gets one token a step until it ends. A step's
energy and time are the calibrated cost model's (``footprint.demo.costs``: a fixed part,
a part per prompt token, and one per decoding sequence and per token of its context,
the time stretched where the GPUs would pass their power cap), and the replica's GPUs
draw that energy evenly over the step: a step that prefills a long prompt draws more,
and for longer, than one that only decodes. Over the demo's traffic a replica's mean
power and energy per output token stay within a few per cent of what ML.ENERGY measured
at the same batch sizes (the cost model's fit).

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

from footprint.demo.costs import COSTS, StepCosts
from footprint.demo.models import MODELS, DemoModel
from footprint.demo.workload import Request

DEMO_GPUS = 8  # the pool: one HGX node of H100 80GB
KEEP_WARM_S = 240.0  # an idle replica is released after this long
SCALE_UP_BACKLOG = 1.0  # add a replica when the queue would take longer than a cold start


@dataclass(eq=False)
class Replica:
    """One replica of a model: its held window, its batch and engine, its power over time."""

    slot: int  # its GPUs' identity (one simulated sensor per slot)
    model: DemoModel
    start_s: float  # provisioned: GPUs held from here
    ready_s: float
    end_s: float = math.inf  # released
    ready: bool = False
    batch: list[Request] = field(default_factory=list)  # admitted, not ended
    prefilling: list[Request] = field(default_factory=list)  # prompt not done, in order
    decoding: int = 0  # sequences decoding
    context_tokens: int = 0  # the contexts of the decoding sequences, summed
    ends: list[tuple[int, int, Request]] = field(default_factory=list)  # (last step, id, -)
    steps: int = 0  # engine steps done
    chunks: list[tuple[Request, int]] = field(default_factory=list)  # of the step running
    stepping: bool = False  # a step runs or is about to begin
    version: int = 0
    idle_since_s: float = math.inf
    load_steps: list[tuple[float, int]] = field(default_factory=list)  # (time, batch size)
    # (time, W above idle of all its GPUs): each step's energy over its time
    power_steps: list[tuple[float, float]] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)

    @property
    def costs(self) -> StepCosts:
        """Its model's step cost model."""
        return COSTS[self.model.name]

    def set_power(self, t: float, above_idle_w: float) -> None:
        """The replica's GPUs draw ``above_idle_w`` over idle from ``t`` on."""
        steps = self.power_steps
        if steps and steps[-1][0] == t:
            steps[-1] = (t, above_idle_w)
        elif not steps or steps[-1][1] != above_idle_w:
            steps.append((t, above_idle_w))

    def begin_step(self, t: float) -> float:
        """Start an engine step at ``t``: every decoding sequence, then prompt chunks up
        to the token budget; its energy drawn evenly over its time. Returns its end."""
        costs = self.costs
        budget = costs.token_budget - self.decoding
        self.chunks = []
        for request in self.prefilling:
            if budget <= 0:
                break
            chunk = min(request.input_tokens - request.prefilled, budget)
            self.chunks.append((request, chunk))
            budget -= chunk
        prompt = sum(chunk for _, chunk in self.chunks)
        energy_j = costs.step_energy_j(prompt, self.decoding, self.context_tokens)
        step_s = costs.step_s(prompt, self.decoding, self.context_tokens, energy_j)
        above_idle_w = energy_j / step_s - costs.gpus * costs.idle_w
        if above_idle_w < 0.0:
            raise ValueError(f"{costs.model}: a step drew less than idle power ({above_idle_w} W)")
        self.stepping = True
        self.set_power(t, above_idle_w)
        return t + step_s

    def end_step(self, t: float) -> list[Request]:
        """The running step ends at ``t``: a token for each decoding sequence, prompts
        done (their first token), and the requests that ended (returned, out of the
        batch)."""
        self.stepping = False
        self.steps += 1
        self.context_tokens += self.decoding  # each decoder's new token joins its context
        ended = []
        while self.ends and self.ends[0][0] == self.steps:
            _, _, request = heapq.heappop(self.ends)
            self.decoding -= 1
            self.context_tokens -= request.input_tokens + request.served_tokens
            ended.append(request)
        for request, chunk in self.chunks:
            request.prefilled += chunk
            if request.prefilled < request.input_tokens:
                continue
            request.first_s = t
            if request.served_tokens == 1:
                ended.append(request)
                continue
            self.decoding += 1
            self.context_tokens += request.input_tokens + 1
            heapq.heappush(self.ends, (self.steps + request.served_tokens - 1, request.id, request))
        if self.chunks:
            self.prefilling = [r for r in self.prefilling if r.prefilled < r.input_tokens]
            self.chunks = []
        for request in ended:
            request.end_s = t
            self.batch.remove(request)
        return ended


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
            "begin": self._on_begin,
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
        replica.idle_since_s = t
        self._dispatch(replica.model, t)
        self._after_change(replica, t)

    def _on_begin(self, replica: Replica, t: float) -> None:
        self._push(replica.begin_step(t), "step", replica)

    def _on_step(self, replica: Replica, t: float) -> None:
        if replica.end_step(t):
            self._dispatch(replica.model, t)
            self._scale(t)
        self._after_change(replica, t)

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
            request.admit_s = t
            replica.batch.append(request)
            replica.prefilling.append(request)
            replica.requests.append(request)
            self._after_change(replica, t)

    def _after_change(self, replica: Replica, t: float) -> None:
        """Record the batch size; start its next step (once whatever else happens at
        ``t`` is done: requests admitted at ``t`` join it), or wait for the idle timeout."""
        replica.version += 1
        size = len(replica.batch)
        steps = replica.load_steps
        if steps and steps[-1][0] == t:
            steps[-1] = (t, size)
        elif not steps or steps[-1][1] != size:
            steps.append((t, size))
        if replica.batch:
            replica.idle_since_s = math.inf
            if not replica.stepping:
                replica.stepping = True
                self._push(t, "begin", replica)
        elif replica.ready:
            replica.set_power(t, 0.0)
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
        replica.power_steps.append((t, 0.0))
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
