"""Inserting batches into one database, and keeping track of the SQLite file it is.

Batches go to SQLite through the driver's ``executemany`` with rows as tuples (no ORM
object, no per-row SQL compilation); PostgreSQL takes the same tables through SQLAlchemy
Core, its rollups in the same transaction, retried after a deadlock. One transaction per
batch. Opening the database is ``footprint.storage.engine``'s work.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import os
import random
import threading
import time
from collections.abc import Callable
from operator import itemgetter
from typing import Any

from sqlalchemy import DateTime, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError

from footprint.storage import journal, rollups, sidefile
from footprint.storage.engine import normalize_db_url, open_engine, sqlite_path
from footprint.storage.errors import (
    MalformedDatabase,
    StoreError,
    file_identity,
    is_malformed,
    is_malformed_text,
    sqlite_integrity,
)

# re-exported for callers outside storage/
from footprint.storage.info import database_info as database_info
from footprint.storage.info import journal_base
from footprint.storage.migrations import TABLES
from footprint.storage.models import Device, IdleEnergy, Loss, QueryRecord, table_of

IDLE_KEY = ("device_uuid", "minute", "host", "pid")

# Keys per query of ``Store.stored_span_keys``: SQLite before 3.32 binds at most 999.
SPAN_KEYS_PER_QUERY = 500

# SQLSTATEs after which PostgreSQL asks the client to run the transaction again.
RETRY_SQLSTATES = frozenset({"40P01", "40001"})  # deadlock detected, serialization failure
RETRY_ATTEMPTS = 5
RETRY_PAUSE_S = 0.01  # doubled at each attempt, jittered ±50%


class _QuietAbortedPipeline(logging.Filter):
    """Drops psycopg's "error ignored terminating <Pipeline>" logged while this thread
    writes a batch: the error that aborted the pipeline is raised to the writer, which
    reports it once, and isolating a refused row would otherwise log it dozens of times."""

    writing = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            getattr(self.writing, "on", False)
            and str(record.msg).startswith("error ignored terminating")
        )


_QUIET_PIPELINE = _QuietAbortedPipeline()


def sqlite_datetime(value: Any) -> Any:
    """The text SQLAlchemy's SQLite DateTime type writes (naive UTC, microseconds)."""
    if isinstance(value, _dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(_dt.timezone.utc).replace(tzinfo=None)
        return value.isoformat(sep=" ", timespec="microseconds")
    return value


_SECOND_TEXT: dict[int, str] = {}


def _utc_text(value: Any) -> Any:
    """A UTC datetime as ``YYYY-MM-DD HH:MM:SS.ffffff`` (SQLAlchemy's SQLite text).

    Formatting the whole datetime costs more than the insert itself, so the text of
    each second is cached and only the microseconds are formatted per row.
    """
    if value.__class__ is not _dt.datetime or value.tzinfo is not _dt.timezone.utc:
        return sqlite_datetime(value)
    second = int(value.timestamp())
    prefix = _SECOND_TEXT.get(second)
    if prefix is None:
        if len(_SECOND_TEXT) > 100_000:
            _SECOND_TEXT.clear()
        prefix = _SECOND_TEXT[second] = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(second))
    return f"{prefix}.{value.microsecond:06d}"


def _row_builder(columns: list[str], datetimes: set[str]) -> Callable[[dict], tuple]:
    """A function turning a row dict into a tuple in column order (missing keys: None).

    Generated once per table as a single tuple expression, the fastest form in Python.
    """

    def source(lookup: str) -> str:
        parts = [
            f"utc({lookup.format(name=repr(name))})"
            if name in datetimes
            else lookup.format(name=repr(name))
            for name in columns
        ]
        return f"lambda row: ({', '.join(parts)},)"

    namespace = {"utc": _utc_text}
    strict = eval(source("row[{name}]"), namespace)  # noqa: S307 - our own column names
    lenient = eval(source("row.get({name})"), namespace)  # noqa: S307

    def build(row: dict) -> tuple:
        try:
            return strict(row)
        except KeyError:
            return lenient(row)

    return build


def _merge_idle(rows: Any) -> list[dict[str, Any]]:
    """One row per (device, minute, host, pid): an upsert may touch a row only once.

    ``lost_energy_j`` and ``measured_s`` are optional in the input (0 when absent)."""
    merged: dict[tuple, dict[str, Any]] = {}
    for row in rows:
        key = tuple(row[k] for k in IDLE_KEY)
        into = merged.get(key)
        if into is None:
            merged[key] = {"lost_energy_j": 0.0, "measured_s": 0.0, **row}
        else:
            into["idle_energy_j"] += row["idle_energy_j"]
            into["measured_energy_j"] += row["measured_energy_j"]
            into["lost_energy_j"] += row.get("lost_energy_j", 0.0)
            into["measured_s"] += row.get("measured_s", 0.0)
    return list(merged.values())


_idle_key = itemgetter(*IDLE_KEY)


def _sqlstate(exc: DBAPIError) -> str | None:
    return getattr(exc.orig, "sqlstate", None)


def _same_keys(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows, each with the same keys: an executemany takes its columns from the first.

    A key missing from some rows (a column added later, such as ``energy_uncertainty_j``,
    absent from an older producer's records) is given as None in every row that lacks it.
    """
    rows = list(rows)
    keys = rows[0].keys()
    if all(row.keys() == keys for row in rows):
        return rows
    names = list(dict.fromkeys(name for row in rows for name in row))
    return [{name: row.get(name) for name in names} for row in rows]


class Store:
    """Batch inserts into one database; no wait on it lasts longer than ``busy_timeout_s``.

    A SQLite file is checked (``PRAGMA quick_check``) before it is opened: a malformed one
    raises ``MalformedDatabase`` instead of taking writes nobody could read back. The
    file's identity is kept, so that ``replaced()`` can tell when the path no longer
    leads to it. Loss counts an earlier process left beside the file are moved into
    ``losses`` when the database can be written (``footprint.storage.sidefile``).
    """

    def __init__(self, db: str, busy_timeout_s: float = 10.0) -> None:
        self.url = normalize_db_url(db)
        self.path = sqlite_path(self.url)
        if self.path is not None and os.path.exists(self.path):
            integrity = sqlite_integrity(self.path, busy_timeout_s)
            if integrity.startswith("malformed"):
                raise MalformedDatabase(self.path, integrity.removeprefix("malformed: "))
        try:
            self.engine = open_engine(
                db, busy_timeout_s=busy_timeout_s, statement_timeout_s=busy_timeout_s
            )
        except StoreError as exc:
            if self.path is not None and is_malformed_text(str(exc)):
                raise MalformedDatabase(self.path, str(exc).rsplit(": ", 1)[-1]) from None
            raise
        self.identity = file_identity(self.path) if self.path is not None else None
        self._wal_identity = file_identity(f"{self.path}-wal") if self.path is not None else None
        self.is_sqlite = self.url.startswith("sqlite")
        self._plans = {table.name: self._plan(table) for table in TABLES[:3]}
        self.retried_transactions = 0  # PostgreSQL deadlocks and serialization failures
        self.side_file = sidefile.side_path(self.path) if self.path is not None else None
        self.move_side_losses()
        if self.path is not None:  # room for loss counts on a full disk (sidefile)
            sidefile.ensure_reserve(self.path)
        if not self.is_sqlite:
            logging.getLogger("psycopg").addFilter(_QUIET_PIPELINE)  # once: a set

    def replaced(self) -> str | None:
        """Why the SQLite file at the path is no longer the one open (``removed``,
        ``replaced by another file``), or None while it is (and for PostgreSQL).

        SQLite keeps writing into a file that was deleted or renamed while open: without
        this check those records would go where nobody can read them."""
        if self.identity is None or self.path is None:
            return None
        now = file_identity(self.path)
        if now == self.identity:
            self._wal_identity = file_identity(f"{self.path}-wal")  # still this file's
            return None
        return "was removed" if now is None else "was replaced by another file"

    def discard_old_log(self) -> None:
        """After ``replaced()`` (this store closed): delete the ``-wal`` and ``-shm`` left
        at the path if they are the old file's, as last seen while it was open.

        SQLite leaves them when the file under them goes; the next database opened at
        the path would otherwise replay the old file's log over its own pages. A log
        that another process created since, for the new file, is left alone.
        """
        if self.path is None or self._wal_identity is None:
            return
        if file_identity(f"{self.path}-wal") == self._wal_identity:
            for suffix in ("-wal", "-shm"):
                with contextlib.suppress(OSError):
                    os.remove(f"{self.path}{suffix}")

    def move_side_losses(self) -> int:
        """Move the loss counts kept in the side file, and in the fallback files under
        the runtime directory (``footprint.storage.sidefile``), into ``losses``; the count
        of rows moved (0 when there is none, or the database cannot be written now: the
        files are then kept for a later try)."""
        base = journal_base(self.url)
        moved = journal.move_into(base, lambda rows: self.insert([], [], rows)) if base else 0
        if self.path is None:
            return moved
        for path in sidefile.loss_files(self.path):
            moved += sidefile.move_into(path, lambda rows: self.insert([], [], rows))
        return moved

    def has_side_losses(self) -> bool:
        """Whether loss counts wait in a side or fallback file (``move_side_losses``)."""
        return self.path is not None and bool(sidefile.loss_files(self.path))

    def record_devices(self, host: str, devices: list[dict[str, Any]]) -> None:
        """Upsert the devices this host's process measures (``devices`` rows: ``uuid``,
        ``kind``, ``device_index``, ``name``, ``vendor``, ``energy_method``), so that
        reports can name the GPUs behind the UUIDs; ``first_seen_at`` is kept."""
        if not devices:
            return
        now = _dt.datetime.now(_dt.timezone.utc)
        rows = [{**d, "host": host, "first_seen_at": now, "last_seen_at": now} for d in devices]
        table = table_of(Device)
        dialect = postgresql if not self.is_sqlite else sqlite
        stmt = dialect.insert(table)
        upsert = stmt.on_conflict_do_update(
            index_elements=["host", "uuid"],
            set_={
                name: stmt.excluded[name]
                for name in ("kind", "device_index", "name", "vendor", "energy_method")
            }
            | {"last_seen_at": stmt.excluded.last_seen_at},
        )
        with self.engine.begin() as conn:
            conn.execute(upsert, sorted(rows, key=itemgetter("uuid")))

    @staticmethod
    def _plan(table: Any) -> tuple[str, Callable[[dict], tuple]]:
        columns = [c.name for c in table.columns if c.name != "id"]
        datetimes = {c.name for c in table.columns if isinstance(c.type, DateTime)}
        placeholders = ", ".join("?" * len(columns))
        sql = f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({placeholders})"
        if table.name == table_of(IdleEnergy).name:
            sql += (
                f" ON CONFLICT ({', '.join(IDLE_KEY)}) DO UPDATE SET"
                " idle_energy_j = idle_energy_j + excluded.idle_energy_j,"
                " measured_energy_j = measured_energy_j + excluded.measured_energy_j,"
                " lost_energy_j = lost_energy_j + excluded.lost_energy_j,"
                " measured_s = measured_s + excluded.measured_s"
            )
        return sql, _row_builder(columns, datetimes)

    def insert(
        self,
        records: list[dict[str, Any]],
        idle_rows: list[dict[str, Any]] = (),  # type: ignore[assignment]
        losses: list[dict[str, Any]] = (),  # type: ignore[assignment]
    ) -> None:
        """Insert the rows in one transaction (all or nothing).

        Idle rows add to an existing (device, minute, host, pid) row. On PostgreSQL the
        rollups are updated in the same transaction; SQLite catches up later (see
        ``footprint.storage.rollups``).
        """
        idle_rows = _merge_idle(idle_rows)
        if self.is_sqlite:
            self._insert_sqlite(records, idle_rows, losses)
            return
        # Rows are locked in one order by every writer (rollups sorted by aggregate()):
        # two transactions upserting the same rows in opposite orders deadlock.
        idle_rows.sort(key=_idle_key)
        sums = rollups.aggregate(records) if records else []
        _QUIET_PIPELINE.writing.on = True
        try:
            for attempt in range(1, RETRY_ATTEMPTS + 1):
                try:
                    self._insert_postgres(records, sums, idle_rows, losses)
                    return
                except DBAPIError as exc:  # a deadlock despite the order: another client's
                    if attempt == RETRY_ATTEMPTS or _sqlstate(exc) not in RETRY_SQLSTATES:
                        raise
                    self.retried_transactions += 1
                    time.sleep(RETRY_PAUSE_S * 2**attempt * random.uniform(0.5, 1.5))
        finally:
            _QUIET_PIPELINE.writing.on = False

    def _insert_postgres(
        self,
        records: list[dict[str, Any]],
        sums: list[dict[str, Any]],
        idle_rows: list[dict[str, Any]],
        losses: list[dict[str, Any]],
    ) -> None:
        """One transaction: the records, their rollup sums, idle rows, loss rows."""
        queries, idle = table_of(QueryRecord), table_of(IdleEnergy)
        with self.engine.begin() as conn:
            if records:
                conn.execute(insert(queries), _same_keys(records))
                conn.execute(rollups.upsert_statement("postgresql"), sums)
            if idle_rows:
                stmt = postgresql.insert(idle)
                conn.execute(
                    stmt.on_conflict_do_update(
                        index_elements=list(IDLE_KEY),
                        set_={
                            "idle_energy_j": idle.c.idle_energy_j + stmt.excluded.idle_energy_j,
                            "measured_energy_j": idle.c.measured_energy_j
                            + stmt.excluded.measured_energy_j,
                            "lost_energy_j": idle.c.lost_energy_j + stmt.excluded.lost_energy_j,
                            "measured_s": idle.c.measured_s + stmt.excluded.measured_s,
                        },
                    ),
                    idle_rows,
                )
            if losses:
                conn.execute(insert(table_of(Loss)), list(losses))

    def _insert_sqlite(
        self,
        records: list[dict[str, Any]],
        idle_rows: list[dict[str, Any]],
        losses: list[dict[str, Any]],
    ) -> None:
        connection = self.engine.raw_connection()
        try:
            cursor = connection.cursor()
            for table, rows in (
                ("queries", records),
                ("idle_energy", idle_rows),
                ("losses", losses),
            ):
                if rows:
                    sql, build = self._plans[table]
                    cursor.executemany(sql, [build(row) for row in rows])
            connection.commit()
        except BaseException as exc:
            with contextlib.suppress(Exception):  # a corrupt file may refuse this too
                connection.rollback()
            if is_malformed(exc) and self.path is not None:
                raise MalformedDatabase(self.path, str(exc)) from exc
            raise
        finally:
            connection.close()

    def stored_span_keys(self, keys: list[str]) -> set[str]:
        """Which of ``keys`` (``queries.span_key``) are stored: one indexed read, in
        chunks of ``SPAN_KEYS_PER_QUERY`` (under SQLite's limit on bound variables).

        Safe from any thread (the engine's pool is); raises what the database raises."""
        table = table_of(QueryRecord)
        column = table.c.span_key
        unique = list(dict.fromkeys(keys))
        found: set[str] = set()
        if not unique:
            return found
        with self.engine.connect() as conn:
            for i in range(0, len(unique), SPAN_KEYS_PER_QUERY):
                chunk = unique[i : i + SPAN_KEYS_PER_QUERY]
                found.update(conn.execute(select(column).where(column.in_(chunk))).scalars())
        return found

    def catch_up_rollups(self) -> int:
        """Bring the hourly rollups up to date (SQLite); returns the rows added."""
        return rollups.catch_up(self.engine)

    def close(self) -> None:
        self.engine.dispose()
