"""The store under faults and bad input: one bad record never stops the others.

- Rows the database refuses for their values are isolated: the rest of their batch is
  written at the same flush, each refused row dropped and counted (``rejected:<error>``).
- A SQLite file deleted or replaced while open: the writer goes on at the path, and says
  how many records went with the old file.
- A malformed SQLite file: reported by ``database_info``, never written into.
- Records given up at exit are counted in the ``losses`` table, through a side file when
  the database cannot be written then.
- Several PostgreSQL writers upserting the same rollup rows never deadlock.

Tests taking ``db_url`` run on SQLite, and on PostgreSQL when
``FOOTPRINT_TEST_POSTGRES_URL`` is set (``.ci/run`` sets it).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import random
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import postgres_schema
from sqlalchemy import select, text
from sqlalchemy.exc import OperationalError
from test_store import _assert_same, _expected, _rollup_table, count_rows

from footprint.bench.ingest import make_records
from footprint.storage import sidefile
from footprint.storage.engine import open_engine
from footprint.storage.errors import MalformedDatabase, is_data_error
from footprint.storage.info import database_info
from footprint.storage.models import Loss, QueryRecord
from footprint.storage.store import Store
from footprint.storage.writer import WriteFailed, Writer

REPO = Path(__file__).resolve().parent.parent
MINUTE = dt.datetime(2026, 1, 1, 0, 0, tzinfo=dt.timezone.utc)


def _losses(url: str) -> dict[str, int]:
    engine = open_engine(url, create=False)
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(Loss.__table__.c.kind, Loss.__table__.c.count)).all()
    finally:
        engine.dispose()
    out: dict[str, int] = {}
    for kind, count in rows:
        out[kind] = out.get(kind, 0) + count
    return out


def _idle(device: str, idle_j: float | None = 1.0) -> dict:
    return {
        "device_uuid": device,
        "minute": MINUTE,
        "idle_energy_j": idle_j,
        "measured_energy_j": 3.0,
        "host": "h",
        "pid": 1,
    }


# -- 64-bit token counts ------------------------------------------------------------------


def test_token_counts_beyond_32_bits_are_stored(db_url):
    """PostgreSQL's token columns were ``integer``: one count over 2^31 refused a batch."""
    records = make_records(3)
    records[1]["input_tokens"], records[1]["output_tokens"] = 2**40, 2**63 - 1
    store = Store(db_url)
    store.insert(records)
    store.catch_up_rollups()
    q = QueryRecord.__table__
    with store.engine.connect() as conn:
        got = conn.execute(select(q.c.input_tokens, q.c.output_tokens).order_by(q.c.id)).all()
    store.close()
    assert got[1] == (2**40, 2**63 - 1)
    _assert_same(_rollup_table(db_url), _expected(records))


# -- poison records -----------------------------------------------------------------------

POISONS = {  # name: (change to one record, refused by SQLite, refused by PostgreSQL)
    "tokens_over_64_bits": ({"input_tokens": 2**63}, True, True),
    "lone_surrogate": ({"model": "llama-\ud800"}, True, True),
    "nul_byte": ({"model": "llama\x00-3"}, False, True),
    "no_sql_type": ({"output_tokens": object()}, True, True),
    "null_duration": ({"duration_s": None}, True, True),
}


@pytest.mark.parametrize("poison", POISONS)
def test_one_poison_record_never_stops_the_others(db_url, poison):
    """A batch of 5,000 with one refused record: 4,999 written at the first flush, the
    refused one counted; idle rows and loss counts of the batch written too."""
    change, on_sqlite, on_postgres = POISONS[poison]
    refused = on_sqlite if db_url.endswith(".db") else on_postgres
    records = make_records(5000, seed=3)
    records[1234].update(change)
    store = Store(db_url)
    writer = Writer(lambda: store, "h", 1)
    writer.submit(records, [_idle("GPU-a"), _idle("GPU-b")])
    writer.count_loss("span_queue_full", 2)
    assert writer.flush() == 5000 - refused
    assert (writer.buffered, writer.rejected, writer.dropped) == (0, int(refused), 0)
    store.close()
    assert count_rows(db_url) == 5000 - refused
    assert count_rows(db_url, "idle_energy") == 2
    losses = _losses(db_url)
    assert losses.pop("span_queue_full") == 2
    if refused:
        [(kind, count)] = losses.items()
        assert kind.startswith("rejected:") and len(kind) < 40 and count == 1, losses
    else:
        assert losses == {}
    stored = [r for i, r in enumerate(records) if not (refused and i == 1234)]
    store = Store(db_url)
    store.catch_up_rollups()
    store.close()
    _assert_same(_rollup_table(db_url), _expected(stored))


def test_several_poison_records_and_a_poison_idle_row(db_url):
    records = make_records(2000, seed=4)
    for i in (0, 999, 1000, 1999):
        records[i]["input_tokens"] = 2**64 + i
    store = Store(db_url)
    writer = Writer(lambda: store, "h", 1)
    writer.submit(records, [_idle("GPU-a"), _idle("GPU-bad", idle_j=None), _idle("GPU-c")])
    assert writer.flush() == 1996
    store.close()
    assert count_rows(db_url) == 1996 and count_rows(db_url, "idle_energy") == 2
    losses = _losses(db_url)
    assert sum(n for k, n in losses.items() if k.startswith("rejected:")) == 4, losses
    assert sum(n for k, n in losses.items() if k.startswith("rejected_idle:")) == 1, losses
    assert writer.rejected == 4 and writer.buffered == 0


class _UnavailableMidway:
    """A store that becomes unavailable (locked) after ``good_calls`` inserts."""

    def __init__(self, real: Store, good_calls: int):
        self.real, self.calls, self.good_calls = real, 0, good_calls

    def insert(self, records, idle_rows=(), losses=()):
        self.calls += 1
        if self.calls > self.good_calls:
            raise OperationalError("INSERT", {}, sqlite3.OperationalError("database is locked"))
        self.real.insert(records, idle_rows, losses)

    def close(self):
        self.real.close()


@pytest.mark.parametrize("good_calls", [1, 3, 6, 12])
def test_database_unavailable_while_isolating_writes_each_record_once(tmp_path, good_calls):
    db = str(tmp_path / "midway.db")
    flaky = _UnavailableMidway(Store(db), good_calls)
    writer = Writer(lambda: flaky, "h", 1)
    records = make_records(1000, seed=5)
    records[700]["input_tokens"] = 2**63
    writer.submit(records, [_idle("GPU-a")])
    with pytest.raises(WriteFailed, match="locked"):
        writer.flush()
    assert writer.buffered == 1000 if good_calls == 1 else writer.buffered < 1000  # done: out
    flaky.good_calls = 10**9
    writer.flush()
    assert count_rows(db) == 999 and writer.written == 999 and writer.buffered == 0
    con = sqlite3.connect(db)
    distinct = con.execute("SELECT COUNT(DISTINCT started_at) FROM queries").fetchone()[0]
    con.close()
    assert distinct == 999  # none written twice
    assert _losses(db) == {"rejected:OverflowError": 1}


def test_unavailable_is_not_a_data_error(tmp_path):
    """Locked, read-only, full, corrupt: kept and retried, never isolated and dropped."""
    for message in (
        "database is locked",
        "attempt to write a readonly database",
        "database or disk is full",
        "disk I/O error",
    ):
        assert not is_data_error(sqlite3.OperationalError(message))
        assert not is_data_error(OperationalError("INSERT", {}, sqlite3.OperationalError(message)))
    assert not is_data_error(MalformedDatabase(str(tmp_path / "x.db"), "malformed"))
    assert is_data_error(OverflowError("Python int too large to convert to SQLite INTEGER"))
    assert is_data_error(UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"))


# -- the file at the path -------------------------------------------------------------------


def _remove_sqlite(path: str) -> None:
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)


@pytest.mark.parametrize("remove", ["file", "file_wal_shm"])
def test_database_file_deleted_while_open_is_recreated(tmp_path, caplog, remove):
    db = str(tmp_path / "gone.db")
    writer = Writer(lambda: Store(db), "h", 1)
    writer.submit(make_records(100), [])
    assert writer.flush() == 100
    if remove == "file":  # rm gone.db: the old log stays beside it
        os.remove(db)
    else:
        _remove_sqlite(db)
    writer.submit(make_records(50, seed=1), [_idle("GPU-a")])
    with caplog.at_level(logging.WARNING, logger="footprint"):
        assert writer.flush() == 50
    writer.close()
    assert database_info(db)["integrity"] == "ok"
    assert count_rows(db) == 50 and count_rows(db, "idle_energy") == 1
    assert _losses(db) == {"database_replaced": 1}
    [warning] = [r.getMessage() for r in caplog.records if "was removed" in r.getMessage()]
    assert "100 records" in warning and db in warning


def test_database_file_replaced_while_open_is_followed(tmp_path):
    db, other = str(tmp_path / "live.db"), str(tmp_path / "restored.db")
    Store(other).close()
    writer = Writer(lambda: Store(db), "h", 1)
    writer.submit(make_records(10), [])
    writer.flush()
    os.replace(other, db)
    writer.submit(make_records(7, seed=1), [])
    assert writer.flush() == 7
    writer.close()
    assert count_rows(db) == 7 and _losses(db) == {"database_replaced": 1}


# -- integrity ------------------------------------------------------------------------------


def _corrupt(path: str, first_page: int, pages: int) -> None:
    con = sqlite3.connect(path)
    page_size = con.execute("PRAGMA page_size").fetchone()[0]
    assert con.execute("PRAGMA page_count").fetchone()[0] > first_page + pages
    con.close()
    with open(path, "r+b") as f:
        f.seek(page_size * first_page)
        f.write(random.Random(1).randbytes(page_size * pages))


@pytest.mark.parametrize("first_page", [2, 100])
def test_malformed_database_is_reported_and_never_written(tmp_path, first_page):
    db = str(tmp_path / "bad.db")
    store = Store(db)
    store.insert(make_records(3000))
    store.close()  # checkpointed: every page in the file
    _corrupt(db, first_page, 4)

    info = database_info(db)
    assert info["integrity"].startswith("malformed: "), info
    assert info["size_bytes"] > 0
    with pytest.raises(MalformedDatabase, match="malformed"):
        Store(db)

    opened = []

    def open_store():
        opened.append(1)
        return Store(db)

    writer = Writer(open_store, "h", 1, max_buffered=100)
    writer.submit(make_records(60), [])
    with pytest.raises(WriteFailed, match="malformed"):
        writer.flush()
    writer.submit(make_records(60, seed=1), [])
    with pytest.raises(WriteFailed, match="malformed"):
        writer.flush()
    assert len(opened) == 1  # the same file is not checked (nor written) again
    assert (writer.buffered, writer.dropped) == (100, 20)  # bounded, overflow counted
    os.replace(db, db + ".broken")  # moved away: a new database at the path
    assert writer.flush() == 100
    writer.close()
    assert count_rows(db) == 100 and _losses(db) == {"write_failed": 20}
    assert database_info(db)["integrity"] == "ok"


def test_malformed_while_open_stops_the_writes(tmp_path, monkeypatch):
    """Damage found by a write (not at open) also stops the writer."""
    db = str(tmp_path / "late.db")
    store = Store(db)
    store.insert(make_records(3000))
    store.close()
    _corrupt(db, 2, 300)
    monkeypatch.setattr("footprint.storage.store.sqlite_integrity", lambda *a: "ok")
    with (
        pytest.raises(MalformedDatabase, match="malformed"),
        contextlib.closing(Store(db)) as store,
    ):
        store.insert(make_records(5))


# -- losses at exit -------------------------------------------------------------------------


def test_records_unsaved_at_exit_reach_the_losses_table(tmp_path, caplog):
    db = tmp_path / "exit.db"
    Store(str(db)).close()
    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # every write waits 0.2 s, then fails
    writer = Writer(lambda: Store(str(db), busy_timeout_s=0.2), "h", 7, db=str(db))
    writer.submit(make_records(30), [_idle("GPU-a")])
    writer.count_loss("span_queue_full", 2)
    with pytest.raises(WriteFailed, match="locked"):
        writer.flush()
    with caplog.at_level(logging.WARNING, logger="footprint"):
        assert writer.abandon() == 30
    writer.close()
    side = Path(str(db) + ".losses")
    assert writer.losses_saved_to == str(side)
    lines = [json.loads(line) for line in side.read_text().splitlines()]
    assert {li["kind"]: li["count"] for li in lines} == {
        "unsaved_at_exit": 30,
        "unsaved_idle_rows": 1,
        "span_queue_full": 2,
    }
    assert {(li["host"], li["pid"]) for li in lines} == {("h", 7)}
    assert any(str(side) in r.getMessage() for r in caplog.records)
    blocker.execute("COMMIT")
    blocker.close()

    Store(str(db)).close()  # the next store that can write moves them
    assert not side.exists()
    assert _losses(str(db)) == {"unsaved_at_exit": 30, "unsaved_idle_rows": 1, "span_queue_full": 2}
    engine = open_engine(str(db), create=False)
    with engine.connect() as conn:
        assert set(conn.execute(select(Loss.__table__.c.host, Loss.__table__.c.pid))) == {("h", 7)}
    engine.dispose()


def test_side_file_of_another_process_is_moved_by_a_running_writer(tmp_path):
    db = str(tmp_path / "run.db")
    writer = Writer(lambda: Store(db), "h", 1, db=db)
    writer.submit(make_records(5), [])
    writer.flush()
    assert sidefile.append(sidefile.side_path(db), {"unsaved_at_exit": 12}, "other", 99)
    with open(sidefile.side_path(db), "a") as f:
        f.write('{"torn line\n')
    writer.submit(make_records(5, seed=1), [])
    writer.flush()
    writer.close()
    assert not sidefile.side_path(db).exists()
    assert _losses(db) == {"unsaved_at_exit": 12}


def test_side_file_not_writable_or_postgres_logs_the_count(db_url, tmp_path, caplog):
    is_sqlite = db_url.endswith(".db")
    store = Store(db_url)
    if is_sqlite:
        os.mkdir(db_url + ".losses")  # no file can be written there, even by root

    class Down:
        url = store.url

        def insert(self, *rows):
            raise OperationalError("INSERT", {}, Exception("server closed the connection"))

        def close(self):
            pass

    writer = Writer(Down, "h", 1, db=db_url)
    writer.submit(make_records(24), [])
    with pytest.raises(WriteFailed):
        writer.flush()
    with caplog.at_level(logging.WARNING, logger="footprint"):
        assert writer.abandon() == 24
    store.close()
    if is_sqlite:  # the count goes to the fallback file in the runtime directory
        assert writer.losses_saved_to is not None
        assert writer.losses_saved_to != db_url + ".losses"
        assert any(
            "24 unsaved_at_exit" in r.getMessage() and writer.losses_saved_to in r.getMessage()
            for r in caplog.records
        )
        os.rmdir(db_url + ".losses")
        assert database_info(db_url)["lost_total"] == 24  # db info finds it there
    else:
        assert writer.losses_saved_to is None
        assert any(
            "24 unsaved_at_exit" in r.getMessage() and "nor count it" in r.getMessage()
            for r in caplog.records
        )
    assert not [p for p in tmp_path.glob("*.losses") if p.is_file()]


# -- PostgreSQL: many writers, many models ----------------------------------------------------

DEADLOCK_WORKER = textwrap.dedent(
    """
    import random, sys
    from footprint.bench.ingest import make_records
    from footprint.storage.store import Store

    url, seed, batches, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    records = make_records(batches * size, seed=seed)
    rng = random.Random(seed)
    for r in records:
        r["model"] = f"model-{rng.randrange(200)}"
        r["pid"] = seed
    store = Store(url)
    for b in range(batches):
        store.insert(records[b * size:(b + 1) * size])
    print(store.retried_transactions)
    """
)


def _worker_records(seed: int, batches: int, size: int) -> list[dict]:
    records = make_records(batches * size, seed=seed)
    rng = random.Random(seed)
    for r in records:
        r["model"] = f"model-{rng.randrange(200)}"
        r["pid"] = seed
    return records


@pytest.mark.slow
def test_postgres_writers_upserting_the_same_rollups_never_deadlock(tmp_path):
    """8 processes, 200 models, batches of 60 in random model order: every record stored
    and the rollups exactly the sums of the records (before: deadlocks, batches lost)."""
    procs_n, batches, size = 8, 60, 60
    with postgres_schema("deadlock") as url:
        Store(url).close()
        script = tmp_path / "worker.py"
        script.write_text(DEADLOCK_WORKER)
        procs = [
            subprocess.Popen(
                [sys.executable, str(script), url, str(seed), str(batches), str(size)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=REPO,
            )
            for seed in range(procs_n)
        ]
        outcomes = [proc.communicate(timeout=300) for proc in procs]
        for proc, (_, err) in zip(procs, outcomes):
            assert proc.returncode == 0, err[-2000:]
        print("transactions retried:", [int(out) for out, _ in outcomes])
        every = [r for seed in range(procs_n) for r in _worker_records(seed, batches, size)]
        assert count_rows(url) == len(every) == procs_n * batches * size
        _assert_same(_rollup_table(url), _expected(every))


def test_idle_and_rollup_rows_are_upserted_in_key_order():
    records = make_records(40, seed=2)
    rng = random.Random(2)
    for r in records:
        r["model"] = f"model-{rng.randrange(30)}"
        r["started_at"] += dt.timedelta(hours=rng.randrange(3))
    from footprint.storage import rollups

    rows = rollups.aggregate(records)
    keys = [(r["hour"], r["group_key"]) for r in rows]
    assert keys == sorted(keys) and len(keys) > 20


def test_migrated_postgres_token_columns_are_64_bit():
    """A version-2 PostgreSQL database (integer token columns) is migrated to BIGINT."""
    with postgres_schema("tokens") as url:
        Store(url).close()
        engine = open_engine(url)
        with engine.begin() as conn:
            conn.execute(text("ALTER TABLE queries ALTER COLUMN input_tokens TYPE INTEGER"))
            conn.execute(text("ALTER TABLE queries ALTER COLUMN output_tokens TYPE INTEGER"))
            conn.execute(text("UPDATE footprint_meta SET value = '2' WHERE key = 'schema_version'"))
        engine.dispose()
        store = Store(url)
        records = make_records(2)
        records[0]["input_tokens"] = 2**40
        store.insert(records)
        with store.engine.connect() as conn:
            types = dict(
                conn.execute(
                    text(
                        "SELECT column_name, data_type FROM information_schema.columns"
                        " WHERE table_schema = current_schema() AND table_name = 'queries'"
                        " AND column_name LIKE '%_tokens'"
                    )
                ).all()
            )
        store.close()
        assert types == {"input_tokens": "bigint", "output_tokens": "bigint"}


def test_postgres_deadlock_is_retried_then_reported(monkeypatch):
    """40P01/40001 run the transaction again (bounded); then the error is a failed write."""
    with postgres_schema("retry") as url:
        store = Store(url)
        real, calls = store._insert_postgres, []

        class Deadlock(Exception):
            sqlstate = "40P01"

        def aborted_twice(*args):
            calls.append(1)
            if len(calls) <= 2:
                raise OperationalError("INSERT", {}, Deadlock("deadlock detected"))
            real(*args)

        monkeypatch.setattr(store, "_insert_postgres", aborted_twice)
        store.insert(make_records(5))
        assert store.retried_transactions == 2 and count_rows(url) == 5
        calls.clear()
        monkeypatch.setattr("footprint.storage.store.RETRY_ATTEMPTS", 2)
        with pytest.raises(OperationalError, match="deadlock"):
            store.insert(make_records(5))
        assert len(calls) == 2 and not is_data_error(OperationalError("", {}, Deadlock()))
        store.close()
