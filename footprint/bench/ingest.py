"""Ingest: records/s through footprint's writer against raw ``sqlite3.executemany``.

Both sides insert the same complete records (every column of ``queries``) into a fresh
SQLite file with the real schema and indexes. The raw side gets its rows as ready-made
tuples, one ``executemany`` in one transaction: the physical limit of sqlite3 here.
Each side runs ``repeats`` times, alternating; the ratio is of the median runs (this
machine is noisy, and a best-of-few favours whichever side got the luckiest run), with
the best-run ratio reported beside it.
"""

from __future__ import annotations

import datetime as _dt
import json
import random
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from footprint.storage.models import QueryRecord, table_of
from footprint.storage.store import Store, open_engine, sqlite_datetime
from footprint.storage.writer import Writer

MODELS = ("llama-3-8b", "mixtral-8x7b", "whisper-large-v3", "qwen-2.5-72b")


def make_records(rows: int, seed: int = 0) -> list[dict[str, Any]]:
    """Complete records as the runtime produces them (datetimes, JSON text, pricing)."""
    rng = random.Random(seed)
    start = _dt.datetime(2026, 1, 1, tzinfo=_dt.timezone.utc)
    out = []
    for i in range(rows):
        began = start + _dt.timedelta(seconds=i * 0.01)
        duration_s = rng.uniform(0.05, 3.0)
        energy_j = duration_s * rng.uniform(100, 700)
        out.append(
            {
                "model": MODELS[i % len(MODELS)],
                "tags": json.dumps({"team": "search", "route": "/v1/chat"}),
                "started_at": began,
                "ended_at": began + _dt.timedelta(seconds=duration_s),
                "duration_s": duration_s,
                "time_to_first_token_s": duration_s * 0.1,
                "status": "ok" if i % 50 else "error",
                "error_type": None if i % 50 else "TimeoutError",
                "input_tokens": rng.randint(10, 2000),
                "output_tokens": rng.randint(10, 800),
                "gpus": '["GPU-5b1a0c2e-0000-4000-8000-000000000000"]',
                "gpu_seconds": duration_s,
                "energy_j": energy_j,
                "energy_source": "counter",
                "energy_uncertainty_j": energy_j * 0.004 + 0.05,
                "cpu_energy_j": energy_j * 0.1,
                "cpu_energy_source": "counter",
                "host": "bench-host",
                "pid": 4242,
                "zone": "aws:us-east-1",
                "intensity_g_per_kwh": 244.76,
                "intensity_source": "static",
                "market_intensity_g_per_kwh": None,
                "pue": 1.14,
                "price_per_kwh": 0.0895,
                "currency": "USD",
                "usd_per_gpu_hour": 6.88,
                "co2e_g": energy_j / 3.6e6 * 1.14 * 244.76,
                "market_co2e_g": None,
                "embodied_co2e_g": duration_s * 7.9e-4,
                "energy_cost": energy_j / 3.6e6 * 1.14 * 0.0895,
                "energy_cost_usd": energy_j / 3.6e6 * 1.14 * 0.0895,
                "compute_cost": duration_s * 6.88 / 3600,
                "ownership": "rented",
                "gpu_price_source": "NVIDIA H100 80GB HBM3, aws p5.48xlarge on-demand in us-east-1",
                "span_key": None,  # written in-process
                "trace_id": None,  # called with no trace context
                "span_id": None,
                # split at the first token (a tenth of the call in)
                "prefill_energy_j": energy_j * 0.1,
                "decode_energy_j": energy_j * 0.9,
            }
        )
    return out


def _columns() -> list[str]:
    return [c.name for c in table_of(QueryRecord).columns if c.name != "id"]


def _fresh_db(folder: Path, name: str) -> Path:
    path = folder / name
    open_engine(str(path)).dispose()  # the real schema, indexes and pragmas
    return path


def time_footprint(records: list[dict[str, Any]], folder: Path, run: int) -> float:
    path = _fresh_db(folder, f"footprint-{run}.db")
    store = Store(str(path))
    writer = Writer(lambda: store, "bench-host", 4242, max_buffered=len(records) + 1)
    writer.open_store()
    start = time.perf_counter()
    writer.submit(records, [])
    written = writer.flush()
    elapsed = time.perf_counter() - start
    store.close()
    assert written == len(records)
    return elapsed


def time_raw(records: list[dict[str, Any]], folder: Path, run: int) -> float:
    path = _fresh_db(folder, f"raw-{run}.db")
    columns = _columns()
    rows = [
        tuple(sqlite_datetime(r[c]) if c in ("started_at", "ended_at") else r[c] for c in columns)
        for r in records
    ]
    sql = f"INSERT INTO queries ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=NORMAL")
    start = time.perf_counter()
    with con:
        con.executemany(sql, rows)
    elapsed = time.perf_counter() - start
    con.close()
    return elapsed


def run(rows: int = 200_000, repeats: int = 5) -> dict[str, Any]:
    """Median rows/s of ``repeats`` alternating runs for each side, and their ratio."""
    records = make_records(rows)
    ours, raw = [], []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for run_index in range(repeats):
            raw.append(time_raw(records, folder, run_index))
            ours.append(time_footprint(records, folder, run_index))
    ours_rps = rows / statistics.median(ours)
    raw_rps = rows / statistics.median(raw)
    return {
        "benchmark": "ingest",
        "rows": rows,
        "columns": len(_columns()),
        "footprint_rows_per_s": round(ours_rps),
        "raw_sqlite_rows_per_s": round(raw_rps),
        "ratio": round(ours_rps / raw_rps, 3),
        "ratio_best_runs": round(min(raw) / min(ours), 3),
        "footprint_s_runs": [round(x, 3) for x in ours],
        "raw_s_runs": [round(x, 3) for x in raw],
        "target_ratio": 0.7,
    }
