"""``footprint daemon`` at its limits: open files, connection caps, clients that hang up.

Measured on main before these tests: a daemon at 1,024 open files with ~1,100 idle
connections spun on ``accept()`` failing with EMFILE (99 % of a core, 846k log lines in
10 s), ``/healthz`` stopped answering, and a new client got 0 of 1,000 calls stored; an
HTTP client that hung up early logged a full traceback, each time.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
from test_daemon_server import (
    DaemonProcess,
    _command,
    _environment,
    _first_line,
    http_get,
    metric,
    metrics_text,
    query_rows,
    spawn,
    wait_for,
)

NOFILE = 128  # the daemon's soft and hard limit on open files in the fd-limit test

WORKER = textwrap.dedent("""
    import sys, time
    import footprint

    for i in range(int(sys.argv[2])):
        with footprint.query(model=sys.argv[1], call=i):
            time.sleep(0.005)
    footprint.shutdown()
""")


@pytest.fixture
def folder():
    path = Path(tempfile.mkdtemp(prefix="fpl-", dir="/tmp"))  # short: socket paths ≤ 107 B
    yield path
    shutil.rmtree(path, ignore_errors=True)


def spawn_limited(folder: Path, nofile: int, *extra: str) -> DaemonProcess:
    """A daemon whose soft and hard RLIMIT_NOFILE are ``nofile``: it cannot raise them."""
    sock, db, stderr = folder / "d.sock", folder / "d.db", folder / "d.stderr"

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    with open(stderr, "wb") as err:
        proc = subprocess.Popen(
            _command(sock, db, "--http", "127.0.0.1:0", *extra),
            stdout=subprocess.PIPE,
            stderr=err,
            cwd=folder,
            env=_environment(folder),
            preexec_fn=limit,
        )
    daemon = DaemonProcess(proc, folder, sock, db, None, stderr)
    line = _first_line(proc, 90)
    if not line.startswith("footprint daemon: listening on"):
        daemon.kill()
        raise AssertionError(f"daemon did not start: {line!r}; stderr: {daemon.stderr}")
    daemon.port = int(line.rsplit("http://127.0.0.1:", 1)[1].split()[0])
    return daemon


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stderr_lines(daemon: DaemonProcess) -> int:
    with open(daemon.stderr_path, "rb") as f:
        return sum(1 for _ in f)


def connect_unix(path: Path) -> socket.socket | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(1.0)
    try:
        sock.connect(str(path))
    except OSError:
        sock.close()
        return None
    return sock


def stored(db: Path, model: str) -> int:
    with contextlib.suppress(Exception):
        return query_rows(db, "SELECT COUNT(DISTINCT tags) FROM queries WHERE model = ?", (model,))[
            0
        ][0]
    return 0


def run_worker(folder: Path, sock: Path, model: str, calls: int) -> subprocess.Popen:
    script = folder / "worker.py"
    script.write_text(WORKER)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOOTPRINT_")}
    env.update(
        FOOTPRINT_DAEMON=str(sock), XDG_RUNTIME_DIR=str(folder), FOOTPRINT_EXIT_DEADLINE_S="30"
    )
    return subprocess.Popen(
        [sys.executable, str(script), model, str(calls)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
@pytest.mark.parametrize("idle_http", [0, 40], ids=["unix", "unix+http"])
def test_at_the_open_files_limit_the_daemon_backs_off_and_stays_useful(folder, idle_http):
    """More idle connections than the daemon has descriptors: no busy loop, a short log,
    /healthz answers (not ok), and a new client's calls are all stored once idle
    connections are reclaimed. With idle HTTP connections holding descriptors too, the
    process itself runs out (accept() fails with EMFILE) and /healthz gets the spare."""
    daemon = spawn_limited(folder, NOFILE)
    idle: list[socket.socket] = []
    found: dict[str, object] = {}
    try:
        for _ in range(idle_http):  # each holds a descriptor (and a thread) in the daemon
            idle.append(socket.create_connection(("127.0.0.1", daemon.port), timeout=5))
        time.sleep(0.3)
        for _ in range(NOFILE + 72):
            sock = connect_unix(daemon.sock)
            if sock is not None:
                idle.append(sock)
        time.sleep(0.5)
        before_s = cpu_s(daemon.proc.pid)
        time.sleep(2.0)
        found["cpu_s_over_2_s"] = round(cpu_s(daemon.proc.pid) - before_s, 3)
        found["log_lines_2_5_s"] = stderr_lines(daemon)
        try:
            code, body = http_get(daemon.url("/healthz"))
            found["healthz"] = (code, json.loads(body))
        except OSError as exc:
            found["healthz"] = (None, repr(exc))
        worker = run_worker(folder, daemon.sock, "fd-limit", 200)
        try:
            worker.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.communicate()
        wait_for(lambda: stored(daemon.db, "fd-limit") >= 200, timeout=30)
        found["stored"] = stored(daemon.db, "fd-limit")
        found["log_lines_end"] = stderr_lines(daemon)
    finally:
        for sock in idle:
            sock.close()
        code = daemon.stop(timeout=15)
    print("measured:", found)
    log = daemon.stderr
    assert found["cpu_s_over_2_s"] < 0.5, (found, log[-2000:])
    assert found["log_lines_2_5_s"] < 50, (found, log[-2000:])
    status, health = found["healthz"]
    assert status == 200, found
    assert health["status"] == "degraded" and "fd_limit" in health["reasons"], health
    assert found["stored"] == 200, (found, log[-2000:])
    assert found["log_lines_end"] < 50, (found, log[-2000:])
    assert "Traceback" not in log
    assert code == 0, log[-2000:]


def _open_from_child(path: Path, count: int) -> tuple[subprocess.Popen, list[str]]:
    """``count`` connections from another process (another peer pid): each one's first
    reply line ('' if none within a second); the child holds them until killed."""
    code = textwrap.dedent("""
        import socket, sys
        socks, replies = [], []
        for _ in range(int(sys.argv[2])):
            s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.settimeout(1.0)
            socks.append(s)
        for s in socks:
            try:
                replies.append(s.recv(4096).decode().strip())
            except OSError:
                replies.append("")
        print(repr(replies), flush=True)
        sys.stdin.read()
    """)
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(path), str(count)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    import ast

    return child, ast.literal_eval(child.stdout.readline())


def test_connection_caps_per_peer_and_overall(folder):
    daemon = spawn(folder, "--max-connections", "6", "--max-connections-per-peer", "4")
    mine: list[socket.socket] = []
    child = None
    try:
        for _ in range(5):
            sock = connect_unix(daemon.sock)
            assert sock is not None
            mine.append(sock)
        replies = []
        for sock in mine:
            try:
                replies.append(sock.recv(4096))
            except TimeoutError:
                replies.append(None)
        assert replies[:4] == [None] * 4, replies  # kept, nothing said
        refused = json.loads(replies[4])  # the 5th of this process: one line, then closed
        assert refused["reason"] == "overloaded" and "per peer" in refused["error"], refused
        assert mine[4].recv(4096) == b""
        child, theirs = _open_from_child(daemon.sock, 3)  # 4 + 2 = 6, the 3rd is over
        assert theirs[:2] == ["", ""], theirs
        assert json.loads(theirs[2])["reason"] == "overloaded", theirs
        text = metrics_text(daemon)
        assert metric(text, "footprint_connections_refused_total", reason="per_peer") == 1
        assert metric(text, "footprint_connections_refused_total", reason="max_connections") == 1
        _, body = http_get(daemon.url("/healthz"))
        health = json.loads(body)
        assert health["connections"] == 6
        assert "connection_limit" in health["reasons"], health
    finally:
        if child is not None:
            child.kill()
            child.communicate()  # waits; its pipes closed
        for sock in mine:
            sock.close()
        assert daemon.stop() == 0, daemon.stderr
    assert "Traceback" not in daemon.stderr


def test_http_connections_are_capped_with_a_503(folder):
    """Before: a thread per HTTP connection without a cap (``--max-http-connections``
    did not exist); 2 idle connections here hold 2 of 2, the third gets 503 at once."""
    daemon = spawn(folder, "--max-http-connections", "2")
    idle = [socket.create_connection(("127.0.0.1", daemon.port), timeout=5) for _ in range(2)]
    try:
        time.sleep(0.3)  # both accepted, each held by a thread waiting for its request
        third = socket.create_connection(("127.0.0.1", daemon.port), timeout=5)
        with third:
            answer = b""
            while chunk := third.recv(65536):
                answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503"), answer
        assert json.loads(body)["reason"] == "overloaded"
        for sock in idle:
            sock.close()
        idle.clear()

        refused_polls = []

        def healthy() -> dict | None:
            # Until the daemon has seen the idle connections close, a poll may be
            # refused too (and counted): a loaded machine is slow to tell.
            status, body = http_get(daemon.url("/healthz"))
            if status == 503 and b'"overloaded"' in body:
                refused_polls.append(body)
            return json.loads(body) if status == 200 else None

        health = wait_for(healthy)
        assert health and "connection_limit" in health["reasons"], health
        text = metrics_text(daemon)
        refused = metric(text, "footprint_connections_refused_total", reason="http")
        assert refused == 1 + len(refused_polls), (refused, refused_polls)
    finally:
        for sock in idle:
            sock.close()
        assert daemon.stop() == 0, daemon.stderr
    assert "Traceback" not in daemon.stderr


BUSY_CLIENT = textwrap.dedent("""
    import sys, time
    import footprint

    end_s = time.monotonic() + float(sys.argv[1])
    while time.monotonic() < end_s:
        with footprint.query(model="refused"):
            time.sleep(0.01)
    print("done", flush=True)
    sys.stdin.read()
""")


def test_a_client_refused_as_overloaded_backs_off(folder):
    """Before: every connection the daemon accepted reset the client's backoff, so a
    client refused "overloaded" (accepted, told, closed) retried every 50-100 ms: 30 or
    more refusals in 3 s. Now the backoff grows until the daemon acknowledges something."""
    daemon = spawn(folder, "--max-connections", "1")
    holder = connect_unix(daemon.sock)
    assert holder is not None
    holder.sendall(b'{"pid"')  # a partial line: this connection is never idle, never reclaimed
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOOTPRINT_")}
    env.update(FOOTPRINT_DAEMON=str(daemon.sock), XDG_RUNTIME_DIR=str(folder))
    child = subprocess.Popen(
        [sys.executable, "-c", BUSY_CLIENT, "3"],
        env=env,
        text=True,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == "done\n"
        text = metrics_text(daemon)
        refusals = metric(text, "footprint_connections_refused_total", reason="max_connections")
        assert 2 <= refusals <= 10, refusals  # 0.05 + 0.1 + ... + 1.6 s: about 6 in 3 s
    finally:
        child.kill()
        child.communicate()  # waits; its pipes closed
        holder.close()
        assert daemon.stop() == 0, daemon.stderr


def _hang_up(port: int, request: bytes, reset: bool) -> None:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    with contextlib.suppress(OSError):
        sock.sendall(request)
        if reset:  # RST instead of FIN: the daemon's next read or write fails
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
    sock.close()


def test_http_clients_that_hang_up_log_no_traceback(folder):
    daemon = spawn(folder, "--sampling-period", "0.05")
    try:
        requests = [
            b"GET /hea",  # a partial request line
            b'POST /v1/spans HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n{"pid"',
            b"POST /v1/spans HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n" + b"x" * 9000,
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",  # gone before the answer
            b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
        ]
        for round_ in range(40):
            for request in requests:
                _hang_up(daemon.port, request, reset=round_ % 2 == 0)
        time.sleep(1.0)
        status, _ = http_get(daemon.url("/healthz"))
        assert status == 200
    finally:
        assert daemon.stop() == 0, daemon.stderr
    log = daemon.stderr
    assert "Traceback" not in log, log[-3000:]
    assert len(log.splitlines()) < 20, log[-3000:]


def test_rate_limited_log_says_how_many_it_left_out(caplog):
    from footprint.daemon.ratelog import RateLimitedLog

    limited = RateLimitedLog(interval_s=10.0, burst=2)
    with caplog.at_level("INFO", logger="footprint"):
        for n in range(50):
            limited.warning("accept", "cannot accept: %s", n, now_s=100.0 + n * 0.1)
        limited.warning("accept", "cannot accept: %s", "again", now_s=111.0)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[:2] == ["cannot accept: 0", "cannot accept: 1"]
    assert len(lines) == 4, lines
    assert "48 more" in lines[2] and lines[3] == "cannot accept: again"
    caplog.clear()
    with caplog.at_level("DEBUG", logger="footprint"):
        for n in range(5):
            limited.log(logging.DEBUG, "hangup", "went away: %s", n, now_s=200.0)
        limited.flush(now_s=205.0)  # the interval has not ended: nothing yet
        limited.flush(now_s=211.0)
    records = caplog.records
    assert [r.levelno for r in records] == [logging.DEBUG] * 3, records  # never louder
    assert "3 more" in records[-1].getMessage()


def test_sigterm_still_exits_promptly_at_the_limit(folder):
    daemon = spawn_limited(folder, NOFILE)
    idle = [s for s in (connect_unix(daemon.sock) for _ in range(NOFILE + 8)) if s is not None]
    try:
        time.sleep(0.5)
        daemon.proc.send_signal(signal.SIGTERM)
        assert daemon.proc.wait(10) == 0, daemon.stderr
    finally:
        for sock in idle:
            sock.close()
        daemon.stop()
