"""``footprint bench soak``: calls made, stored, counted lost and duplicated while the
processes around them are stopped with SIGTERM at random times.

Two setups run one after the other, each for ``minutes``, with ``workers`` worker
processes making numbered calls (a 1 ms sleep each) on the simulated sensor:

- **in-process**: each worker measures and writes itself (``daemon=off``);
- **daemon**: the workers send their spans to one ``footprint daemon``.

A supervisor stops a random worker with SIGTERM every 0.5–3 s (a new one with a new run
id takes its place) and, in the daemon setup, every third stop is the daemon's instead
(started again at once on the same socket). Each worker appends one byte per ended call
to its own file, so the calls made are known whatever happened to the process. At the
end everything is stopped with SIGTERM and the database is read as ``footprint db info``
reads it (dead processes' journals included):

- ``made``: calls that ended; ``stored``: distinct (run, call) rows; ``duplicated``: rows
  beyond one per call; ``counted_lost``: the ``losses`` total; ``unaccounted``: made −
  stored − counted lost (what was lost silently; 0 is the goal);
- RSS of the workers and the daemon (MiB), sampled every second: first, max and last.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

WORKER = textwrap.dedent("""
    import os, sys, time
    import footprint

    run, ends = sys.argv[1], os.open(sys.argv[2], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    print("ready", flush=True)
    i = 0
    while True:
        with footprint.query(model="soak", run=run, call=i):
            time.sleep(0.001)
        os.write(ends, b".")
        i += 1
""")
STOP_EVERY_S = (0.5, 3.0)
DAEMON_SHARE = 1 / 3  # of the stops in the daemon setup


def _rss_mib(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        return None
    return None


class _Setup:
    """The processes of one setup, and what they did."""

    def __init__(self, folder: Path, mode: str, workers: int, rng: random.Random) -> None:
        self.folder, self.mode, self.rng = folder, mode, rng
        self.db = folder / f"{mode}.db"
        self.sock = folder / f"{mode}.sock"
        self.script = folder / "worker.py"
        self.script.write_text(WORKER)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("FOOTPRINT_")}
        self.env.update(
            FOOTPRINT_SENSOR="simulated",
            FOOTPRINT_REGION="FRA",
            FOOTPRINT_CPU="0",
            FOOTPRINT_DB=str(self.db),
            XDG_RUNTIME_DIR=str(folder),
            PYTHONUNBUFFERED="1",
            FOOTPRINT_DAEMON=str(self.sock) if mode == "daemon" else "off",
        )
        self.daemon: subprocess.Popen | None = None
        # Logs for the life of the setup (closed with the folder).
        self.daemon_log = open(folder / "daemon.log", "ab")  # noqa: SIM115
        self.worker_log = open(folder / "workers.log", "ab")  # noqa: SIM115
        self.workers: list[subprocess.Popen] = []
        self.ends: list[Path] = []
        self.worker_stops = self.daemon_stops = 0
        self.rss: dict[str, list[float]] = {"workers": [], "daemon": []}
        if mode == "daemon":
            self._start_daemon()
        for _ in range(workers):
            self.workers.append(self._start_worker())

    def _start_daemon(self) -> None:
        self.daemon = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "footprint",
                "daemon",
                "--socket",
                str(self.sock),
                "--db",
                str(self.db),
                "--sensor",
                "simulated",
                "--http",
                "off",
            ],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=self.daemon_log,
        )
        assert self.daemon.stdout is not None
        self.daemon.stdout.readline()  # "listening on ..."

    def _start_worker(self) -> subprocess.Popen:
        ends = self.folder / f"ends-{uuid.uuid4().hex}"
        self.ends.append(ends)
        proc = subprocess.Popen(
            [sys.executable, str(self.script), ends.name, str(ends)],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=self.worker_log,
        )
        assert proc.stdout is not None
        proc.stdout.readline()
        return proc

    def disturb(self) -> None:
        """Stop one process with SIGTERM and start its replacement."""
        if self.daemon is not None and self.rng.random() < DAEMON_SHARE:
            self.daemon.send_signal(signal.SIGTERM)
            self.daemon.wait(30)
            self.daemon_stops += 1
            self._start_daemon()
            return
        k = self.rng.randrange(len(self.workers))
        self.workers[k].send_signal(signal.SIGTERM)
        self.workers[k].wait(30)
        self.worker_stops += 1
        self.workers[k] = self._start_worker()

    def sample_rss(self) -> None:
        worker_mib = [m for m in (_rss_mib(w.pid) for w in self.workers) if m is not None]
        if worker_mib:
            self.rss["workers"].append(max(worker_mib))
        if self.daemon is not None and (m := _rss_mib(self.daemon.pid)) is not None:
            self.rss["daemon"].append(m)

    def stop(self) -> None:
        for proc in self.workers:
            proc.send_signal(signal.SIGTERM)
        for proc in self.workers:
            proc.wait(30)
        if self.daemon is not None:
            self.daemon.send_signal(signal.SIGTERM)
            self.daemon.wait(30)

    def books(self) -> dict[str, Any]:
        from footprint.storage.store import Store, database_info

        made = sum(p.stat().st_size for p in self.ends if p.exists())
        Store(str(self.db)).close()  # the next writer: counts dead processes' journals
        info = database_info(str(self.db))
        con = sqlite3.connect(self.db)
        try:
            rows, distinct = con.execute(
                "SELECT COUNT(*), COUNT(DISTINCT json_extract(tags, '$.run') || '/' || "
                "json_extract(tags, '$.call')) FROM queries"
            ).fetchone()
        finally:
            con.close()
        counted = int(info["lost_total"])
        # Calls that never ended were not made: counted, but not among ``made``.
        not_ended = sum(info["losses"].get(k, 0) for k in ("running_at_exit", "abandoned_spans"))
        return {
            "mode": self.mode,
            "workers": len(self.workers),
            "worker_stops": self.worker_stops,
            "daemon_stops": self.daemon_stops,
            "made": made,
            "stored": distinct,
            "duplicated": rows - distinct,
            "counted_lost": counted,
            "losses": info["losses"],
            "unaccounted": made - distinct - (counted - not_ended),
            "rss_mib": {
                role: None
                if not values
                else {
                    "first": round(values[0], 1),
                    "max": round(max(values), 1),
                    "last": round(values[-1], 1),
                }
                for role, values in self.rss.items()
            },
        }


def _run_setup(mode: str, minutes: float, workers: int, rng: random.Random) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="fps-", dir="/tmp") as tmp:  # short socket path
        setup = _Setup(Path(tmp), mode, workers, rng)
        try:
            end_s = time.monotonic() + minutes * 60
            next_stop_s = time.monotonic() + rng.uniform(*STOP_EVERY_S)
            next_rss_s = time.monotonic()
            while time.monotonic() < end_s:
                now_s = time.monotonic()
                if now_s >= next_rss_s:
                    setup.sample_rss()
                    next_rss_s = now_s + 1.0
                if now_s >= next_stop_s:
                    setup.disturb()
                    next_stop_s = time.monotonic() + rng.uniform(*STOP_EVERY_S)
                time.sleep(0.05)
        finally:
            setup.stop()
        return setup.books()


def run(minutes: float = 1.0, workers: int = 2, seed: int = 1) -> dict[str, Any]:
    """Both setups, ``minutes`` each; one JSON-ready dict."""
    rng = random.Random(seed)
    results = [_run_setup(mode, minutes, workers, rng) for mode in ("in-process", "daemon")]
    return {"minutes": minutes, "seed": seed, "setups": results}


if __name__ == "__main__":  # pragma: no cover
    print(json.dumps(run(float(sys.argv[1]) if len(sys.argv) > 1 else 0.2), indent=2))
