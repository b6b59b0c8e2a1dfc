"""Hourly rollups of ``queries``: what reports over millions of queries read.

Records are grouped by hour and by everything a report groups on, summed in C-level
``sum`` over each group's columns (cheaper than SQLite's GROUP BY sorter) and upserted
into ``query_rollups``.

- PostgreSQL: in each write's transaction (``Store.insert``).
- SQLite: ``catch_up`` rolls up the rows above a watermark kept in ``footprint_meta``,
  under the write lock, so rows are counted once even with many writer processes (SQLite
  ids grow in commit order). The writer thread catches up every few flushes and
  ``footprint report`` before it reads, so ingest stays at raw-insert speed.

``rebuild`` recomputes everything from ``queries`` (after rows were written or deleted
by other means).
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable
from operator import itemgetter, mul
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    and_,
    case,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from footprint.storage.models import Meta, QueryRecord, QueryRollup, table_of

# ``ownership`` decides whether a group's energy cost is part of its cost (owned) or
# already inside its GPU-hour price (rented); ``gpu_price_source`` is where that price
# came from, for the report's factors table. Both last: keys of schema version 3.
KEY_COLUMNS = (
    "model",
    "host",
    "gpus",
    "zone",
    "currency",
    "intensity_source",
    "pue",
    "price_per_kwh",
    "usd_per_gpu_hour",
    "market_intensity_g_per_kwh",
    "energy_source",
    "ownership",
    "gpu_price_source",
)
# Schema version 7: over the queries carrying both phase energies and both token counts,
# their count and sums (rollup column <- queries column).
PHASE_SOURCES = {
    "prefill_energy_j": "prefill_energy_j",
    "decode_energy_j": "decode_energy_j",
    "phase_input_tokens": "input_tokens",
    "phase_output_tokens": "output_tokens",
}
PHASE_SUMS = ("phase_queries", *PHASE_SOURCES)
SUM_COLUMNS = (
    "queries",
    "errors",
    "input_tokens",
    "output_tokens",
    "gpu_seconds",
    "energy_j",
    "measured_queries",
    "facility_energy_j",
    "co2e_g",
    "market_co2e_g",
    "market_queries",
    "embodied_co2e_g",
    "energy_cost_usd",
    "unconverted_energy_cost",
    "unconverted_queries",
    "compute_cost_usd",
    "duration_s",
    "energy_uncertainty_j",
    "uncertainty_queries",
    *PHASE_SUMS,
)
_PLAIN_SUMS = {  # rollup column <- queries column, NULLs skipped
    "input_tokens": "input_tokens",
    "output_tokens": "output_tokens",
    "gpu_seconds": "gpu_seconds",
    "energy_j": "energy_j",
    "co2e_g": "co2e_g",
    "market_co2e_g": "market_co2e_g",
    "embodied_co2e_g": "embodied_co2e_g",
    "energy_cost_usd": "energy_cost_usd",
    "compute_cost_usd": "compute_cost",
    "duration_s": "duration_s",
    "energy_uncertainty_j": "energy_uncertainty_j",
}
_strict_key_of = itemgetter(*KEY_COLUMNS)
# Keys a record may lack (producers older than the column): read as None.
OPTIONAL_KEYS = frozenset(
    {"energy_uncertainty_j", "ownership", "gpu_price_source", "prefill_energy_j", "decode_energy_j"}
)
_PHASE_NEEDS = ("prefill_energy_j", "decode_energy_j", "input_tokens", "output_tokens")


def _phase_sums(rows: list[dict[str, Any]], row: dict[str, Any]) -> None:
    """Set ``row``'s phase sums (``PHASE_SUMS``) over the ``rows`` that carry both phase
    energies and both token counts."""
    row.update(dict.fromkeys(PHASE_SUMS, 0))
    if _column(rows, "prefill_energy_j").count(None) == len(rows):
        return  # the common case of records without phases: one C-level count
    for record in rows:
        values = [record.get(name) for name in _PHASE_NEEDS]
        if None in values:
            continue
        row["phase_queries"] += 1
        for target, value in zip(PHASE_SOURCES, values):
            row[target] += value


def _key_of(record: dict[str, Any]) -> tuple:
    """A record's key columns; an optional one it lacks is None."""
    try:
        return _strict_key_of(record)
    except KeyError:
        return tuple(
            record.get(name) if name in OPTIONAL_KEYS else record[name] for name in KEY_COLUMNS
        )


def _hour(value: Any) -> _dt.datetime:
    if isinstance(value, str):  # text from SQLite
        value = _dt.datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=_dt.timezone.utc)
    return value.astimezone(_dt.timezone.utc).replace(minute=0, second=0, microsecond=0)


def group_key(key: tuple) -> str:
    """The key columns as one text (``∅`` for NULL), unique per rollup row and hour."""
    return "|".join("∅" if v is None else repr(v) if isinstance(v, float) else str(v) for v in key)


def _column(rows: list[dict[str, Any]], name: str) -> list[Any]:
    try:
        return list(map(itemgetter(name), rows))
    except KeyError:
        if name not in OPTIONAL_KEYS:
            raise
        return [row.get(name) for row in rows]


def aggregate(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rollup rows (one per hour and key) summing ``records`` (dicts of queries rows), in
    (hour, group_key) order: every writer upserts (so locks) rollup rows in that one order,
    and two PostgreSQL transactions never wait on each other's rows in a cycle (deadlock).

    Sums run in C (``sum(filter(None, …))`` skips NULLs, and zeros change no sum):
    this is on the writer's path, at about a microsecond per record.
    """
    groups: dict[tuple, list[dict[str, Any]]] = {}
    hours: dict[Any, _dt.datetime] = {}
    for record in records:
        started = record["started_at"]
        hour_key = started[:13] if isinstance(started, str) else (started.date(), started.hour)
        hour = hours.get(hour_key)
        if hour is None:
            hour = hours[hour_key] = _hour(started)
        groups.setdefault((hour, *_key_of(record)), []).append(record)
    out = []
    for (hour, *key), rows in groups.items():
        n = len(rows)
        row: dict[str, Any] = dict(zip(KEY_COLUMNS, key))
        row["hour"] = hour
        row["group_key"] = group_key(tuple(key))
        row["queries"] = n
        for target, source in _PLAIN_SUMS.items():
            values = (
                _column(rows, source) if source in OPTIONAL_KEYS else map(itemgetter(source), rows)
            )
            row[target] = sum(filter(None, values))
        energies, pues = _column(rows, "energy_j"), _column(rows, "pue")
        row["measured_queries"] = n - energies.count(None)
        row["uncertainty_queries"] = n - _column(rows, "energy_uncertainty_j").count(None)
        try:
            row["facility_energy_j"] = sum(map(mul, energies, pues))
        except TypeError:  # some energy or PUE is NULL
            row["facility_energy_j"] = sum(e * p for e, p in zip(energies, pues) if e and p)
        row["errors"] = n - _column(rows, "status").count("ok")
        row["market_queries"] = n - _column(rows, "market_co2e_g").count(None)
        unconverted = []
        if None in _column(rows, "energy_cost_usd"):
            unconverted = [
                r["energy_cost"]
                for r in rows
                if r["energy_cost_usd"] is None and r["energy_cost"] is not None
            ]
        row["unconverted_energy_cost"] = sum(unconverted)
        row["unconverted_queries"] = len(unconverted)
        intensities = _column(rows, "intensity_g_per_kwh")
        if None in intensities:
            intensities = [v for v in intensities if v is not None]
        row["intensity_min"] = min(intensities) if intensities else None
        row["intensity_max"] = max(intensities) if intensities else None
        _phase_sums(rows, row)
        out.append(row)
    out.sort(key=_row_order)
    return out


_row_order = itemgetter("hour", "group_key")


def query_sums() -> list[Any]:
    """SQL sums over ``queries`` rows, labelled as the rollup columns (and min/max
    intensity): what the rollups hold, and what a report computes when it scans."""
    q = table_of(QueryRecord).c
    unconverted = and_(q.energy_cost_usd.is_(None), q.energy_cost.is_not(None))
    phase = and_(*(q[name].is_not(None) for name in _PHASE_NEEDS))
    return [
        func.count().label("queries"),
        *(func.coalesce(func.sum(q[src]), 0).label(dst) for dst, src in _PLAIN_SUMS.items()),
        func.count(q.energy_j).label("measured_queries"),
        func.count(q.energy_uncertainty_j).label("uncertainty_queries"),
        func.coalesce(func.sum(q.energy_j * q.pue), 0.0).label("facility_energy_j"),
        func.sum(case((q.status != "ok", 1), else_=0)).label("errors"),
        func.count(q.market_co2e_g).label("market_queries"),
        func.coalesce(func.sum(case((unconverted, q.energy_cost))), 0.0).label(
            "unconverted_energy_cost"
        ),
        func.count(case((unconverted, 1))).label("unconverted_queries"),
        func.min(q.intensity_g_per_kwh).label("intensity_min"),
        func.max(q.intensity_g_per_kwh).label("intensity_max"),
        func.count(case((phase, 1))).label("phase_queries"),
        *(
            func.coalesce(func.sum(case((phase, q[src]))), 0).label(dst)
            for dst, src in PHASE_SOURCES.items()
        ),
    ]


def _sql_sums(where: Any, dialect: str) -> Any:
    """The same sums as ``aggregate``, computed by the database, per hour and key."""
    q = table_of(QueryRecord).c
    if dialect == "sqlite":  # SQLAlchemy's SQLite text: 'YYYY-MM-DD HH:MM:SS.ffffff'
        hour = func.substr(q.started_at, 1, 13)
    else:
        hour = func.to_char(func.timezone("UTC", q.started_at), "YYYY-MM-DD HH24")
    keys = [q[name] for name in KEY_COLUMNS]
    return select(hour.label("hour_text"), *keys, *query_sums()).where(where).group_by(hour, *keys)


def _from_sql_row(row: Any) -> dict[str, Any]:
    out = dict(row)
    hour_text = out.pop("hour_text")
    out["hour"] = _dt.datetime.strptime(hour_text, "%Y-%m-%d %H").replace(tzinfo=_dt.timezone.utc)
    out["group_key"] = group_key(tuple(out[name] for name in KEY_COLUMNS))
    return out


def upsert_statement(dialect: str) -> Any:
    """``INSERT INTO query_rollups … ON CONFLICT (hour, group_key)`` adding the sums."""
    table = table_of(QueryRollup)
    stmt = (sqlite.insert if dialect == "sqlite" else postgresql.insert)(table)
    excluded = stmt.excluded
    updates: dict[str, Any] = {name: table.c[name] + excluded[name] for name in SUM_COLUMNS}
    lo: ColumnElement[Any]
    hi: ColumnElement[Any]
    if dialect == "sqlite":  # scalar min/max return NULL if either side is NULL
        lo = func.min(
            func.coalesce(table.c.intensity_min, excluded.intensity_min),
            func.coalesce(excluded.intensity_min, table.c.intensity_min),
        )
        hi = func.max(
            func.coalesce(table.c.intensity_max, excluded.intensity_max),
            func.coalesce(excluded.intensity_max, table.c.intensity_max),
        )
    else:
        lo = func.least(table.c.intensity_min, excluded.intensity_min)
        hi = func.greatest(table.c.intensity_max, excluded.intensity_max)
    updates["intensity_min"], updates["intensity_max"] = lo, hi
    return stmt.on_conflict_do_update(index_elements=["hour", "group_key"], set_=updates)


WATERMARK_KEY = "rollup_watermark_id"


def rebuild(engine: Engine) -> int:
    """Recompute every rollup from ``queries``; returns the number of rollup rows."""
    dialect = engine.dialect.name
    with engine.connect() as conn:
        if dialect == "sqlite":
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        try:
            conn.execute(delete(table_of(QueryRollup)))
            top = _add_sums(conn, table_of(QueryRecord).c.id.is_not(None))
            _set_watermark(conn, top)
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
        return conn.execute(select(func.count()).select_from(table_of(QueryRollup))).scalar_one()


def _add_sums(conn: Connection, where: Any) -> int:
    """Upsert the database-computed sums of the rows ``where`` selects; returns max id."""
    dialect = conn.dialect.name
    rows = [_from_sql_row(r) for r in conn.execute(_sql_sums(where, dialect)).mappings()]
    if rows:
        conn.execute(upsert_statement(dialect), rows)
    ids = table_of(QueryRecord).c.id
    return conn.execute(select(func.coalesce(func.max(ids), 0)).where(where)).scalar_one()


def _watermark(conn: Connection) -> int:
    meta = table_of(Meta)
    value = conn.execute(select(meta.c.value).where(meta.c.key == WATERMARK_KEY)).scalar()
    return int(value or 0)


def _set_watermark(conn: Connection, last_id: int) -> None:
    meta = table_of(Meta)
    done = conn.execute(update(meta).where(meta.c.key == WATERMARK_KEY).values(value=str(last_id)))
    if done.rowcount == 0:
        conn.execute(insert(meta).values(key=WATERMARK_KEY, value=str(last_id)))


def pending_rows(engine: Engine) -> int:
    """Queries not yet in the rollups (always 0 on PostgreSQL)."""
    if engine.dialect.name != "sqlite":
        return 0
    ids = table_of(QueryRecord).c.id
    with engine.connect() as conn:
        mark = _watermark(conn)
        return conn.execute(select(func.count()).where(ids > mark)).scalar_one()


def catch_up(engine: Engine) -> int:
    """SQLite: roll up every query above the watermark; returns how many were added.

    Runs under ``BEGIN IMMEDIATE`` (the write lock), so two processes catching up at
    once count each row once. A no-op on PostgreSQL, whose writes roll up inline.
    """
    if engine.dialect.name != "sqlite":
        return 0
    ids = table_of(QueryRecord).c.id
    with engine.connect() as conn:
        conn.exec_driver_sql("BEGIN IMMEDIATE")
        try:
            mark = _watermark(conn)
            top = conn.execute(select(func.coalesce(func.max(ids), 0))).scalar_one()
            if top > mark:
                _add_sums(conn, and_(ids > mark, ids <= top))
                _set_watermark(conn, top)
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
    return max(0, top - mark)


def merge_into(rows: dict[tuple, dict[str, Any]], row: dict[str, Any]) -> None:
    """Add one rollup row into a dict of rollup rows keyed by (hour, group_key)."""
    key = (row["hour"], row["group_key"])
    into = rows.get(key)
    if into is None:
        rows[key] = row
        return
    for name in SUM_COLUMNS:
        into[name] += row[name]
    for name, pick in (("intensity_min", min), ("intensity_max", max)):
        values = [v for v in (into[name], row[name]) if v is not None]
        into[name] = pick(values) if values else None
