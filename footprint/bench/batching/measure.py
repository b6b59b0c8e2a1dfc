"""Each attribution rule's records against the truth: the benchmark's figures."""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from footprint.bench.batching.drive import RULES, Driven, Rule, drive
from footprint.bench.batching.engine import Engine, Request, Served
from footprint.bench.batching.traffic import SCENARIOS, Scenario
from footprint.demo.costs import COSTS, StepCosts

TARGET_P95_PCT = 5.0  # per-request p95 error, for a rule that weighs the work done
TARGET_TOTAL_PCT = 1.0
TARGET_BOUND_COVERAGE_PCT = 95.0


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile ``q`` (0-100) of ``values`` (not empty)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[rank - 1]


def _round(value: float, digits: int = 3) -> float:
    return round(value, digits)


def judge(requests: list[Request], driven: Driven) -> dict[str, Any]:
    """Per-request and total error of one rule's records, bound coverage, CPU cost."""
    errors_pct: list[float] = []
    by_kind: dict[str, list[float]] = defaultdict(list)
    covered = missing = 0
    bound_ratios: list[float] = []
    energy_sum_j = truth_sum_j = 0.0
    for request in requests:
        record = driven.records.get(request.id)
        energy_j = None if record is None else record.get("energy_j")
        if record is None or energy_j is None:
            missing += 1
            continue
        truth_j = request.truth_j
        error_pct = (energy_j - truth_j) / truth_j * 100.0
        errors_pct.append(error_pct)
        by_kind[request.kind].append(error_pct)
        energy_sum_j += energy_j
        truth_sum_j += truth_j
        uncertainty_j = record.get("energy_uncertainty_j")
        if uncertainty_j is not None and abs(energy_j - truth_j) <= uncertainty_j:
            covered += 1
        if uncertainty_j is not None and energy_j > 0:
            bound_ratios.append(uncertainty_j / energy_j)
    absolute = [abs(e) for e in errors_pct] or [math.nan]
    judged = len(errors_pct)
    return {
        "records": judged,
        "missing": missing,
        "per_request_error_pct": {
            "p50": _round(percentile(absolute, 50)),
            "p95": _round(percentile(absolute, 95)),
            "max": _round(max(absolute)),
        },
        "signed_mean_error_pct": {
            kind: _round(sum(v) / len(v)) for kind, v in sorted(by_kind.items())
        },
        "total_error_pct": _round((energy_sum_j - truth_sum_j) / truth_sum_j * 100.0)
        if truth_sum_j
        else None,
        "bound_coverage_pct": _round(covered / judged * 100.0, 2) if judged else None,
        "median_bound_over_energy": _round(percentile(bound_ratios, 50)) if bound_ratios else None,
        "runtime_us_per_span": _round(driven.process_s / max(1, driven.spans) * 1e6, 2),
        "cycles_us_per_span": _round(driven.cycles_process_s / max(1, driven.spans) * 1e6, 2),
    }


def model_weights(costs: StepCosts) -> tuple[float, float, float, float]:
    """The weights that would make each share right: the engine's own step costs per
    GPU (F J per step, α and β J per token, γ J per token of context)."""
    gpus = costs.gpus
    return (
        costs.fixed_j / gpus,
        costs.prefill_j_per_token / gpus,
        costs.seq_j / gpus,
        costs.seq_j_per_context_token / gpus,
    )


def weights_over_model(driven: Driven, costs: StepCosts) -> dict[str, float] | None:
    """The token rule's learned weights over the cost model's (per GPU, averaged over
    the GPUs that learned them): how far the fit is from the truth; None if none did."""
    learned = [theta for theta in driven.weights if theta is not None]
    if not learned:
        return None
    model = model_weights(costs)
    names = ("fixed", "prefill", "decode", "context")
    return {
        name: _round(sum(theta[i] for theta in learned) / len(learned) / model[i])
        for i, name in enumerate(names)
    }


def conservation_residual_j(served: Served, costs: StepCosts, driven: Driven) -> float:
    """The GPUs' exact energy less idle power while no step ran, less the truths: 0 to
    float precision when the truth conserves energy."""
    idle_j = costs.gpus * costs.idle_w * (driven.counted_s - served.busy_s)
    return driven.counter_j - idle_j - math.fsum(r.truth_j for r in served.requests)


def truth_summary(served: Served, costs: StepCosts, residual_j: float) -> dict[str, Any]:
    """What the simulated server did, and the truth's conservation against the counter."""
    requests = served.requests
    truth_j = math.fsum(r.truth_j for r in requests)
    output_tokens = sum(r.output_tokens for r in requests)
    kinds: dict[str, list[Request]] = defaultdict(list)
    for r in requests:
        kinds[r.kind].append(r)
    return {
        "requests": len(requests),
        "simulated_s": _round(served.end_s, 2),
        "steps": served.steps,
        "truth_j": _round(truth_j, 3),
        "busy_s": _round(served.busy_s, 2),
        "mean_batch": _round(served.served_s / served.busy_s, 1),
        "mean_wait_s": _round(sum(r.admit_s - r.arrival_s for r in requests) / len(requests), 3),
        "j_per_output_token": _round(truth_j / output_tokens, 4),
        "conservation_residual_j": residual_j,
        "kinds": {
            kind: {
                "requests": len(rs),
                "mean_truth_j": _round(sum(r.truth_j for r in rs) / len(rs), 3),
                "mean_duration_s": _round(sum(r.end_s - r.arrival_s for r in rs) / len(rs), 3),
                "mean_power_w": _round(
                    sum(r.truth_j / (r.end_s - r.arrival_s) for r in rs) / len(rs), 2
                ),
            }
            for kind, rs in sorted(kinds.items())
        },
    }


def run_scenario(
    scenario: Scenario,
    requests: int,
    seed: int,
    rules: Sequence[Rule] = RULES,
    path: str = "simulated",
    lead_s: float = 0.0,
    first_token: bool = True,
) -> dict[str, Any]:
    """One scenario: the served truth, then each rule's figures against it, its GPUs
    read on ``path`` (``counters.PATHS``), the first request ``lead_s`` after the
    runtime's first sample (0: a fresh process whose first footprint action is it);
    without ``first_token``, no request marks its first token (not streamed)."""
    costs = COSTS[scenario.model.name]
    served = Engine(costs).run(scenario.requests(requests, seed))
    results = {}
    residual_j = math.nan
    for rule in rules:
        driven = drive(served, costs, rule, seed, path, lead_s, first_token)
        residual_j = conservation_residual_j(served, costs, driven)
        results[rule.name] = judge(served.requests, driven)
        ratios = weights_over_model(driven, costs)
        if ratios is not None:
            results[rule.name]["weights_over_model"] = ratios
    return {
        "name": scenario.name,
        "model": scenario.model.name,
        "gpus": costs.gpus,
        "truth": truth_summary(served, costs, residual_j),
        "rules": results,
    }


def across_seeds(runs: Sequence[dict[str, Any]], seeds: Sequence[int]) -> dict[str, Any]:
    """Per scenario and rule, the per-request p95 error of each seed's run (``runs``:
    ``run_scenario`` results, seed by seed), its mean and its largest, and how many
    seeds met the p95 target: the figure a seed's traffic and jitter move."""
    by_name: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for result in runs:
        for rule, figures in result["rules"].items():
            by_name[result["name"]][rule].append(figures["per_request_error_pct"]["p95"])
    return {
        "seeds": list(seeds),
        "per_request_p95_pct": {
            name: {
                rule: {
                    "by_seed": values,
                    "mean": _round(sum(values) / len(values)),
                    "max": max(values),
                    "seeds_within_target": sum(v <= TARGET_P95_PCT for v in values),
                }
                for rule, values in rules.items()
            }
            for name, rules in by_name.items()
        },
    }


def run(
    requests: int = 2000,
    seed: int = 1,
    names: Sequence[str] | None = None,
    rules: Sequence[Rule] = RULES,
    progress: Callable[[str], None] | None = None,
    seeds: int = 1,
    path: str = "simulated",
    first_token: bool = True,
) -> dict[str, Any]:
    """Every scenario (or those named) with ``requests`` requests each, the GPUs read on
    ``path`` (without ``first_token``: no request marks its first token); with ``seeds``
    above 1, again under the next seeds (``seed + 1``, ...), summed up in
    ``across_seeds``."""
    from footprint.bench.batching.calibration import check

    started = time.monotonic()
    scenarios = []
    runs = []
    chosen = [s for s in SCENARIOS if not names or s.name in names]
    for offset in range(seeds):
        for scenario in chosen:
            if progress is not None:
                progress(f"{scenario.name}: {requests} requests, seed {seed + offset}")
            result = run_scenario(
                scenario, requests, seed + offset, rules, path, first_token=first_token
            )
            runs.append(result)
            if offset == 0:
                scenarios.append(result)
    extra = {"across_seeds": across_seeds(runs, range(seed, seed + seeds))} if seeds > 1 else {}
    return {
        "benchmark": "batching",
        "path": path,
        "first_token": first_token,
        "seed": seed,
        "requests_per_scenario": requests,
        "rules": [rule.name for rule in rules],
        "scenarios": scenarios,
        **extra,
        "calibration": check(seed),
        "targets": {
            "per_request_p95_pct": TARGET_P95_PCT,
            "total_pct": TARGET_TOTAL_PCT,
            "bound_coverage_pct": TARGET_BOUND_COVERAGE_PCT,
        },
        "elapsed_s": _round(time.monotonic() - started, 2),
    }
