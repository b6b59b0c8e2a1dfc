"""A continuously batching engine, step by step, with every request's true energy.

Each step serves the running sequences that are decoding (one token each) and, with
what is left of the step's token budget, chunks of the prompts waiting for prefill
(first come, first served); up to ``max_num_seqs`` requests run, later ones queue. A
step's energy (idle floor included) is ``StepCosts.step_energy_j`` of its batch, its
time ``StepCosts.step_s``; the GPUs draw the step's energy evenly over its time, and
idle power between steps when nothing runs.

The truth: the step energy is additive over the requests it serves except for its fixed
part ``F``, so a request's Shapley value is its own terms (its prompt tokens, its
decoding sequence with its context) plus ``F / n`` of every step that served it among
``n``. Decoders' shares are running sums (a request's share is the difference of the sum
at its end and at its first decode step), so a step costs O(1) per prompt chunk, not per
sequence. What a real server would show (arrival, first token, end, token counts, and
the power its GPUs draw) is all that leaves this module besides the truth.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass, field

from footprint.demo.costs import StepCosts


@dataclass(eq=False)
class Request:
    """One request: what arrives (``arrival_s``, token counts), and what serving it
    showed (``first_s``, ``end_s``) and cost (``truth_j``, the GPUs' floor included)."""

    id: int
    arrival_s: float
    input_tokens: int
    output_tokens: int
    kind: str
    admit_s: float = -1.0
    first_s: float = -1.0
    end_s: float = -1.0
    truth_j: float = 0.0
    prefilled: int = 0
    share_mark: float = 0.0  # the running sum of fixed shares when it began decoding
    tells_tokens: bool = True  # False: its caller reports no token counts (an error path)

    def __post_init__(self) -> None:
        if self.input_tokens < 1 or self.output_tokens < 1:
            raise ValueError("a request needs at least one input and one output token")


@dataclass
class StepLog:
    """Per-step figures, kept when asked for (calibration)."""

    duration_s: list[float] = field(default_factory=list)
    energy_j: list[float] = field(default_factory=list)  # idle floor included
    output_tokens: list[int] = field(default_factory=list)
    queue_full: list[bool] = field(default_factory=list)  # requests waited for a slot


@dataclass
class Served:
    """The engine's run: the requests (times and truth filled in), the GPUs' power above
    idle over time (``(start_s, W)`` pieces, all GPUs together, the last one back to 0),
    the step energies."""

    requests: list[Request]
    power_steps: list[tuple[float, float]]
    steps: int
    step_energy_j: float  # the sum of every step's energy (what the truths share)
    busy_s: float  # the sum of every step's time
    served_s: float  # the sum over steps of its time by the requests it served
    end_s: float
    log: StepLog | None


class Engine:
    """Serves requests on one replica under ``costs``; see the module's docstring."""

    def __init__(self, costs: StepCosts, keep_log: bool = False) -> None:
        self.costs = costs
        self.log = StepLog() if keep_log else None
        self.t_s = 0.0
        self.step = 0
        self.share_sum_j = 0.0
        self.energy_sum_j = 0.0
        self.busy_s = 0.0
        self.served_s = 0.0
        self.waiting: deque[Request] = deque()
        self.prefilling: list[Request] = []
        self.decoding = 0
        self.context_tokens = 0  # over the decoding sequences
        self.ends: list[tuple[int, int, Request]] = []  # (last step, id, request)
        self.power: list[tuple[float, float]] = []

    def run(self, requests: list[Request]) -> Served:
        """Serve ``requests`` until every one has ended (returned in the order given)."""
        arrivals = sorted(requests, key=lambda r: (r.arrival_s, r.id))
        i = 0
        while i < len(arrivals) or self.waiting or self.prefilling or self.decoding:
            if not (self.waiting or self.prefilling or self.decoding):
                self._set_power(0.0)
                self.t_s = max(self.t_s, arrivals[i].arrival_s)
            while i < len(arrivals) and arrivals[i].arrival_s <= self.t_s:
                self.waiting.append(arrivals[i])
                i += 1
            self._admit()
            self._step()
        self._set_power(0.0)
        return Served(
            list(requests),
            self.power,
            self.step,
            self.energy_sum_j,
            self.busy_s,
            self.served_s,
            self.t_s,
            self.log,
        )

    def _admit(self) -> None:
        limit = self.costs.max_num_seqs
        while self.waiting and len(self.prefilling) + self.decoding < limit:
            request = self.waiting.popleft()
            request.admit_s = self.t_s
            self.prefilling.append(request)

    def _set_power(self, watts: float) -> None:
        if not self.power or self.power[-1][1] != watts:
            if self.power and self.power[-1][0] == self.t_s:
                self.power[-1] = (self.t_s, watts)
            else:
                self.power.append((self.t_s, watts))

    def _step(self) -> None:
        """One engine step: schedule, charge, advance the clock, retire."""
        costs = self.costs
        budget = costs.token_budget - self.decoding
        chunks: list[tuple[Request, int]] = []
        for request in self.prefilling:
            if budget <= 0:
                break
            chunk = min(request.input_tokens - request.prefilled, budget)
            chunks.append((request, chunk))
            budget -= chunk
        prompt = sum(chunk for _, chunk in chunks)
        energy_j = costs.step_energy_j(prompt, self.decoding, self.context_tokens)
        step_s = costs.step_s(prompt, self.decoding, self.context_tokens, energy_j)
        share_j = costs.fixed_j / (self.decoding + len(chunks))
        for request, chunk in chunks:
            request.truth_j += costs.prefill_j_per_token * chunk + share_j
        self.share_sum_j += share_j
        self.energy_sum_j += energy_j
        self.busy_s += step_s
        self.served_s += step_s * (self.decoding + len(chunks))
        above_idle_w = energy_j / step_s - costs.gpus * costs.idle_w
        if above_idle_w < 0.0:
            raise ValueError(f"{costs.model}: a step drew less than idle power ({above_idle_w} W)")
        self._set_power(above_idle_w)
        self.t_s += step_s
        self.step += 1
        produced = self.decoding
        self.context_tokens += self.decoding  # each decoder's new token joins its context
        self._retire()
        produced += self._finish_prefills(chunks)
        if self.log is not None:
            self.log.duration_s.append(step_s)
            self.log.energy_j.append(energy_j)
            self.log.output_tokens.append(produced)
            self.log.queue_full.append(bool(self.waiting))

    def _retire(self) -> None:
        """Decoders whose last token this step made: their decode energy and shares."""
        ends, costs = self.ends, self.costs
        while ends and ends[0][0] == self.step:
            _, _, request = heapq.heappop(ends)
            request.end_s = self.t_s
            request.truth_j += (
                self.share_sum_j
                - request.share_mark
                + costs.decode_energy_j(request.input_tokens, request.output_tokens)
            )
            self.decoding -= 1
            self.context_tokens -= request.input_tokens + request.output_tokens

    def _finish_prefills(self, chunks: list[tuple[Request, int]]) -> int:
        """Prompts whose last chunk this step ran: their first token; decoding from the
        next step on (or done, for a one-token answer). Returns the first tokens made."""
        done = 0
        for request, chunk in chunks:
            request.prefilled += chunk
            if request.prefilled < request.input_tokens:
                continue
            done += 1
            request.first_s = self.t_s
            if request.output_tokens == 1:
                request.end_s = self.t_s
                continue
            request.share_mark = self.share_sum_j
            self.decoding += 1
            self.context_tokens += request.input_tokens + 1
            heapq.heappush(self.ends, (self.step + request.output_tokens - 1, request.id, request))
        if done:
            self.prefilling = [r for r in self.prefilling if r.prefilled < r.input_tokens]
        return done
