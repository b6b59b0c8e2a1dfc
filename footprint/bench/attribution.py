"""Attribution cost per span at a fixed number of spans running at once on one GPU.

Synthetic traffic on one ``DeviceResolver``: spans arrive every ``arrival_gap_s`` and
each lasts ``concurrent × arrival_gap_s``, so ``concurrent`` spans run at any instant;
the counter is sampled every 100 ms and the resolver runs once per simulated second, as
the runtime does. The figure is the wall time of announcing, ending and resolving the
spans, per span. The cost must not grow with concurrency (running integrals).

Each level runs under the equal split and under the token rule (``attribution =
"tokens"``: each span ends with token counts and a time to first token, and the weights
are given as a fit leaves them, so that every window is shared by them); the ratio of
the two costs is reported.
"""

from __future__ import annotations

import random
import time
from typing import Any

from footprint.attribution import DeviceResolver
from footprint.attribution.placement import SpanTokens

SAMPLE_PERIOD_S = 0.1
CYCLE_S = 1.0


# Weights as a fit leaves them (J per step, per prefill token, per decode token, per
# decode token and context token) with a 1 % spread: the token rule's shares and bounds.
GIVEN_THETA = (2.0, 0.02, 0.03, 4e-5)


def resolve_cost(
    concurrent: int, spans: int, arrival_gap_s: float = 0.001, rule: str = "equal"
) -> dict[str, Any]:
    """Feed ``spans`` spans with ``concurrent`` of them running at once; time it."""
    rng = random.Random(concurrent)
    duration_s = concurrent * arrival_gap_s
    starts = [1000.0 + i * arrival_gap_s for i in range(spans)]
    horizon_s = starts[-1] + duration_s + 2 * SAMPLE_PERIOD_S
    resolver = DeviceResolver(rule=rule)
    # Plain tuples, made into ``SpanTokens`` at each end as a caller does: a list of
    # named tuples would hold ``spans`` objects the garbage collector keeps tracking,
    # and its passes over them would be timed as the resolver's.
    tokens: list[tuple[int, int, float] | None] = [None] * spans
    if rule == "tokens":
        resolver.weights.theta = GIVEN_THETA
        resolver.weights.covariance = [
            [(0.01 * v) ** 2 if i == j else 0.0 for j, v in enumerate(GIVEN_THETA)]
            for i in range(len(GIVEN_THETA))
        ]
        tokens = [
            (rng.randint(16, 4096), rng.randint(2, 1024), duration_s / 4) for _ in range(spans)
        ]
    energy_j, t_s = 0.0, 999.95
    resolver.add_samples([(t_s, energy_j)])
    next_start = next_end = 0
    completed = 0
    cycle_end_s = 1000.0 + CYCLE_S
    begin, end, add_samples, resolve = (
        resolver.begin,
        resolver.end,
        resolver.add_samples,
        resolver.resolve,
    )
    clock = time.perf_counter
    started = clock()
    while completed < spans:
        # One simulated cycle: the spans that started and ended in it, then its samples.
        while next_start < spans and starts[next_start] < cycle_end_s:
            begin(next_start, starts[next_start])
            next_start += 1
        while next_end < next_start and starts[next_end] + duration_s < cycle_end_s:
            counts = tokens[next_end]
            end(next_end, starts[next_end] + duration_s, counts and SpanTokens(*counts))
            next_end += 1
        samples = []
        while t_s + SAMPLE_PERIOD_S <= min(cycle_end_s, horizon_s + SAMPLE_PERIOD_S):
            t_s += SAMPLE_PERIOD_S
            energy_j += SAMPLE_PERIOD_S * rng.uniform(300.0, 400.0)
            samples.append((t_s, energy_j))
        add_samples(samples)
        completed += len(resolve(until_s=cycle_end_s))
        cycle_end_s += CYCLE_S
    elapsed_s = clock() - started
    return {
        "rule": rule,
        "concurrent": concurrent,
        "spans": spans,
        "us_per_span": round(elapsed_s / spans * 1e6, 3),
    }


def run(concurrency: tuple[int, ...] = (100, 1000, 4000), spans: int = 40_000) -> dict[str, Any]:
    """The cost per span at each concurrency, and the ratio of the highest to the lowest."""
    resolve_cost(100, 2_000)  # warm-up: imports, allocator
    resolve_cost(100, 2_000, rule="tokens")
    runs, token_runs = [], []
    for c in concurrency:  # the two rules one after the other at each level
        runs.append(resolve_cost(c, max(spans, 5 * c)))
        token_runs.append(resolve_cost(c, max(spans, 5 * c), rule="tokens"))
    ratio = runs[-1]["us_per_span"] / max(runs[0]["us_per_span"], 1e-9)
    token_ratio = token_runs[-1]["us_per_span"] / max(token_runs[0]["us_per_span"], 1e-9)
    return {
        "benchmark": "attribution",
        "runs": runs,
        "ratio_highest_over_lowest": round(ratio, 3),
        "token_runs": token_runs,
        "token_ratio_highest_over_lowest": round(token_ratio, 3),
        "tokens_over_equal": [
            round(t["us_per_span"] / max(e["us_per_span"], 1e-9), 3)
            for e, t in zip(runs, token_runs, strict=True)
        ],
        "target_us_per_span": 10.0,
        "target_ratio": 1.5,
    }
