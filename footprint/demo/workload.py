"""The demo's traffic: bursts of requests over a simulated week, the same for a seed.

Requests come in bursts (a product's peak, a batch job, an agent fan-out: hundreds to
thousands of requests within minutes), a few a day: their start follows the hour of the
day, their size the day of the week. A burst's arrival rate ramps up over two cold
starts to 0.8-2.5 times what one replica serves at its batch limit, so queues, and with
them replicas, rise and fall. Prompt and response lengths are log-uniform, with means
near the ML.ENERGY chat workload's (242 input and 677 output tokens). 1.5 % of the
requests fail part-way (a client timeout) and leave the batch. The burst sizes and rates
are *assumptions*.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import datetime, timezone

from footprint.demo.models import (
    INPUT_TOKENS,
    MODELS,
    OUTPUT_TOKENS,
    DemoModel,
)

# Monday 2 March 2026, 00:00 UTC: the simulated week starts here, whatever today is.
DEMO_EPOCH = datetime(2026, 3, 2, tzinfo=timezone.utc)
DEMO_DAYS = 7
DEMO_QUERIES = 20_000  # enough for a few bursts a day that fill the batches

BURST_LOAD = (0.8, 2.5)  # peak arrival rate, in units of one replica's rate at its limit
BURST_RAMP = 2.0  # the rate rises to its peak over this many cold starts
ERROR_RATE = 0.015

# When bursts come: relative weight of each UTC hour (a US-centred service) for their
# start, and relative size by weekday (Mon..Sun).
HOURLY = (
    0.35,
    0.3,
    0.25,
    0.2,
    0.2,
    0.25,
    0.35,
    0.5,
    0.7,
    0.85,
    0.95,
    1.0,
    1.0,
    1.0,
    1.0,
    1.0,
    0.95,
    0.9,
    0.85,
    0.8,
    0.7,
    0.6,
    0.5,
    0.4,
)
WEEKDAY = (1.0, 1.05, 1.1, 1.05, 0.95, 0.55, 0.45)
# The teams whose bursts each model serves (the ``team`` tag; see the module docstring).
TEAMS = {"llama-3.1-8b": ("search", "support"), "llama-3.1-70b": ("research", "support")}


@dataclass(eq=False)
class Request:
    """One request: what it asks, and (filled by the scheduler) when it ran."""

    id: int
    model: DemoModel
    arrival_s: float  # offset from the epoch, simulated seconds
    input_tokens: int
    output_tokens: int
    fails: bool
    fail_at: float = 1.0  # share of its output tokens made when a failing request gives up
    team: str = ""  # the team whose burst it belongs to (its ``team`` tag)
    admit_s: float = math.nan  # joined a replica's batch
    first_s: float | None = None  # first output token
    end_s: float = math.nan
    prefilled: int = 0  # prompt tokens processed so far (the scheduler's)

    @property
    def served_tokens(self) -> int:
        """Output tokens it gets before it ends: all of them, or, for a request whose
        client gives up, its ``fail_at`` share of them (at least the first)."""
        if self.fails:
            return max(1, math.floor(self.output_tokens * self.fail_at))
        return self.output_tokens


def plan_workload(queries: int, seed: int, days: int = DEMO_DAYS) -> list[Request]:
    """The requests of the simulated period, by arrival time (deterministic per seed)."""
    rng = random.Random(seed)
    team_rng = random.Random(f"teams-{seed}")
    models = list(MODELS)
    requests: list[Request] = []
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
        size = min(budget[model.name], max(1, size))
        budget[model.name] -= size
        team = team_rng.choice(TEAMS[model.name])
        requests += _burst(rng, model, t, size, team)
    requests.sort(key=lambda r: r.arrival_s)
    for n, r in enumerate(requests):
        r.id = n
    return requests


def _burst(
    rng: random.Random, model: DemoModel, start_s: float, size: int, team: str
) -> list[Request]:
    """``size`` requests to ``model`` from ``start_s``, their rate ramping up to its peak."""
    peak = model.requests_per_s * rng.uniform(*BURST_LOAD)
    ramp_s = BURST_RAMP * model.cold_start_s
    t = start_s
    out = []
    for _ in range(size):
        fails = rng.random() < ERROR_RATE
        out.append(
            Request(
                id=0,
                model=model,
                arrival_s=t,
                input_tokens=round(_log_uniform(rng, *INPUT_TOKENS)),
                output_tokens=round(_log_uniform(rng, *OUTPUT_TOKENS)),
                fails=fails,
                fail_at=rng.uniform(0.2, 0.8) if fails else 1.0,
                team=team,
            )
        )
        t += rng.expovariate(peak * min(1.0, 0.05 + (t - start_s) / ramp_s))
    return out


def _log_uniform(rng: random.Random, low: float, high: float) -> float:
    """Many small values, some large ones."""
    return math.exp(rng.uniform(math.log(low), math.log(high)))
