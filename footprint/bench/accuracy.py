"""Attribution accuracy against the simulator's exact energy, through the public API.

Fixed scenarios run in real time through ``footprint.track`` with the real sampler
thread, resolver and SQLite store, on simulated GPUs that the calls themselves load
(``workload=spans``). The truth of a record is the simulator's exact energy over the
call, shared equally with the calls that overlapped it on the same GPU (the attribution
rule at infinite resolution). Each scenario reports the total error and the per-query
error distribution; ``--write`` stores the figures where reports quote them from.
"""

from __future__ import annotations

import json
import random
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import footprint
from footprint.tracking import get_runtime

IDLE_W, BUSY_W, UPDATE_PERIOD_S, SAMPLING_PERIOD_S = 60.0, 400.0, 0.1, 0.05

NOT_COVERED = (
    "The simulated counter reports the exact energy at each 100 ms tick; real GPUs "
    "average power over part of each window and their counters carry the sensor's own "
    "error (NVML: ±5% of the draw), and real busy power varies between and within calls, "
    "which the attribution rule (busy power shared equally among the calls running at each "
    "instant) does not see."
)


@dataclass(frozen=True)
class Scenario:
    """One fixed workload: ``drive(track, rng, seconds)`` makes the calls."""

    name: str
    description: str
    gpus: int
    noise: float
    seconds: float
    drive: Callable[[Callable[..., Any], random.Random, float], None]


def _sequential(call_s: tuple[float, float], gap_s: tuple[float, float]):
    def drive(track: Callable[..., Any], rng: random.Random, seconds: float) -> None:
        work = track(model="bench")(time.sleep)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            work(rng.uniform(*call_s))
            time.sleep(rng.uniform(*gap_s))

    return drive


def _threads(threads: int, call_s: tuple[float, float], pinned: bool):
    """``threads`` callers of overlapping calls; with ``pinned``, a third on each GPU."""

    def drive(track: Callable[..., Any], rng: random.Random, seconds: float) -> None:
        callers = [track(model="bench-all")(time.sleep)]
        if pinned:
            callers += [track(model="bench-gpu0", gpus=[0])(time.sleep),
                        track(model="bench-gpu1", gpus=[1])(time.sleep)]  # fmt: skip
        deadline = time.monotonic() + seconds
        plans = [random.Random(rng.random()) for _ in range(threads)]

        def loop(index: int) -> None:
            plan = plans[index]
            work = callers[index % len(callers)]
            time.sleep(plan.uniform(0, call_s[0]))
            while time.monotonic() < deadline:
                work(plan.uniform(*call_s))
                time.sleep(plan.uniform(0.0, 0.2))

        workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()

    return drive


SCENARIOS = (
    Scenario("short-sequential", "sequential 1–20 ms calls with 5–50 ms gaps",
             1, 0.0, 8.0, _sequential((0.001, 0.02), (0.005, 0.05))),
    Scenario("long-sequential", "sequential 1–3 s calls with 20–150 ms gaps",
             1, 0.0, 16.0, _sequential((1.0, 3.0), (0.02, 0.15))),
    Scenario("concurrent-16", "16 threads of overlapping 50 ms–2 s calls on one GPU",
             1, 0.0, 10.0, _threads(16, (0.05, 2.0), pinned=False)),
    Scenario("two-gpus", "two GPUs, 6 threads: calls pinned to GPU 0, to GPU 1, and on both",
             2, 0.0, 10.0, _threads(6, (0.05, 2.0), pinned=True)),
    Scenario("two-gpus-noise", "the same with 2% noise on every counter tick",
             2, 0.02, 10.0, _threads(6, (0.05, 2.0), pinned=True)),
)  # fmt: skip


def _truth_j(spans: list[tuple[float, float]], energy_j: Callable[[float, float], float]):
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


def _percentiles(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    ordered = sorted(values)

    def rank(q: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, int(q * len(ordered) + 0.999999) - 1))]

    return {"p50": round(rank(0.5), 4), "p95": round(rank(0.95), 4), "max": round(ordered[-1], 4)}


def _epoch_s(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp()


def run_scenario(scenario: Scenario, scale: float = 1.0, seed: int = 1) -> dict[str, Any]:
    """Run one scenario in a fresh runtime; compare every record with the truth."""
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "accuracy.db"
        footprint.configure(
            db=str(db),
            sensor=(f"simulated:gpus={scenario.gpus},idle_w={IDLE_W:g},busy_w={BUSY_W:g},"
                    f"update_period_s={UPDATE_PERIOD_S:g},noise={scenario.noise:g},seed={seed}"),
            sampling_period_s=SAMPLING_PERIOD_S,
            cpu=False,
            region="FRA",
        )  # fmt: skip
        runtime = get_runtime()
        assert runtime is not None
        sensor, offset_s = runtime.gpu_sensor, runtime.wall_offset_s
        uuids = [device.uuid for device in runtime.gpu_devices]
        time.sleep(0.3)  # a process that has just started: the first calls count too
        scenario.drive(footprint.track, random.Random(seed), scenario.seconds * scale)
        footprint.shutdown()
        con = sqlite3.connect(db)
        rows = con.execute(
            "SELECT started_at, ended_at, gpus, energy_j, energy_uncertainty_j FROM queries"
        ).fetchall()
        con.close()
    footprint.reset_configuration()
    spans = [(_epoch_s(a) - offset_s, _epoch_s(b) - offset_s) for a, b, *_ in rows]
    truth = [0.0] * len(rows)
    for index, uuid in enumerate(uuids):
        mine = [k for k, row in enumerate(rows) if uuid in json.loads(row[2])]
        gpu = sensor.gpus[index]
        for k, true_j in zip(mine, _truth_j([spans[k] for k in mine], gpu.true_energy_j)):
            truth[k] += true_j
    measured = [row[3] or 0.0 for row in rows]
    errors = [abs(m - t) / t * 100 for m, t in zip(measured, truth) if t > 0]
    long_errors = [abs(m - t) / t * 100 for m, t, (a, b) in zip(measured, truth, spans)
                   if t > 0 and b - a >= 1.0]  # fmt: skip
    bounded = [abs(m - t) <= (row[4] if row[4] is not None else -1.0) + 1e-9
               for m, t, row in zip(measured, truth, rows)]  # fmt: skip
    total_true = sum(truth)
    return {
        "name": scenario.name,
        "description": scenario.description,
        "queries": len(rows),
        "total_error_pct": round(abs(sum(measured) - total_true) / total_true * 100, 4)
        if total_true
        else None,
        "total_signed_error_pct": round((sum(measured) - total_true) / total_true * 100, 4)
        if total_true
        else None,
        "per_query_error_pct": _percentiles(errors),
        "long_queries": len(long_errors),
        "long_query_error_pct": _percentiles(long_errors),
        "within_bound_pct": round(100 * sum(bounded) / len(bounded), 2) if bounded else None,
    }


def run(scale: float = 1.0, names: list[str] | None = None) -> dict[str, Any]:
    """Every scenario (or those named), with the settings and version they describe."""
    from footprint.reporting.accuracy import source_digest

    chosen = [s for s in SCENARIOS if names is None or s.name in names]
    scenarios = [run_scenario(scenario, scale) for scenario in chosen]
    return {
        "benchmark": "accuracy",
        "version": footprint.__version__,
        "source_digest": source_digest(),
        "simulator": {
            "idle_w": IDLE_W,
            "busy_w": BUSY_W,
            "update_period_s": UPDATE_PERIOD_S,
            "sampling_period_s": SAMPLING_PERIOD_S,
        },  # fmt: skip
        "scale": scale,
        "scenarios": scenarios,
        "not_covered": NOT_COVERED,
        "targets": {"total_error_pct": 1.0, "long_query_error_pct_max": 1.0},
    }


def write(result: dict[str, Any]) -> Path:
    """Store the figures where reports read them (``footprint/bench/accuracy.json``)."""
    from footprint.reporting.accuracy import accuracy_path

    path = accuracy_path()
    path.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return path
