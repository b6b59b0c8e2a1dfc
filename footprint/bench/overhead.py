"""Hot-path overhead of ``@track`` against the bare call and codecarbon's tasks.

Each figure is the median (and p99) over batches of the time per call, so the cost of
reading the clock is spread over a batch; "added" is tracked minus bare, measured in the
same run with the sampler thread running.
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import footprint


def _noop() -> None:
    return None


def _per_call_us(fn, batches: int, batch_size: int) -> list[float]:
    timer = time.perf_counter_ns
    out = []
    for _ in range(batches):
        start = timer()
        for _ in range(batch_size):
            fn()
        out.append((timer() - start) / batch_size / 1000.0)
    return out


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _codecarbon_task_us(calls: int) -> list[float]:
    """Per-call µs of ``start_task``/``stop_task`` around the no-op (offline tracker)."""
    from codecarbon import OfflineEmissionsTracker

    logging.getLogger("codecarbon").setLevel(logging.ERROR)
    tracker = OfflineEmissionsTracker(
        country_iso_code="FRA", save_to_file=False, log_level="error", measure_power_secs=1
    )
    tracker.start()
    try:
        out = []
        for _ in range(calls):
            start = time.perf_counter_ns()
            tracker.start_task("noop")
            _noop()
            tracker.stop_task()
            out.append((time.perf_counter_ns() - start) / 1000.0)
        return out
    finally:
        tracker.stop()


def run(batches: int = 300, batch_size: int = 200, codecarbon_calls: int = 40) -> dict[str, Any]:
    """Measure bare, tracked and codecarbon per-call times; return the figures."""
    with tempfile.TemporaryDirectory() as tmp:
        footprint.configure(
            db=str(Path(tmp) / "bench.db"),
            sensor="simulated:gpus=1,workload=manual",  # the hot path only, as with NVML
            cpu=False,
            region="FRA",
        )
        tracked = footprint.track(model="bench-noop")(_noop)
        tracked()  # start the runtime (sensor, sampler, writer) outside the timing
        bare_us = _per_call_us(_noop, batches, batch_size)
        tracked_us = _per_call_us(tracked, batches, batch_size)
        stats = footprint.stats()
        footprint.shutdown()
        footprint.reset_configuration()
    codecarbon_us = _codecarbon_task_us(codecarbon_calls)
    bare_median = statistics.median(bare_us)
    track_median = statistics.median(tracked_us) - bare_median
    track_p99 = _percentile(tracked_us, 0.99) - bare_median
    cc_median = statistics.median(codecarbon_us) - bare_median
    return {
        "benchmark": "overhead",
        "calls": batches * batch_size,
        "bare_us_median": round(bare_median, 4),
        "track_us_median": round(track_median, 4),
        "track_us_p99": round(track_p99, 4),
        "codecarbon_task_us_median": round(cc_median, 2),
        "codecarbon_task_us_p99": round(_percentile(codecarbon_us, 0.99) - bare_median, 2),
        "ratio_codecarbon_over_track": round(cc_median / max(track_median, 1e-3), 1),
        "dropped_spans": stats.get("dropped_spans", 0),
        "target_track_us_median": 10.0,
        "target_ratio": 100.0,
    }
