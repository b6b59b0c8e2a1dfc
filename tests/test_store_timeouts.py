"""Bounded waits on every database: connect, lock and statement timeouts.

A PostgreSQL server that accepts connections and never answers, or a table another
session holds locked, must cost a write at most about the store's timeout, not minutes.
Each wait runs in a thread joined with a generous bound, so that a regression fails the
test instead of hanging the suite (closing the fake server or releasing the lock then
lets the thread end).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import postgres_schema
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from footprint.bench.ingest import make_records
from footprint.storage.engine import _postgres_connect_args, open_engine
from footprint.storage.errors import StoreError
from footprint.storage.store import Store

BOUND_S = 10.0  # generous: the waits below are 1-2 s (libpq's connect timeout is >= 2 s)


def run_bounded(call: Callable[[], Any], bound_s: float = BOUND_S) -> tuple[Any, float, bool]:
    """``call()`` in a thread: (its result or exception, seconds taken, still running)."""
    outcome: list[Any] = [None]

    def target() -> None:
        try:
            outcome[0] = call()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome[0] = exc

    started = time.monotonic()
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(bound_s)
    return outcome[0], time.monotonic() - started, thread.is_alive()


@pytest.fixture
def silent_server() -> Iterator[tuple[int, threading.Event]]:
    """A loopback TCP port that accepts connections and never says a word."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    listener.settimeout(0.1)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            accepted.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], stop
    finally:
        stop.set()
        thread.join(5)
        for conn in accepted:
            conn.close()
        listener.close()


def test_silent_postgres_server_times_out(silent_server):
    port, stop = silent_server
    url = f"postgresql+psycopg://u@127.0.0.1:{port}/db"
    outcome, took, hung = run_bounded(lambda: Store(url, busy_timeout_s=2))
    if hung:
        stop.set()  # the fixture closes the sockets: the hung connect fails and ends
    assert not hung, f"opening a silent server still waited after {took:.1f} s"
    assert isinstance(outcome, StoreError), outcome
    assert "timeout" in str(outcome) and f"127.0.0.1:{port}" in str(outcome)
    assert took < BOUND_S


def test_connect_timeout_in_url_is_kept(silent_server, monkeypatch):
    """The URL's own connect_timeout wins over the store's (here: 3 s against 30 s)."""
    monkeypatch.delenv("PGCONNECT_TIMEOUT", raising=False)
    port, stop = silent_server
    url = f"postgresql+psycopg://u@127.0.0.1:{port}/db?connect_timeout=3"
    outcome, took, hung = run_bounded(lambda: Store(url, busy_timeout_s=30))
    if hung:
        stop.set()
    assert not hung and isinstance(outcome, StoreError), outcome
    assert 2.5 < took < BOUND_S


@pytest.mark.parametrize(
    "url, environ, expected",
    [
        (
            "postgresql+psycopg://u@h/db",
            {},
            {"connect_timeout": 3, "options": "-c statement_timeout=2500 -c lock_timeout=2500"},
        ),
        (
            "postgresql+psycopg://u@h/db?connect_timeout=7&options=-csearch_path%3Ds",
            {},
            {"options": "-csearch_path=s -c statement_timeout=2500 -c lock_timeout=2500"},
        ),
        (
            "postgresql+psycopg://u@h/db?options=-c%20statement_timeout%3D0",
            {},
            {"connect_timeout": 3, "options": "-c statement_timeout=0 -c lock_timeout=2500"},
        ),
        (
            "postgresql+psycopg://u@h/db?options=-c%20lock_timeout%3D1s&options=-cstatement_timeout%3D9s",
            {},
            {"connect_timeout": 3},
        ),
        (
            "postgresql://u@h/db",
            {"PGOPTIONS": "-c geqo=off", "PGCONNECT_TIMEOUT": "60"},
            {"options": "-c geqo=off -c statement_timeout=2500 -c lock_timeout=2500"},
        ),
        (
            "postgresql://u@h/db?options=-cwork_mem%3D8MB",
            {"PGOPTIONS": "-c lock_timeout=5s"},
            {
                "connect_timeout": 3,
                "options": "-cwork_mem=8MB -c statement_timeout=2500 -c lock_timeout=2500",
            },
        ),
    ],
)
def test_postgres_connect_args_keep_what_the_user_set(url, environ, expected, monkeypatch):
    for name in ("PGOPTIONS", "PGCONNECT_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    assert _postgres_connect_args(url, 2.5, 2.5) == expected


def test_long_reads_get_no_statement_timeout():
    """Reports, exports and rollup rebuilds open engines without a statement timeout."""
    assert _postgres_connect_args("postgresql://u@h/db?connect_timeout=4", 10) == {
        "options": "-c lock_timeout=10000"
    }


def test_tiny_timeouts_stay_timeouts():
    """0 means "no timeout" to libpq and the server: a tiny timeout is at least 1."""
    assert _postgres_connect_args("postgresql://u@h/db", 0.0001, 0.0001) == {
        "connect_timeout": 1,
        "options": "-c statement_timeout=1 -c lock_timeout=1",
    }


def test_pool_wait_is_bounded_too(tmp_path):
    engine = open_engine(str(tmp_path / "pool.db"), busy_timeout_s=3.5)
    try:
        assert engine.pool.timeout() == 3.5
    finally:
        engine.dispose()


def test_postgres_sessions_carry_the_timeouts():
    names = ("statement_timeout", "lock_timeout", "search_path")
    with postgres_schema("fp_to") as url:
        store = Store(url, busy_timeout_s=1.5)
        reader = open_engine(url, create=False, busy_timeout_s=2)
        try:
            with store.engine.connect() as conn:
                writes = [conn.execute(text(f"SHOW {name}")).scalar_one() for name in names]
            with reader.connect() as conn:
                reads = [conn.execute(text(f"SHOW {name}")).scalar_one() for name in names]
        finally:
            store.close()
            reader.dispose()
    schema = url.rsplit("%3D", 1)[1]  # the URL's own options are kept
    assert writes == ["1500ms", "1500ms", schema]
    assert reads == ["0", "2s", schema]


def test_locked_postgres_table_times_out_then_recovers():
    with postgres_schema("fp_to") as url:
        store = Store(url, busy_timeout_s=1)
        blocker_engine = create_engine(url)
        blocker = blocker_engine.connect()
        try:
            blocker.execute(text("LOCK TABLE queries IN ACCESS EXCLUSIVE MODE"))
            outcome, took, hung = run_bounded(lambda: store.insert(make_records(1)))
            blocker.rollback()  # releases the lock: a hung insert goes through now
            assert not hung, f"the insert still waited for the lock after {took:.1f} s"
            assert isinstance(outcome, OperationalError), outcome
            assert "canceling statement" in str(outcome)
            assert took < BOUND_S
            store.insert(make_records(2, seed=1))
            with store.engine.connect() as conn:
                assert conn.execute(text("SELECT COUNT(*) FROM queries")).scalar_one() == 2
        finally:
            blocker.close()
            blocker_engine.dispose()
            store.close()
