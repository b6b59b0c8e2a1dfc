"""Sustained throughput of the whole pipeline in one process: track, resolve, price, write.

Calls of a no-op are made at a fixed rate for a while (paced in 1 ms steps, the way a
busy server's requests arrive); the runtime's own threads sample, resolve, price and
write as they do in production. Reported: the calls made, how many records were in the
database when the calls stopped (the rest are the last flush interval and the resolver's
margin), and how long ``shutdown``, called right then (what exit runs), took to write
the rest.
"""

from __future__ import annotations

import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

import footprint


def _noop() -> None:
    return None


def run(rate_per_s: int = 20_000, seconds: float = 10.0) -> dict[str, Any]:
    """Drive ``rate_per_s`` calls per second for ``seconds``; time the exit."""
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "pipeline.db"
        flush_interval_s = 1.0
        footprint.configure(
            db=str(db),
            sensor="simulated:gpus=1",
            cpu=False,
            region="FRA",
            flush_interval_s=flush_interval_s,
        )
        tracked = footprint.track(model="bench-pipeline")(_noop)
        tracked()  # start the runtime outside the timing
        made = 1
        started = time.monotonic()
        while (elapsed := time.monotonic() - started) < seconds:
            due = int(elapsed * rate_per_s)
            while made < due:
                tracked()
                made += 1
            time.sleep(0.001)
        calls_s = time.monotonic() - started
        written_at_end = footprint.stats().get("records_written", 0)
        exit_started = time.perf_counter()
        footprint.shutdown()
        exit_s = time.perf_counter() - exit_started
        con = sqlite3.connect(db)
        (stored,) = con.execute("SELECT COUNT(*) FROM queries").fetchone()
        con.close()
        footprint.reset_configuration()
    return {
        "benchmark": "pipeline",
        "target_rate_per_s": rate_per_s,
        "calls": made,
        "achieved_rate_per_s": round(made / calls_s, 1),
        "written_when_calls_stopped": written_at_end,
        "exit_s": round(exit_s, 3),
        "stored": stored,
        "lost": made - stored,
        "target_exit_s": 1.0,
    }
