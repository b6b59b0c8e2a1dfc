"""The benchmark's traffic: which requests arrive when, per scenario and served model.

* ``two-kinds``: two fixed kinds of call, half each, arriving as a Poisson stream at 90 %
  of capacity: ``light`` (128 prompt tokens) and ``heavy`` (a 6,144-token prompt whose
  long context every decode step reads again), both answering 256 tokens, so both stay
  about as long in the batch while the heavy one draws about five times the power.
* ``mixed``: short (16-512) or long (2,048-8,192) prompts and short (16-128) or long
  (512-2,048) answers, a quarter each (log-uniform within), arriving at 70 % of
  capacity as a Poisson stream plus bursts of 16-64 requests within a second.
* ``untold``: the mixed traffic, but 1.5 % of the calls (the demo's error rate) report no
  token counts, as a caller's error path does: a batch of a hundred almost always holds
  one, and the token rule must still learn its weights around them.

The mean arrival rate is the scenario's ``load`` times what the replica completes of the
same traffic when every request waits from the start (its capacity: the engine kept
full). All lengths and rates are the benchmark's choices (*assumptions*), picked to span
what chat and RAG traffic sends.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

from footprint.bench.batching.engine import Engine, Request
from footprint.demo.costs import COSTS
from footprint.demo.models import MODELS, DemoModel

TWO_KINDS = {"light": (128, 256), "heavy": (6144, 256)}  # (input, output tokens)
PROMPTS = {"short-prompt": (16, 512), "long-prompt": (2048, 8192)}
ANSWERS = {"short-answer": (16, 128), "long-answer": (512, 2048)}
BURST_SIZE = (16, 64)
BURST_SHARE = 0.25  # of the mixed traffic's requests, arriving in bursts
UNTOLD_SHARE = 0.015  # of the untold traffic's requests: no token counts reported
CAPACITY_WAVES = 4  # capacity: this many batches' worth of requests, all waiting at 0


def _log_uniform(rng: random.Random, bounds: tuple[int, int]) -> int:
    lo, hi = bounds
    return int(round(math.exp(rng.uniform(math.log(lo), math.log(hi)))))


def two_kinds(count: int, rate: float, rng: random.Random) -> list[Request]:
    """Light and heavy calls, half each, in a Poisson stream of ``rate`` per second."""
    t_s, out = 0.0, []
    for i in range(count):
        t_s += rng.expovariate(rate)
        kind = rng.choice(sorted(TWO_KINDS))
        input_tokens, output_tokens = TWO_KINDS[kind]
        out.append(Request(i, t_s, input_tokens, output_tokens, kind))
    return out


def mixed(count: int, rate: float, rng: random.Random) -> list[Request]:
    """Four length classes, ``rate`` per second: a Poisson stream with bursts."""
    mean_burst = sum(BURST_SIZE) / 2
    burst_rate = rate * BURST_SHARE / mean_burst
    stream_rate = rate * (1.0 - BURST_SHARE)
    times: list[float] = []
    t_s = 0.0
    while len(times) < count:
        t_s += rng.expovariate(stream_rate + burst_rate)
        if rng.random() < burst_rate / (stream_rate + burst_rate):
            size = rng.randint(*BURST_SIZE)
            times.extend(t_s + rng.uniform(0.0, 1.0) for _ in range(size))
        else:
            times.append(t_s)
    times = sorted(times)[:count]
    out = []
    for i, arrival_s in enumerate(times):
        prompt = rng.choice(sorted(PROMPTS))
        answer = rng.choice(sorted(ANSWERS))
        out.append(
            Request(
                i,
                arrival_s,
                _log_uniform(rng, PROMPTS[prompt]),
                _log_uniform(rng, ANSWERS[answer]),
                f"{prompt}/{answer}",
            )
        )
    return out


def untold(count: int, rate: float, rng: random.Random) -> list[Request]:
    """The mixed traffic, ``UNTOLD_SHARE`` of it reporting no token counts."""
    out = mixed(count, rate, rng)
    for request in out:
        if rng.random() < UNTOLD_SHARE:
            request.tells_tokens = False
            request.kind = "untold"
    return out


@dataclass(frozen=True)
class Scenario:
    """A traffic shape on one served model."""

    name: str
    model: DemoModel
    traffic: Callable[[int, float, random.Random], list[Request]]
    load: float  # mean arrival rate, share of the replica's capacity for this traffic

    def capacity_per_s(self, seed: int) -> float:
        """Requests per second the replica completes of this traffic when all wait."""
        count = CAPACITY_WAVES * self.model.max_num_seqs
        sample = self.traffic(count, 1.0, random.Random(f"{self.name}:capacity:{seed}"))
        for request in sample:
            request.arrival_s = 0.0
        served = Engine(COSTS[self.model.name]).run(sample)
        return count / served.end_s

    def requests(self, count: int, seed: int) -> list[Request]:
        """``count`` requests of this scenario, the same for the same seed."""
        rate = self.load * self.capacity_per_s(seed)
        return self.traffic(count, rate, random.Random(f"{self.name}:{seed}"))


SCENARIOS = tuple(
    Scenario(f"{shape}/{model.name}", model, traffic, load)
    for shape, traffic, load in (("two-kinds", two_kinds, 0.9), ("mixed", mixed, 0.7))
    for model in MODELS
) + (Scenario(f"untold/{MODELS[0].name}", MODELS[0], untold, 0.7),)
