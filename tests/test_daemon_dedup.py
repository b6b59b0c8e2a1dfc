"""Ends a client sends again are stored once, across daemon restarts (schema version 4).

A client that lost its connection before the daemon acknowledged some ends (the daemon
killed between writing their records and acknowledging them, or the connection closed
mid-acknowledgement) sends them again, marked ``resent``, to the next daemon. Each record
a daemon writes carries its key ``<session>:<client span id>`` (``queries.span_key``);
the next daemon looks the resent ones up and acknowledges those stored without storing
them again. Before, the next daemon stored them a second time (and refused the
``session`` and ``resent`` fields as unknown).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy import create_engine, inspect, text
from test_daemon_client import FakeDaemon, _configure
from test_daemon_client import wait_for as wait_until
from test_daemon_server import (
    HOST,
    Client,
    FakeRuntime,
    batch,
    end,
    metric,
    metrics_text,
    query_rows,
    spawn,
    wait_for,
)

import footprint
from footprint.bench.ingest import make_records
from footprint.runtime.protocol import ProtocolError, decode_batch, encode_acks
from footprint.storage.engine import open_engine
from footprint.storage.info import database_info
from footprint.storage.models import SCHEMA_VERSION
from footprint.storage.store import Store

SESSION = "5e55i0n-0f-a_client"


def _raw(**extra) -> dict:
    return {"pid": 4242, "host": "h", "monotonic_s": 10.0, **extra}


def _end(span_id: int = 1, **extra) -> dict:
    return {"id": span_id, "start_s": 1.0, "end_s": 2.0, "model": "m", **extra}


# -- (a) the protocol ----------------------------------------------------------------
@pytest.mark.parametrize("session", ["a", "0" * 64, "Az09_-", "f" * 32])
def test_a_session_of_1_to_64_safe_characters_is_taken(session):
    decoded = decode_batch(json.dumps(_raw(session=session, ends=[_end()])))
    assert decoded.session == session


def test_session_and_resent_are_optional():
    decoded = decode_batch(json.dumps(_raw(ends=[_end()])))
    assert decoded.session is None and decoded.ends[0].resent is False
    assert decode_batch(json.dumps(_raw(session=None))).session is None


@pytest.mark.parametrize(
    "session",
    ["", "x" * 65, "a b", "a:b", "a/b", "ä", "a\n", "\u0660", 7, True, ["a"], {"a": 1}],
)
def test_a_session_that_is_not_1_to_64_safe_characters_is_refused(session):
    with pytest.raises(ProtocolError) as err:
        decode_batch(json.dumps(_raw(session=session)))
    assert err.value.reason == "invalid" and "session" in str(err.value)


def test_resent_is_a_boolean_of_each_end():
    decoded = decode_batch(json.dumps(_raw(ends=[_end(1, resent=True), _end(2, resent=False)])))
    assert [e.resent for e in decoded.ends] == [True, False]
    for value in (1, 0, "true", None, [True]):
        with pytest.raises(ProtocolError) as err:
            decode_batch(json.dumps(_raw(ends=[_end(1, resent=value)])))
        assert err.value.reason == "invalid" and "ends[0].resent" in str(err.value)
    with pytest.raises(ProtocolError):  # of ends only
        decode_batch(json.dumps(_raw(starts=[{"id": 1, "start_s": 1.0, "resent": True}])))


# -- the store's lookup --------------------------------------------------------------
def test_stored_span_keys_finds_the_stored_ones_in_chunks(db_url):
    records = make_records(1_200, seed=3)
    for i, r in enumerate(records):
        r["span_key"] = None if i % 10 == 0 else f"s:{i}"
    store = Store(db_url)
    try:
        store.insert(records)
        asked = [f"s:{i}" for i in range(0, 1_500, 2)] + ["s:2", "other:4"]  # > 1 chunk
        found = store.stored_span_keys(asked)
        assert found == {f"s:{i}" for i in range(0, 1_200, 2) if i % 10}
        assert store.stored_span_keys([]) == set()
    finally:
        store.close()


# -- (c) the migration from version 3 ------------------------------------------------
def _as_version_3(url: str) -> None:
    """What a version-3 database looks like: no span_key, no index, version 3."""
    engine = open_engine(url, create=False)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP INDEX ix_queries_span_key")
        conn.exec_driver_sql("DROP INDEX ix_queries_trace_id")  # version 5's
        for column in ("span_id", "trace_id", "span_key"):
            conn.exec_driver_sql(f"ALTER TABLE queries DROP COLUMN {column}")
        conn.execute(text("UPDATE footprint_meta SET value = '3' WHERE key = 'schema_version'"))
    engine.dispose()


def _raw_engine(url: str):
    """An engine that neither creates nor migrates anything (not footprint's)."""
    return create_engine(url if "://" in url else f"sqlite:///{url}")


def _span_key_state(url: str) -> tuple[bool, list[dict]]:
    """(span_key is the last column of queries before version 5's, the index
    ix_queries_span_key)."""
    raw = _raw_engine(url)
    try:
        inspector = inspect(raw)
        columns = [c["name"] for c in inspector.get_columns("queries")]
        indexes = [
            {"columns": i["column_names"], "unique": bool(i["unique"])}
            for i in inspector.get_indexes("queries")
            if i["name"] == "ix_queries_span_key"
        ]
        # Last but version 5's trace context, as in a fresh database.
        return (
            "span_key" in columns and columns[-3:] == ["span_key", "trace_id", "span_id"]
        ), indexes
    finally:
        raw.dispose()


def test_a_version_3_database_gets_the_span_key_and_its_index(db_url):
    store = Store(db_url)
    store.insert(make_records(30, seed=1))
    store.close()
    _as_version_3(db_url)
    assert _span_key_state(db_url) == (False, [])
    raw = _raw_engine(db_url)
    with raw.connect() as conn:
        version = conn.execute(
            text("SELECT value FROM footprint_meta WHERE key = 'schema_version'")
        ).scalar_one()
    raw.dispose()
    assert version == "3"
    store = Store(db_url)  # opening migrates
    try:
        assert _span_key_state(db_url) == (True, [{"columns": ["span_key"], "unique": False}])
        assert database_info(db_url)["schema_version"] == SCHEMA_VERSION
        assert store.stored_span_keys(["s:1"]) == set()  # the 30 old rows: NULL
        new = make_records(3, seed=2)
        for i, r in enumerate(new):
            r["span_key"] = f"s:{i}"
        store.insert(new)
        assert store.stored_span_keys(["s:0", "s:1", "s:2", "s:3"]) == {"s:0", "s:1", "s:2"}
    finally:
        store.close()
    assert database_info(db_url)["queries_rows"] == 33
    # Idempotent: a process that read version 3 before the first one migrated.
    engine = open_engine(db_url, create=False)
    with engine.begin() as conn:
        conn.execute(text("UPDATE footprint_meta SET value = '3' WHERE key = 'schema_version'"))
    engine.dispose()
    Store(db_url).close()
    assert database_info(db_url)["schema_version"] == SCHEMA_VERSION
    assert _span_key_state(db_url) == (True, [{"columns": ["span_key"], "unique": False}])


# -- the intake, in-process -----------------------------------------------------------
class FakeStore:
    def __init__(self, stored: set[str], fails: bool = False) -> None:
        self.stored = stored
        self.fails = fails
        self.asked: list[list[str]] = []

    def stored_span_keys(self, keys: list[str]) -> set[str]:
        self.asked.append(list(keys))
        if self.fails:
            raise OSError("database unreachable")
        return self.stored & set(keys)


def _intake(store: FakeStore | None):
    from footprint.daemon.spans import SpanIntake

    runtime = FakeRuntime()
    runtime.writer = SimpleNamespace(count_loss=runtime._count_loss, store=store)
    return runtime, SpanIntake(runtime)


def _batch(pid: int, ends: list[dict], session: str | None = SESSION, ack: bool = True):
    raw = {"pid": pid, "host": HOST, "monotonic_s": time.monotonic(), "ends": ends, "ack": ack}
    if session is not None:
        raw["session"] = session
    return decode_batch(json.dumps(raw))


def test_intake_acknowledges_resent_ends_stored_before_and_applies_the_others():
    store = FakeStore({f"{SESSION}:1", f"{SESSION}:2"})
    runtime, intake = _intake(store)
    conn = intake.connect(peer_pid=None)
    t = time.monotonic()
    ends = [end(i, t - 0.2, t - 0.1, "m", resent=i != 4) for i in (1, 2, 3, 4)]
    intake.apply(_batch(5001, ends), conn)
    assert store.asked == [[f"{SESSION}:1", f"{SESSION}:2", f"{SESSION}:3"]]  # one query
    assert [(s.key, s.pid) for s in runtime.ended] == [
        (f"{SESSION}:3", 5001),
        (f"{SESSION}:4", 5001),
    ]
    assert intake.oddities["duplicate_end_stored"] == 2
    ((_, acked),) = intake.take_acks()
    assert acked == [1, 2]  # at once; 3 and 4 once written
    intake.settled([s.span_id for s in runtime.ended])
    ((_, acked),) = intake.take_acks()
    assert acked == [3, 4]
    # No resent end, or no session: nothing to look up.
    intake.apply(_batch(5001, [end(5, t - 0.2, t - 0.1, "m")]), conn)
    intake.apply(_batch(5002, [end(1, t - 0.2, t - 0.1, "m", resent=True)], session=None), conn)
    assert len(store.asked) == 1
    assert [s.key for s in list(runtime.ended)[2:]] == [f"{SESSION}:5", None]


def test_intake_applies_resent_ends_when_the_lookup_fails(caplog):
    """Fail open: stored (perhaps twice), never dropped; counted, logged once."""
    t = time.monotonic()
    for store in (FakeStore({f"{SESSION}:1"}, fails=True), None):
        runtime, intake = _intake(store)
        conn = intake.connect(peer_pid=None)
        for pid in (6001, 6002):
            intake.apply(_batch(pid, [end(1, t - 0.2, t - 0.1, "m", resent=True)]), conn)
        assert [s.key for s in runtime.ended] == [f"{SESSION}:1"] * 2
        assert intake.oddities["resent_unchecked"] == 2
        assert intake.oddities["duplicate_end_stored"] == 0
    warned = [r for r in caplog.records if "could not look up" in r.getMessage()]
    assert len(warned) == 2  # once per intake


def test_intake_a_stored_end_whose_start_came_here_is_closed_without_a_record():
    runtime, intake = _intake(FakeStore({f"{SESSION}:7"}))
    conn = intake.connect(peer_pid=None)
    t = time.monotonic()
    start = decode_batch(
        json.dumps(
            {"pid": 7001, "host": HOST, "monotonic_s": t, "starts": [{"id": 7, "start_s": t - 0.2}]}
        )
    )
    intake.apply(start, conn)
    (sid,) = runtime.inflight
    intake.apply(_batch(7001, [end(7, t - 0.2, t - 0.1, "m", resent=True)]), conn)
    assert list(runtime.ended) == [] and runtime.abandoned == [sid]


# -- the client ------------------------------------------------------------------------
@pytest.fixture
def fake_daemon() -> Iterator[FakeDaemon]:
    folder = Path(tempfile.mkdtemp(prefix="fp", dir="/tmp"))
    fake = FakeDaemon(str(folder / "d.sock")).start()
    yield fake
    footprint.shutdown()
    fake.stop()
    shutil.rmtree(folder, ignore_errors=True)


def test_the_client_sends_its_session_and_marks_ends_sent_again(tmp_path, fake_daemon):
    daemon = fake_daemon
    daemon.reply = lambda raw: encode_acks(
        [e["id"] for e in raw.get("ends", []) if e["model"] == "written"]
    )
    _configure(tmp_path, daemon.path)
    for model in ("written", "unwritten", "written", "unwritten"):
        with footprint.query(model=model):
            pass
    assert wait_until(lambda: footprint.stats()["spans_confirmed"] == 2)
    first = list(daemon.batches)
    sessions = {b.get("session") for b in first}
    assert len(sessions) == 1 and re.fullmatch(r"[0-9a-f]{32}", sessions.pop() or "")
    assert not any("resent" in e for b in first for e in b["ends"])
    with pytest.warns(footprint.FootprintWarning, match="lost the connection"):
        daemon.stop()
        daemon.batches.clear()
        daemon.start()
        assert wait_until(lambda: len(daemon.ends()) == 2)
    assert [(e["model"], e.get("resent")) for e in daemon.ends()] == [("unwritten", True)] * 2
    assert {b["session"] for b in daemon.batches} == {first[0]["session"]}
    assert daemon.invalid == []


def test_a_forked_child_draws_its_own_session(tmp_path, fake_daemon):
    script = tmp_path / "forks.py"
    script.write_text(
        textwrap.dedent(f"""
        import os
        import footprint
        footprint.configure(db={str(tmp_path / "x.db")!r}, sensor="none", cpu=False,
                            region="FRA", daemon={fake_daemon.path!r})
        with footprint.query(model="parent"):
            pass
        footprint.flush()
        pid = os.fork()
        if pid == 0:
            with footprint.query(model="child"):
                pass
            footprint.shutdown()
            os._exit(0)
        os.waitpid(pid, 0)
        with footprint.query(model="parent"):
            pass
    """)
    )
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert wait_until(lambda: len(fake_daemon.ends()) == 3)
    by_model: dict[str, set[str]] = {}
    for b in fake_daemon.batches:
        for e in b["ends"]:
            by_model.setdefault(e["model"], set()).add(b["session"])
    assert len(by_model["parent"]) == 1 and len(by_model["child"]) == 1
    assert by_model["parent"] != by_model["child"]


# -- (b) end to end: a real daemon, restarted -----------------------------------------
@pytest.fixture
def folder() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="fpq-", dir="/tmp"))  # short: a socket path
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _acks(client: Client, count: int, stderr) -> list[int]:
    acked: list[int] = []
    while len(acked) < count:
        reply = client.reply(timeout=20.0)
        assert reply is not None and set(reply) == {"acked"}, (reply, stderr())
        acked += reply["acked"]
    return acked


def test_a_restarted_daemon_stores_ends_sent_again_once(folder):
    """Ends 1-5 acknowledged by the first daemon (their acknowledgements lost, as far as
    the client knows) are sent again, marked resent, to the next one: acknowledged, not
    stored again; 6 and 7, marked resent but never stored, are stored."""
    pid = 93001
    t = time.monotonic()
    ends = [end(i, t - 0.3 + 0.01 * i, t - 0.2 + 0.01 * i, "dedup-model") for i in range(1, 8)]
    first = spawn(folder, name="r")
    try:
        client = Client(first.sock)
        client.send(batch(pid, ends=ends[:5], ack=True, session=SESSION))
        assert sorted(_acks(client, 5, lambda: first.stderr)) == [1, 2, 3, 4, 5]
        client.close()
    finally:
        assert first.stop(timeout=15) == 0, first.stderr
    assert query_rows(first.db, "SELECT COUNT(*) FROM queries")[0][0] == 5

    second = spawn(folder, name="r")  # same socket, same database
    try:
        again = Client(second.sock)
        resent = [dict(e, resent=True) for e in ends]
        again.send(batch(pid, ends=resent, ack=True, session=SESSION))
        acked = _acks(again, 7, lambda: second.stderr)
        assert acked[:5] == [1, 2, 3, 4, 5]  # stored already: acknowledged at once
        assert sorted(acked[5:]) == [6, 7]
        text_ = metrics_text(second)
        assert metric(text_, "footprint_spans_ignored_total", kind="duplicate_end_stored") == 5
        again.close()
    finally:
        assert second.stop(timeout=15) == 0, second.stderr
    rows = query_rows(second.db, "SELECT span_key, pid FROM queries ORDER BY span_key")
    assert rows == [(f"{SESSION}:{i}", pid) for i in range(1, 8)]  # 7 rows, not 12


class AckEater:
    """A Unix socket relay between clients and the daemon at ``upstream``: it passes
    batches on and, while ``eat`` is set, swallows the daemon's acknowledgements. When
    either side closes, it closes the other: the client sees its connection end with its
    ends unacknowledged, as when a daemon is killed between writing and acknowledging."""

    def __init__(self, path: Path, upstream: Path) -> None:
        self.path, self.upstream = str(path), str(upstream)
        self.eat = True
        self.eaten = 0  # bytes of replies swallowed
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(self.path)
        self._server.listen(16)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                down, _ = self._server.accept()
            except OSError:
                return
            up = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                up.connect(self.upstream)
            except OSError:  # no daemon yet: the client retries
                up.close()
                down.close()
                continue
            threading.Thread(target=self._pump, args=(down, up, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(up, down, True), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, replies: bool) -> None:
        try:
            while chunk := source.recv(65536):
                if replies and self.eat:
                    self.eaten += len(chunk)
                    continue
                sink.sendall(chunk)
        except OSError:
            pass
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self._server.close()


WORKER = textwrap.dedent("""
    import json, sys, time
    import footprint

    for i in range(int(sys.argv[1])):
        with footprint.query(model="relayed", call=i):
            pass
    footprint.flush()
    print("sent", flush=True)
    sys.stdin.readline()  # the test restarted the daemon: now wait for its acknowledgements
    deadline = time.monotonic() + 60
    while footprint.stats()["spans_confirmed"] < int(sys.argv[1]) and time.monotonic() < deadline:
        time.sleep(0.05)
    print(json.dumps(footprint.stats()), flush=True)
    footprint.shutdown()
""")


def test_a_real_client_whose_acknowledgements_were_lost_is_stored_once(folder):
    """A tracked process's 40 calls are written by the first daemon, whose
    acknowledgements never reach it; the daemon is restarted; the client sends the 40
    again (resent) to the next one: 40 rows, not 80."""
    calls = 40
    first = spawn(folder, name="q")
    relay = AckEater(folder / "relay.sock", first.sock)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOOTPRINT_")}
    env.update(FOOTPRINT_DAEMON=relay.path, XDG_RUNTIME_DIR=str(folder))
    worker = subprocess.Popen(
        [sys.executable, "-c", WORKER, str(calls)],
        env=env,
        text=True,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    second = None
    try:
        assert worker.stdout is not None and worker.stdout.readline().strip() == "sent"
        count = "SELECT COUNT(*) FROM queries WHERE model = 'relayed'"
        assert wait_for(lambda: query_rows(first.db, count)[0][0] == calls), first.stderr
        assert first.stop(timeout=15) == 0, first.stderr  # its last acknowledgements: eaten
        assert relay.eaten > 0
        relay.eat = False
        second = spawn(folder, name="q")  # same socket, same database
        out, err = worker.communicate("go\n", timeout=90)
        assert worker.returncode == 0, err
        stats = json.loads(out.splitlines()[-1])
        assert stats["spans_confirmed"] == calls and stats["daemon_resent_spans"] >= calls
        ignored = metric(
            metrics_text(second), "footprint_spans_ignored_total", kind="duplicate_end_stored"
        )
        assert ignored == calls
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.communicate()  # its pipes closed
        relay.close()
        if second is not None:
            assert second.stop(timeout=15) == 0, second.stderr
    rows = query_rows(first.db, "SELECT tags, span_key FROM queries WHERE model = 'relayed'")
    assert sorted(json.loads(tags)["call"] for tags, _ in rows) == list(range(calls))
    assert len({key for _, key in rows}) == calls


def test_records_written_in_process_have_no_span_key(tmp_path):
    footprint.configure(
        db=str(tmp_path / "in.db"), sensor="none", cpu=False, region="FRA", daemon="off"
    )
    try:
        for _ in range(3):
            with footprint.query(model="local"):
                pass
        footprint.flush()
    finally:
        footprint.shutdown()
    rows = query_rows(tmp_path / "in.db", "SELECT model, span_key FROM queries")
    assert rows == [("local", None)] * 3
