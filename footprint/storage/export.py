"""Streaming export of the ``queries`` table: CSV, JSON lines or Parquet, constant memory."""

from __future__ import annotations

import csv
import datetime as _dt
import json
from collections.abc import Iterator
from typing import Any, TextIO

from sqlalchemy import select

from footprint.storage.engine import open_engine
from footprint.storage.errors import StoreError
from footprint.storage.models import QueryRecord, table_of

FORMATS = ("csv", "jsonl", "parquet")
CHUNK_ROWS = 5_000
# What a spreadsheet takes for the start of a formula in a text cell (OWASP, CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_text(value: Any) -> Any:
    """``value`` for a CSV cell: text a spreadsheet would run as a formula (a model named
    ``=cmd|' /C calc'!A0``) gets a leading ``'``; numbers and other text as given."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def _iso(value: Any) -> Any:
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=_dt.timezone.utc)
        return value.isoformat()
    return value


def iter_chunks(db: str) -> Iterator[tuple[list[str], list[tuple]]]:
    """(column names, rows) in chunks of ``CHUNK_ROWS``, with a server-side cursor."""
    engine = open_engine(db, create=False)
    table = table_of(QueryRecord)
    try:
        with engine.connect() as conn:
            result = conn.execution_options(yield_per=CHUNK_ROWS).execute(
                select(table).order_by(table.c.id)
            )
            columns = list(result.keys())
            for partition in result.partitions():
                yield columns, [tuple(_iso(v) for v in row) for row in partition]
    finally:
        engine.dispose()


def export_text(db: str, fmt: str, out: TextIO) -> int:
    """Write every query row as CSV (with a header) or JSON lines; returns rows written.

    In the CSV, text that a spreadsheet would take for a formula is escaped
    (``spreadsheet_text``); JSON lines are as stored."""
    if fmt not in ("csv", "jsonl"):
        raise ValueError(f"text export format must be csv or jsonl, got {fmt!r}")
    count = 0
    writer = csv.writer(out) if fmt == "csv" else None
    header_done = False
    for columns, rows in iter_chunks(db):
        if writer is not None:
            if not header_done:
                writer.writerow(columns)
                header_done = True
            writer.writerows([spreadsheet_text(v) for v in row] for row in rows)
        else:
            out.writelines(json.dumps(dict(zip(columns, row))) + "\n" for row in rows)
        count += len(rows)
    if writer is not None and not header_done:
        writer.writerow([c.name for c in table_of(QueryRecord).columns])
    return count


def export_parquet(db: str, path: str) -> int:
    """Write every query row to a Parquet file (needs the ``parquet`` extra)."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise StoreError("parquet export needs pyarrow: pip install 'footprint[parquet]'") from None
    count = 0
    writer = None
    try:
        for columns, rows in iter_chunks(db):
            table = pa.table({c: [r[i] for r in rows] for i, c in enumerate(columns)})
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema)
            writer.write_table(table.cast(writer.schema))
            count += len(rows)
    finally:
        if writer is not None:
            writer.close()
    return count
