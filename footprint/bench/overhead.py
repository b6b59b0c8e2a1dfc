"""Hot-path overhead of ``@track`` against the bare call and codecarbon's tasks.

Each figure is the median (and p99) over batches of the time per call, so the cost of
reading the clock is spread over a batch; "added" is tracked minus bare, measured in the
same run with the sampler thread running. ``track_daemon_*`` is the same call with the
daemon's client in place (``daemon=<socket>``), against a fake daemon made here that
reads and discards the batches: the client thread encodes and sends them meanwhile.
``track_otel_*`` (with the ``otel`` extra): the tracked call once OpenTelemetry's API is
imported, with no span current and inside a span (whose ids each record then carries).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import statistics
import tempfile
import threading
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


class _SinkDaemon:
    """A Unix socket that accepts clients and discards what they send (counting lines)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.lines = 0
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(path)
        self._server.listen(64)
        threading.Thread(target=self._accept, name="bench-sink", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._drain, args=(conn,), daemon=True).start()

    def _drain(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError), conn:
            while chunk := conn.recv(1 << 20):
                self.lines += chunk.count(b"\n")

    def close(self) -> None:
        self._server.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)


def _daemon_client_us(
    bare_median: float, batches: int, batch_size: int, folder: str
) -> dict[str, Any]:
    """Tracked no-op calls with the client of a (fake) daemon in place; and what the
    ``auto`` check at start-up costs (a non-blocking connect to the default socket)."""
    from footprint.config import resolve_settings
    from footprint.runtime.discovery import choose
    from footprint.runtime.remote import DaemonClient
    from footprint.tracking import get_runtime

    path = os.path.join(folder, "daemon.sock")
    sink = _SinkDaemon(path)
    try:
        footprint.configure(daemon=path, sensor="none")
        tracked = footprint.track(model="bench-noop")(_noop)
        tracked()
        client = get_runtime()
        assert isinstance(client, DaemonClient)
        daemon_us = _per_call_us(tracked, batches, batch_size)
        footprint.shutdown()
        stats = client.stats()
        environ = {"XDG_RUNTIME_DIR": folder}
        os.makedirs(os.path.join(folder, "footprint"), exist_ok=True)
        os.replace(path, os.path.join(folder, "footprint", "daemon.sock"))
        auto = resolve_settings({"daemon": "auto", "sensor": "none"}, environ={})
        probe_us = []
        for _ in range(200):
            start = time.perf_counter_ns()
            choice = choose(auto, environ)
            probe_us.append((time.perf_counter_ns() - start) / 1000.0)
            if choice.sock is not None:
                choice.sock.close()
        found = choice.target is not None
        sink.path = os.path.join(folder, "footprint", "daemon.sock")
    finally:
        sink.close()
        footprint.reset_configuration()
    none_us = []
    for _ in range(200):  # nothing listens there now: measured in-process
        start = time.perf_counter_ns()
        choose(auto, environ)
        none_us.append((time.perf_counter_ns() - start) / 1000.0)
    return {
        "track_daemon_us_median": round(statistics.median(daemon_us) - bare_median, 4),
        "track_daemon_us_p99": round(_percentile(daemon_us, 0.99) - bare_median, 4),
        "daemon_spans_sent": stats["spans_sent"],
        "daemon_dropped_spans": stats["dropped_spans"] + stats["daemon_lost_spans"],
        "auto_probe_us_median": round(statistics.median(probe_us), 2) if found else None,
        "auto_probe_no_daemon_us_median": round(statistics.median(none_us), 2),
        "target_track_daemon_us_median": 5.0,
    }


def _otel_us(bare_median: float, batches: int, batch_size: int, folder: str) -> dict[str, Any]:
    """The tracked no-op once OpenTelemetry's API is imported: with no span current, and
    inside a span of the SDK's tracer (its ids read and kept for the record). Measured
    after everything else: until then the process has not imported OpenTelemetry, as a
    user's that does not use it. Empty without the ``otel`` extra."""
    try:
        from opentelemetry.sdk.trace import TracerProvider
    except ImportError:
        return {}
    footprint.configure(
        db=str(Path(folder) / "otel.db"),
        sensor="simulated:gpus=1,workload=manual",
        cpu=False,
        region="FRA",
    )
    try:
        tracked = footprint.track(model="bench-noop")(_noop)
        tracked()
        no_span_us = _per_call_us(tracked, batches, batch_size)
        footprint.flush()  # an empty queue again: no span dropped in the next batches
        with TracerProvider().get_tracer("footprint-bench").start_as_current_span("bench"):
            span_us = _per_call_us(tracked, batches, batch_size)
        footprint.shutdown()
    finally:
        footprint.reset_configuration()
    return {
        "track_otel_no_span_us_median": round(statistics.median(no_span_us) - bare_median, 4),
        "track_otel_span_us_median": round(statistics.median(span_us) - bare_median, 4),
        "track_otel_span_us_p99": round(_percentile(span_us, 0.99) - bare_median, 4),
    }


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
        bare_median = statistics.median(bare_us)
        # A short directory: a Unix socket address holds at most 107 bytes.
        with tempfile.TemporaryDirectory(
            prefix="fp", dir="/tmp" if os.path.isdir("/tmp") else None
        ) as short:
            daemon = _daemon_client_us(bare_median, batches, batch_size, short)
        footprint.reset_configuration()
    codecarbon_us = _codecarbon_task_us(codecarbon_calls)
    with tempfile.TemporaryDirectory() as tmp:
        otel = _otel_us(bare_median, batches, batch_size, tmp)
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
        **daemon,
        **otel,
    }
