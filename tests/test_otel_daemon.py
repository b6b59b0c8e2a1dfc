"""Trace context and OpenTelemetry metrics through a real daemon: a client process's calls,
made under an OTel span, reach ``footprint daemon --otel-metrics`` (run with an SDK
MeterProvider set, as ``opentelemetry-instrument`` would) with their ids; the daemon
stores them and its counters add up to its records. A batch with a malformed id is
refused and counted.

Before (f2a661a): the daemon refused ``trace_id``/``span_id`` as unknown fields, stored
no trace context, and had no ``--otel-metrics``.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest
from test_daemon_server import (
    START_TIMEOUT_S,
    Client,
    DaemonProcess,
    _command,
    _environment,
    _first_line,
    batch,
    end,
    wait_for,
)

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.trace import TracerProvider  # noqa: E402

from footprint import Tracker  # noqa: E402
from footprint.pricing.factors import record_cost_usd  # noqa: E402

# Runs ``footprint daemon`` with an SDK MeterProvider reading into memory, and writes
# the counters' sums per (metric, model) to argv[1] when it exits.
WRAPPER = """
import atexit, json, sys
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

reader = InMemoryMetricReader()
metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
out = sys.argv[1]

def dump():
    sums = {}
    data = reader.get_metrics_data()
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    key = metric.name + " " + point.attributes["model"]
                    sums[key] = sums.get(key, 0) + point.value
    with open(out, "w") as f:
        json.dump(sums, f)

atexit.register(dump)
from footprint.cli import main
sys.argv = ["footprint", *sys.argv[2:]]
main()
"""


def test_a_daemon_stores_the_ids_and_publishes_its_records_as_otel_counters(tmp_path: Path):
    folder = Path(tempfile.mkdtemp(prefix="fpo-", dir="/tmp"))  # a socket path is short
    wrapper = folder / "otel_daemon.py"
    wrapper.write_text(textwrap.dedent(WRAPPER))
    sums_path = folder / "sums.json"
    sock, db = folder / "o.sock", folder / "o.db"
    command = _command(sock, db, "--http", "127.0.0.1:0", "--otel-metrics")
    command[1:3] = [str(wrapper), str(sums_path)]  # instead of "-m footprint.cli"
    daemon = _spawn(command, folder)
    try:
        tracker = Tracker(daemon=str(sock), db=str(db), cpu=False, region="FRA")
        tracer = TracerProvider().get_tracer("footprint-tests")

        @tracker.track(model="traced", tokens=lambda r: (2, r))
        def call(n: int) -> int:
            time.sleep(0.01)
            return n

        with tracer.start_as_current_span("request") as span:
            for n in range(4):
                call(n)
            context = span.get_span_context()
        call(9)
        tracker.flush()
        tracker.close()
        assert wait_for(lambda: len(_rows(db)) == 5, timeout=60)
        with Client(sock) as client:  # a forged id: refused, counted
            now = time.monotonic()
            bad = {**end(1, now - 0.1, now, "forged"), "trace_id": "XYZ", "span_id": "0" * 16}
            client.send(batch(4242, ends=[bad]))
            reply = client.reply()
        assert reply is not None and reply["reason"] == "invalid" and "trace_id" in reply["error"]
        metrics = urllib.request.urlopen(daemon.url("/metrics"), timeout=10).read().decode()
        assert 'footprint_protocol_errors_total{reason="invalid"} 1.0' in metrics
    finally:
        assert daemon.stop(timeout=30) == 0, daemon.stderr
    records = _rows(db)
    sums = json.loads(sums_path.read_text())
    shutil.rmtree(folder, ignore_errors=True)
    ids = (f"{context.trace_id:032x}", f"{context.span_id:016x}")
    assert [(r["trace_id"], r["span_id"]) for r in records] == [ids] * 4 + [(None, None)]
    assert all(r["model"] == "traced" for r in records)
    assert sums["footprint.queries traced"] == 5
    assert sums["footprint.tokens.output traced"] == sum([0, 1, 2, 3, 9])
    for name, value in (
        ("footprint.energy", lambda r: r["energy_j"]),
        ("footprint.co2e", lambda r: r["co2e_g"]),
        ("footprint.cost", record_cost_usd),
    ):
        known = [value(r) for r in records if value(r) is not None]
        if known:
            assert math.isclose(sums[f"{name} traced"], sum(known), rel_tol=1e-9), name
        else:
            assert f"{name} traced" not in sums, name


def _spawn(command: list[str], folder: Path) -> DaemonProcess:
    """A daemon from ``command``, started (as ``spawn`` of test_daemon_server does)."""
    stderr = folder / "o.stderr"
    with open(stderr, "wb") as err:
        proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=err, cwd=folder, env=_environment(folder)
        )
    daemon = DaemonProcess(proc, folder, folder / "o.sock", folder / "o.db", None, stderr)
    line = _first_line(proc, START_TIMEOUT_S)
    if not line.startswith("footprint daemon: listening on"):
        daemon.kill()
        raise AssertionError(f"daemon did not start: {line!r}; stderr: {daemon.stderr}")
    match = re.search(r"http://127\.0\.0\.1:(\d+)", line)
    daemon.port = int(match.group(1)) if match else None
    return daemon


def _rows(db: Path) -> list[dict]:
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    except sqlite3.OperationalError:
        return []
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute("SELECT * FROM queries ORDER BY started_at, id")]
    except sqlite3.OperationalError:  # before the first write
        return []
    finally:
        con.close()


def test_otel_metrics_without_a_configured_sdk_is_refused_with_a_reason(tmp_path: Path):
    result = subprocess.run(
        [sys.executable, "-m", "footprint.cli", "daemon", "--otel-metrics", "--http", "off"],
        capture_output=True,
        text=True,
        env=_environment(tmp_path),
        timeout=120,
    )
    assert result.returncode == 2
    assert "no OpenTelemetry SDK MeterProvider is configured" in result.stderr
    assert "Traceback" not in result.stderr
