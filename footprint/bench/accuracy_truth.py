"""Judging an accuracy run: each record beside its exact energy (the equal share of each
stretch among the calls running, and each call's own energy where loads differ), and the
error figures of a scenario."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from footprint.bench.accuracy_runs import Run
from footprint.bench.accuracy_scenarios import BUSY_W, IDLE_W, UPDATE_PERIOD_S, Scenario

# -- truth ------------------------------------------------------------------------------


def truth_j(
    spans: list[tuple[float, float]], energy_j: Callable[[float, float], float]
) -> list[float]:
    """Each span's exact share: every stretch's energy split equally among its spans."""
    edges = sorted({t for span in spans for t in span})
    order = sorted(range(len(spans)), key=lambda k: spans[k][0])
    truth = [0.0] * len(spans)
    active: set[int] = set()
    cursor = 0
    for a, b in zip(edges, edges[1:]):
        while cursor < len(order) and spans[order[cursor]][0] <= a:
            active.add(order[cursor])
            cursor += 1
        active = {k for k in active if spans[k][1] > a}
        if active:
            each_j = energy_j(a, b) / len(active)
            for k in active:
                truth[k] += each_j
    return truth


def _own_energy_j(spans: list[tuple[float, float]], loads: list[float], gpu: Any) -> list[float]:
    """Each span's own energy: idle power shared equally, the power above idle split by
    the calls' loads (what each call itself drew)."""
    edges = sorted({t for span in spans for t in span})
    own = [0.0] * len(spans)
    for a, b in zip(edges, edges[1:]):
        active = [k for k, (s, e) in enumerate(spans) if s <= a and e > a]
        if not active:
            continue
        total_j = gpu.true_energy_j(a, b)
        idle_j = IDLE_W * (b - a)
        load = sum(loads[k] for k in active)
        for k in active:
            own[k] += idle_j / len(active) + (total_j - idle_j) * loads[k] / load
    return own


def _gpu_model(seed: int, noise: float = 0.0) -> Any:
    from footprint.sensors.simulated import SimulatedGpu, SimulatedGpuSpec

    spec = SimulatedGpuSpec(
        idle_w=IDLE_W, busy_w=BUSY_W, update_period_s=UPDATE_PERIOD_S, noise=noise, seed=seed
    )
    return lambda index: SimulatedGpu(index, spec)


def _epoch_s(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp()


# -- figures ----------------------------------------------------------------------------


def _percentiles(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    ordered = sorted(values)

    def rank(q: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, int(q * len(ordered) + 0.999999) - 1))]

    return {"p50": round(rank(0.5), 4), "p95": round(rank(0.95), 4), "max": round(ordered[-1], 4)}


@dataclass
class Judged:
    """One record beside its truth."""

    model: str
    start_s: float
    end_s: float
    measured_j: float
    truth_j: float
    bound_j: float | None
    source: str
    own_j: float | None = None
    run: int = 0  # which process (repeat) made the call


def judge(run: Run, path: str, seed: int) -> list[Judged]:
    """Every record of a run beside its true energy (and its own, where loads differ)."""
    gpu_of = _gpu_model(seed)
    rows = run.rows
    spans = [
        (_epoch_s(r["started_at"]) - run.wall_offset_s, _epoch_s(r["ended_at"]) - run.wall_offset_s)
        for r in rows
    ]
    judged = [
        Judged(
            r["model"],
            a,
            b,
            r["energy_j"] or 0.0,
            0.0,
            r["energy_uncertainty_j"],
            r["energy_source"],
            0.0,
        )
        for r, (a, b) in zip(rows, spans)
    ]
    for index, uuid in enumerate(run.uuids):
        mine = [k for k, r in enumerate(rows) if uuid in json.loads(r["gpus"] or "[]")]
        gpu = gpu_of(index)
        if path == "simulated":  # the simulated GPUs carry each span's load, 1.0
            for k in mine:
                gpu.add_load(spans[k][0], spans[k][1], 1.0)
        else:
            for gpu_index, t_s, delta in run.steps:
                if gpu_index == index:
                    gpu.add_step(t_s, delta)
        my_spans = [spans[k] for k in mine]
        for k, true_j in zip(mine, truth_j(my_spans, gpu.true_energy_j)):
            judged[k].truth_j += true_j
        loads = [0.2 if rows[k]["model"] == "light" else 1.0 for k in mine]
        for k, own_j in zip(mine, _own_energy_j(my_spans, loads, gpu)):
            judged[k].own_j = (judged[k].own_j or 0.0) + own_j
    return judged


def _error_pct(measured: float, truth: float) -> float | None:
    return (measured - truth) / truth * 100 if truth > 0 else None


def figures(scenario: Scenario, path: str, judged: list[Judged]) -> dict[str, Any]:
    errors = [abs(e) for j in judged if (e := _error_pct(j.measured_j, j.truth_j)) is not None]
    long_errors = [
        abs(e)
        for j in judged
        if j.end_s - j.start_s >= 1.0 and (e := _error_pct(j.measured_j, j.truth_j)) is not None
    ]
    covered = [
        j.bound_j is not None and abs(j.measured_j - j.truth_j) <= j.bound_j + 1e-9 for j in judged
    ]
    measured = sum(j.measured_j for j in judged)
    truth = sum(j.truth_j for j in judged)
    signed = _error_pct(measured, truth)
    result: dict[str, Any] = {
        "name": f"{scenario.name} · {path}",
        "scenario": scenario.name,
        "path": path,
        "description": scenario.description,
        "queries": len(judged),
        "total_error_pct": None if signed is None else round(abs(signed), 4),
        "total_signed_error_pct": None if signed is None else round(signed, 4),
        "per_query_error_pct": _percentiles(errors),
        "long_queries": len(long_errors),
        "long_query_error_pct": _percentiles(long_errors),
        "within_bound_pct": round(100 * sum(covered) / len(covered), 2) if covered else None,
        "estimated_records": sum(j.source == "estimated" for j in judged),
        "unbounded_records": sum(j.bound_j is None for j in judged),
        "zero_energy_records": sum(j.measured_j <= 0.0 < j.truth_j for j in judged),
    }
    if "warmup" in scenario.extra:
        result["first_calls"] = _first_calls(judged)
    if "own_energy" in scenario.extra:
        result["vs_own_energy"] = _own(judged)
    return result


def _first_calls(judged: list[Judged]) -> dict[str, Any]:
    """Total error of the first 10 / 50 / 200 calls of each process, all processes
    together, and how the first 10 fare one by one."""
    by_run: dict[int, list[Judged]] = {}
    for j in judged:
        by_run.setdefault(j.run, []).append(j)
    runs = [sorted(calls, key=lambda j: j.start_s) for calls in by_run.values()]
    out: dict[str, Any] = {}
    for n in (10, 50, 200):
        firsts = [j for run in runs for j in run[:n]]
        signed = _error_pct(sum(j.measured_j for j in firsts), sum(j.truth_j for j in firsts))
        out[f"first_{n}_total_signed_error_pct"] = None if signed is None else round(signed, 4)
    firsts = [j for run in runs for j in run[:10]]
    errors = [abs(e) for j in firsts if (e := _error_pct(j.measured_j, j.truth_j)) is not None]
    covered = [
        j.bound_j is not None and abs(j.measured_j - j.truth_j) <= j.bound_j + 1e-9 for j in firsts
    ]
    stats = _percentiles(errors)
    out["first_10_median_error_pct"] = stats["p50"] if stats is not None else None
    out["first_10_within_bound_pct"] = (
        round(100 * sum(covered) / len(covered), 2) if covered else None
    )
    return out


def _own(judged: list[Judged]) -> dict[str, Any]:
    """Per kind of call, the error against the rule's target and against its own energy."""
    out: dict[str, Any] = {}
    for model in sorted({j.model for j in judged}):
        mine = [j for j in judged if j.model == model]
        measured = sum(j.measured_j for j in mine)
        rule = _error_pct(measured, sum(j.truth_j for j in mine))
        own = _error_pct(measured, sum(j.own_j or 0.0 for j in mine))
        out[model] = {
            "queries": len(mine),
            "vs_rule_signed_error_pct": None if rule is None else round(rule, 2),
            "vs_own_energy_signed_error_pct": None if own is None else round(own, 2),
        }
    return out
