"""The daemon's client inside tracked processes, and the in-process double-count checks.

A fake daemon (a Unix socket listener thread made here) records the batches it gets and
checks each with the real protocol decoder, as the daemon does.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import footprint
from footprint.config import resolve_settings
from footprint.runtime import presence
from footprint.runtime.discovery import Target, choose
from footprint.runtime.local import Runtime
from footprint.runtime.protocol import (
    decode_batch,
    default_socket_path,
    encode_acks,
    encode_reply,
)
from footprint.runtime.remote import DaemonClient
from footprint.tracking import get_runtime

WAIT_S = 10.0  # generous: a loaded CI machine; nothing here asserts a duration


class FakeDaemon:
    """A Unix socket listener recording decoded batches; ``reply`` may refuse them."""

    def __init__(self, path: str, reply: Callable[[dict], bytes | None] | None = None):
        self.path = path
        self.reply = reply
        self.batches: list[dict] = []
        self.invalid: list[str] = []
        self._server: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> FakeDaemon:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(self.path)
        server.listen(64)
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()
        return self

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with self._lock:
                if self._server is None:  # accepted as it stopped: nobody would close it
                    conn.close()
                    return
                self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError), conn.makefile("rb") as lines:
            for line in lines:
                try:
                    decode_batch(line)  # what the daemon would refuse, the client never sends
                except ValueError as exc:
                    self.invalid.append(str(exc))
                raw = json.loads(line)
                with self._lock:
                    self.batches.append(raw)
                answer = self.reply(raw) if self.reply else None
                if answer:
                    conn.sendall(answer)

    def stop(self) -> None:
        with self._lock:
            if self._server is not None:
                self._server.close()
                self._server = None
            for conn in self._conns:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
                conn.close()
            self._conns.clear()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def ends(self) -> list[dict]:
        with self._lock:
            return [end for batch in self.batches for end in batch["ends"]]

    def starts(self) -> list[dict]:
        with self._lock:
            return [start for batch in self.batches for start in batch["starts"]]


def wait_for(condition: Callable[[], object], timeout_s: float = WAIT_S) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.005)
    return bool(condition())


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path: a Unix socket address holds at most 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="fp", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def sock_path(short_dir) -> str:
    return str(short_dir / "d.sock")


@pytest.fixture
def daemon(sock_path) -> Iterator[FakeDaemon]:
    fake = FakeDaemon(sock_path).start()
    yield fake
    footprint.shutdown()
    fake.stop()


def _configure(tmp_path: Path, daemon_setting: str, **more) -> None:
    footprint.configure(
        db=str(tmp_path / "fp.db"),
        sensor="none",
        cpu=False,
        region="FRA",
        daemon=daemon_setting,
        **more,
    )


# -- the client ---------------------------------------------------------------------


def test_running_calls_are_announced_then_ended_with_their_tokens(tmp_path, daemon):
    _configure(tmp_path, daemon.path)
    with footprint.query(model="llama", team="search", gpus=[0]) as q:
        assert isinstance(get_runtime(), DaemonClient)
        # The daemon learns that the call runs while it runs (one send period: ~20 ms).
        assert wait_for(lambda: daemon.starts())
        q.set_tokens(input=12, output=80)
    start = daemon.starts()[0]
    assert start["gpus"] == [0]
    assert wait_for(lambda: daemon.ends())
    (end,) = daemon.ends()
    assert end["id"] == start["id"]
    assert end["model"] == "llama"
    assert end["tags"] == {"team": "search"}
    assert (end["input_tokens"], end["output_tokens"], end["status"]) == (12, 80, "ok")
    assert end["end_s"] >= end["start_s"] == start["start_s"]
    batch = daemon.batches[0]
    assert batch["pid"] == os.getpid() and batch["host"] == socket.gethostname()
    assert len(daemon.starts()) == 1  # never announced twice
    assert daemon.invalid == []


def test_short_calls_go_as_ends_only_with_values_the_daemon_takes(tmp_path, daemon):
    _configure(tmp_path, daemon.path)

    class Odd:
        def __str__(self):
            raise RuntimeError("no text")

    @footprint.track(model="m\x00odd", tokens=lambda r: (r, -5), obj=Odd(), n=1.5)
    def call(i):
        return i

    @footprint.track(model="failing")
    def boom():
        raise KeyError("x")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in range(20):
            call(i)
        with pytest.raises(KeyError):
            boom()
        footprint.flush()
        assert wait_for(lambda: len(daemon.ends()) == 21)
    said = [str(w.message) for w in caught]
    assert {w.category for w in caught} == {footprint.FootprintWarning}, said
    kinds = ("sanitized_models", "invalid_tokens", "unserializable_tags")
    assert sorted(k for k in kinds for m in said if f"['{k}']" in m) == sorted(kinds), said
    assert len(said) == 3, said  # each once
    assert daemon.invalid == []
    assert daemon.starts() == []  # each started and ended between two batches
    ends = sorted(daemon.ends(), key=lambda e: e["id"])
    assert ends[0]["model"] == "modd"
    assert ends[0]["tags"] == {"obj": "<Odd>", "n": 1.5}
    assert [e["input_tokens"] for e in ends[:20]] == list(range(20))
    assert {e["output_tokens"] for e in ends[:20]} == {None}
    assert (ends[20]["status"], ends[20]["error_type"]) == ("error", "KeyError")
    stats = footprint.stats()
    assert stats["invalid_tokens"] == 20
    assert stats["sanitized_models"] == 1
    assert stats["unserializable_tags"] >= 1
    assert stats["spans_sent"] == 21 and stats["dropped_spans"] == 0


def test_spans_wait_for_a_daemon_that_is_down_then_arrive(tmp_path, sock_path):
    _configure(tmp_path, sock_path)  # nothing listens there yet

    @footprint.track(model="m")
    def call(i):
        return i

    with pytest.warns(footprint.FootprintWarning, match="cannot reach the footprint daemon"):
        assert [call(i) for i in range(30)] == list(range(30))  # never raises
        assert wait_for(lambda: footprint.stats()["daemon_connect_failures"] >= 1)
    assert footprint.stats()["pending_spans"] == 30
    fake = FakeDaemon(sock_path).start()  # the daemon comes up: reconnect with backoff
    try:
        assert wait_for(lambda: len(fake.ends()) == 30)
        stats = footprint.stats()
        assert stats["spans_sent"] == 30 and stats["pending_spans"] == 0
        assert stats["dropped_spans"] == 0 and stats["daemon_connected"] == 1
        assert fake.invalid == []
    finally:
        footprint.shutdown()
        fake.stop()


def test_a_daemon_restart_gets_the_running_calls_again(tmp_path, daemon):
    _configure(tmp_path, daemon.path)
    with footprint.query(model="long"):
        assert wait_for(lambda: len(daemon.starts()) == 1)
        with pytest.warns(footprint.FootprintWarning, match="lost the connection"):
            daemon.stop()
            daemon.start()
            # The new connection begins with every call still running.
            assert wait_for(lambda: len(daemon.starts()) == 2)
    assert wait_for(lambda: len(daemon.ends()) == 1)
    assert footprint.stats()["daemon_reconnects"] >= 1


def test_ends_the_daemon_did_not_acknowledge_are_sent_again_on_the_next_connection(
    tmp_path, daemon
):
    """A daemon killed before it wrote some ends: the client still has them (kept until
    acknowledged) and sends them first on its next connection."""
    daemon.reply = lambda raw: encode_acks(
        [e["id"] for e in raw.get("ends", []) if e["model"] == "written"]
    )
    _configure(tmp_path, daemon.path)
    for model in ("written", "unwritten", "written", "unwritten"):
        with footprint.query(model=model):
            pass
    assert wait_for(lambda: footprint.stats()["spans_confirmed"] == 2)
    assert footprint.stats()["spans_unconfirmed"] == 2
    assert all(b.get("ack") is True for b in daemon.batches if b.get("ends"))
    with pytest.warns(footprint.FootprintWarning, match="lost the connection"):
        daemon.stop()
        daemon.batches.clear()
        daemon.start()
        assert wait_for(lambda: len(daemon.ends()) == 2)
    assert [e["model"] for e in daemon.ends()] == ["unwritten", "unwritten"]
    stats = footprint.stats()
    assert stats["daemon_resent_spans"] == 2 and stats["spans_confirmed"] == 2


def test_ends_of_a_refused_batch_are_not_kept(tmp_path, daemon):
    """A daemon that refuses a batch names its ends: the client stops keeping them and
    counts them as lost (the daemon counted them too)."""
    daemon.reply = lambda raw: encode_reply(
        "another clock", "clock", [e["id"] for e in raw.get("ends", [])]
    )
    _configure(tmp_path, daemon.path)
    with pytest.warns(footprint.FootprintWarning, match="refused a batch"):
        for _ in range(3):
            with footprint.query(model="refused"):
                pass
        assert wait_for(lambda: footprint.stats()["daemon_lost_spans"] == 3)
    stats = footprint.stats()
    assert stats["spans_unconfirmed"] == 0 and stats["spans_confirmed"] == 0


def test_unacknowledged_ends_count_against_max_pending_spans_and_drops_reach_the_daemon(
    tmp_path, daemon
):
    """A daemon that never acknowledges: the client keeps at most max_pending_spans ends;
    the calls past that are dropped, counted, and the count goes to the daemon (``lost``)."""
    _configure(tmp_path, daemon.path, max_pending_spans=50)

    @footprint.track(model="m")
    def call(i):
        return i

    with pytest.warns(footprint.FootprintWarning, match="span queue full"):
        for i in range(200):
            assert call(i) == i
            if i % 20 == 0:
                time.sleep(0.05)  # let the sender send (and keep) what has ended
        assert wait_for(lambda: footprint.stats()["pending_spans"] == 0)
    stats = footprint.stats()
    assert stats["spans_unconfirmed"] <= 52  # bounded (give or take a race)
    assert stats["spans_unconfirmed"] + stats["dropped_spans"] == 200
    with footprint.query(model="after"):
        pass  # one more batch: it carries the latest count

    def reported() -> int:
        with daemon._lock:
            return sum(b.get("lost", {}).get("span_queue_full", 0) for b in daemon.batches)

    assert wait_for(lambda: reported() == footprint.stats()["dropped_spans"] >= 150)


def test_overflow_while_the_daemon_is_down_is_counted_never_raised(tmp_path, sock_path, caplog):
    _configure(tmp_path, sock_path, max_pending_spans=50, exit_deadline_s=0.3)

    @footprint.track(model="m")
    def call(i):
        return i

    with pytest.warns(footprint.FootprintWarning):
        for i in range(200):
            assert call(i) == i
        assert wait_for(lambda: footprint.stats()["daemon_connect_failures"] >= 1)
    stats = footprint.stats()
    assert stats["pending_spans"] + stats["dropped_spans"] == 200
    assert stats["pending_spans"] <= 52  # bounded by max_pending_spans (give or take a race)
    runtime = get_runtime()
    with caplog.at_level(logging.WARNING, logger="footprint"):
        footprint.shutdown()  # the daemon never came: the rest is counted, and said
    assert runtime.stats()["daemon_lost_spans"] == stats["pending_spans"]
    assert "were not sent to the footprint daemon" in caplog.text


def test_shutdown_delivers_what_is_left(tmp_path, daemon):
    _configure(tmp_path, daemon.path)

    @footprint.track(model="m")
    def call(i):
        return i

    for i in range(500):
        call(i)
    runtime = get_runtime()
    footprint.shutdown()  # sent before it returns; the fake daemon reads on its thread
    assert runtime.stats()["spans_sent"] == 500 and runtime.stats()["daemon_lost_spans"] == 0
    assert wait_for(lambda: len(daemon.ends()) == 500)
    assert daemon.invalid == []


def test_a_refused_batch_is_counted_and_warned_about(tmp_path, sock_path):
    fake = FakeDaemon(sock_path, reply=lambda b: encode_reply("batch.pid is odd", "invalid"))
    fake.start()
    try:
        _configure(tmp_path, sock_path)

        @footprint.track(model="m")
        def call():
            return 1

        with pytest.warns(footprint.FootprintWarning, match=r"refused a batch .*odd \[invalid\]"):
            call()
            footprint.flush()
            runtime = get_runtime()
            assert wait_for(lambda: (call(), runtime.flush(), runtime.refused_batches)[2] >= 1)
        assert footprint.stats()["daemon_refused_batches"] >= 1
        assert "daemon-refused" in runtime.warnings_issued
    finally:
        footprint.shutdown()
        fake.stop()


class _Recorder(http.server.BaseHTTPRequestHandler):
    bodies: list[bytes] = []
    status = 202

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).bodies.append((self.path, body))
        payload = b"" if self.status < 400 else encode_reply("no", "invalid")
        self.send_response(self.status)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


def test_http_daemon_gets_the_same_batches(tmp_path):
    _Recorder.bodies, _Recorder.status = [], 202
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
    ).start()
    try:
        _configure(tmp_path, f"http://127.0.0.1:{server.server_address[1]}")

        @footprint.track(model="m")
        def call(i):
            return i

        for i in range(10):
            call(i)
        footprint.flush()
        assert wait_for(lambda: sum(len(json.loads(b)["ends"]) for _, b in _Recorder.bodies) == 10)
        assert {path for path, _ in _Recorder.bodies} == {"/v1/spans"}
        for _, body in _Recorder.bodies:
            decode_batch(body)
        _Recorder.status = 400
        with pytest.warns(footprint.FootprintWarning, match=r"refused a batch .*no \[invalid\]"):
            call(0)
            footprint.flush()
            assert wait_for(lambda: footprint.stats()["daemon_refused_batches"] >= 1)
    finally:
        footprint.shutdown()
        server.shutdown()
        server.server_close()


def test_a_forked_child_sends_its_own_spans(tmp_path, daemon):
    script = tmp_path / "forks.py"
    script.write_text(
        textwrap.dedent(f"""
        import os, sys
        import footprint
        footprint.configure(db={str(tmp_path / "x.db")!r}, sensor="none", cpu=False,
                            region="FRA", daemon={daemon.path!r})

        @footprint.track(model="m")
        def call(who):
            return who

        call("parent")
        footprint.flush()
        pid = os.fork()
        if pid == 0:
            call("child")
            footprint.shutdown()
            os._exit(0)
        os.waitpid(pid, 0)
        call("parent")
        print(os.getpid(), pid)
    """)
    )
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    parent, child = map(int, done.stdout.split())
    assert wait_for(lambda: len(daemon.ends()) == 3)
    by_pid: dict[int, int] = {}
    for batch in daemon.batches:
        by_pid[batch["pid"]] = by_pid.get(batch["pid"], 0) + len(batch["ends"])
    assert by_pid == {parent: 2, child: 1}


def test_the_client_thread_is_named_and_stops(tmp_path, daemon):
    _configure(tmp_path, daemon.path)
    with footprint.query(model="m"):
        pass
    names = {t.name for t in threading.enumerate()}
    assert "footprint-daemon-client" in names
    footprint.shutdown()
    assert wait_for(
        lambda: "footprint-daemon-client" not in {t.name for t in threading.enumerate()}
    )


# -- choosing: auto, off, a path, a URL ------------------------------------------------


def test_auto_without_a_daemon_measures_in_process(tmp_path, short_dir, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(short_dir))
    footprint.configure(db=str(tmp_path / "fp.db"), sensor="none", cpu=False, region="FRA")
    assert isinstance(get_runtime(), Runtime)
    # A socket file whose daemon died (nothing accepts) is not a daemon either.
    footprint.shutdown()
    path = default_socket_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()
    assert isinstance(get_runtime(), Runtime)


def test_auto_with_a_listening_daemon_uses_it(tmp_path, short_dir, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(short_dir))
    path = default_socket_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    fake = FakeDaemon(str(path)).start()
    try:
        footprint.configure(db=str(tmp_path / "fp.db"), sensor="none", cpu=False, region="FRA")
        with footprint.query(model="m"):
            pass
        assert isinstance(get_runtime(), DaemonClient)
        footprint.flush()
        assert wait_for(lambda: len(fake.ends()) == 1)
        # Simulated GPUs are driven by this process's calls: measured here under auto.
        footprint.configure(sensor="simulated:gpus=1")
        assert isinstance(get_runtime(), Runtime)
        footprint.configure(daemon="off", sensor="none")
        assert isinstance(get_runtime(), Runtime)
    finally:
        footprint.shutdown()
        fake.stop()


def test_choose_reads_the_setting(short_dir):
    env = {"XDG_RUNTIME_DIR": str(short_dir)}
    assert choose(resolve_settings({"daemon": "off"}), env).target is None
    assert choose(resolve_settings({}, environ=env), env).target is None
    assert choose(resolve_settings({"daemon": "/x/d.sock"})).target == Target("unix", "/x/d.sock")
    url = choose(resolve_settings({"daemon": "http://localhost:7070/"})).target
    assert url == Target("http", "http://localhost:7070")


@pytest.mark.parametrize(
    "value, normal",
    [
        (None, "auto"),
        ("", "auto"),
        ("AUTO", "auto"),
        ("Off", "off"),
        ("/run/fp/d.sock", "/run/fp/d.sock"),
        ("http://127.0.0.1:9000", "http://127.0.0.1:9000"),
        ("http://[::1]:9000/", "http://[::1]:9000"),
        ("http://gpu-host", "http://gpu-host:80"),
    ],
)
def test_daemon_setting_forms(value, normal):
    assert resolve_settings({"daemon": value}).daemon == normal


@pytest.mark.parametrize(
    "value",
    [
        "ftp://x",
        "https://host:1",
        "http://host:notaport",
        "http://host:1/v1/spans",
        "http://user:pw@host:1",
        "/" + "x" * 200,
        7,
    ],
)
def test_bad_daemon_setting_names_the_allowed_forms(value):
    with pytest.raises(ValueError, match=r"daemon") as caught:
        footprint.configure(daemon=value)
    if value in ("ftp://x", 7):
        assert "auto" in str(caught.value) and "off" in str(caught.value)
        assert "http://host:port" in str(caught.value)


def test_daemon_setting_from_the_environment(tmp_path):
    env = {"FOOTPRINT_DAEMON": "off"}
    assert resolve_settings({}, environ=env, directory=tmp_path).daemon == "off"
    with pytest.raises(ValueError, match="unsupported address"):
        resolve_settings({}, environ={"FOOTPRINT_DAEMON": "ftp://x"}, directory=tmp_path)


# -- presence: in-process runtimes that double count ---------------------------------

HOLDER = """
import sys
from pathlib import Path
from footprint.runtime import presence
claims = presence.claim_gpus([sys.argv[1]], role=sys.argv[3], directory=Path(sys.argv[2]))
print("held" if claims.claimed else "not held", flush=True)
sys.stdin.readline()
"""


def _holder(short_dir: Path, uuid: str, role: str = "process") -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, uuid, str(short_dir), role],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_process_measuring_one_gpu_is_warned(short_dir):
    uuid = "GPU-sim0001-0000-4000-8000-000000000000"
    holder = _holder(short_dir, uuid)
    try:
        said: list[tuple[str, str]] = []
        claims = presence.claim_gpus([uuid], lambda k, m: said.append((k, m)), directory=short_dir)
        assert claims.claimed == [] and claims.others[0].pid == holder.pid
        ((key, message),) = said
        assert key == "double-count"
        assert message == (
            f"footprint: another process (pid {holder.pid}) is measuring GPU {uuid} "
            "in-process: both count its whole energy, so the totals double count. Run "
            "`footprint daemon` beside them and every process will report to it."
        )
    finally:
        holder.communicate("\n", timeout=30)
    # The holder is gone: the kernel dropped its lock, no stale claim remains.
    claims = presence.claim_gpus([uuid], lambda k, m: pytest.fail(m), directory=short_dir)
    assert claims.claimed == [uuid]
    claims.release()


def test_a_process_beside_the_daemon_is_told_so(short_dir):
    uuid = "GPU-0a1b"
    holder = _holder(short_dir, uuid, role="daemon")
    try:
        said: list[str] = []
        presence.claim_gpus([uuid], lambda k, m: said.append(m), directory=short_dir)
        assert f"the footprint daemon (pid {holder.pid}) is measuring GPU {uuid}" in said[0]
    finally:
        holder.communicate("\n", timeout=30)


def test_runtimes_of_one_process_share_their_claims(short_dir):
    first = presence.claim_gpus(
        ["GPU-a", "GPU-b"], lambda k, m: pytest.fail(m), directory=short_dir
    )
    second = presence.claim_gpus(["GPU-a"], lambda k, m: pytest.fail(m), directory=short_dir)
    assert first.claimed == ["GPU-a", "GPU-b"] and second.claimed == ["GPU-a"]
    first.release()
    assert "GPU-a" in presence._held and "GPU-b" not in presence._held
    second.release()
    second.release()  # twice: harmless
    assert "GPU-a" not in presence._held


def test_a_forked_child_does_not_inherit_its_parents_claims(short_dir):
    script = textwrap.dedent(f"""
        import os, sys
        from pathlib import Path
        from footprint.runtime import presence
        d = Path({str(short_dir)!r})
        presence.claim_gpus(["GPU-f"], directory=d)
        pid = os.fork()
        if pid == 0:
            said = []
            presence.claim_gpus(["GPU-f"], lambda k, m: said.append(m), directory=d)
            print(said[0] if said else "no warning", flush=True)
            os._exit(0)
        os.waitpid(pid, 0)
        print(os.getpid())
    """)
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    child_line, parent = done.stdout.splitlines()
    assert f"another process (pid {parent}) is measuring GPU GPU-f" in child_line


def test_two_processes_measuring_one_simulated_gpu_in_process(tmp_path, short_dir):
    script = tmp_path / "measure.py"
    script.write_text(
        textwrap.dedent(f"""
        import sys, warnings
        import footprint
        warnings.simplefilter("always")
        footprint.configure(db={str(tmp_path / "fp.db")!r}, region="FRA", cpu=False,
                            sensor="simulated:gpus=1,seed=3", daemon="off")
        footprint.tracking.get_runtime().wait_until_measuring(10)
        print("measuring", flush=True)
        sys.stdin.readline()
    """)
    )
    env = {**os.environ, "XDG_RUNTIME_DIR": str(short_dir)}
    first = subprocess.Popen(
        [sys.executable, str(script)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    try:
        assert first.stdout.readline().strip() == "measuring"
        second = subprocess.run(
            [sys.executable, str(script)],
            input="\n",
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=60,
        )
    finally:
        _, first_err = first.communicate("\n", timeout=60)
    assert f"another process (pid {first.pid}) is measuring GPU GPU-sim0003" in second.stderr
    assert "double count" not in first_err
