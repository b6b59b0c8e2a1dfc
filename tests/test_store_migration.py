"""Schema version 1 -> 7: a database written by footprint before the per-record energy
uncertainty bound (2), the lost-energy, ownership and GPU-price-source columns (3), the
daemon's span key with its index (4), the trace context (5), the devices table (6) and
the energy split at the first token (7) is migrated in place, rows and rollups intact, on
SQLite and PostgreSQL.

The version-1 schema is created from the SQL in ``tests/schema_v1/`` (what SQLAlchemy
emitted for the version-1 models), filled with version-1 rows and rollups, then opened by
the current store.
"""

from __future__ import annotations

import datetime as dt
import random
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import MetaData, create_engine, insert, inspect, text
from test_store import _assert_same, _expected, _random_records, _rollup_table

from footprint.bench.ingest import make_records
from footprint.reporting import ReportRequest, build_report
from footprint.storage import rollups
from footprint.storage.engine import open_engine
from footprint.storage.info import database_info
from footprint.storage.models import SCHEMA_VERSION, IdleEnergy, QueryRecord, QueryRollup
from footprint.storage.store import Store

V1_SQL = Path(__file__).resolve().parent / "schema_v1"
PRICE_KEYS = {"ownership", "gpu_price_source"}  # version 3: nullable, on records and rollups
SPAN_KEY = "span_key"  # version 4: nullable, on records, indexed
TRACE_KEYS = {"trace_id", "span_id"}  # version 5: nullable, on records, trace_id indexed
PHASE_KEYS = {"prefill_energy_j", "decode_energy_j"}  # version 7: nullable, on records
# version 7, on rollups: sums over the records carrying both phases and both token counts
PHASE_ROLLUP_KEYS = {"phase_queries", *PHASE_KEYS, "phase_input_tokens", "phase_output_tokens"}
NEW_QUERY_COLUMNS = {"energy_uncertainty_j", *PRICE_KEYS, SPAN_KEY, *TRACE_KEYS, *PHASE_KEYS}
NEW_ROLLUP_COLUMNS = {
    "energy_uncertainty_j",
    "uncertainty_queries",
    *PRICE_KEYS,
    *PHASE_ROLLUP_KEYS,
}
NEW_IDLE_COLUMNS = {"lost_energy_j", "measured_s"}


def _statements(dialect: str) -> list[str]:
    lines = [li for li in (V1_SQL / f"{dialect}.sql").read_text().splitlines()]
    body = "\n".join(li for li in lines if not li.startswith("--"))
    return [s.strip() for s in body.split(";") if s.strip()]


def _raw_engine(url: str):
    """An engine that neither creates nor migrates anything (not footprint's)."""
    return create_engine(url if "://" in url else f"sqlite:///{url}")


def make_v1_database(url: str, records: list[dict], rolled_up: int) -> list[dict]:
    """The version-1 schema with ``records`` (their version-1 columns) and rollups of the
    first ``rolled_up`` of them, as footprint 0.1.0 left a database; returns the rows."""
    is_sqlite = "://" not in url
    engine = _raw_engine(url)
    with engine.begin() as conn:
        for statement in _statements("sqlite" if is_sqlite else "postgresql"):
            conn.exec_driver_sql(statement)
    meta = MetaData()
    meta.reflect(engine, only=["queries", "query_rollups", "footprint_meta"])
    queries, rollup_table = meta.tables["queries"], meta.tables["query_rollups"]
    assert not NEW_QUERY_COLUMNS & set(queries.c.keys())
    assert not NEW_ROLLUP_COLUMNS & set(rollup_table.c.keys())
    v1_names = [c.name for c in queries.c if c.name != "id"]
    rows = [{name: r.get(name) for name in v1_names} for r in records]
    with engine.begin() as conn:
        conn.execute(insert(queries), rows)
        if rolled_up:
            sums = rollups.aggregate(rows[:rolled_up])
            keep = set(rollup_table.c.keys())
            conn.execute(
                insert(rollup_table), [{k: v for k, v in r.items() if k in keep} for r in sums]
            )
            conn.execute(
                insert(meta.tables["footprint_meta"]),
                [{"key": rollups.WATERMARK_KEY, "value": str(rolled_up)}],
            )
    engine.dispose()
    return rows


def _snapshot(url: str) -> tuple[list[dict], list[dict]]:
    engine = _raw_engine(url)
    with engine.connect() as conn:
        q = [dict(r) for r in conn.execute(text("SELECT * FROM queries ORDER BY id")).mappings()]
        r = [
            dict(row)
            for row in conn.execute(text("SELECT * FROM query_rollups ORDER BY id")).mappings()
        ]
    engine.dispose()
    return q, r


def _columns(url: str, table: str) -> dict[str, tuple[bool, bool]]:
    """Column name -> (nullable, has a server default)."""
    engine = _raw_engine(url)
    try:
        return {
            c["name"]: (c["nullable"], c.get("default") is not None)
            for c in inspect(engine).get_columns(table)
        }
    finally:
        engine.dispose()


def _span_key_index(url: str) -> dict | None:
    """The index ``ix_queries_span_key`` of ``queries``: its columns and uniqueness."""
    engine = _raw_engine(url)
    try:
        for index in inspect(engine).get_indexes("queries"):
            if index["name"] == "ix_queries_span_key":
                return {"column_names": index["column_names"], "unique": bool(index["unique"])}
        return None
    finally:
        engine.dispose()


def _with_bounds(records: list[dict], seed: int) -> list[dict]:
    rng = random.Random(seed)
    for r in records:
        r["energy_uncertainty_j"] = (
            None if r["energy_j"] is None else r["energy_j"] * rng.uniform(0.001, 0.02)
        )
    return records


def test_version_1_database_is_migrated_with_rows_and_rollups_intact(db_url, tmp_path):
    is_sqlite = db_url.endswith(".db")
    old = _random_records(31, 200)
    for r in old:
        r.pop("energy_uncertainty_j", None)  # version 1 had no such key
        r.pop("prefill_energy_j", None)
        r.pop("decode_energy_j", None)
    # SQLite rolled up lazily: 150 rows summed, 50 still above the watermark. PostgreSQL
    # rolled up every write in its transaction.
    rows = make_v1_database(db_url, old, rolled_up=150 if is_sqlite else 200)
    queries_before, rollups_before = _snapshot(db_url)
    assert len(queries_before) == 200

    store = Store(db_url)  # opening migrates
    info = database_info(db_url)
    assert info["schema_version"] == SCHEMA_VERSION
    assert info["rollup_pending_rows"] == (50 if is_sqlite else 0)

    # The migrated tables have the columns of a fresh database, with the same nullability.
    fresh = str(tmp_path / "fresh.db") if is_sqlite else None
    if fresh:
        Store(fresh).close()
    for table in ("queries", "query_rollups", "idle_energy"):
        migrated = _columns(db_url, table)
        assert set(migrated) == {c.name for c in QueryRecord.metadata.tables[table].columns}
        if fresh:
            expected = _columns(fresh, table)
            assert {k: v[0] for k, v in migrated.items()} == {k: v[0] for k, v in expected.items()}
    assert _columns(db_url, "queries")["energy_uncertainty_j"][0] is True  # nullable
    for name in NEW_ROLLUP_COLUMNS - PRICE_KEYS:
        assert _columns(db_url, "query_rollups")[name] == (False, True)
    for table in ("queries", "query_rollups"):  # not known for older rows: NULL
        assert all(_columns(db_url, table)[name][0] is True for name in PRICE_KEYS)
    for name in NEW_IDLE_COLUMNS:
        assert _columns(db_url, "idle_energy")[name] == (False, True)
    assert _columns(db_url, "queries")[SPAN_KEY] == (True, False)  # nullable, no default
    assert _span_key_index(db_url) == {"column_names": [SPAN_KEY], "unique": False}
    # Token counts are 64-bit: SQLite's INTEGER is; PostgreSQL's integer became bigint (3).
    engine = _raw_engine(db_url)
    types = {c["name"]: str(c["type"]) for c in inspect(engine).get_columns("queries")}
    engine.dispose()
    expected_type = "INTEGER" if is_sqlite else "BIGINT"
    assert types["input_tokens"] == types["output_tokens"] == expected_type

    # Every row and rollup as it was, the new columns NULL (records) and 0 (rollups).
    queries_after, rollups_after = _snapshot(db_url)
    assert [{k: r[k] for k in before} for r, before in zip(queries_after, queries_before)] == (
        queries_before
    )
    assert all(r["energy_uncertainty_j"] is None for r in queries_after)
    assert all(r[k] is None for r in queries_after + rollups_after for k in PRICE_KEYS)
    assert all(r[SPAN_KEY] is None for r in queries_after)
    assert all(r[k] is None for r in queries_after for k in TRACE_KEYS)
    assert all(r[k] is None for r in queries_after for k in PHASE_KEYS)
    assert all(r[k] == 0 for r in rollups_after for k in PHASE_ROLLUP_KEYS)
    for name in PHASE_KEYS:
        assert _columns(db_url, "queries")[name] == (True, False)  # nullable, no default
    assert [{k: r[k] for k in before} for r, before in zip(rollups_after, rollups_before)] == (
        rollups_before
    )
    assert all(
        r["energy_uncertainty_j"] == 0 and r["uncertainty_queries"] == 0 for r in rollups_after
    )

    # New records carry bounds; the rollups are the sums of every record, old ones included.
    new = _with_bounds(make_records(120, seed=8), seed=8)
    new[0]["input_tokens"], new[1]["output_tokens"] = 2**40, 2**62  # over 32 bits
    for i, r in enumerate(new):  # version 7: the energy split at the first token
        if i % 4 and r["energy_j"] is not None:
            r["prefill_energy_j"] = r["energy_j"] * 0.25
            r["decode_energy_j"] = r["energy_j"] * 0.75
    start = dt.datetime(2026, 5, 1, 2, tzinfo=dt.timezone.utc)
    for i, r in enumerate(new):
        r["started_at"] = start + dt.timedelta(seconds=97 * i)
        r["ended_at"] = r["started_at"] + dt.timedelta(seconds=r["duration_s"])
        r["ownership"] = "owned" if i % 3 else "rented"
        r["gpu_price_source"] = f"{r['ownership']} price source"
    store.insert(new[:60])
    store.insert(new[60:])
    store.catch_up_rollups()
    every = [dict(r, energy_uncertainty_j=None) for r in rows] + new
    _assert_same(_rollup_table(db_url), _expected(every))
    rollups.rebuild(store.engine)
    _assert_same(_rollup_table(db_url), _expected(every))
    store.close()
    # The rollups keep owned and rented compute cost apart (a report adds energy cost to
    # owned records only), with the source of each $/GPU-hour.
    engine = _raw_engine(db_url)
    with engine.connect() as conn:
        by_ownership = dict(
            conn.execute(
                text(
                    "SELECT ownership, sum(compute_cost_usd) FROM query_rollups"
                    " WHERE ownership IS NOT NULL GROUP BY ownership"
                )
            ).all()
        )
        distinct = "SELECT DISTINCT ownership, gpu_price_source FROM query_rollups"
        sources = set(conn.execute(text(distinct)).all())
    engine.dispose()
    for kind in ("owned", "rented"):
        expected = sum(r["compute_cost"] for r in new if r["ownership"] == kind)
        assert by_ownership[kind] == pytest.approx(expected, rel=1e-9)
    assert sources == {
        (None, None),
        ("owned", "owned price source"),
        ("rented", "rented price source"),
    }

    report = build_report(ReportRequest(db=db_url))
    slow = build_report(ReportRequest(db=db_url), use_rollups=False)
    bounds = sum(r["energy_uncertainty_j"] for r in new)
    assert report["totals"]["energy_uncertainty_kwh"] == pytest.approx(bounds / 3.6e6, rel=1e-9)
    assert slow["totals"]["energy_uncertainty_kwh"] == pytest.approx(bounds / 3.6e6, rel=1e-9)
    measured_old = sum(r["energy_j"] is not None for r in rows)
    assert report["measurement"]["uncertainty_queries"] == len(new)
    split = [r for r in new if r.get("prefill_energy_j") is not None]
    phase = report["totals"]["per_1m_phase_tokens"]
    assert phase["queries"] == len(split) == slow["totals"]["per_1m_phase_tokens"]["queries"]
    assert phase["input"]["energy_j"] == pytest.approx(
        sum(r["prefill_energy_j"] for r in split) / sum(r["input_tokens"] for r in split) * 1e6,
        rel=1e-9,
    )
    assert any(
        f"{measured_old:,} of the {measured_old + len(new):,} queries with GPU energy" in n
        for n in report["notes"]
    ), report["notes"]


def test_migration_is_idempotent_for_processes_opening_at_once(db_url):
    """A second process that read version 1 before the first migrated still succeeds."""
    make_v1_database(db_url, _random_records(5, 20), rolled_up=0)
    Store(db_url).close()
    engine = open_engine(db_url, create=False)
    with engine.begin() as conn:  # as if this process had read version 1 a moment ago
        conn.execute(text("UPDATE footprint_meta SET value = '1' WHERE key = 'schema_version'"))
    engine.dispose()
    store = Store(db_url)
    store.insert(_with_bounds(make_records(4, seed=2), seed=2))
    store.close()
    assert database_info(db_url)["schema_version"] == SCHEMA_VERSION
    assert database_info(db_url)["queries_rows"] == 24
    assert _span_key_index(db_url) == {"column_names": [SPAN_KEY], "unique": False}


def test_version_1_sql_is_the_version_1_models_less_the_new_columns():
    """The fixture SQL describes this schema minus what version 2 added, and nothing else."""
    con = sqlite3.connect(":memory:")
    for statement in _statements("sqlite"):
        con.execute(statement)
    for model, added in (
        (QueryRecord, NEW_QUERY_COLUMNS),
        (QueryRollup, NEW_ROLLUP_COLUMNS),
        (IdleEnergy, NEW_IDLE_COLUMNS),
    ):
        table = model.__tablename__
        v1 = {row[1] for row in con.execute(f"PRAGMA table_info({table})")}
        assert v1 == {c.name for c in model.__table__.columns} - added
    con.close()
    pg = " ".join(_statements("postgresql"))
    assert "energy_uncertainty_j" not in pg and "CREATE TABLE query_rollups" in pg
    assert not any(name in pg for name in PRICE_KEYS) and SPAN_KEY not in pg
    assert not any(name in pg for name in TRACE_KEYS)
    assert not any(name in pg for name in PHASE_ROLLUP_KEYS)
