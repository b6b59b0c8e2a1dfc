"""The daemon's throughput and its idle cost, on this machine.

Two daemons are started as processes (``footprint daemon``, simulated GPUs, a temporary
SQLite file, CPU energy off):

- **traffic**: ``senders`` processes send spans over the Unix socket at ``rate_per_s``
  together for ``seconds``, each the way a client does: a batch every 5 ms with the starts
  of the calls begun since the last one and the ends of those begun before (every call
  lasts one batch period and is sent twice, start and end). With ``ack`` (the default,
  as the client does) every batch asks for acknowledgements and each sender reads them
  as they come, then waits for the last ones (up to ``ACK_WAIT_S``): ``acknowledged``.
  A daemon that falls behind slows the senders (their sends block), so the rate
  achieved is what it sustains. Then the daemon is stopped (SIGTERM) and the records in
  the database counted: ``lost`` is spans sent minus records stored. The daemon's CPU
  use while the spans arrive is read from ``/proc/PID/stat``.
- **saturation**: the same at ``SATURATION_FACTOR`` times the rate (more than this
  machine's daemon takes, so the senders are held back): what it sustains, senders and
  daemon sharing the machine's cores.
- **idle**: a daemon sampling 8 simulated GPUs every 50 ms (20 Hz) with no client; its
  CPU use over ``idle_seconds`` after a warm-up.

Targets (DESIGN.md): at least 10,000 spans/s from 8 processes with none lost; at most 2 %
of one core idle.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

BATCH_PERIOD_S = 0.005
TARGET_SPANS_PER_S = 10_000
TARGET_IDLE_CPU_PCT = 2.0
MODEL = "bench-daemon"
MAX_PER_BATCH = 2_000  # starts, and ends, per batch
SATURATION_FACTOR = 4  # the saturation run offers this many times the rate asked
ACK_WAIT_S = 30.0  # a sender waits this long at most for its last acknowledgements


def _environment(folder: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOOTPRINT_")}
    env.update(FOOTPRINT_CPU="0", XDG_RUNTIME_DIR=str(folder), PYTHONUNBUFFERED="1")
    return env


class _Daemon:
    def __init__(self, folder: Path, name: str, sensor: str, period_s: float) -> None:
        self.sock = folder / f"{name}.sock"
        self.db = folder / f"{name}.db"
        self.stderr = folder / f"{name}.stderr"
        command = [
            sys.executable,
            "-m",
            "footprint.cli",
            "daemon",
            "--socket",
            str(self.sock),
            "--http",
            "127.0.0.1:0",
            "--db",
            str(self.db),
            "--sensor",
            sensor,
            "--region",
            "FRA",
            "--sampling-period",
            str(period_s),
        ]
        with open(self.stderr, "wb") as err:
            self.proc = subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=err, cwd=folder, env=_environment(folder)
            )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        match = re.search(r"http://127\.0\.0\.1:(\d+)", line)
        if not match:
            self.proc.kill()
            raise RuntimeError(f"the daemon did not start: {line!r} {self.stderr.read_text()}")
        self.port = int(match.group(1))

    def health(self) -> dict[str, Any]:
        url = f"http://127.0.0.1:{self.port}/healthz"
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.loads(response.read())

    def cpu_s(self) -> float | None:
        return _cpu_seconds(self.proc.pid)

    def stop(self) -> tuple[int, float]:
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        return code, time.monotonic() - started


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process, every thread (Linux ``/proc``)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _idle(folder: Path, gpus: int, period_s: float, seconds: float) -> dict[str, Any]:
    daemon = _Daemon(folder, "idle", f"simulated:gpus={gpus}", period_s)
    try:
        time.sleep(2.0)  # warm-up: first samples, the first writes
        cpu0, t0 = daemon.cpu_s(), time.monotonic()
        time.sleep(seconds)
        cpu1, t1 = daemon.cpu_s(), time.monotonic()
    finally:
        daemon.stop()
    pct = None if cpu0 is None or cpu1 is None else 100.0 * (cpu1 - cpu0) / (t1 - t0)
    return {
        "gpus": gpus,
        "sampling_hz": round(1.0 / period_s, 3),
        "seconds": round(t1 - t0, 2),
        "daemon_cpu_pct": None if pct is None else round(pct, 3),
        "target_cpu_pct": TARGET_IDLE_CPU_PCT,
    }


SENDER = (
    "import sys; from footprint.bench.daemon import _sender; "
    "_sender(sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), "
    "int(sys.argv[5]), sys.argv[6] == '1')"
)


class _Acks:
    """The acknowledgements a sender reads back (``{"acked": [ids]}`` lines)."""

    def __init__(self, sock: Any) -> None:
        import select

        self.sock = sock
        self.count = 0
        self._partial = b""
        self._poll = select.poll()
        self._poll.register(sock, select.POLLIN)

    def read(self, timeout_s: float = 0.0) -> None:
        while self._poll.poll(int(timeout_s * 1000)):
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                return
            *lines, self._partial = (self._partial + chunk).split(b"\n")
            for line in lines:
                if line.startswith(b'{"acked":'):
                    self.count += len(json.loads(line)["acked"])
            timeout_s = 0.0


def _sender(
    path: str, rate_per_s: float, seconds: float, index: int, gpus: int, ack: bool = True
) -> None:
    """One client process: connect, say ready, wait for "go", send, print a JSON result."""
    import socket

    from footprint.runtime.protocol import encode_batch

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    acks = _Acks(sock)
    pid, host = os.getpid(), socket.gethostname()
    gpu = [index % gpus]
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    sys.stdin.readline()
    made = 0
    running: list[tuple[int, float]] = []
    started = time.monotonic()
    next_s = started
    batches = 0
    last_start_sent_s = 0.0
    while True:
        now = time.monotonic()
        elapsed = now - started
        due = int(min(elapsed, seconds) * rate_per_s)
        starts = [{"id": i, "start_s": now, "gpus": gpu} for i in range(made, due)]
        ends = [
            {"id": i, "start_s": s, "end_s": now, "model": MODEL, "output_tokens": 1, "gpus": gpu}
            for i, s in running
        ]
        for first in range(0, max(len(starts), len(ends)), MAX_PER_BATCH):
            # a sender held back catches up in bigger batches: split them, as a client
            # does, to stay under MAX_BATCH_BYTES
            sock.sendall(
                encode_batch(
                    {
                        "pid": pid,
                        "host": host,
                        "monotonic_s": now,
                        "starts": starts[first : first + MAX_PER_BATCH],
                        "ends": ends[first : first + MAX_PER_BATCH],
                        "ack": ack,
                    }
                )
            )
            batches += 1
            if starts:
                last_start_sent_s = time.monotonic() - started
        running = [(i, now) for i in range(made, due)]
        made = due
        if elapsed >= seconds and not running:
            break
        next_s += BATCH_PERIOD_S
        if ack:
            acks.read()
        time.sleep(max(0.0, next_s - time.monotonic()))
    sent_s = time.monotonic() - started
    wait_until_s = time.monotonic() + ACK_WAIT_S
    while ack and acks.count < made and time.monotonic() < wait_until_s:
        acks.read(timeout_s=0.1)
    sock.close()
    result = {
        "spans": made,
        "seconds": sent_s,
        "batches": batches,
        "acknowledged": acks.count,
        "last_start_sent_s": last_start_sent_s,
    }
    sys.stdout.write(json.dumps(result) + "\n")


def _traffic(
    folder: Path,
    name: str,
    rate_per_s: int,
    seconds: float,
    senders: int,
    gpus: int,
    period_s: float,
    ack: bool = True,
) -> dict[str, Any]:
    daemon = _Daemon(folder, name, f"simulated:gpus={gpus},workload=spans", period_s)
    procs = []
    try:
        for index in range(senders):
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-c",
                        SENDER,
                        str(daemon.sock),
                        str(rate_per_s / senders),
                        str(seconds),
                        str(index),
                        str(gpus),
                        "1" if ack else "0",
                    ],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    env=_environment(folder),
                )
            )
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        cpu0, t0 = daemon.cpu_s(), time.monotonic()
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
            proc.stdin.flush()
        results = []
        for proc in procs:
            out, _ = proc.communicate(timeout=seconds * 20 + 60 + ACK_WAIT_S)
            results.append(json.loads(out.decode().strip().splitlines()[-1]))
        cpu1, t1 = daemon.cpu_s(), time.monotonic()
        sent = sum(r["spans"] for r in results)
        # until everything sent is written (or nothing moves for 10 s)
        written, last_change, drained_at = -1, time.monotonic(), None
        while time.monotonic() - last_change < 10.0:
            now_written = daemon.health()["records_written"]
            if now_written >= sent:
                drained_at = time.monotonic()
                break
            if now_written != written:
                written, last_change = now_written, time.monotonic()
            time.sleep(0.1)
        health = daemon.health()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        code, stop_s = daemon.stop()
    con = sqlite3.connect(daemon.db)
    try:
        (stored,) = con.execute("SELECT COUNT(*) FROM queries WHERE model = ?", (MODEL,)).fetchone()
        (pids,) = con.execute("SELECT COUNT(DISTINCT pid) FROM queries").fetchone()
    finally:
        con.close()
    send_s = max(r["seconds"] for r in results)
    # The offered rate is kept unless the daemon holds the senders back (their sends
    # block): then the last starts go out late, and the rate is what it let through.
    # (The last starts go out with the first batch at or after ``seconds``: one batch
    # period is the pacing loop's, not the daemon's.)
    window_s = max(seconds, max(r["last_start_sent_s"] for r in results) - BATCH_PERIOD_S)
    end_to_end_s = (drained_at or time.monotonic()) - t0
    cpu = None if cpu0 is None or cpu1 is None else 100.0 * (cpu1 - cpu0) / (t1 - t0)
    stats = health["stats"]
    return {
        "senders": senders,
        "gpus": gpus,
        "target_spans_per_s": rate_per_s,
        "seconds": round(send_s, 2),
        "spans_sent": sent,
        "batches_sent": sum(r["batches"] for r in results),
        "achieved_spans_per_s": round(sent / window_s, 1),
        "end_to_end_spans_per_s": round(stored / end_to_end_s, 1),
        "written_within_s_after_senders": (
            None if drained_at is None else round(drained_at - t1, 2)
        ),
        "stored": stored,
        "lost": sent - stored,
        "acknowledged": sum(r["acknowledged"] for r in results) if ack else None,
        "distinct_pids": pids,
        "daemon_cpu_pct": None if cpu is None else round(cpu, 1),
        "daemon_dropped_spans": stats["dropped_spans"],
        "protocol_errors": health["protocol_errors"],
        "stop_exit_code": code,
        "stop_s": round(stop_s, 2),
    }


def run(
    rate_per_s: int = TARGET_SPANS_PER_S,
    seconds: float = 10.0,
    senders: int = 8,
    idle_seconds: float = 5.0,
    gpus: int = 8,
    period_s: float = 0.05,
    saturate: bool = True,
    ack: bool = True,
) -> dict[str, Any]:
    """The measurements, as one JSON-able dict: ``traffic`` at ``rate_per_s``,
    ``saturation`` (``saturate``) at ``SATURATION_FACTOR`` times it, to see how much the
    daemon takes on this machine, and ``idle``; senders ask for acknowledgements
    (``ack``) as the client does."""
    short = "/tmp" if os.path.isdir("/tmp") else None  # a socket path has at most 107 bytes
    with tempfile.TemporaryDirectory(prefix="fpbd-", dir=short) as tmp:
        folder = Path(tmp)
        traffic = _traffic(folder, "traffic", rate_per_s, seconds, senders, gpus, period_s, ack)
        saturation = (
            _traffic(
                folder,
                "saturation",
                rate_per_s * SATURATION_FACTOR,
                seconds,
                senders,
                gpus,
                period_s,
                ack,
            )
            if saturate
            else None
        )
        idle = _idle(folder, gpus, period_s, idle_seconds)
    return {
        "benchmark": "daemon",
        "cpu_count": os.cpu_count(),
        "traffic": traffic,
        "saturation": saturation,
        "idle": idle,
        "targets": {
            "spans_per_s": TARGET_SPANS_PER_S,
            "lost": 0,
            "idle_cpu_pct": TARGET_IDLE_CPU_PCT,
        },
        "meets_targets": (
            traffic["achieved_spans_per_s"] >= TARGET_SPANS_PER_S
            and traffic["lost"] == 0
            and idle["daemon_cpu_pct"] is not None
            and idle["daemon_cpu_pct"] <= TARGET_IDLE_CPU_PCT
        ),
    }
