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

With ``models`` (``footprint bench report --models N``) the file holds N distinct models
(``synthetic_models``: a few busy ones, a long tail of rare ones) and what is measured is
the whole ``footprint report`` writing every format (HTML, Markdown with its PNG charts,
CSV, JSON) into a folder, as a subprocess: its wall time and its peak resident memory
(``ru_maxrss`` of the child, from ``os.wait4``).
"""

from __future__ import annotations

import datetime as _dt
import itertools
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

from footprint.bench.report_raw import BENCH_TAG, raw_sql, raw_tag_counts
from footprint.storage import rollups
from footprint.storage.models import IdleEnergy, QueryRecord, table_of
from footprint.storage.store import open_engine

# (model, GPUs it runs on, mean seconds, watts per GPU, share of traffic)
BenchModel = tuple[str, tuple[int, ...], float, float, float]
BENCH_MODELS: tuple[BenchModel, ...] = (
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
# The teams of the chargeback (``--by tag:team``), one after another; every fifth query
# has no team (it is the "(no team)" group).
BENCH_TAGS = (
    {"team": "search", "env": "prod"},
    {"team": "ads", "env": "prod"},
    {"team": "assistant", "env": "prod"},
    {"team": "search", "env": "staging"},
    {"env": "prod"},
)
BENCH_GPU_PRICE_SOURCE = "bench: AWS on-demand price of the bench GPUs (synthetic)"
# The columns the bench writes (those the schema has: an older one lacks the newest).
QUERY_COLUMNS = (
    "model",
    "tags",
    "started_at",
    "ended_at",
    "duration_s",
    "time_to_first_token_s",
    "status",
    "error_type",
    "input_tokens",
    "output_tokens",
    "gpus",
    "gpu_seconds",
    "energy_j",
    "energy_source",
    "energy_uncertainty_j",
    "cpu_energy_j",
    "cpu_energy_source",
    "host",
    "pid",
    "zone",
    "intensity_g_per_kwh",
    "intensity_source",
    "market_intensity_g_per_kwh",
    "pue",
    "price_per_kwh",
    "currency",
    "usd_per_gpu_hour",
    "gpu_price_source",
    "ownership",
    "co2e_g",
    "market_co2e_g",
    "embodied_co2e_g",
    "energy_cost",
    "energy_cost_usd",
    "compute_cost",
)
EPOCH = _dt.datetime(2026, 1, 1, tzinfo=_dt.timezone.utc)
DAYS = 30


def _columns(table: Any) -> list[str]:
    return [c.name for c in table.columns if c.name != "id"]


def synthetic_models(count: int) -> tuple[BenchModel, ...]:
    """``count`` distinct models shaped like ``BENCH_MODELS``, with a long tail of traffic.

    Model ``i`` borrows the GPUs, duration and power of ``BENCH_MODELS[i % 6]``; its share
    of the traffic falls as ``1 / (i + 1)`` (a few busy models, thousands of rare ones).
    """
    out = []
    for i in range(count):
        _, gpus, mean_s, watts, _ = BENCH_MODELS[i % len(BENCH_MODELS)]
        out.append((f"model-{i:05d}", gpus, mean_s, watts, 1.0 / (i + 1)))
    return tuple(out)


def build_db(path: Path, rows: int, seed: int = 0, models: int | None = None) -> float:
    """Create the schema with ``open_engine``, fill it with raw ``executemany``, then roll
    the rows up as footprint does; returns the seconds the rollups took.

    ``models``: that many distinct models (``synthetic_models``), each with at least one
    query when ``rows`` allows, instead of the six of ``BENCH_MODELS``.
    """
    engine = open_engine(str(path))
    engine.dispose()
    rng = random.Random(seed)
    span_s = DAYS * 86400.0
    step = span_s / max(rows, 1)
    models_used = BENCH_MODELS if models is None else synthetic_models(models)
    cum_models = list(itertools.accumulate(m[4] for m in models_used))
    cum_zones = list(itertools.accumulate(z[7] for z in BENCH_ZONES))
    every_model = models is not None
    present = set(_columns(table_of(QueryRecord)))
    columns = [c for c in QUERY_COLUMNS if c in present]
    placeholders = ", ".join("?" * len(columns))
    insert = f"INSERT INTO queries ({', '.join(columns)}) VALUES ({placeholders})"
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=OFF")
    gpu_lists = {m[1]: json.dumps([GPU_UUIDS[g] for g in m[1]]) for m in BENCH_MODELS}
    tag_texts = [json.dumps(t) for t in BENCH_TAGS]
    chunk: list[tuple] = []
    epoch_s = EPOCH.timestamp()
    for i in range(rows):
        # cum_weights: the same draws as weights=, without summing them at every call
        name, gpus, mean_s, watts, _ = rng.choices(models_used, cum_weights=cum_models)[0]
        if every_model and i < len(models_used):  # every model gets a query first
            name, gpus, mean_s, watts, _ = models_used[i]
        zone, intensity, pue, price, currency, usd, gpu_hour, _ = rng.choices(
            BENCH_ZONES, cum_weights=cum_zones
        )[0]
        began_s = epoch_s + i * step
        duration = rng.expovariate(1.0 / mean_s) + 0.01
        gpu_seconds = duration * len(gpus) * rng.uniform(0.3, 1.0)
        energy_j = gpu_seconds * watts * rng.uniform(0.8, 1.2)
        kwh = energy_j / 3.6e6 * pue
        error = rng.random() < 0.01
        out_tokens = None if error else rng.randint(5, 900)
        cost = kwh * price
        values = {
            "model": name,
            "tags": tag_texts[i % len(tag_texts)],
            "started_at": _text(began_s),
            "ended_at": _text(began_s + duration),
            "duration_s": duration,
            "time_to_first_token_s": duration * 0.1,
            "status": "error" if error else "ok",
            "error_type": "TimeoutError" if error else None,
            "input_tokens": rng.randint(10, 3000),
            "output_tokens": out_tokens,
            "gpus": gpu_lists[gpus],
            "gpu_seconds": gpu_seconds,
            "energy_j": energy_j,
            "energy_source": "counter",
            "energy_uncertainty_j": energy_j * 0.004 + 0.05,
            "cpu_energy_j": None,
            "cpu_energy_source": "missing",
            "host": f"gpu-node-{gpus[0] // 4}",
            "pid": 4242,
            "zone": zone,
            "intensity_g_per_kwh": intensity,
            "intensity_source": "static",
            "market_intensity_g_per_kwh": None,
            "pue": pue,
            "price_per_kwh": price,
            "currency": currency,
            "usd_per_gpu_hour": gpu_hour,
            "gpu_price_source": BENCH_GPU_PRICE_SOURCE,
            "ownership": "rented",
            "co2e_g": kwh * intensity,
            "market_co2e_g": None,
            "embodied_co2e_g": gpu_seconds * 7.9e-4,
            "energy_cost": cost,
            "energy_cost_usd": cost * usd,
            "compute_cost": gpu_seconds * gpu_hour / 3600.0,
        }
        chunk.append(tuple(values[c] for c in columns))
        if len(chunk) >= 100_000:
            con.executemany(insert, chunk)
            chunk.clear()
    if chunk:
        con.executemany(insert, chunk)
    idle_columns = _columns(table_of(IdleEnergy))
    idle_insert = (
        f"INSERT INTO idle_energy ({', '.join(idle_columns)}) "
        f"VALUES ({', '.join('?' * len(idle_columns))})"
    )
    minutes = DAYS * 1440
    idle_rows = (
        (
            uuid,
            _text(epoch_s + m * 60.0),
            60.0 * 70.0 * 0.4,
            60.0 * 70.0 * 0.4 + 9000.0,
            0.0,
            60.0,
            f"gpu-node-{g // 4}",
            4242,
        )
        for g, uuid in enumerate(GPU_UUIDS)
        for m in range(0, minutes, max(1, minutes * 8 // max(rows, 1) or 1))
    )
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


def time_report(path: Path, by: str | None = None) -> tuple[float, dict[str, Any]]:
    """Wall time of ``footprint report --format json [--by BY]`` as a fresh process, and
    its JSON."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOOTPRINT_")}
    command = [sys.executable, "-m", "footprint.cli", "report", "--db", str(path)]
    command += ["--format", "json"] + (["--by", by] if by else [])
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
        report_times, raw_times, tag_times = [], [], []
        report: dict[str, Any] = {}
        raw: dict[str, Any] = {}
        tagged: dict[str, Any] = {}
        for _ in range(repeats):
            elapsed, report = time_report(path)
            report_times.append(elapsed)
            start = time.perf_counter()
            raw = raw_sql(path)
            raw_times.append(time.perf_counter() - start)
            elapsed, tagged = time_report(path, by=f"tag:{BENCH_TAG}")
            tag_times.append(elapsed)
        teams = raw_tag_counts(path)
        size = path.stat().st_size
    totals = report["totals"]
    same = (
        totals["queries"] == raw["queries"] == rows
        and math.isclose(totals["energy_kwh"] * 3.6e6, raw["energy_j"], rel_tol=1e-9)
        and math.isclose(totals["co2e_g"], raw["co2e_g"], rel_tol=1e-9)
        and sorted(m["model"] for m in report["models"]) == raw["models"]
    )
    report_s, raw_s = min(report_times), min(raw_times)
    key = f"tag:{BENCH_TAG}"
    groups = tagged.get("groups") or []
    tag_same = (
        {g[key]: g["queries"] for g in groups} == teams
        and sum(g["queries"] for g in groups) == rows
        and math.isclose(
            sum(g["fully_loaded_cost_usd"] or 0.0 for g in groups),
            tagged["totals"]["fully_loaded_cost_usd"] or 0.0,
            rel_tol=1e-9,
        )
    )
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
        # ``footprint report --by tag:team``: the chargeback, a scan of every query
        "tag_report_s": min(tag_times),
        "tag_report_runs_s": tag_times,
        "tag_groups": len(groups),
        "tag_same_figures": tag_same,
        "target_report_s": 3.0,
        "target_ratio": 2.0,
        "cpu_count": os.cpu_count(),
        "note": "report_s includes process start and imports and reads the hourly rollups "
        "(built in rollup_build_s, part of build_s); raw_sql_s is sqlite3 in-process running "
        "the same aggregates over queries (grouped sums, idle per GPU and day, sampled "
        "percentiles); tag_report_s is the same command with --by tag:team (the hourly "
        "rollups do not carry tags: every query of the period is read), its groups checked "
        "against a count per team in sqlite3 and against the totals",
    }


# ``--models``: the whole command, every format, against these (this machine, 2 cores).
TARGET_MODELS_REPORT_S = 10.0
TARGET_MODELS_RSS_MB = 500.0


# Runs the command as its child and reports the child's peak memory on its last stderr
# line. A process forked from this (large) benchmark process would count the pages it
# shared with it before ``exec`` in its ``ru_maxrss``; a child of this small launcher
# starts from the launcher's few MB.
_RSS_MARK = "footprint-bench-maxrss"
_LAUNCHER = f"""
import os, sys
pid = os.fork()
if pid == 0:
    try:
        os.execv(sys.argv[1], sys.argv[1:])
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
sys.stderr.write("\\n{_RSS_MARK} %d\\n" % usage.ru_maxrss)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def measure_command(command: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run ``command``; its wall time, peak resident memory (MB; None where the system
    does not say), exit status, stdout and stderr."""
    launch = hasattr(os, "fork") and hasattr(os, "wait4")
    if launch:
        command = [sys.executable, "-c", _LAUNCHER, *command]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        done = subprocess.run(command, stdout=out, stderr=err, env=env, check=False)
        elapsed = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        stderr = err.read().decode("utf-8", "replace")
        stdout = out.read().decode("utf-8", "replace")
    rss_mb = None
    head, _, last = stderr.rstrip("\n").rpartition("\n")
    if launch and last.startswith(_RSS_MARK + " "):
        size = int(last.split()[1])  # kilobytes on Linux, bytes on macOS
        rss_mb = size / (1 << 20 if sys.platform == "darwin" else 1 << 10)
        stderr = head
    return {
        "seconds": elapsed,
        "peak_rss_mb": rss_mb,
        "returncode": done.returncode,
        "stdout": stdout,
        "stderr": stderr,
    }


def run_models(
    models: int, rows: int | None = None, repeats: int = 1, folder: Path | None = None
) -> dict[str, Any]:
    """``footprint report`` in every format over ``models`` distinct models: wall time and
    peak memory of the whole command (best of ``repeats``), and what it wrote."""
    from footprint.reporting.figures import TOP_MODELS
    from footprint.reporting.render import BASENAME, FORMATS

    rows = rows or max(100_000, 10 * models)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOOTPRINT_")}
    with tempfile.TemporaryDirectory(prefix="footprint-bench-models-") as tmp:
        where = Path(folder or tmp)
        path = where / f"models-{models}-{rows}.db"
        if path.exists():
            path.unlink()
        start = time.perf_counter()
        build_db(path, rows, models=models)
        build_s = time.perf_counter() - start
        runs = []
        for i in range(repeats):
            out = where / f"report-{i}"
            command = [sys.executable, "-m", "footprint.cli", "report", "--db", str(path)]
            command += ["--format", "all", "--out", str(out)]
            run = measure_command(command, env)
            if run["returncode"] != 0:
                raise RuntimeError(f"footprint report failed: {run['stderr'].strip()}")
            runs.append(run)
        files = {
            str(p.relative_to(out)): p.stat().st_size for p in sorted(out.rglob("*")) if p.is_file()
        }
        report = json.loads((out / f"{BASENAME}.json").read_text(encoding="utf-8"))
        with open(out / f"{BASENAME}.csv", encoding="utf-8") as handle:
            csv_rows = sum(1 for _ in handle) - 2  # the header and the totals row
    best = min(runs, key=lambda r: r["seconds"])
    rss = [r["peak_rss_mb"] for r in runs]
    shown = min(len(report["models"]), TOP_MODELS) + (1 if report.get("others") else 0)
    return {
        "models": models,
        "rows": rows,
        "formats": list(FORMATS),
        "build_s": build_s,
        "repeats": repeats,
        "report_s": best["seconds"],
        "peak_rss_mb": None if None in rss else max(rss),
        "report_runs_s": [r["seconds"] for r in runs],
        "peak_rss_runs_mb": rss,
        "json_models": len(report["models"]),
        "csv_rows": csv_rows,
        "table_rows": shown,
        "same_figures": len(report["models"]) == models
        and report["totals"]["queries"] == rows
        and csv_rows == models,
        "files_bytes": files,
        "target_report_s": TARGET_MODELS_REPORT_S,
        "target_peak_rss_mb": TARGET_MODELS_RSS_MB,
        "cpu_count": os.cpu_count(),
        "note": "report_s and peak_rss_mb: the whole `footprint report --format all` as a "
        "fresh process (start, imports, SQL, charts, every file written); tables and charts "
        f"show the first {TOP_MODELS} models by CO2e and the others added up, the JSON and "
        "CSV every model",
    }
