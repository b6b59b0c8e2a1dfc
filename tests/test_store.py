"""The store: batched durable writes, many processes, crashes, schema, SQLite and PostgreSQL.

Tests taking the ``db_url`` fixture run on SQLite always and on PostgreSQL when
``FOOTPRINT_TEST_POSTGRES_URL`` is set (``.ci/run`` sets it).
"""

from __future__ import annotations

import datetime as dt
import json
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select, text

from footprint.bench.ingest import make_records, time_footprint, time_raw
from footprint.cli import main
from footprint.storage import rollups
from footprint.storage.engine import open_engine
from footprint.storage.errors import StoreError
from footprint.storage.info import database_info
from footprint.storage.migrations import MIGRATIONS
from footprint.storage.models import SCHEMA_VERSION, IdleEnergy, Loss, QueryRecord
from footprint.storage.store import Store
from footprint.storage.writer import WriteFailed, Writer

REPO = Path(__file__).resolve().parent.parent


def count_rows(url: str, table: str = "queries") -> int:
    engine = open_engine(url, create=False)
    try:
        with engine.connect() as conn:
            return conn.execute(text(f"SELECT COUNT(*) FROM {table}")).scalar_one()
    finally:
        engine.dispose()


def test_round_trip_keeps_every_column(db_url):
    records = make_records(50, seed=4)
    for i, r in enumerate(records):  # a bound, or none (NULL) like a missing energy
        r["energy_uncertainty_j"] = None if i % 7 == 0 else r["energy_j"] * 0.003 + 0.02
        # Who owns the GPU and where its $/GPU-hour came from (schema version 3).
        r["ownership"] = None if i % 5 == 0 else ("owned" if i % 2 else "rented")
        r["gpu_price_source"] = None if r["ownership"] is None else f"source {i % 3}"
        # The daemon's key of the call (schema version 4); NULL in-process.
        r["span_key"] = None if i % 4 == 0 else f"{i:032x}:{i * 7}"
        # The caller's trace context (schema version 5); NULL without one.
        r["trace_id"] = None if i % 3 == 0 else f"{i + 1:032x}"
        r["span_id"] = None if i % 3 == 0 else f"{i * 11 + 1:016x}"
        # The energy split at the first token (schema version 7); NULL without one.
        split = i % 6 != 0 and r["energy_j"] is not None
        r["prefill_energy_j"] = r["energy_j"] * 0.3 if split else None
        r["decode_energy_j"] = r["energy_j"] - r["prefill_energy_j"] if split else None
    assert {c.name for c in QueryRecord.__table__.columns} == {"id", *records[0]}
    now = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.timezone.utc)
    idle = [
        {
            "device_uuid": "GPU-x",
            "minute": now,
            "idle_energy_j": 1.5,
            "measured_energy_j": 9.0,
            "host": "h",
            "pid": 1,
        }
    ]
    losses = [{"recorded_at": now, "kind": "span_queue_full", "count": 3, "host": "h", "pid": 1}]
    store = Store(db_url)
    store.insert(records, idle, losses)
    with store.engine.connect() as conn:
        got = conn.execute(select(QueryRecord.__table__).order_by(QueryRecord.__table__.c.id)).all()
        idle_back = conn.execute(select(IdleEnergy.__table__)).one()
        loss_back = conn.execute(select(Loss.__table__)).one()
    store.close()
    assert len(got) == 50
    for record, row in zip(records, got):
        row = row._asdict()
        for key, value in record.items():
            if isinstance(value, dt.datetime):
                back = row[key] if row[key].tzinfo else row[key].replace(tzinfo=dt.timezone.utc)
                assert back == value, key
            elif isinstance(value, float):
                assert row[key] == pytest.approx(value, rel=1e-12), key
            else:
                assert row[key] == value, key
    assert idle_back.idle_energy_j == 1.5 and loss_back.count == 3
    info = database_info(db_url)
    assert info["queries_rows"] == 50 and info["schema_version"] == SCHEMA_VERSION
    assert info["losses"] == {"span_queue_full": 3}


def test_records_without_the_bound_key_are_stored_with_null(db_url):
    """A producer older than energy_uncertainty_j: alone in a batch, or mixed with newer."""
    old = make_records(6, seed=5)
    for r in old:
        r.pop("energy_uncertainty_j", None)
    new = [dict(r, energy_uncertainty_j=1.25) for r in make_records(3, seed=6)]
    store = Store(db_url)
    store.insert(old[:3])
    store.insert([new[0], old[3], new[1], old[4], old[5], new[2]])
    store.catch_up_rollups()
    q = QueryRecord.__table__
    with store.engine.connect() as conn:
        got = conn.execute(select(q.c.energy_uncertainty_j).order_by(q.c.id)).scalars().all()
        sums = conn.execute(
            text("SELECT SUM(energy_uncertainty_j), SUM(uncertainty_queries) FROM query_rollups")
        ).one()
    store.close()
    assert got == [None, None, None, 1.25, None, 1.25, None, None, 1.25]
    assert (float(sums[0]), int(sums[1])) == (3.75, 3)


def test_batch_is_all_or_nothing(tmp_path):
    store = Store(str(tmp_path / "a.db"))
    good = make_records(10)
    bad = dict(good[0], duration_s=None)  # NOT NULL column
    with pytest.raises(sqlite3.IntegrityError, match="NOT NULL"):
        store.insert(good + [bad])
    assert count_rows(str(tmp_path / "a.db")) == 0


class FlakyStore:
    """A store whose inserts fail with a given error until told otherwise."""

    def __init__(self, real: Store, error: Exception):
        self.real, self.error, self.failing = real, error, True

    def insert(self, records, idle_rows=(), losses=()):
        if self.failing:
            raise self.error
        self.real.insert(records, idle_rows, losses)

    def close(self):
        self.real.close()


def test_disk_full_keeps_rows_and_retries(tmp_path):
    db = str(tmp_path / "full.db")
    flaky = FlakyStore(Store(db), sqlite3.OperationalError("database or disk is full"))
    writer = Writer(lambda: flaky, "h", 1, max_buffered=100)
    writer.submit(make_records(30), [])
    with pytest.raises(WriteFailed, match="disk is full"):
        writer.flush()
    assert writer.buffered == 30 and writer.dropped == 0
    writer.submit(make_records(90, seed=1), [])  # 120 > 100: the 20 oldest are dropped
    assert writer.buffered == 100 and writer.dropped == 20
    flaky.failing = False
    assert writer.flush() == 100
    assert count_rows(db) == 100
    assert database_info(db)["losses"] == {"write_failed": 20}


def test_locked_database_times_out_then_recovers(tmp_path):
    db = tmp_path / "locked.db"
    store = Store(str(db), busy_timeout_s=0.2)
    writer = Writer(lambda: store, "h", 1)
    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    writer.submit(make_records(5), [])
    with pytest.raises(WriteFailed, match="locked"):
        writer.flush()
    blocker.execute("COMMIT")
    blocker.close()
    assert writer.flush() == 5


def test_read_only_database_keeps_rows_and_says_why(tmp_path):
    db = tmp_path / "ro.db"
    Store(str(db)).close()
    read_only = Store(f"sqlite:///file:{db}?mode=ro&uri=true")  # opening to read works
    writer = Writer(lambda: read_only, "h", 1)
    writer.submit(make_records(3), [])
    with pytest.raises(WriteFailed, match="readonly"):
        writer.flush()
    assert writer.buffered == 3 and writer.dropped == 0


@pytest.mark.parametrize(
    "url, message",
    [
        ("mysql://u@h/db", "unsupported database scheme"),
        ("sqlite:////no/such/folder/x.db", "does not exist"),
    ],
)
def test_bad_urls_say_why(url, message):
    with pytest.raises(StoreError, match=message):
        Store(url)


def test_newer_schema_is_refused(db_url):
    Store(db_url).close()
    engine = open_engine(db_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE footprint_meta SET value = '99' WHERE key = 'schema_version'"))
    engine.dispose()
    with pytest.raises(StoreError, match="schema version 99 is newer"):
        Store(db_url)


def test_older_schema_is_migrated_in_place(db_url, monkeypatch):
    store = Store(db_url)
    store.insert(make_records(3))
    store.close()

    def add_column(conn):
        conn.execute(text("ALTER TABLE queries ADD COLUMN migrated_flag INTEGER DEFAULT 7"))

    monkeypatch.setattr("footprint.storage.migrations.SCHEMA_VERSION", SCHEMA_VERSION + 1)
    monkeypatch.setitem(MIGRATIONS, SCHEMA_VERSION, add_column)
    engine = open_engine(db_url)
    with engine.connect() as conn:
        version = conn.execute(text("SELECT value FROM footprint_meta")).scalar_one()
        flags = conn.execute(text("SELECT migrated_flag FROM queries")).scalars().all()
    engine.dispose()
    assert version == str(SCHEMA_VERSION + 1) and flags == [7, 7, 7]


WORKER = textwrap.dedent(
    """
    import atexit, os, sys, time
    import footprint
    # Runs after footprint's own exit flush (atexit is last in, first out): what it did.
    atexit.register(lambda: sys.stderr.write(f"stats {footprint.stats()}\\n"))
    footprint.configure(db=sys.argv[1], sensor="none", cpu=False, region="FRA",
                        flush_interval_s=float(sys.argv[3]))

    @footprint.track(model="worker", proc=os.getpid())
    def infer(i):
        return i

    n = int(sys.argv[2])
    pause = float(sys.argv[4])
    for i in range(n):
        infer(i)
        if pause:
            time.sleep(pause)
        if i % 100 == 99:
            print(i + 1, flush=True)
    print("done", flush=True)
    """
)


def _spawn(tmp_path, url, n, flush_s=0.5, pause_s=0.0):
    script = tmp_path / "worker.py"
    if not script.exists():  # rewriting it would truncate it under a starting worker
        script.write_text(WORKER)
    return subprocess.Popen(
        [sys.executable, str(script), url, str(n), str(flush_s), str(pause_s)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )


@pytest.mark.slow
def test_four_processes_lose_nothing(db_url, tmp_path):
    Store(db_url).close()  # create the schema once, as a deployment would
    procs = [_spawn(tmp_path, db_url, 5000) for _ in range(4)]
    errors = []
    for proc in procs:
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0 and out.endswith("done\n"), (out[-200:], err)
        errors.append(err.strip())
    engine = open_engine(db_url, create=False)
    with engine.connect() as conn:
        total, distinct, pids = conn.execute(
            text("SELECT COUNT(*), COUNT(DISTINCT id), COUNT(DISTINCT pid) FROM queries")
        ).one()
    engine.dispose()
    assert (total, distinct, pids) == (20_000, 20_000, 4), errors
    store = Store(db_url)
    store.catch_up_rollups()
    store.close()
    assert count_rows(db_url, "query_rollups") >= 1
    engine = open_engine(db_url, create=False)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT SUM(queries) FROM query_rollups")).scalar_one() == 20_000
    engine.dispose()


@pytest.mark.slow
def test_sigkill_mid_load_leaves_a_sound_database(tmp_path):
    db = tmp_path / "crash.db"
    flush_s, pause_s = 0.2, 0.001
    with _spawn(tmp_path, str(db), 100_000, flush_s=flush_s, pause_s=pause_s) as proc:
        started = time.monotonic()
        reported = 0
        while reported < 2000:
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            reported = int(line)
        elapsed = time.monotonic() - started
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    rate_per_s = reported / elapsed
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    stored = con.execute("SELECT COUNT(*) FROM queries").fetchone()[0]
    con.close()
    # Calls made after the last line read may or may not be stored; what is missing is
    # what the process had not flushed: one flush interval plus one write, at its rate.
    lost = max(0, reported - stored)
    print(f"SIGKILL after {reported} calls: {stored} stored, {lost} lost")
    assert stored > 0
    assert lost <= rate_per_s * (2 * flush_s + 0.5), (reported, stored, rate_per_s)


@pytest.mark.slow
def test_sigterm_flushes_everything(tmp_path):
    db = tmp_path / "term.db"
    with _spawn(tmp_path, str(db), 100_000, flush_s=60.0, pause_s=0.0005) as proc:
        reported = 0
        while reported < 1000:
            reported = int(proc.stdout.readline())
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGTERM  # the default action still happens
    stored = count_rows(str(db))
    assert stored >= reported  # nothing flushed by the timer (60 s): all by the handler


def test_footprint_writer_and_raw_insert_the_same_rows(tmp_path):
    """The ingest benchmark compares like with like: the same complete rows."""
    records = make_records(200, seed=9)
    time_raw(records, tmp_path, 0)
    time_footprint(records, tmp_path, 0)
    dumps = []
    for name in ("raw-0.db", "footprint-0.db"):
        con = sqlite3.connect(tmp_path / name)
        cols = [r[1] for r in con.execute("PRAGMA table_info(queries)") if r[1] != "id"]
        dumps.append(con.execute(f"SELECT {', '.join(cols)} FROM queries ORDER BY id").fetchall())
        con.close()
    assert len(dumps[0]) == 200 and dumps[0] == dumps[1]


def test_db_info_and_export_commands(tmp_path, capsys):
    db = str(tmp_path / "e.db")
    store = Store(db)
    store.insert(make_records(7))
    store.close()
    main(["db", "info", "--db", db, "--json"])
    info = json.loads(capsys.readouterr().out)
    assert info["queries_rows"] == 7 and info["size_bytes"] > 0 and info["lost_total"] == 0
    assert info["rollup_pending_rows"] == 7 and info["query_rollups_rows"] == 0
    main(["db", "rebuild-rollups", "--db", db])
    assert "rollup rows rebuilt" in capsys.readouterr().out
    assert database_info(db)["rollup_pending_rows"] == 0
    assert database_info(db)["query_rollups_rows"] >= 1
    main(["db", "export", "--db", db, "--format", "jsonl"])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 7 and json.loads(lines[0])["model"] == "llama-3-8b"
    out = tmp_path / "e.csv"
    main(["db", "export", "--db", db, "--format", "csv", "--out", str(out)])
    import csv

    with out.open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 7 and rows[0]["started_at"].startswith("2026-01-01T00:00:00")
    assert set(rows[0]) == {c.name for c in QueryRecord.__table__.columns}


def test_export_is_streamed_in_chunks(tmp_path, monkeypatch):
    from footprint.storage import export

    monkeypatch.setattr(export, "CHUNK_ROWS", 10)
    db = str(tmp_path / "s.db")
    store = Store(db)
    store.insert(make_records(35))
    store.close()
    sizes = [len(rows) for _, rows in export.iter_chunks(db)]
    assert sizes == [10, 10, 10, 5]


@pytest.mark.parametrize(
    "args",
    [
        ["db", "info", "--db", "/no/such/dir/x.db"],
        ["db", "export", "--format", "xml", "--db", "x.db"],
        ["db", "export", "--format", "parquet", "--db", "x.db"],
    ],
)
def test_db_commands_bad_input_exit_2(args, capsys):
    with pytest.raises(SystemExit) as exited:
        main(args)
    assert exited.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1


# -- hourly rollups -----------------------------------------------------------------------


def _random_records(seed: int, n: int) -> list[dict]:
    import random

    rng = random.Random(seed)
    records = make_records(n, seed=seed)
    start = dt.datetime(2026, 5, 1, tzinfo=dt.timezone.utc)
    for r in records:  # spread over hours and vary what a report groups on
        r["started_at"] = start + dt.timedelta(seconds=rng.uniform(0, 6 * 3600))
        r["ended_at"] = r["started_at"] + dt.timedelta(seconds=r["duration_s"])
        r["zone"] = rng.choice(["FRA", "aws:us-east-1", None])
        r["pue"] = rng.choice([1.1, 1.58, None])
        r["energy_j"] = rng.choice([r["energy_j"], None])
        # A bound with the energy, except from producers older than the column (no key).
        r["energy_uncertainty_j"] = rng.choice([None, rng.uniform(0, 2), 0.0])
        if r["energy_j"] is None:
            r["energy_uncertainty_j"] = None
        elif rng.random() < 0.2:
            del r["energy_uncertainty_j"]
        r["energy_cost_usd"] = rng.choice([r["energy_cost_usd"], None])
        r["market_co2e_g"] = rng.choice([None, 0.5])
        r["status"] = rng.choice(["ok", "ok", "error"])
        _with_phases(r, rng)
    return records


def _with_phases(r: dict, rng) -> None:
    """Schema 7: the energy split at the first token, on some records with energy (and
    absent, from producers older than the columns, or NULL on others); a token count
    missing here and there, which keeps a split record out of the phase sums."""
    if r["energy_j"] is None or rng.random() < 0.3:
        if rng.random() < 0.5:
            r["prefill_energy_j"] = r["decode_energy_j"] = None
        return
    r["prefill_energy_j"] = r["energy_j"] * rng.uniform(0.0, 0.6)
    r["decode_energy_j"] = r["energy_j"] - r["prefill_energy_j"]
    if rng.random() < 0.15:
        r[rng.choice(["input_tokens", "output_tokens"])] = None


def _rollup_table(url: str) -> dict:
    engine = open_engine(url, create=False)
    with engine.connect() as conn:
        rows = conn.execute(select(rollups.QueryRollup.__table__)).mappings().all()
    engine.dispose()
    out = {}
    for r in rows:
        hour = (
            r["hour"]
            if isinstance(r["hour"], dt.datetime)
            else dt.datetime.fromisoformat(r["hour"])
        )
        hour = (
            hour.replace(tzinfo=None)
            if hour.tzinfo is None
            else hour.astimezone(dt.timezone.utc).replace(tzinfo=None)
        )
        out[(hour, r["group_key"])] = {
            k: r[k] for k in (*rollups.SUM_COLUMNS, "intensity_min", "intensity_max")
        }
    return out


def _expected(records: list[dict]) -> dict:
    out = {}
    for r in rollups.aggregate(records):
        key = (r["hour"].replace(tzinfo=None), r["group_key"])
        out[key] = {k: r[k] for k in (*rollups.SUM_COLUMNS, "intensity_min", "intensity_max")}
    return out


def _assert_same(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    for key, values in expected.items():
        for name, value in values.items():
            assert got[key][name] == pytest.approx(value, rel=1e-9, abs=1e-9), (key, name)


@given(seed=st.integers(0, 10_000), cuts=st.lists(st.integers(1, 119), max_size=4))
@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_rollups_equal_the_sums_of_every_record(db_url, seed, cuts):
    """No record lost or counted twice: batches, catch-ups at random points, a rebuild."""
    engine = open_engine(db_url)
    with engine.begin() as conn:
        for table in ("queries", "query_rollups", "footprint_meta"):
            conn.execute(text(f"DELETE FROM {table}"))
    engine.dispose()
    records = _random_records(seed, 120)
    store = Store(db_url)
    bounds = [0, *sorted(set(cuts)), len(records)]
    for a, b in zip(bounds, bounds[1:]):
        store.insert(records[a:b])
        if b % 2:
            store.catch_up_rollups()
    store.catch_up_rollups()
    expected = _expected(records)
    _assert_same(_rollup_table(db_url), expected)
    rollups.rebuild(store.engine)
    _assert_same(_rollup_table(db_url), expected)
    assert rollups.pending_rows(store.engine) == 0
    store.close()


def test_idle_rows_of_one_minute_add_up(db_url):
    minute = dt.datetime(2026, 5, 1, 10, 3, tzinfo=dt.timezone.utc)
    row = {
        "device_uuid": "GPU-a",
        "minute": minute,
        "idle_energy_j": 2.0,
        "measured_energy_j": 5.0,
        "host": "h",
        "pid": 7,
    }
    store = Store(db_url)
    store.insert([], [row, dict(row)])
    store.insert([], [dict(row, idle_energy_j=1.0, measured_energy_j=1.5)])
    with store.engine.connect() as conn:
        got = conn.execute(select(IdleEnergy.__table__)).mappings().all()
    store.close()
    assert len(got) == 1
    assert (got[0]["idle_energy_j"], got[0]["measured_energy_j"]) == (5.0, 11.5)
