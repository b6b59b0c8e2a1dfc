"""``footprint bench report``: the whole ``footprint report`` command against hand-written SQL.

A SQLite file with N synthetic query records (and a month of per-minute idle rows for
eight GPUs) is built once, in the real schema (created by ``open_engine``), with raw
``sqlite3.executemany``, then left as footprint leaves a database: the hourly rollups
brought up to date (``rollups.catch_up``, what the writer thread does every few flushes;
its time is ``rollup_build_s``). Then, side by side in the same run:

- ``report_s``: ``footprint report --format json`` as a subprocess, process start,
  imports, SQL (the rollups and the raw edges of the period), the Python rollups and
  the JSON output included;
- ``raw_sql_s``: the same aggregates straight from ``sqlite3`` over ``queries`` in this
  process (already started), with no rollup: per-model and per-GPU sums, the per-day
  series, idle energy per GPU and the nearest-rank p50/p95 of energy, CO2e and cost per
  query per model (on the same hash sample as the report's). The ratio shows what the
  rollups buy.

Each side runs ``repeats`` times, alternating; the best run of each counts.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from footprint.storage import rollups
from footprint.storage.models import IdleEnergy, QueryRecord
from footprint.storage.store import open_engine

# (model, GPUs it runs on, mean seconds, watts per GPU, share of traffic)
BENCH_MODELS = (
    ("llama-3-8b", (0,), 1.2, 420.0, 0.34),
    ("llama-3-70b", (2, 3), 3.5, 610.0, 0.18),
    ("mixtral-8x7b", (0, 1), 2.4, 560.0, 0.16),
    ("qwen-2.5-7b", (4,), 1.0, 380.0, 0.14),
    ("whisper-large-v3", (5,), 0.8, 300.0, 0.10),
    ("bge-m3", (6,), 0.05, 250.0, 0.08),
)
GPU_UUIDS = tuple(f"GPU-bench000-0000-4000-8000-{i:012d}" for i in range(8))
# zone, intensity g/kWh, PUE, price/kWh, currency, USD per unit, $/GPU-h, share of traffic
BENCH_ZONES = (
    ("aws:us-east-1", 244.76, 1.14, 0.0895, "USD", 1.0, 6.88, 0.7),
    ("aws:eu-west-1", 282.0, 1.14, 0.1868, "EUR", 1.082, 7.2, 0.3),
)
EPOCH = _dt.datetime(2026, 1, 1, tzinfo=_dt.timezone.utc)
DAYS = 30


def _columns(table: Any) -> list[str]:
    return [c.name for c in table.columns if c.name != "id"]


def build_db(path: Path, rows: int, seed: int = 0) -> float:
    """Create the schema with ``open_engine``, fill it with raw ``executemany``, then roll
    the rows up as footprint does; returns the seconds the rollups took."""
    engine = open_engine(str(path))
    engine.dispose()
    rng = random.Random(seed)
    span_s = DAYS * 86400.0
    step = span_s / max(rows, 1)
    models = [m for m in BENCH_MODELS]
    model_weights = [m[4] for m in models]
    zone_weights = [z[7] for z in BENCH_ZONES]
    columns = _columns(QueryRecord.__table__)
    placeholders = ", ".join("?" * len(columns))
    insert = f"INSERT INTO queries ({', '.join(columns)}) VALUES ({placeholders})"
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=OFF")
    gpu_lists = {m[1]: json.dumps([GPU_UUIDS[g] for g in m[1]]) for m in models}
    tags = json.dumps({"team": "search"})
    chunk: list[tuple] = []
    epoch_s = EPOCH.timestamp()
    for i in range(rows):
        name, gpus, mean_s, watts, _ = rng.choices(models, model_weights)[0]
        zone, intensity, pue, price, currency, usd, gpu_hour, _ = rng.choices(
            BENCH_ZONES, zone_weights
        )[0]
        began_s = epoch_s + i * step
        duration = rng.expovariate(1.0 / mean_s) + 0.01
        gpu_seconds = duration * len(gpus) * rng.uniform(0.3, 1.0)
        energy_j = gpu_seconds * watts * rng.uniform(0.8, 1.2)
        kwh = energy_j / 3.6e6 * pue
        error = rng.random() < 0.01
        out_tokens = None if error else rng.randint(5, 900)
        cost = kwh * price
        started = _text(began_s)
        chunk.append(
            (
                name, tags, started, _text(began_s + duration), duration, duration * 0.1,
                "error" if error else "ok", "TimeoutError" if error else None,
                rng.randint(10, 3000), out_tokens, gpu_lists[gpus], gpu_seconds, energy_j,
                "counter", energy_j * 0.004 + 0.05, None, "missing", f"gpu-node-{gpus[0] // 4}",
                4242, zone, intensity, "static", None, pue, price, currency, gpu_hour,
                kwh * intensity, None, gpu_seconds * 7.9e-4, cost, cost * usd,
                gpu_seconds * gpu_hour / 3600.0,
            )
        )  # fmt: skip
        if len(chunk) >= 100_000:
            con.executemany(insert, chunk)
            chunk.clear()
    if chunk:
        con.executemany(insert, chunk)
    idle_columns = _columns(IdleEnergy.__table__)
    idle_insert = (
        f"INSERT INTO idle_energy ({', '.join(idle_columns)}) "
        f"VALUES ({', '.join('?' * len(idle_columns))})"
    )
    minutes = DAYS * 1440
    idle_rows = (
        (uuid, _text(epoch_s + m * 60.0), 60.0 * 70.0 * 0.4, 60.0 * 70.0 * 0.4 + 9000.0,
         0.0, f"gpu-node-{g // 4}", 4242)
        for g, uuid in enumerate(GPU_UUIDS)
        for m in range(0, minutes, max(1, minutes * 8 // max(rows, 1) or 1))
    )  # fmt: skip
    con.executemany(idle_insert, idle_rows)
    con.commit()
    con.close()
    engine = open_engine(str(path), create=False)
    try:
        start = time.perf_counter()
        rollups.catch_up(engine)
        return time.perf_counter() - start
    finally:
        engine.dispose()


def _text(epoch_s: float) -> str:
    """SQLAlchemy's SQLite text for a UTC datetime."""
    whole = math.floor(epoch_s)
    micro = int(round((epoch_s - whole) * 1e6))
    if micro == 1_000_000:
        whole, micro = whole + 1, 0
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(whole)) + f".{micro:06d}"


# The hand-written side: the aggregates ``footprint report`` computes, as plain SQL.
RAW_GROUPED = """
SELECT model, substr(started_at, 1, 10) AS day, gpus, zone, currency, intensity_source, pue,
       price_per_kwh, usd_per_gpu_hour, market_intensity_g_per_kwh, energy_source,
       count(*), sum(CASE WHEN status != 'ok' THEN 1 ELSE 0 END),
       coalesce(sum(input_tokens), 0), coalesce(sum(output_tokens), 0),
       coalesce(sum(gpu_seconds), 0.0), coalesce(sum(energy_j), 0.0), count(energy_j),
       coalesce(sum(energy_uncertainty_j), 0.0), count(energy_uncertainty_j),
       coalesce(sum(energy_j * pue), 0.0), coalesce(sum(co2e_g), 0.0),
       coalesce(sum(market_co2e_g), 0.0), count(market_co2e_g),
       coalesce(sum(embodied_co2e_g), 0.0), coalesce(sum(energy_cost_usd), 0.0),
       coalesce(sum(CASE WHEN energy_cost_usd IS NULL AND energy_cost IS NOT NULL
                         THEN energy_cost END), 0.0),
       count(CASE WHEN energy_cost_usd IS NULL AND energy_cost IS NOT NULL THEN 1 END),
       coalesce(sum(compute_cost), 0.0), coalesce(sum(duration_s), 0.0),
       min(intensity_g_per_kwh), max(intensity_g_per_kwh)
FROM queries
GROUP BY model, substr(started_at, 1, 10), gpus, zone, currency, intensity_source, pue,
         price_per_kwh, usd_per_gpu_hour, market_intensity_g_per_kwh, energy_source
"""
RAW_IDLE = """
SELECT device_uuid, substr(minute, 1, 10), host, sum(idle_energy_j + lost_energy_j),
       sum(measured_energy_j)
FROM idle_energy WHERE device_uuid NOT LIKE 'cpu-%'
GROUP BY device_uuid, substr(minute, 1, 10), host
"""
RAW_PERCENTILES = """
SELECT * FROM (
  SELECT model, count(*) OVER (PARTITION BY model) AS n,
         e, row_number() OVER (PARTITION BY model ORDER BY e) AS re,
         c, row_number() OVER (PARTITION BY model ORDER BY c) AS rc,
         k, row_number() OVER (PARTITION BY model ORDER BY k) AS rk
  FROM (SELECT model, energy_j AS e, co2e_g AS c,
               coalesce(energy_cost_usd, CASE WHEN currency = 'USD' THEN energy_cost END, 0.0)
               + coalesce(compute_cost, 0.0) AS k
        FROM queries
        WHERE energy_j IS NOT NULL AND (id * 2654435761) % 1000000 < {limit})
) WHERE re IN ((n * 50 + 99) / 100, (n * 95 + 99) / 100)
     OR rc IN ((n * 50 + 99) / 100, (n * 95 + 99) / 100)
     OR rk IN ((n * 50 + 99) / 100, (n * 95 + 99) / 100)
"""


def raw_sql(path: Path) -> dict[str, Any]:
    """The report's aggregates straight from sqlite3 (same sums, same sampled percentiles)."""
    from footprint.reporting.data import _HASH_MODULUS, PERCENTILE_SAMPLE

    con = sqlite3.connect(path)
    try:
        con.execute("PRAGMA temp_store=MEMORY")
        con.execute("PRAGMA cache_size=-262144")
        models = sorted({r[0] for r in con.execute("SELECT DISTINCT model FROM queries")})
        grouped = con.execute(RAW_GROUPED).fetchall()
        first_last = con.execute("SELECT min(started_at), max(started_at) FROM queries").fetchone()
        idle = con.execute(RAW_IDLE).fetchall()
        counts: dict[str, int] = {}
        for row in grouped:
            counts[row[0]] = counts.get(row[0], 0) + row[17]
        limits = {
            m: min(_HASH_MODULUS, -(-PERCENTILE_SAMPLE * _HASH_MODULUS // n))
            for m, n in counts.items()
            if n
        }
        limit = " ".join(f"WHEN '{m}' THEN {t}" for m, t in sorted(limits.items()))
        percentiles = con.execute(
            RAW_PERCENTILES.format(limit=f"CASE model {limit} ELSE {_HASH_MODULUS} END")
        ).fetchall()
    finally:
        con.close()
    return {
        "models": models,
        "groups": len(grouped),
        "queries": sum(r[11] for r in grouped),
        "energy_j": sum(r[16] for r in grouped),
        "co2e_g": sum(r[19] for r in grouped),
        "idle_j": sum(r[3] for r in idle),
        "first_last": first_last,
        "percentile_rows": len(percentiles),
    }


def time_report(path: Path) -> tuple[float, dict[str, Any]]:
    """Wall time of ``footprint report --format json`` as a fresh process, and its JSON."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOOTPRINT_")}
    command = [sys.executable, "-m", "footprint.cli", "report", "--db", str(path)]
    command += ["--format", "json"]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"footprint report failed: {done.stderr.strip()}")
    return elapsed, json.loads(done.stdout)


def run(rows: int = 1_000_000, repeats: int = 2, folder: Path | None = None) -> dict[str, Any]:
    """Build the database once, then time both sides ``repeats`` times, alternating."""
    with tempfile.TemporaryDirectory(prefix="footprint-bench-report-") as tmp:
        path = Path(folder or tmp) / f"report-{rows}.db"
        if path.exists():
            path.unlink()
        start = time.perf_counter()
        rollup_s = build_db(path, rows)
        build_s = time.perf_counter() - start
        report_times, raw_times = [], []
        report: dict[str, Any] = {}
        raw: dict[str, Any] = {}
        for _ in range(repeats):
            elapsed, report = time_report(path)
            report_times.append(elapsed)
            start = time.perf_counter()
            raw = raw_sql(path)
            raw_times.append(time.perf_counter() - start)
        size = path.stat().st_size
    totals = report["totals"]
    same = (
        totals["queries"] == raw["queries"] == rows
        and math.isclose(totals["energy_kwh"] * 3.6e6, raw["energy_j"], rel_tol=1e-9)
        and math.isclose(totals["co2e_g"], raw["co2e_g"], rel_tol=1e-9)
        and sorted(m["model"] for m in report["models"]) == raw["models"]
    )
    report_s, raw_s = min(report_times), min(raw_times)
    return {
        "rows": rows,
        "db_bytes": size,
        "build_s": build_s,
        "rollup_build_s": rollup_s,
        "repeats": repeats,
        "report_s": report_s,
        "raw_sql_s": raw_s,
        "ratio": report_s / raw_s if raw_s else None,
        "report_runs_s": report_times,
        "raw_sql_runs_s": raw_times,
        "same_figures": same,
        "models": len(report["models"]),
        "target_report_s": 3.0,
        "target_ratio": 2.0,
        "cpu_count": os.cpu_count(),
        "note": "report_s includes process start and imports and reads the hourly rollups "
        "(built in rollup_build_s, part of build_s); raw_sql_s is sqlite3 in-process running "
        "the same aggregates over queries (grouped sums, idle per GPU and day, sampled "
        "percentiles)",
    }
