"""``footprint demo``: a week of LLM serving on simulated H100s, then the report.

Everything goes through the real ``footprint.query`` API, sampler, resolver, pricing and
SQLite store; only the GPUs and the passing of time are simulated (and say so:
``energy_source="simulated"``). Time comes from ``ManualClock``s starting at a fixed
epoch, so a week of traffic runs in seconds and the same seed gives the same database
rows and the same report, byte for byte, on any machine.

What is simulated is what serving looks like, one module each:

* ``models``: Llama 3.1 8B on one H100 per replica and 70B on four (tensor parallel),
  served by a vLLM-like engine, with the speed and GPU power the ML.ENERGY benchmark
  measured for them at each batch size, and the price of an H100 (with their sources).
* ``costs``: what one engine step costs, energy and time, from its prompt tokens and its
  decoding sequences and their contexts, calibrated on those measurements (the GPUs draw
  it; ``footprint bench batching`` serves on it too).
* ``workload``: bursts of requests over the week, their hours and sizes.
* ``scheduler``: continuous batching, step by step, on replicas that a queue-driven
  autoscaler holds and releases from a pool of H100 80GB GPUs (``gpus``, 8 by default:
  one HGX node).
* ``replay``: each replica's held window run through a real ``Runtime`` whose simulated
  sensor is that replica's GPUs, from provisioning to release: only held GPUs are
  measured.
* ``summary``: what the database holds per model, read as the report reads it, with each
  model's held and busy GPU-hours; ``footprint demo`` adds the report's $/GPU-hour and
  $ per 1M output tokens (``add_report_figures``): one price, the records'.
"""

from __future__ import annotations

from typing import Any

from footprint import tracking
from footprint.demo.models import (
    GPU_IDLE_W,
    GPU_NAME,
    GPU_TDP_W,
    INPUT_TOKENS,
    LLAMA_8B_H100X1,
    LLAMA_70B_H100X4,
    MEAN_OUTPUT_TOKENS,
    MEASUREMENTS_SOURCE,
    MODELS,
    OUTPUT_TOKENS,
    PREFILL_CHUNK_TOKENS,
    DemoModel,
)
from footprint.demo.replay import (
    CLOCK_ORIGIN_S,
    CYCLE_S,
    DEMO_REGION,
    DEMO_SENSOR,
    DEMO_TAG,
    IDLE_POLL_S,
    POLL_S,
    Replay,
    demo_settings,
    prepare_db,
)
from footprint.demo.scheduler import DEMO_GPUS, KEEP_WARM_S, SCALE_UP_BACKLOG, Scheduler
from footprint.demo.summary import add_serving, read_database, summarize
from footprint.demo.workload import (
    BURST_LOAD,
    BURST_RAMP,
    DEMO_DAYS,
    DEMO_EPOCH,
    DEMO_QUERIES,
    ERROR_RATE,
    HOURLY,
    WEEKDAY,
    plan_workload,
)

__all__ = [
    "BURST_LOAD",
    "BURST_RAMP",
    "CLOCK_ORIGIN_S",
    "CYCLE_S",
    "DEMO_DAYS",
    "DEMO_EPOCH",
    "DEMO_GPUS",
    "DEMO_QUERIES",
    "DEMO_REGION",
    "DEMO_SENSOR",
    "DEMO_TAG",
    "ERROR_RATE",
    "GPU_IDLE_W",
    "GPU_NAME",
    "GPU_TDP_W",
    "HOURLY",
    "IDLE_POLL_S",
    "INPUT_TOKENS",
    "KEEP_WARM_S",
    "LLAMA_70B_H100X4",
    "LLAMA_8B_H100X1",
    "MEAN_OUTPUT_TOKENS",
    "MEASUREMENTS_SOURCE",
    "MODELS",
    "OUTPUT_TOKENS",
    "POLL_S",
    "PREFILL_CHUNK_TOKENS",
    "SCALE_UP_BACKLOG",
    "WEEKDAY",
    "DemoModel",
    "plan_workload",
    "prepare_db",
    "run_demo",
    "summarize",
]


def run_demo(
    db: str,
    queries: int = DEMO_QUERIES,
    seed: int = 1,
    concurrency: int = DEMO_GPUS,
    days: int = DEMO_DAYS,
) -> dict[str, Any]:
    """Simulate the workload into a fresh database and summarise what it wrote.

    ``concurrency`` is the number of H100s the scheduler may hold at once (the pool;
    at least the 4 a 70B replica needs).
    """
    if queries < 1:
        raise ValueError("queries must be at least 1")
    if days < 1:
        raise ValueError("days must be at least 1")
    widest = max(m.gpus_per_replica for m in MODELS)
    if concurrency < widest:
        raise ValueError(f"the demo needs a pool of at least {widest} GPUs (one 70B replica)")
    path = prepare_db(db)
    requests = plan_workload(queries, seed, days)
    scheduler = Scheduler(concurrency)
    replicas = scheduler.run(requests)
    replay = Replay(demo_settings(path), seed)
    try:
        for replica in sorted(replicas, key=lambda r: (r.start_s, r.slot)):
            replay.run(replica)
    finally:
        tracking.shutdown()  # final sample, cycle and write through the real runtime
    fold, capacity = read_database(path)
    summary = summarize(db, fold, capacity)
    summary["period"] = {"since": DEMO_EPOCH.isoformat(), "days": days}
    summary["warm_windows"] = len(replicas)
    add_serving(summary, requests, replicas, replay.devices, scheduler, capacity)
    return summary
