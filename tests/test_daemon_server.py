"""``footprint daemon`` as a process: spans from several processes, refused input, metrics,
health, HTTP with and without a token, one daemon per socket, SIGTERM.

Every daemon here runs on one simulated GPU driven by the spans it receives
(``workload=spans``), writes a SQLite file in a temporary folder, and listens on a Unix
socket there and on 127.0.0.1 (a free port, read from its first line): nothing leaves
loopback.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import shutil
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from footprint._clock import SYSTEM_CLOCK
from footprint.runtime.protocol import MAX_BATCH_BYTES, decode_batch, encode_batch
from footprint.runtime.spans import SpanQueue

HOST = socket.gethostname()
SENSOR = "simulated:gpus=1,idle_w=60,busy_w=400,workload=spans"
START_TIMEOUT_S = 90  # imports and the first samples, on a loaded 2-core machine


class DaemonProcess:
    def __init__(
        self,
        proc: subprocess.Popen,
        folder: Path,
        sock: Path,
        db: Path,
        port: int | None,
        stderr: Path,
    ) -> None:
        self.proc = proc
        self.folder = folder
        self.sock = sock
        self.db = db
        self.port = port
        self.stderr_path = stderr

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    @property
    def token(self) -> str:
        """What POST /v1/spans wants: the --token given, else the one it generated."""
        return self.sock.with_name(self.sock.name + ".token").read_text().strip()

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM (unless it has exited), its exit code, its stdout pipe closed."""
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise
        finally:
            self.close()

    def kill(self) -> int:
        """SIGKILL, its exit code, its stdout pipe closed."""
        self.proc.kill()
        try:
            return self.proc.wait()
        finally:
            self.close()

    def close(self) -> None:
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def _command(sock: Path, db: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "footprint.cli",
        "daemon",
        "--socket",
        str(sock),
        "--db",
        str(db),
        "--sensor",
        SENSOR,
        "--region",
        "FRA",
        *extra,
    ]


def _environment(folder: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOOTPRINT_")}
    env.update(FOOTPRINT_CPU="0", XDG_RUNTIME_DIR=str(folder), PYTHONUNBUFFERED="1")
    return env


def spawn(
    folder: Path, *extra: str, name: str = "d", http: str = "127.0.0.1:0", wait: bool = True
) -> DaemonProcess:
    sock, db = folder / f"{name}.sock", folder / f"{name}.db"
    stderr = folder / f"{name}.stderr"
    with open(stderr, "wb") as err:
        proc = subprocess.Popen(
            _command(sock, db, "--http", http, *extra),
            stdout=subprocess.PIPE,
            stderr=err,
            cwd=folder,
            env=_environment(folder),
        )
    daemon = DaemonProcess(proc, folder, sock, db, None, stderr)
    if not wait:
        return daemon
    line = _first_line(proc, START_TIMEOUT_S)
    if not line.startswith("footprint daemon: listening on"):
        daemon.kill()
        raise AssertionError(f"daemon did not start: {line!r}; stderr: {daemon.stderr}")
    match = re.search(r"http://127\.0\.0\.1:(\d+)", line)
    daemon.port = int(match.group(1)) if match else None
    return daemon


def _first_line(proc: subprocess.Popen, timeout: float) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    data = b""
    while not data.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or proc.poll() is not None and not select.select([proc.stdout], [], [], 0)[0]:
            break
        if select.select([proc.stdout], [], [], min(left, 0.5))[0]:
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            data += chunk
    return data.decode(errors="replace").strip()


@pytest.fixture(scope="module")
def folder():
    # Short: a Unix socket path has at most 107 bytes.
    path = Path(tempfile.mkdtemp(prefix="fpd-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def daemon(folder):
    proc = spawn(folder, name="main")
    yield proc
    proc.stop()


class Client:
    """A raw client: one connection, batches as lines, replies read with a timeout."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))
        self.sock.settimeout(5.0)
        self._buffer = b""

    def send(self, batch: dict) -> None:
        self.sock.sendall(encode_batch(batch))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self, timeout: float = 5.0) -> dict | None:
        self.sock.settimeout(timeout)
        while b"\n" not in self._buffer:
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                return None
            if not chunk:
                return None
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return json.loads(line)

    def no_reply(self, wait: float = 0.3) -> bool:
        return self.reply(timeout=wait) is None

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def batch(pid: int, starts: list | None = None, ends: list | None = None, **extra) -> dict:
    out = {"pid": pid, "host": HOST, "monotonic_s": time.monotonic()}
    if starts:
        out["starts"] = starts
    if ends:
        out["ends"] = ends
    out.update(extra)
    return out


def end(span_id: int, start_s: float, end_s: float, model: str, **extra) -> dict:
    return {"id": span_id, "start_s": start_s, "end_s": end_s, "model": model, "gpus": [0], **extra}


def query_rows(db: Path, sql: str, args: tuple = ()) -> list[tuple]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


def wait_for(predicate, timeout: float = 20.0, step: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(step)


def records_of(db: Path, model: str) -> list[tuple]:
    with contextlib.suppress(sqlite3.OperationalError):  # before the first write
        return query_rows(
            db,
            "SELECT pid, host, model, input_tokens, output_tokens, status, energy_j, "
            "tags, duration_s FROM queries WHERE model = ? ORDER BY pid",
            (model,),
        )
    return []


def http_get(url: str, token: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def http_post(
    url: str, body: bytes, token: str | None = None, headers: dict | None = None
) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, method="POST")
    request.add_header("Content-Type", "application/json")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def metric(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample of the Prometheus text, or None."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        if head.split("{")[0] != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', head))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(value)
    return None


def metrics_text(daemon: DaemonProcess, token: str | None = None) -> str:
    status, body = http_get(daemon.url("/metrics"), token)
    assert status == 200, body
    return body.decode()


# -- spans from several processes --------------------------------------------------------
def test_spans_from_several_pids_land_with_their_pid_model_and_tokens(daemon):
    clients = {pid: Client(daemon.sock) for pid in (91001, 91002, 91003)}
    t0 = time.monotonic()
    for pid, client in clients.items():
        client.send(batch(pid, starts=[{"id": 1, "start_s": t0, "gpus": [0]}]))
    time.sleep(0.3)
    t1 = time.monotonic()
    for n, (pid, client) in enumerate(clients.items()):
        client.send(
            batch(
                pid,
                ends=[
                    end(
                        1,
                        t0,
                        t1,
                        "pids-model",
                        input_tokens=10 + n,
                        output_tokens=100 + n,
                        tags={"team": f"t{n}"},
                    ),
                    # started and ended between two batches: only sent as an end
                    end(2, t1 - 0.01, t1, "pids-model-short", status="error", error_type="Boom"),
                ],
            )
        )
    rows = wait_for(
        lambda: (
            len(records_of(daemon.db, "pids-model")) == 3
            and records_of(daemon.db, "pids-model-short")
        )
    )
    assert rows, daemon.stderr
    rows = records_of(daemon.db, "pids-model")
    assert [r[0] for r in rows] == [91001, 91002, 91003]
    assert {r[1] for r in rows} == {HOST}
    assert [(r[3], r[4]) for r in rows] == [(10, 100), (11, 101), (12, 102)]
    assert [json.loads(r[7]) for r in rows] == [{"team": "t0"}, {"team": "t1"}, {"team": "t2"}]
    assert all(r[5] == "ok" and r[6] > 0 for r in rows)
    short = records_of(daemon.db, "pids-model-short")
    assert len(short) == 3 and {r[5] for r in short} == {"error"}
    for client in clients.values():
        assert client.no_reply(0.1)  # a batch taken gets no answer
        client.close()


def test_one_gpu_shared_by_processes_is_counted_once(daemon):
    """Four processes run a call at the same time on one simulated GPU (400 W busy):
    together they get the GPU's energy once, each a quarter of it."""
    clients = {pid: Client(daemon.sock) for pid in (92001, 92002, 92003, 92004)}
    t0 = time.monotonic()
    for pid, client in clients.items():
        client.send(batch(pid, starts=[{"id": 7, "start_s": t0, "gpus": [0]}]))
    time.sleep(1.0)
    t1 = time.monotonic()
    for pid, client in clients.items():
        client.send(batch(pid, ends=[end(7, t0, t1, "shared-gpu")]))
    rows = wait_for(lambda: len(records_of(daemon.db, "shared-gpu")) == 4)
    assert rows, daemon.stderr
    energies = [r[6] for r in records_of(daemon.db, "shared-gpu")]
    total = sum(energies)
    assert total == pytest.approx(400.0 * (t1 - t0), rel=0.05)  # not 4×
    for energy in energies:
        assert energy == pytest.approx(total / 4, rel=0.02)
    for client in clients.values():
        client.close()


def test_an_end_whose_start_was_never_seen_is_recorded(daemon):
    client = Client(daemon.sock)
    t = time.monotonic()
    client.send(batch(93001, ends=[end(5, t - 0.2, t - 0.1, "end-only", output_tokens=3)]))
    assert client.no_reply()
    assert wait_for(lambda: records_of(daemon.db, "end-only"))
    client.close()


# -- refused input -----------------------------------------------------------------------
BAD_LINES = {
    "not JSON": (b"{nope\n", "json"),
    "not an object": (b"[1, 2]\n", "invalid"),
    "pid of the wrong type": (b'{"pid": "12", "host": "h"}\n', "invalid"),
    "unknown field": (b'{"pid": 12, "host": "h", "extra": 1}\n', "invalid"),
    "NaN time": (b'{"pid": 12, "host": "h", "starts": [{"id": 1, "start_s": NaN}]}\n', "invalid"),
    "end before start": (
        b'{"pid": 12, "host": "h", "ends": [{"id": 1, "start_s": 5.0, "end_s": 4.0, '
        b'"model": "m"}]}\n',
        "invalid",
    ),
    "negative tokens": (
        b'{"pid": 12, "host": "h", "ends": [{"id": 1, "start_s": 4.0, "end_s": 5.0, '
        b'"model": "m", "output_tokens": -1}]}\n',
        "invalid",
    ),
    "unknown span field": (
        b'{"pid": 12, "host": "h", "ends": [{"id": 1, "start_s": 4.0, "end_s": 5.0, '
        b'"model": "m", "prompt": "secret"}]}\n',
        "invalid",
    ),
    "ack not a boolean": (b'{"pid": 12, "host": "h", "ack": 1}\n', "invalid"),
    "a loss kind the daemon does not know": (
        b'{"pid": 12, "host": "h", "lost": {"prompts": 1}}\n',
        "invalid",
    ),
    "a negative loss count": (
        b'{"pid": 12, "host": "h", "lost": {"record_failed": -1}}\n',
        "invalid",
    ),
    "bad status": (
        b'{"pid": 12, "host": "h", "ends": [{"id": 1, "start_s": 4.0, "end_s": 5.0, '
        b'"model": "m", "status": "great"}]}\n',
        "invalid",
    ),
    "not UTF-8": (b'{"pid": 12, "host": "\xff"}\n', "json"),
    "nested too deeply": (b"[" * 100_000 + b"\n", "json"),
}


def test_malformed_lines_get_an_error_reply_and_the_connection_stays_up(daemon):
    before = metrics_text(daemon)
    client = Client(daemon.sock)
    expected: dict[str, int] = {}
    for what, (line, reason) in BAD_LINES.items():
        client.send_raw(line)
        reply = client.reply()
        assert reply is not None, what
        assert reply["reason"] == reason, (what, reply)
        assert reply["error"], what
        expected[reason] = expected.get(reason, 0) + 1
    # still up: a good batch on the same connection is taken and recorded
    t = time.monotonic()
    client.send(batch(94001, ends=[end(1, t - 0.05, t, "after-bad-lines")]))
    assert client.no_reply()
    assert wait_for(lambda: records_of(daemon.db, "after-bad-lines")), daemon.stderr
    after = metrics_text(daemon)
    for reason, count in expected.items():
        old = metric(before, "footprint_protocol_errors_total", reason=reason) or 0
        assert metric(after, "footprint_protocol_errors_total", reason=reason) == old + count
    client.close()
    assert daemon.proc.poll() is None


def test_ends_are_acknowledged_once_written_and_an_end_sent_again_is_not_stored_twice(daemon):
    """The acknowledgement comes once the record is in the database; a client that lost
    its connection before it came sends the end again, and the daemon ignores it (and
    acknowledges it at once). The client's own loss counts reach the losses table."""
    client = Client(daemon.sock)
    t = time.monotonic()
    ends = [end(i, t - 0.05, t - 0.01, "acked-model") for i in (1, 2, 3)]
    client.send(batch(95501, ends=ends, ack=True, lost={"span_queue_full": 4}))
    acked: list[int] = []
    while len(acked) < 3:
        reply = client.reply(timeout=20.0)
        assert reply is not None and set(reply) == {"acked"}, (reply, daemon.stderr)
        acked += reply["acked"]
        # acknowledged: already in the database
        assert len(records_of(daemon.db, "acked-model")) >= len(acked)
    assert sorted(acked) == [1, 2, 3]
    client.close()
    again = Client(daemon.sock)  # a new connection, the same process
    again.send(batch(95501, ends=[*ends, end(4, t - 0.01, t, "acked-model")], ack=True))
    acked = []
    while len(acked) < 4:
        reply = again.reply(timeout=20.0)
        assert reply is not None, daemon.stderr
        acked += reply["acked"]
    assert acked[:3] == [1, 2, 3]  # settled already: answered at once
    assert len(records_of(daemon.db, "acked-model")) == 4  # 1-3 once each, and 4
    again.close()
    lost = wait_for(
        lambda: query_rows(
            daemon.db, "SELECT SUM(count) FROM losses WHERE kind = 'span_queue_full'"
        )[0][0]
    )
    assert lost == 4
    text = metrics_text(daemon)
    assert metric(text, "footprint_spans_ignored_total", kind="duplicate_end") == 3


def test_a_line_over_the_limit_closes_that_connection_only(daemon):
    before = metric(metrics_text(daemon), "footprint_protocol_errors_total", reason="too_large")
    other = Client(daemon.sock)
    client = Client(daemon.sock)
    with contextlib.suppress(OSError):  # the daemon may close before the whole line is sent
        client.send_raw(b'{"pid": 1, "host": "' + b"x" * (MAX_BATCH_BYTES + 10) + b'"}\n')
    reply = client.reply()
    assert reply is not None and reply["reason"] == "too_large"
    assert client.reply(timeout=2.0) is None  # then closed
    client.close()
    t = time.monotonic()
    other.send(batch(95001, ends=[end(1, t - 0.05, t, "other-connection")]))
    assert wait_for(lambda: records_of(daemon.db, "other-connection"))
    after = metric(metrics_text(daemon), "footprint_protocol_errors_total", reason="too_large")
    assert after == (before or 0) + 1
    other.close()


def test_a_sender_with_another_monotonic_clock_is_refused(daemon):
    client = Client(daemon.sock)
    t = time.monotonic() + 3600.0  # another time namespace: an hour ahead
    client.send(
        {"pid": 96001, "host": HOST, "monotonic_s": t, "ends": [end(1, t - 1, t, "other-clock")]}
    )
    reply = client.reply()
    assert reply is not None and reply["reason"] == "clock"
    assert "time namespace" in reply["error"]
    # a clock an hour behind, on a new connection
    behind = Client(daemon.sock)
    t = time.monotonic() - 3600.0
    ends = [end(1, t - 1, t, "other-clock"), end(2, t - 1, t, "other-clock")]
    behind.send({"pid": 96002, "host": HOST, "monotonic_s": t, "ack": True, "ends": ends})
    reply = behind.reply()
    assert reply["reason"] == "clock"
    assert reply["refused"] == [1, 2]  # it asked for acknowledgements: these never will be
    text = metrics_text(daemon)
    assert metric(text, "footprint_protocol_errors_total", reason="clock") >= 2
    assert metric(text, "footprint_lost_spans_total", reason="clock_mismatch") >= 2
    time.sleep(1.5)
    assert records_of(daemon.db, "other-clock") == []
    client.close()
    behind.close()


def test_spans_of_a_client_that_dies_are_abandoned(daemon):
    """A real process starts a span and exits without ending it: on disconnect the daemon
    sees the process is gone and closes the span as abandoned (counted)."""
    before = metric(metrics_text(daemon), "footprint_lost_spans_total", reason="abandoned")
    code = (
        "import os, socket, sys, time\n"
        "from footprint.runtime.protocol import encode_batch\n"
        "s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n"
        "t = time.monotonic()\n"
        "s.sendall(encode_batch({'pid': os.getpid(), 'host': socket.gethostname(),\n"
        "    'monotonic_s': t, 'starts': [{'id': 1, 'start_s': t, 'gpus': [0]}]}))\n"
        "time.sleep(0.3)\n"
    )
    subprocess.run([sys.executable, "-c", code, str(daemon.sock)], check=True, timeout=60)

    def abandoned():
        value = metric(metrics_text(daemon), "footprint_lost_spans_total", reason="abandoned")
        return value if value and value > (before or 0) else None

    assert wait_for(abandoned, timeout=10) == (before or 0) + 1
    assert metric(metrics_text(daemon), "footprint_clients_gone_total") >= 1


# -- metrics and health ------------------------------------------------------------------
def test_metrics_show_energy_queries_co2e_and_cost_per_model(daemon):
    client = Client(daemon.sock)
    t = time.monotonic()
    client.send(batch(97001, starts=[{"id": 1, "start_s": t, "gpus": [0]}]))
    time.sleep(0.4)
    t1 = time.monotonic()
    client.send(batch(97001, ends=[end(1, t, t1, "metrics-model", output_tokens=5)]))
    assert wait_for(lambda: records_of(daemon.db, "metrics-model"))
    stored = records_of(daemon.db, "metrics-model")[0][6]
    text = wait_for(
        lambda: (
            (m := metrics_text(daemon))
            and metric(m, "footprint_energy_joules_total", model="metrics-model") is not None
            and m
        )
    )
    assert metric(
        text, "footprint_energy_joules_total", model="metrics-model", gpu="0"
    ) == pytest.approx(stored)
    assert metric(text, "footprint_queries_total", model="metrics-model", status="ok") == 1
    assert metric(text, "footprint_co2e_grams_total", model="metrics-model") > 0
    assert metric(text, "footprint_cost_usd_total", model="metrics-model") >= 0
    assert metric(text, "footprint_idle_energy_joules_total", gpu="0") > 0
    assert 50 <= metric(text, "footprint_gpu_power_watts", gpu="0") <= 410
    assert 0 <= metric(text, "footprint_last_sample_age_seconds", gpu="0") < 5
    assert metric(text, "footprint_client_connections") >= 1
    for name in ("footprint_spans_in_flight", "footprint_queue_depth"):
        assert metric(text, name) is not None, name
    assert re.search(r"^# TYPE footprint_energy_joules(_total)? counter$", text, re.M)
    client.close()


def test_healthz(daemon):
    status, body = http_get(daemon.url("/healthz"))
    assert status == 200
    health = json.loads(body)
    assert health["status"] == "ok" and health["message"] is None
    assert health["pid"] == daemon.proc.pid
    assert health["uptime_s"] > 0
    assert health["last_sample_age_s"] < 5
    for key in ("connections", "spans_in_flight", "queue_depth", "records_written"):
        assert isinstance(health[key], int), key
    assert http_get(daemon.url("/nowhere"))[0] == 404


# -- HTTP ------------------------------------------------------------------------------
def test_post_spans_over_http(daemon):
    t = time.monotonic()
    body = json.dumps(batch(98001, ends=[end(1, t - 0.1, t, "over-http", input_tokens=4)]))
    status, reply = http_post(daemon.url("/v1/spans"), body.encode(), token=daemon.token)
    assert status == 202, reply
    assert reply == {"accepted": {"starts": 0, "ends": 1}}
    rows = wait_for(lambda: records_of(daemon.db, "over-http"))
    assert rows and rows[0][0] == 98001 and rows[0][3] == 4
    status, reply = http_post(daemon.url("/v1/spans"), b'{"pid": -1, "host": "h"}', daemon.token)
    assert status == 400 and reply["reason"] == "invalid" and "pid" in reply["error"]
    status, reply = http_post(daemon.url("/v1/spans"), b"nope", token=daemon.token)
    assert status == 400 and reply["reason"] == "json"
    assert http_post(daemon.url("/v1/other"), b"{}")[0] == 404


def test_a_body_over_the_limit_is_refused_unread(daemon):
    """413 from the Content-Length alone: the daemon does not read 10 MB to say no."""
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=10) as conn:
        conn.sendall(
            b"POST /v1/spans HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 10000000\r\n\r\n" + b"{" * 1000
        )
        answer = b""
        while chunk := conn.recv(65536):  # the daemon closes after answering
            answer += chunk
        answer = answer.decode()
    assert answer.startswith("HTTP/1.1 413"), answer
    assert '"too_large"' in answer


@pytest.fixture(scope="module")
def token_daemon(folder):
    proc = spawn(folder, "--token", "s3cret-token-1", name="tok")
    yield proc
    proc.stop()


def test_a_token_is_required_when_configured(token_daemon):
    t = time.monotonic()
    body = json.dumps(batch(99001, ends=[end(1, t - 0.1, t, "with-token")])).encode()
    status, reply = http_post(token_daemon.url("/v1/spans"), body)
    assert status == 401 and reply["reason"] == "unauthorized"
    assert http_post(token_daemon.url("/v1/spans"), body, token="wrong-token")[0] == 401
    assert http_get(token_daemon.url("/metrics"))[0] == 401
    assert http_get(token_daemon.url("/healthz"))[0] == 200
    status, reply = http_post(token_daemon.url("/v1/spans"), body, token="s3cret-token-1")
    assert status == 202, reply
    assert wait_for(lambda: records_of(token_daemon.db, "with-token"))
    text = metrics_text(token_daemon, token="s3cret-token-1")
    assert metric(text, "footprint_protocol_errors_total", reason="unauthorized") == 3


def test_http_off_loopback_needs_a_token(folder):
    result = subprocess.run(
        _command(folder / "x.sock", folder / "x.db", "--http", "0.0.0.0:0"),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=folder,
        env=_environment(folder),
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--token" in lines[0] and "loopback" in lines[0], result.stderr
    assert not (folder / "x.sock").exists()


def test_a_database_that_cannot_be_opened_stops_the_start(folder):
    result = subprocess.run(
        _command(folder / "nodb.sock", folder / "missing" / "x.db", "--http", "off"),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=folder,
        env=_environment(folder),
    )
    assert result.returncode == 1
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith("footprint daemon: cannot open the database")
    ), result.stderr
    assert not (folder / "nodb.sock").exists()
    assert not (folder / "nodb.sock.lock").exists()


# -- one daemon per socket, stale sockets, SIGTERM -----------------------------------------
def test_a_second_daemon_on_the_same_socket_is_refused(daemon, folder):
    result = subprocess.run(
        _command(daemon.sock, folder / "second.db", "--http", "off"),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=folder,
        env=_environment(folder),
    )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"footprint daemon: another daemon is listening on {daemon.sock}"
    )
    assert daemon.proc.poll() is None
    with Client(daemon.sock) as client:
        assert client.no_reply(0.1)  # the first one still answers


def test_a_stale_socket_is_removed_and_sigterm_writes_everything(folder):
    """A daemon killed with SIGKILL leaves its socket file: the next one takes it over.
    SIGTERM then exits 0 within 5 s, every ended span written."""
    first = spawn(folder, name="stale", http="off")
    first.kill()
    assert first.sock.exists()  # left behind
    second = spawn(folder, name="stale", http="off")
    try:
        client = Client(second.sock)
        t = time.monotonic()
        ends = [end(i, t - 0.05, t - 0.01, "at-sigterm", output_tokens=i) for i in range(50)]
        client.send(batch(99501, starts=[{"id": 999, "start_s": t, "gpus": [0]}], ends=ends))
        client.close()
        time.sleep(0.05)
        sent_s = time.monotonic()
        second.proc.send_signal(signal.SIGTERM)
        code = second.proc.wait(10)
        took_s = time.monotonic() - sent_s
    finally:
        if second.proc.poll() is None:
            second.proc.kill()
        second.stop()
    assert code == 0, second.stderr
    assert took_s < 5.0
    assert len(records_of(second.db, "at-sigterm")) == 50
    assert not second.sock.exists()
    (lost,) = query_rows(
        second.db, "SELECT COALESCE(SUM(count), 0) FROM losses WHERE kind = 'running_at_exit'"
    )[0]
    assert lost == 0 or lost == 1  # the span still running at exit is counted, if seen


def test_energy_is_conserved_in_the_store(daemon):
    """Σ query energy + Σ idle + Σ lost = Σ measured, per device, in the database."""
    t = time.monotonic()
    client = Client(daemon.sock)
    client.send(batch(99901, ends=[end(1, t - 0.3, t, "conservation")]))
    assert wait_for(lambda: records_of(daemon.db, "conservation"))
    time.sleep(1.5)  # the idle rows of the same cycle
    ((queries_j,),) = query_rows(daemon.db, "SELECT COALESCE(SUM(energy_j), 0) FROM queries")
    ((idle_j, lost_j, measured_j),) = query_rows(
        daemon.db,
        "SELECT SUM(idle_energy_j), SUM(lost_energy_j), SUM(measured_energy_j) FROM idle_energy",
    )
    # what is measured but not yet resolved (the last cycle) is in neither side
    assert queries_j + idle_j + lost_j == pytest.approx(measured_j, rel=1e-9, abs=1e-6)
    client.close()


def test_the_socket_is_for_its_owner_only(daemon):
    assert stat.S_IMODE(os.stat(daemon.sock).st_mode) == 0o600
    assert stat.S_ISSOCK(os.stat(daemon.sock).st_mode)


def test_group_socket_and_sighup_reload(folder):
    """``--group``: the socket 0660 and its new folder 0750, both the group's. SIGHUP
    re-reads footprint.toml: a new database is written from then on."""
    import grp

    home = folder / "hup"
    home.mkdir()
    settings = 'sensor = "simulated:gpus=1,workload=spans"\nregion = "FRA"\ncpu = false\n'
    (home / "footprint.toml").write_text(settings + 'db = "a.db"\n')
    sock = home / "run" / "h.sock"
    group = grp.getgrgid(os.getgid()).gr_name
    stderr = home / "stderr"
    with open(stderr, "wb") as err:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "footprint.cli",
                "daemon",
                "--socket",
                str(sock),
                "--http",
                "off",
                "--group",
                group,
            ],
            stdout=subprocess.PIPE,
            stderr=err,
            cwd=home,
            env=_environment(home),
        )
    try:
        line = _first_line(proc, START_TIMEOUT_S)
        assert line.startswith("footprint daemon: listening on"), stderr.read_text()
        assert stat.S_IMODE(os.stat(sock).st_mode) == 0o660
        assert os.stat(sock).st_gid == os.getgid()
        assert stat.S_IMODE(os.stat(sock.parent).st_mode) == 0o750
        client = Client(sock)
        t = time.monotonic()
        client.send(batch(99701, ends=[end(1, t - 0.1, t, "before-hup")]))
        assert wait_for(lambda: records_of(home / "a.db", "before-hup"))
        (home / "footprint.toml").write_text(settings + 'db = "b.db"\n')
        proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: "SIGHUP: applied db" in stderr.read_text()), stderr.read_text()
        t = time.monotonic()
        client.send(batch(99701, ends=[end(2, t - 0.1, t, "after-hup")]))
        assert wait_for(lambda: records_of(home / "b.db", "after-hup"))
        assert records_of(home / "a.db", "after-hup") == []
        client.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()


# -- the intake, in-process ------------------------------------------------------------
class FakeRuntime(SpanQueue):
    """What ``SpanIntake`` uses of a runtime: the span queue, and a few more fields."""

    def __init__(self) -> None:
        from types import SimpleNamespace

        super().__init__(SYSTEM_CLOCK, max_pending=1000)
        self.drives_simulator = False
        self.settings = SimpleNamespace(max_span_age_s=3600.0)
        self.host = HOST
        self.abandoned: list[int] = []

        self.on_settled = None
        self.losses: dict[str, int] = {}
        self.writer = SimpleNamespace(count_loss=self._count_loss)

    def _count_loss(
        self, kind: str, count: int, host: str | None = None, pid: int | None = None
    ) -> None:
        self.losses[kind] = self.losses.get(kind, 0) + count

    def abandon(self, span_id: int) -> None:
        self.abandoned.append(span_id)

    def request_flush(self) -> None:
        pass


def _decoded(pid: int, starts=(), ends=(), sent_s: float | None = None):
    from footprint.runtime.protocol import decode_batch

    raw = {
        "pid": pid,
        "host": HOST,
        "monotonic_s": sent_s or time.monotonic(),
        "starts": list(starts),
        "ends": list(ends),
    }
    return decode_batch(json.dumps(raw))


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_intake_a_client_that_reconnects_carries_on():
    from footprint.daemon.spans import SpanIntake

    runtime = FakeRuntime()
    intake = SpanIntake(runtime)
    t = time.monotonic()
    first = intake.connect(peer_pid=os.getpid())  # alive
    intake.apply(_decoded(4001, starts=[{"id": 1, "start_s": t}]), first)
    (sid,) = runtime.inflight
    intake.disconnect(first)
    assert runtime.abandoned == [] and sid in runtime.inflight
    second = intake.connect(peer_pid=os.getpid())
    intake.apply(_decoded(4001, starts=[{"id": 1, "start_s": t}]), second)  # sent again
    assert list(runtime.inflight) == [sid]
    assert intake.oddities["duplicate_start"] == 1
    intake.apply(_decoded(4001, ends=[end(1, t, t + 0.1, "m")]), second)
    (span,) = runtime.ended
    assert span.span_id == sid and span.pid == 4001 and span.host == HOST
    assert runtime.inflight == {}


def test_intake_spans_of_a_dead_client_are_abandoned_once():
    from footprint.daemon.spans import SpanIntake

    runtime = FakeRuntime()
    intake = SpanIntake(runtime)
    t = time.monotonic()
    conn = intake.connect(peer_pid=_dead_pid())
    intake.apply(_decoded(4002, starts=[{"id": 1, "start_s": t}, {"id": 2, "start_s": t}]), conn)
    sids = sorted(runtime.inflight)
    intake.disconnect(conn)
    assert sorted(runtime.abandoned) == sids
    assert intake.abandoned_clients == 1
    # a late start or end of an abandoned span makes no record (it is counted as lost)
    again = intake.connect(peer_pid=None)
    intake.apply(_decoded(4002, starts=[{"id": 1, "start_s": t}]), again)
    intake.apply(_decoded(4002, ends=[end(2, t, t + 0.1, "m")]), again)
    assert not runtime.ended and len(runtime.inflight) == 2  # the runtime pops abandoned ones
    assert intake.oddities["started_after_abandoned"] == 1
    assert intake.oddities["ended_after_abandoned"] == 1


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["call", "write", "reconnect", "lose acks"]), st.integers(1, 4)),
        max_size=40,
    )
)
def test_intake_every_end_makes_one_record_whatever_the_reconnections(steps):
    """A client that keeps its ends until acknowledged and sends the rest again on each
    new connection; a runtime that writes some of them at a time; connections that drop
    (their acknowledgements lost): every call is a record once, and once all is written
    the client holds nothing back."""
    from footprint.daemon.spans import SpanIntake

    runtime = FakeRuntime()
    intake = SpanIntake(runtime)
    t = time.monotonic()
    conn = intake.connect(peer_pid=os.getpid())
    next_id, unacked, records = 0, {}, []  # client span id -> end sent; what is written

    def send(ends):
        raw = {
            "pid": 4100,
            "host": HOST,
            "monotonic_s": time.monotonic(),
            "ends": ends,
            "ack": True,
        }
        intake.apply(decode_batch(json.dumps(raw)), conn)

    def deliver_acks():
        for acked_conn, ids in intake.take_acks():
            if acked_conn is conn:
                for cid in ids:
                    unacked.pop(cid, None)

    def write(count):
        spans = [runtime.ended.popleft() for _ in range(min(count, len(runtime.ended)))]
        records.extend(span.model for span in spans)
        intake.settled([span.span_id for span in spans])

    for action, n in steps:
        if action == "call":
            ends = [end(i, t, t + 0.01, f"call-{i}") for i in range(next_id, next_id + n)]
            next_id += n
            unacked.update((e["id"], e) for e in ends)
            send(ends)
        elif action == "write":
            write(n)
        else:
            if action == "lose acks":
                write(n)  # written, and the acknowledgements die with the connection
            intake.disconnect(conn)
            conn = intake.connect(peer_pid=os.getpid())
            if unacked:
                send(list(unacked.values()))
        deliver_acks()
    write(len(runtime.ended))
    deliver_acks()
    assert sorted(records) == sorted(f"call-{i}" for i in range(next_id))  # each once
    assert unacked == {}


def test_intake_a_client_it_cannot_see_gets_time_to_reconnect():
    from footprint.daemon.spans import RECONNECT_GRACE_S, SpanIntake

    runtime = FakeRuntime()
    intake = SpanIntake(runtime)
    t = time.monotonic()
    conn = intake.connect(peer_pid=None)  # another pid namespace
    intake.apply(_decoded(4003, starts=[{"id": 1, "start_s": t}]), conn)
    intake.disconnect(conn, now_s=t)
    intake.sweep(t + RECONNECT_GRACE_S / 2)
    assert runtime.abandoned == []
    intake.sweep(t + RECONNECT_GRACE_S + 1)
    assert len(runtime.abandoned) == 1


def test_intake_refuses_every_batch_of_a_connection_on_another_clock():
    from footprint.daemon.spans import SpanIntake
    from footprint.runtime.protocol import ProtocolError

    runtime = FakeRuntime()
    intake = SpanIntake(runtime)
    conn = intake.connect(peer_pid=None)
    behind = time.monotonic() - 5.0
    with pytest.raises(ProtocolError) as refused:
        intake.apply(_decoded(4004, ends=[end(1, behind - 1, behind, "m")], sent_s=behind), conn)
    assert refused.value.reason == "clock"
    t = time.monotonic()
    with pytest.raises(ProtocolError):  # the sender is on another clock: still refused
        intake.apply(_decoded(4004, ends=[end(2, t - 1, t, "m")], sent_s=t), conn)
    assert not runtime.ended
    assert intake.protocol_errors["clock"] == 2 and intake.lost["clock_mismatch"] == 2
    # a connection on the daemon's clock, whose later batches wait in a busy socket
    ok = intake.connect(peer_pid=None)
    intake.apply(_decoded(4005, ends=[end(1, t - 1, t, "m")], sent_s=t), ok)
    late = time.monotonic() - 3.0
    intake.apply(_decoded(4005, ends=[end(2, late - 1, late, "m")], sent_s=late), ok)
    assert len(runtime.ended) == 2


def test_cost_metric_follows_the_cost_model():
    """A rented GPU's hourly price pays for its power: energy cost is not added (as in
    reports); an owned GPU costs its hardware time plus its energy."""
    from footprint.daemon.metrics import RecordTotals

    totals = RecordTotals({})
    base = {
        "status": "ok",
        "gpus": "[]",
        "energy_j": 1.0,
        "co2e_g": 0.1,
        "energy_cost_usd": 1.0,
        "compute_cost": 2.0,
    }
    totals.observe(
        [
            {**base, "model": "rented", "ownership": "rented"},
            {**base, "model": "owned", "ownership": "owned"},
        ],
        [],
    )
    assert totals.cost_usd == {"rented": 2.0, "owned": 3.0}
