"""What ``footprint demo`` prints: the report's per-model sums of the demo's database, with
the scheduler's figures (GPU-hours held and busy, batch sizes, waits) and the report's
$/GPU-hour and $ per 1M output tokens (``add_report_figures``).

The sums are read by the code that builds ``footprint report`` (``footprint.reporting``:
``read_sums`` for the per-model sums, ``Capacity`` for the energy measured and idle per
GPU), so the demo and its report cannot disagree on what the database holds. The demo's
database holds its own rows only (``prepare_db`` starts it afresh).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from footprint.demo.costs import COSTS
from footprint.demo.models import (
    GPU_IDLE_W,
    GPU_NAME,
    GPU_TDP_W,
    MEASUREMENTS_SOURCE,
    MODELS,
    DemoModel,
)
from footprint.demo.scheduler import KEEP_WARM_S, Replica, Scheduler
from footprint.demo.workload import Request
from footprint.reporting.capacity import Capacity, idle_rows
from footprint.reporting.database import open_report_engine, prepare_rollups, read_error
from footprint.reporting.grouped import read_sums
from footprint.reporting.request import ReportError, ReportRequest
from footprint.reporting.sums import Fold


def read_database(db: str) -> tuple[Fold, Capacity]:
    """The report's sums of every query in ``db`` (per model: ``Fold.by_model``) and its
    GPUs' measured, idle and lost energy (``Capacity``). ``ReportError`` if unreadable."""
    request = ReportRequest(db=db)
    engine = open_report_engine(db)
    try:
        problem = prepare_rollups(engine)
        with engine.connect() as conn:
            capacity = Capacity(idle_rows(conn, engine, request))
            fold, _note = read_sums(conn, engine, request, problem)
    except SQLAlchemyError as exc:
        raise ReportError(read_error(db, exc)) from None
    finally:
        engine.dispose()
    return fold, capacity


def summarize(db: str, fold: Fold, capacity: Capacity) -> dict[str, Any]:
    """Totals and per-model figures of the demo's database (as ``read_database`` read it).

    ``idle_energy_j`` is the GPUs' idle energy without the energy of calls never stored
    (``lost_energy_j``), so that measured = attributed + idle + lost.
    """
    models = {}
    for name in sorted(fold.by_model):
        sums = fold.by_model[name]
        tokens_out = sums["output_tokens"]
        models[name] = {
            "queries": sums["queries"],
            "errors": sums["errors"],
            "energy_j": sums["energy_j"],
            "gpu_seconds": sums["gpu_seconds"],
            "input_tokens": sums["input_tokens"],
            "output_tokens": tokens_out,
            "j_per_output_token": sums["energy_j"] / tokens_out if tokens_out else None,
        }
    measured_j = sum(capacity.measured_j.values())
    lost_j = capacity.lost_j
    idle_j = sum(capacity.idle_j.values()) - lost_j
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


def add_serving(
    summary: dict[str, Any],
    requests: list[Request],
    replicas: list[Replica],
    devices: dict[str, str],
    scheduler: Scheduler,
    capacity: Capacity,
) -> None:
    """Held vs busy GPU-hours, batch sizes and waits, per model; the GPU pool.

    Busy GPU-hours are the GPU-seconds footprint attributed to the requests; held ones
    are the scheduler's (every GPU of every replica from provisioning to release, which
    is also exactly what the runtimes measured). A model's idle energy is that of its
    GPUs (``devices``: GPU UUID -> model), as the report counts it (``Capacity.idle_j``).
    """
    held_total = busy_total = 0.0
    for model in MODELS:
        m = summary["models"].get(model.name)
        if m is None:
            continue
        idle_j = sum(j for uuid, j in capacity.idle_j.items() if devices.get(uuid) == model.name)
        held_h = _model_serving(m, model, requests, replicas, idle_j)
        held_total += held_h
        busy_total += m["busy_gpu_hours"]
    summary["gpus"] = {
        "gpu": GPU_NAME,
        "pool": scheduler.pool,
        "peak_held": scheduler.peak_gpus,
        "idle_w": GPU_IDLE_W,
        "tdp_w": GPU_TDP_W,
        "held_gpu_hours": held_total,
        "busy_gpu_hours": busy_total,
        "utilization": busy_total / held_total if held_total else None,
        "measurements_source": MEASUREMENTS_SOURCE,
        "keep_warm_s": KEEP_WARM_S,
    }


def _model_serving(
    m: dict[str, Any],
    model: DemoModel,
    requests: list[Request],
    replicas: list[Replica],
    idle_j: float,
) -> float:
    """Add one model's serving figures to its summary ``m``; returns its GPU-hours held."""
    mine = [r for r in replicas if r.model is model]
    held_h = sum(r.end_s - r.start_s for r in mine) * model.gpus_per_replica / 3600.0
    busy_h = m["gpu_seconds"] / 3600.0
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
        first_token_after_arrival_s={
            "p50": _percentile(waits, 0.5),
            "p95": _percentile(waits, 0.95),
        }
        if waits
        else None,
        held_gpu_hours=held_h,
        busy_gpu_hours=busy_h,
        idle_energy_j=idle_j,
        j_per_output_token_fully_loaded=(m["energy_j"] + idle_j) / tokens if tokens else None,
        # What the simulated GPUs draw for a prompt token (the cost model's a), per 1M.
        model_prefill_j_per_1m_input_tokens=COSTS[model.name].prefill_j_per_token * 1e6,
    )
    return held_h


def add_report_figures(summary: dict[str, Any], report: dict[str, Any]) -> None:
    """The money of the report built from the demo's database, so that the demo and its
    report quote one price: the $/GPU-hour the records were priced with (None if they
    carry several) and its source, and per model the report's $ per 1M output tokens
    (``busy``: attributed cost, ``held``: fully loaded with the idle GPU time held) and its
    J and $ per 1M input tokens (prefill) and per 1M output tokens (decode)."""
    prices = {(f["usd_per_gpu_hour"], f["sources"].get("gpu_price_ref")) for f in report["factors"]}
    price, source = prices.pop() if len(prices) == 1 else (None, None)
    summary.setdefault("gpus", {}).update(
        usd_per_gpu_hour=price,
        usd_per_gpu_hour_source=source,
        # Each replica slot has simulated GPUs of its own: more GPUs are measured over the
        # period than the pool holds at once (``peak_held``).
        gpus_measured=report["measurement"]["gpus"],
    )
    for entry in report["models"]:
        m = summary["models"].get(entry["model"])
        if m is not None:
            per_1m = entry["per_1m_output_tokens"]
            m["usd_per_1m_output_tokens"] = {
                "busy": per_1m["cost_usd"],
                "held": per_1m["fully_loaded_cost_usd"],
            }
            # The report's prefill energy per 1M input tokens and decode energy per 1M
            # output tokens, with their cost (the queries split at their first token).
            phase = entry["per_1m_phase_tokens"]
            m["per_1m_phase_tokens"] = {
                "queries": phase["queries"],
                "input": {
                    "energy_j": phase["input"]["energy_j"],
                    "cost_usd": phase["input"]["cost_usd"],
                },
                "output": {
                    "energy_j": phase["output"]["energy_j"],
                    "cost_usd": phase["output"]["cost_usd"],
                },
            }


def _mean_batch(replicas: list[Replica]) -> float | None:
    """Requests in the batch, averaged over the time the replicas ran any."""
    weighted_s = running_s = 0.0
    for r in replicas:
        for (t0, size), (t1, _) in zip(r.load_steps, [*r.load_steps[1:], (r.end_s, 0)]):
            if size:
                weighted_s += size * (t1 - t0)
                running_s += t1 - t0
    return weighted_s / running_s if running_s else None


def _peak_overlap(replicas: list[Replica]) -> int:
    """The most of these replicas held at the same time."""
    edges = sorted([(r.start_s, 1) for r in replicas] + [(r.end_s, -1) for r in replicas])
    held = peak = 0
    for _, change in edges:
        held += change
        peak = max(peak, held)
    return peak


def _percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
