"""Grouped sums from the database: hourly rollups for whole hours, a scan for the rest.

The grouped sums (per model, day, GPUs, zone and the factors used) come from the hourly
rollups of ``queries`` (``query_rollups``, see ``footprint.storage.rollups``): first
brought up to date (SQLite), then read for the whole hours of the period, with the raw
grouped scan of ``queries`` for the part hours at either edge of an unaligned
``--since``/``--until``. A count of the period's queries checks the rollups; where they
cannot be brought up to date (a read-only file) or disagree with ``queries``, the report
scans ``queries`` instead and says so in a note. Rows are folded into a ``Fold`` as they
come from the database: memory follows the models and days of the report, not the rows.
"""

from __future__ import annotations

import datetime as _dt
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from operator import itemgetter
from typing import Any

from sqlalchemy import BigInteger, ColumnElement, Engine, cast, func, select

from footprint.reporting.database import day_expr
from footprint.reporting.request import (
    Period,
    ReportRequest,
    as_utc,
    query_filters,
    time_filters,
)
from footprint.reporting.sums import Fold, split_gpus
from footprint.storage import rollups
from footprint.storage.models import QueryRecord, QueryRollup, table_of

_QUERY_COLUMNS = table_of(QueryRecord).c
_ROLLUP_COLUMNS = table_of(QueryRollup).c
# What a grouped row is keyed on (plus ``host`` with --by host) and what it sums: the
# rollups' key columns (those both tables have: a column of a newer schema may be absent).
GROUP_KEYS = ("model", "day") + tuple(
    name
    for name in rollups.KEY_COLUMNS
    if name not in ("model", "host") and name in _QUERY_COLUMNS and name in _ROLLUP_COLUMNS
)
GROUP_SUMS = rollups.SUM_COLUMNS
_HOUR = _dt.timedelta(hours=1)


def split_period(request: ReportRequest) -> tuple[Period | None, list[Period]]:
    """The whole hours of the period (read from rollups) and the part hours at its edges.

    ``(None, [(since, until)])`` when the period holds no whole hour.
    """
    since, until = request.since, request.until
    start = since
    if since is not None and since != _floor_hour(since):
        start = _floor_hour(since) + _HOUR
    end = None if until is None else _floor_hour(until)
    if start is not None and end is not None and start >= end:
        return None, [(since, until)]
    edges: list[Period] = []
    if since is not None and start is not None and since < start:
        edges.append((since, start))
    if until is not None and end is not None and end < until:
        edges.append((end, until))
    return (start, end), edges


def _floor_hour(when: _dt.datetime) -> _dt.datetime:
    return when.replace(minute=0, second=0, microsecond=0)


def read_sums(
    conn: Any, engine: Engine, request: ReportRequest, problem: str | None
) -> tuple[Fold, str | None]:
    """The grouped rows folded into the report's sums (``Fold``), and a note.

    From the rollups unless ``problem`` says why not or they disagree with ``queries``;
    then from a scan of ``queries``, and the note says so.
    """
    with_host = request.by == "host"
    if problem is None:
        hours, edges = split_period(request)
        edge_rows = _merge_rows(
            [grouped_rows(conn, engine, request, edge) for edge in edges], with_host
        )
        device_gs = None
        if request.models:
            pairs = [p for edge in edges for p in _raw_gpu_seconds(conn, request, edge)]
            if hours is not None:
                pairs += _rollup_gpu_seconds(conn, request, hours)
            device_gs = _per_device(pairs)
        fold = Fold(request, device_gs)
        rows: Iterable[dict[str, Any]] = edge_rows
        if hours is not None:
            rows = _merged_stream(_rollup_rows(conn, engine, request, hours), edge_rows, with_host)
        for row in rows:
            fold.add(row)
        total = count_queries(conn, request)
        if fold.queries == total:
            return fold, None
        note = (
            f"The hourly rollups count {fold.queries:,} queries in this period but the "
            f"queries table holds {total:,} (rows written or deleted by other means); every "
            "figure was computed from the queries table instead. `footprint db "
            "rebuild-rollups` restores the fast path."
        )
    else:
        note = (
            f"The hourly rollups could not be brought up to date ({problem}); every figure "
            "was computed from the queries table instead, which is slower on large databases."
        )
    device_gs = None
    if request.models:
        device_gs = _per_device(_raw_gpu_seconds(conn, request))
    fold = Fold(request, device_gs)
    for row in grouped_rows(conn, engine, request):
        fold.add(row)
    return fold, note


def _group_columns(columns: Any, day: Any, request: ReportRequest) -> list[Any]:
    """The GROUP BY columns (``GROUP_KEYS``, plus host with --by host) of a table."""
    names = GROUP_KEYS + (("host",) if request.by == "host" else ())
    return [day if name == "day" else columns[name] for name in names]


def grouped_rows(
    conn: Any, engine: Engine, request: ReportRequest, period: Period | None = None
) -> list[dict[str, Any]]:
    """The grouped sums from a scan of ``queries`` over the period (or ``period``)."""
    q = _QUERY_COLUMNS
    day = day_expr(engine, q.started_at).label("day")
    keys = _group_columns(q, day, request)
    sums = rollups.query_sums()
    stmt = select(*keys, *sums).where(*query_filters(request, period=period)).group_by(*keys)
    return [dict(row) for row in conn.execute(stmt).mappings()]


def _iter_rows(conn: Any, stmt: Any, chunk: int = 2000) -> Iterator[dict[str, Any]]:
    """The rows of ``stmt`` as dicts, as they come (``chunk`` rows held at a time; a
    server-side cursor on PostgreSQL)."""
    result = conn.execute(stmt, execution_options={"yield_per": chunk})  # this one only
    keys = list(result.keys())
    for part in result.partitions(chunk):
        for row in part:
            yield dict(zip(keys, row))


def _hour_filters(request: ReportRequest, hours: Period, with_models: bool = True) -> list[Any]:
    r = _ROLLUP_COLUMNS
    return time_filters(r.hour, r.model, *hours, request.models if with_models else None)


def _rollup_rows(
    conn: Any, engine: Engine, request: ReportRequest, hours: Period
) -> Iterator[dict[str, Any]]:
    """The same grouped sums as ``grouped_rows``, from the rollups of whole hours (as
    they come)."""
    r = _ROLLUP_COLUMNS
    day = day_expr(engine, r.hour).label("day")
    keys = _group_columns(r, day, request)
    sums = []
    for name in GROUP_SUMS:
        column = r[name]
        total: ColumnElement[Any] = func.sum(column)
        if isinstance(column.type, BigInteger):  # PostgreSQL sums BIGINT as NUMERIC
            total = cast(total, BigInteger)
        sums.append(total.label(name))
    sums.append(func.min(r.intensity_min).label("intensity_min"))
    sums.append(func.max(r.intensity_max).label("intensity_max"))
    stmt = select(*keys, *sums).where(*_hour_filters(request, hours)).group_by(*keys)
    return _iter_rows(conn, stmt)


def _group_key(with_host: bool) -> Callable[[dict[str, Any]], tuple]:
    return itemgetter(*GROUP_KEYS, *(("host",) if with_host else ()))


def _merge_into(into: dict[str, Any], row: dict[str, Any]) -> None:
    """Add the sums of ``row`` to ``into`` (same group key)."""
    for name in GROUP_SUMS:
        into[name] += row[name]
    for name, pick in (("intensity_min", min), ("intensity_max", max)):
        values = [v for v in (into[name], row[name]) if v is not None]
        into[name] = pick(values) if values else None


def _merge_rows(parts: list[list[dict[str, Any]]], with_host: bool) -> list[dict[str, Any]]:
    """Grouped rows of several sources added up per key."""
    if len(parts) == 1:
        return parts[0]
    key_of = _group_key(with_host)
    merged: dict[tuple, dict[str, Any]] = {}
    for rows in parts:
        for row in rows:
            key = key_of(row)
            into = merged.get(key)
            if into is None:
                merged[key] = dict(row)
            else:
                _merge_into(into, row)
    return list(merged.values())


def _merged_stream(
    rows: Iterable[dict[str, Any]], extra: list[dict[str, Any]], with_host: bool
) -> Iterator[dict[str, Any]]:
    """``rows`` (distinct keys, streamed) with the few ``extra`` rows added per key."""
    if not extra:
        yield from rows
        return
    key_of = _group_key(with_host)
    pending = {key_of(row): row for row in extra}
    for row in rows:
        other = pending.pop(key_of(row), None)
        if other is not None:
            _merge_into(other, row)
            row = other
        yield row
    yield from pending.values()


def count_queries(conn: Any, request: ReportRequest) -> int:
    """The period's queries counted in ``queries`` (index only): checks the rollups."""
    stmt = select(func.count()).select_from(table_of(QueryRecord)).where(*query_filters(request))
    return int(conn.execute(stmt).scalar_one())


def first_last(conn: Any, request: ReportRequest) -> tuple[Any, Any]:
    """Start times of the first and last query of the period (index lookups)."""
    q = _QUERY_COLUMNS
    # Two statements: SQLite answers a lone min() or max() from the index.
    first = conn.execute(select(func.min(q.started_at)).where(*query_filters(request))).scalar()
    last = conn.execute(select(func.max(q.started_at)).where(*query_filters(request))).scalar()
    return as_utc(first), as_utc(last)


def _raw_gpu_seconds(
    conn: Any, request: ReportRequest, period: Period | None = None
) -> list[tuple[str, float]]:
    """(GPUs, GPU-seconds) of every model, from ``queries``."""
    q = _QUERY_COLUMNS
    stmt = (
        select(q.gpus, func.coalesce(func.sum(q.gpu_seconds), 0.0))
        .where(*query_filters(request, with_models=False, period=period))
        .group_by(q.gpus)
    )
    return [(gpus, seconds) for gpus, seconds in conn.execute(stmt)]


def _rollup_gpu_seconds(
    conn: Any, request: ReportRequest, hours: Period
) -> list[tuple[str, float]]:
    """(GPUs, GPU-seconds) of every model, from the rollups of whole hours."""
    r = _ROLLUP_COLUMNS
    stmt = (
        select(r.gpus, func.sum(r.gpu_seconds))
        .where(*_hour_filters(request, hours, with_models=False))
        .group_by(r.gpus)
    )
    return [(gpus, seconds) for gpus, seconds in conn.execute(stmt)]


def _per_device(pairs: list[tuple[str, float]]) -> dict[str, float]:
    """GPU-seconds per GPU of every model (the denominator of the idle split)."""
    out: dict[str, float] = defaultdict(float)
    for gpus, seconds in pairs:
        uuids = split_gpus(gpus)
        for uuid in uuids:
            out[uuid] += (seconds or 0.0) / len(uuids)
    return out
