"""``footprint demo``: a concurrent multi-model workload on simulated GPUs.

Everything goes through the real decorator, sampler, resolver and SQLite store; only the
GPUs are simulated (and say so: ``energy_source="simulated"``).
"""

from __future__ import annotations

import random
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import footprint
from footprint.sensors.simulated import SimulatedSensor
from footprint.storage.store import normalize_db_url
from footprint.tracking import get_runtime


@dataclass(frozen=True)
class DemoModel:
    """A model of the demo: its GPUs, GPU load and how long a token takes."""

    name: str
    gpus: tuple[int, ...]
    load: float
    prefill_s_per_token: float
    decode_s_per_token: float
    input_tokens: tuple[int, int]
    output_tokens: tuple[int, int]


MODELS = (
    DemoModel("llama-3-8b", (0,), 0.55, 0.00004, 0.0012, (50, 600), (20, 200)),
    DemoModel("mixtral-8x7b", (0, 1), 0.9, 0.00008, 0.0025, (100, 1200), (40, 250)),
    DemoModel("whisper-large-v3", (1,), 0.7, 0.0002, 0.0008, (300, 1500), (20, 120)),
)

DEMO_SENSOR = (
    "simulated:gpus=2,idle_w=70,busy_w=700,noise=0.02,seed={seed},name=NVIDIA H100 80GB HBM3"
)
DEMO_REGION = "aws:us-east-1"


def run_demo(db: str, queries: int = 60, seed: int = 1, concurrency: int = 4) -> dict[str, Any]:
    """Run the workload, flush, and summarise this run's rows from the database."""
    if queries < 1:
        raise ValueError("queries must be at least 1")
    footprint.configure(db=db, sensor=DEMO_SENSOR.format(seed=seed), cpu=False, region=DEMO_REGION)
    runtime = get_runtime()
    if runtime is None or runtime.store is None:
        raise RuntimeError(f"cannot open the demo database {db}")
    sensor = runtime.gpu_sensor
    assert isinstance(sensor, SimulatedSensor)
    rng = random.Random(seed)
    plan = []
    for _ in range(queries):
        model = rng.choice(MODELS)
        plan.append((model, rng.randint(*model.input_tokens), rng.randint(*model.output_tokens)))

    def make_call(model: DemoModel):
        @footprint.track(model=model.name, gpus=list(model.gpus), tokens=lambda r: r, demo=True)
        def infer(tokens_in: int, tokens_out: int) -> tuple[int, int]:
            seconds = tokens_in * model.prefill_s_per_token + tokens_out * model.decode_s_per_token
            sensor.run(seconds, load=model.load, devices=list(model.gpus))
            return tokens_in, tokens_out

        return infer

    calls = {m.name: make_call(m) for m in MODELS}
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(lambda p: calls[p[0].name](p[1], p[2]), plan))
    footprint.shutdown()
    return summarize(db, runtime.host, runtime.pid)


def summarize(db: str, host: str, pid: int) -> dict[str, Any]:
    """Totals and per-model figures of the rows one process wrote."""
    path = normalize_db_url(db).removeprefix("sqlite:///")
    con = sqlite3.connect(Path(path))
    try:
        measured_j, idle_j = con.execute(
            "SELECT COALESCE(SUM(measured_energy_j), 0), COALESCE(SUM(idle_energy_j), 0) "
            "FROM idle_energy WHERE host = ? AND pid = ?",
            (host, pid),
        ).fetchone()
        models = {}
        for name, n, errors, energy_j, gpu_s, tokens_in, tokens_out in con.execute(
            "SELECT model, COUNT(*), SUM(status != 'ok'), COALESCE(SUM(energy_j), 0), "
            "COALESCE(SUM(gpu_seconds), 0), COALESCE(SUM(input_tokens), 0), "
            "COALESCE(SUM(output_tokens), 0) FROM queries WHERE host = ? AND pid = ? "
            "GROUP BY model ORDER BY model",
            (host, pid),
        ):
            models[name] = {
                "queries": n,
                "errors": errors,
                "energy_j": energy_j,
                "gpu_seconds": gpu_s,
                "input_tokens": tokens_in,
                "output_tokens": tokens_out,
                "j_per_output_token": energy_j / tokens_out if tokens_out else None,
            }
    finally:
        con.close()
    attributed_j = sum(m["energy_j"] for m in models.values())
    return {
        "db": db,
        "queries": sum(m["queries"] for m in models.values()),
        "measured_energy_j": measured_j,
        "attributed_energy_j": attributed_j,
        "idle_energy_j": idle_j,
        "conservation_error_j": measured_j - attributed_j - idle_j,
        "energy_source": "simulated",
        "models": models,
    }
