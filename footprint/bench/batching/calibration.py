"""The step cost model checked against what it was fitted to: J per output token of a
replica kept at batch ``B`` (as ML.ENERGY measures: a full queue, ``max_num_seqs = B``),
simulated with the chat workload's lengths, next to the published figure at ``B``."""

from __future__ import annotations

import math
import random
from dataclasses import replace
from typing import Any

from footprint.bench.batching.engine import Engine, Request
from footprint.demo.costs import COSTS, published_j_per_token
from footprint.demo.models import (
    INPUT_TOKENS,
    MEASUREMENTS_SOURCE,
    MODELS,
    OUTPUT_TOKENS,
    DemoModel,
)


def _log_uniform(rng: random.Random, lo: int, hi: int) -> int:
    return int(round(math.exp(rng.uniform(math.log(lo), math.log(hi)))))


def simulated_j_per_token(model: DemoModel, batch: int, seed: int = 0, waves: int = 6) -> float:
    """GPU energy (its idle floor included, as measured) per output token at ``batch``,
    over the steps while requests still queued (the batch kept full)."""
    costs = replace(COSTS[model.name], max_num_seqs=batch)
    rng = random.Random(seed)
    requests = [
        Request(i, 0.0, _log_uniform(rng, *INPUT_TOKENS), _log_uniform(rng, *OUTPUT_TOKENS), "chat")
        for i in range(waves * batch)
    ]
    log = Engine(costs, keep_log=True).run(requests).log
    assert log is not None
    energy_j = tokens = 0.0
    for step_j, produced, full in zip(log.energy_j, log.output_tokens, log.queue_full, strict=True):
        if full:
            energy_j += step_j
            tokens += produced
    return energy_j / tokens


def check(seed: int = 0) -> list[dict[str, Any]]:
    """Per model and measured batch size up to its ``max_num_seqs``: published and
    simulated J per output token, and the published range over every batch size."""
    out = []
    for model in MODELS:
        lo, hi = published_j_per_token(model)
        points = []
        for batch, tokens_per_s, watts in model.measured:
            if batch > model.max_num_seqs:
                continue
            simulated = simulated_j_per_token(model, batch, seed)
            points.append(
                {
                    "batch": batch,
                    "published_j_per_token": round(watts / tokens_per_s, 4),
                    "simulated_j_per_token": round(simulated, 4),
                }
            )
        out.append(
            {
                "model": model.name,
                "published_range_j_per_token": [round(lo, 4), round(hi, 4)],
                "source": MEASUREMENTS_SOURCE,
                "points": points,
            }
        )
    return out
