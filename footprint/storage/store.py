"""Opening the database, keeping its schema current, and inserting batches.

SQLite is opened in WAL mode with ``synchronous=NORMAL`` and a busy timeout so several
processes can write one file; batches go through the driver's ``executemany`` with rows
as tuples (no ORM object, no per-row SQL compilation). PostgreSQL uses the same tables
through SQLAlchemy Core. One transaction per batch.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import math
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable
from operator import itemgetter
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Connection,
    DateTime,
    Engine,
    create_engine,
    event,
    func,
    insert,
    select,
    text,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import make_url
from sqlalchemy.exc import (
    ArgumentError,
    DataError,
    DBAPIError,
    IntegrityError,
    OperationalError,
    StatementError,
)
from sqlmodel import SQLModel

from footprint.storage import journal, rollups, sidefile
from footprint.storage.models import (
    SCHEMA_VERSION,
    IdleEnergy,
    Loss,
    Meta,
    QueryRecord,
    QueryRollup,
)

log = logging.getLogger("footprint")

SUPPORTED_SCHEMES = ("sqlite", "postgresql")
TABLES = [
    QueryRecord.__table__,
    IdleEnergy.__table__,
    Loss.__table__,
    QueryRollup.__table__,
    Meta.__table__,
]
IDLE_KEY = ("device_uuid", "minute", "host", "pid")

# Migrations: MIGRATIONS[v] takes a database at schema version v to v + 1, in the same
# transaction that records the new version. Each is written out in SQL, frozen: it must
# not follow later changes of the models. Each is idempotent (it adds only what is
# missing), so that several processes opening an old database at once all succeed, and
# because SQLite's driver commits DDL statements by themselves.


def _add_columns(conn: Connection, table: str, columns: list[tuple[str, str, str]]) -> None:
    """``ALTER TABLE table ADD COLUMN`` each (name, SQLite DDL, PostgreSQL DDL) missing."""
    if conn.dialect.name == "postgresql":
        for name, _, ddl in columns:
            conn.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {name} {ddl}")
        return
    present = {row[1] for row in conn.exec_driver_sql(f"PRAGMA table_info({table})")}
    for name, ddl, _ in columns:
        if name not in present:
            conn.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN {name} {ddl}")


def _v1_to_v2(conn: Connection) -> None:
    """Version 2: each record's energy uncertainty bound, and its sums in the rollups.

    Records written before have no bound (NULL). Their rollup rows get a sum of 0 over 0
    records that carry one: exactly the sums of those records, so no rollup is rebuilt,
    and rows not yet rolled up (SQLite) are summed the same way when they are.
    """
    _add_columns(conn, "queries", [("energy_uncertainty_j", "FLOAT", "DOUBLE PRECISION")])
    _add_columns(
        conn,
        "query_rollups",
        [
            ("energy_uncertainty_j", "FLOAT NOT NULL DEFAULT 0",
             "DOUBLE PRECISION NOT NULL DEFAULT 0"),
            ("uncertainty_queries", "BIGINT NOT NULL DEFAULT 0", "BIGINT NOT NULL DEFAULT 0"),
        ],
    )  # fmt: skip


def _v2_to_v3(conn: Connection) -> None:
    """Version 3: energy of calls never stored (running at exit, abandoned) per device and
    minute, so that stored queries + idle + lost = measured. Older rows lost none they knew
    of: 0. And 64-bit token counts on PostgreSQL (``integer`` before: a count over 2^31
    refused its whole batch); SQLite's INTEGER is 64-bit already.

    And who owns the GPU (``ownership``: rented | owned) with where its $/GPU-hour came
    from (``gpu_price_source``), on records and as rollup key columns. Older records and
    rollup rows get NULL (not known); their rollup rows keep their ``group_key`` (reports
    group by the key columns, so a later row of the same key under the longer group_key
    adds up with them)."""
    _add_columns(
        conn,
        "idle_energy",
        [("lost_energy_j", "FLOAT NOT NULL DEFAULT 0", "DOUBLE PRECISION NOT NULL DEFAULT 0"),
         ("measured_s", "FLOAT NOT NULL DEFAULT 0", "DOUBLE PRECISION NOT NULL DEFAULT 0")],
    )  # fmt: skip
    for table in ("queries", "query_rollups"):
        _add_columns(
            conn,
            table,
            [("ownership", "VARCHAR", "VARCHAR"), ("gpu_price_source", "VARCHAR", "VARCHAR")],
        )
    if conn.dialect.name == "postgresql":
        columns = conn.exec_driver_sql(
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_schema = current_schema() AND table_name = 'queries'"
            " AND column_name IN ('input_tokens', 'output_tokens') AND data_type = 'integer'"
            " ORDER BY column_name"
        )
        narrow = columns.scalars().all()
        if narrow:  # one rewrite of the table for both
            alters = ", ".join(f"ALTER COLUMN {name} TYPE BIGINT" for name in narrow)
            conn.exec_driver_sql(f"ALTER TABLE queries {alters}")


def _v3_to_v4(conn: Connection) -> None:
    """Version 4: the key a daemon's client gave each call (``span_key``, text: a random
    session token of the client process and its span id), indexed, so that a daemon can
    tell whether an end a client sent again after losing its connection (its
    acknowledgement lost) is stored already. Older records and records written
    in-process have none (NULL). Both dialects create the index only if it is missing."""
    _add_columns(conn, "queries", [("span_key", "VARCHAR", "VARCHAR")])
    conn.exec_driver_sql("CREATE INDEX IF NOT EXISTS ix_queries_span_key ON queries (span_key)")


MIGRATIONS: dict[int, Callable[[Connection], None]] = {1: _v1_to_v2, 2: _v2_to_v3, 3: _v3_to_v4}


class StoreError(RuntimeError):
    """The database cannot be opened or used; the message says why."""


def file_identity(path: str, contents: bool = False) -> tuple[int, ...] | None:
    """Which file is at ``path`` (device, inode; with ``contents``, also size and mtime),
    or None when there is none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if contents:
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    return (st.st_dev, st.st_ino)


class MalformedDatabase(StoreError):
    """SQLite says the file is corrupt ("database disk image is malformed", "file is not
    a database"): nothing is written into it, since what was written could not be read
    back. ``unchanged()`` tells whether that file is still the one at the path (until it is
    repaired, restored or moved away, trying again only finds the same damage)."""

    def __init__(self, path: str, detail: str) -> None:
        super().__init__(
            f"database {path} is malformed ({detail}); footprint does not write into it. "
            f"Repair it (sqlite3 {path} .recover) or move it away: a new one is then created"
        )
        self.path = path
        self.detail = detail
        self.identity = file_identity(path, contents=True)

    def unchanged(self) -> bool:
        return file_identity(self.path, contents=True) == self.identity


def _is_malformed(exc: BaseException) -> bool:
    """SQLITE_CORRUPT (11) or SQLITE_NOTADB (26), from the driver or wrapped by SQLAlchemy."""
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    if type(orig) is not sqlite3.DatabaseError:  # not its subclasses (locked, constraint…)
        return False
    code = getattr(orig, "sqlite_errorcode", None)  # Python >= 3.11
    if code is not None:
        return code & 0xFF in (11, 26)
    return "malformed" in str(orig) or "not a database" in str(orig)


def sqlite_integrity(path: str, busy_timeout_s: float = 10.0) -> str:
    """``PRAGMA quick_check`` of a SQLite file: ``ok``, ``malformed: <SQLite's words>``,
    or ``not checked: <why>`` (locked past the timeout, unreadable). Reads only; about
    0.6 s per million records (a full ``integrity_check`` takes 6× longer)."""
    try:
        con = sqlite3.connect(path, timeout=busy_timeout_s)
    except sqlite3.Error as exc:
        return f"not checked: {exc}"
    try:
        found = [row[0] for row in con.execute("PRAGMA quick_check(5)")]
    except sqlite3.DatabaseError as exc:
        if _is_malformed(exc):
            return f"malformed: {exc}"
        return f"not checked: {exc}"
    finally:
        con.close()
    if found == ["ok"]:
        return "ok"
    return "malformed: " + "; ".join(" ".join(str(line).split()) for line in found)


# Keys per query of ``Store.stored_span_keys``: SQLite before 3.32 binds at most 999.
SPAN_KEYS_PER_QUERY = 500

# SQLSTATEs after which PostgreSQL asks the client to run the transaction again.
RETRY_SQLSTATES = frozenset({"40P01", "40001"})  # deadlock detected, serialization failure
RETRY_ATTEMPTS = 5
RETRY_PAUSE_S = 0.01  # doubled at each attempt, jittered ±50%

# Raised for a value before or by the driver: Python int over 64 bits, lone surrogate,
# NUL byte (psycopg's ValueError), a type with no SQL form, a key missing from a record.
_VALUE_ERRORS = (ValueError, OverflowError, TypeError, KeyError)


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


def is_data_error(exc: BaseException) -> bool:
    """Whether ``exc`` refuses the rows for what they hold rather than for the state of
    the database.

    Rows refused for their values (out of range, not encodable, NUL in text, NOT NULL,
    a type the driver cannot bind) are refused again at every retry, so the writer
    isolates them; a database that is locked, read-only, full, unreachable or corrupt
    (OperationalError, ``MalformedDatabase``) is worth retrying with the rows kept.
    """
    if isinstance(exc, StoreError):
        return False
    if isinstance(exc, (IntegrityError, DataError)):  # SQLAlchemy's: SQLSTATE classes 23, 22
        return True
    if isinstance(exc, StatementError):  # DBAPIError and a bind processor's error alike
        if exc.orig is None:
            return False
        exc = exc.orig
    if isinstance(exc, (sqlite3.IntegrityError, sqlite3.DataError)):
        return True
    if isinstance(exc, Exception) and type(exc).__name__ == "ProgrammingError":
        text = str(exc)  # sqlite3 and psycopg: a value of a type with no SQL form
        return "binding parameter" in text or "cannot adapt" in text
    sqlstate = getattr(exc, "sqlstate", None) or ""
    return sqlstate[:2] in ("22", "23") or isinstance(exc, _VALUE_ERRORS)


def normalize_db_url(db: str) -> str:
    """A SQLAlchemy URL, or a plain file path turned into ``sqlite:///<absolute path>``."""
    if "://" not in db:
        return f"sqlite:///{Path(db).expanduser().resolve()}"
    try:
        url = make_url(db)
    except ArgumentError as exc:
        raise StoreError(f"not a database URL: {db!r} ({exc})") from None
    if url.get_backend_name() not in SUPPORTED_SCHEMES:
        raise StoreError(
            f"unsupported database scheme {url.drivername!r}; use a file path, "
            "sqlite:///path or postgresql+psycopg://user@host/db"
        )
    return db


def sqlite_path(url: str) -> str | None:
    """The file of a SQLite URL (None for other databases and in-memory SQLite)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    database = parsed.database
    if str(parsed.query.get("uri", "")).lower() in ("true", "1") and database.startswith("file:"):
        database = database.removeprefix("file:")  # sqlite:///file:path?mode=ro&uri=true
    return database


def _sqlite_pragmas(busy_timeout_s: float) -> Callable[[Any, Any], None]:
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    return on_connect


def _postgres_connect_args(
    url: str, timeout_s: float, statement_timeout_s: float | None = None
) -> dict[str, Any]:
    """libpq's connect timeout and the server's lock (and statement) timeouts.

    A server that accepts the connection but never answers, or a table another session
    holds locked, would otherwise hang a write (and the exit waiting for it) for minutes.
    What the user set is kept: ``connect_timeout`` or ``PGCONNECT_TIMEOUT``, and a
    ``statement_timeout`` or ``lock_timeout`` in the URL's ``options`` (or, without one,
    in ``PGOPTIONS``, whose other settings are kept too: an ``options`` argument replaces
    ``PGOPTIONS``). libpq rounds a connect timeout under 2 s up to 2 s.
    """
    query = make_url(url).query
    args: dict[str, Any] = {}
    if "connect_timeout" not in query and not os.environ.get("PGCONNECT_TIMEOUT"):
        args["connect_timeout"] = max(1, math.ceil(timeout_s))
    given = query.get("options", os.environ.get("PGOPTIONS", ""))
    options = " ".join(given) if isinstance(given, tuple) else given
    timeouts = {"statement_timeout": statement_timeout_s, "lock_timeout": timeout_s}
    added = [
        f"-c {name}={max(1, round(seconds * 1000))}"  # in ms; 0 would mean no timeout
        for name, seconds in timeouts.items()
        if seconds is not None and name not in options
    ]
    if added:
        args["options"] = " ".join([options, *added]).strip()
    return args


def open_engine(
    db: str,
    *,
    create: bool = True,
    busy_timeout_s: float = 10.0,
    statement_timeout_s: float | None = None,
) -> Engine:
    """Create the engine, the tables (``create``) and bring the schema up to date.

    ``busy_timeout_s`` bounds every wait on the database: SQLite's busy timeout;
    PostgreSQL's connect and lock timeouts; a connection from the pool.
    ``statement_timeout_s`` bounds each PostgreSQL statement: the store's writes set it,
    long reads (reports, exports, rebuilding the rollups) do not.
    Raises ``StoreError`` with a clear reason: unsupported scheme, missing folder,
    unreadable file, missing driver, unreachable server, or a schema newer than this
    footprint.
    """
    url = normalize_db_url(db)
    path = sqlite_path(url)
    if path is not None:
        folder = Path(path).parent
        if not folder.is_dir():
            raise StoreError(f"cannot create database {path}: folder {folder} does not exist")
        if not create and not Path(path).exists():
            raise StoreError(f"no database at {path}")
    is_sqlite = url.startswith("sqlite")
    if is_sqlite:
        connect_args: dict[str, Any] = {"timeout": busy_timeout_s} if path else {}
    else:
        connect_args = _postgres_connect_args(url, busy_timeout_s, statement_timeout_s)
    pooled = {"pool_timeout": busy_timeout_s} if path or not is_sqlite else {}  # a QueuePool
    try:
        engine = create_engine(url, connect_args=connect_args, **pooled)
    except ModuleNotFoundError as exc:
        raise StoreError(
            f"the driver for {make_url(url).drivername} is not installed ({exc.name}); "
            "for PostgreSQL: pip install 'footprint[postgres]'"
        ) from None
    if is_sqlite:
        event.listen(engine, "connect", _sqlite_pragmas(busy_timeout_s))
    else:  # a server that cannot be reached is not retried: it waited out its timeout
        try:
            engine.connect().close()
        except DBAPIError as exc:
            engine.dispose()
            raise StoreError(f"cannot open database {url}: {_reason(exc)}") from None
    last_error: Exception | None = None
    deadline = time.monotonic() + busy_timeout_s  # a timed-out attempt is not retried
    for attempt in range(5):  # several processes may create the same fresh file at once
        try:
            if create:
                SQLModel.metadata.create_all(engine, tables=TABLES)
            _migrate(engine)
            return engine
        except StoreError:
            engine.dispose()
            raise
        except (OperationalError, IntegrityError) as exc:
            last_error = exc
            pause = 0.05 * (attempt + 1)
            if time.monotonic() + pause > deadline:
                break
            time.sleep(pause)
        except Exception as exc:
            last_error = exc
            break
    engine.dispose()
    raise StoreError(f"cannot open database {url}: {_reason(last_error)}")


def _reason(exc: BaseException | None) -> str:
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        return str(exc.orig).strip().splitlines()[0]
    return str(exc)


def schema_version(conn: Connection) -> int | None:
    meta = Meta.__table__
    row = conn.execute(select(meta.c.value).where(meta.c.key == "schema_version")).first()
    return None if row is None else int(row[0])


def _migrate(engine: Engine) -> None:
    meta = Meta.__table__
    with engine.begin() as conn:
        version = schema_version(conn)
        if version is None:
            conn.execute(insert(meta), [{"key": "schema_version", "value": str(SCHEMA_VERSION)}])
            return
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"database schema version {version} is newer than this footprint "
                f"(which knows up to {SCHEMA_VERSION}); upgrade footprint to use it"
            )
        if version == SCHEMA_VERSION:
            return  # nothing to write: read-only databases open too
        while version < SCHEMA_VERSION:
            step = MIGRATIONS.get(version)
            if step is None:
                raise StoreError(f"no migration from schema version {version}")
            step(conn)
            version += 1
            log.info("footprint: migrated database to schema version %d", version)
        conn.execute(meta.update().where(meta.c.key == "schema_version").values(value=str(version)))


def _sqlite_datetime(value: Any) -> Any:
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
        return _sqlite_datetime(value)
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
            f"utc({lookup.format(name=repr(name))})" if name in datetimes
            else lookup.format(name=repr(name))
            for name in columns
        ]  # fmt: skip
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


def _is_malformed_text(message: str) -> bool:
    return "database disk image is malformed" in message or "file is not a database" in message


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
            if self.path is not None and _is_malformed_text(str(exc)):
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
        if self.identity is None:
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

    @staticmethod
    def _plan(table: Any) -> tuple[str, Callable[[dict], tuple]]:
        columns = [c.name for c in table.columns if c.name != "id"]
        datetimes = {c.name for c in table.columns if isinstance(c.type, DateTime)}
        placeholders = ", ".join("?" * len(columns))
        sql = f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({placeholders})"
        if table.name == IdleEnergy.__table__.name:
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
        queries, idle = QueryRecord.__table__, IdleEnergy.__table__
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
                conn.execute(insert(Loss.__table__), list(losses))

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
            if _is_malformed(exc) and self.path is not None:
                raise MalformedDatabase(self.path, str(exc)) from exc
            raise
        finally:
            connection.close()

    def stored_span_keys(self, keys: list[str]) -> set[str]:
        """Which of ``keys`` (``queries.span_key``) are stored: one indexed read, in
        chunks of ``SPAN_KEYS_PER_QUERY`` (under SQLite's limit on bound variables).

        Safe from any thread (the engine's pool is); raises what the database raises."""
        table = QueryRecord.__table__
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


def database_info(db: str) -> dict[str, Any]:
    """Schema version, row counts, size on disk, losses recorded and, for SQLite, the
    file's integrity (``PRAGMA quick_check``: ``ok`` or ``malformed: <SQLite's words>``;
    always ``ok`` for PostgreSQL), for ``db info``.

    A malformed file is reported, not raised: what cannot be read of it is left out and
    ``error`` says why.
    """
    url = normalize_db_url(db)
    path = sqlite_path(url)
    integrity = "ok"
    if path is not None and os.path.exists(path):
        integrity = sqlite_integrity(path)
    try:
        info = _database_info(db, url)
    except (StoreError, DBAPIError) as exc:
        if not integrity.startswith("malformed"):
            raise
        info = {"db": url, "error": _reason(exc).removeprefix(f"cannot open database {url}: ")}
        info["size_bytes"] = _sqlite_size_bytes(path) if path is not None else None
    info["integrity"] = integrity
    return info


def journal_base(url: str) -> str | None:
    """What the call journals of the database at ``url`` are named after: its SQLite
    file, or for a server database a name under the runtime directory (None in memory)."""
    path = sqlite_path(url)
    if path is not None or url.startswith("sqlite"):
        return path
    return journal.server_base(url)


def _sqlite_size_bytes(path: str) -> int:
    return sum(
        Path(p).stat().st_size for p in (path, path + "-wal", path + "-shm") if Path(p).exists()
    )


def _database_info(db: str, url: str) -> dict[str, Any]:
    engine = open_engine(db, create=False)
    try:
        with engine.connect() as conn:
            info: dict[str, Any] = {"db": url, "schema_version": schema_version(conn)}
            for table in TABLES[:4]:
                count = select(func.count()).select_from(table)
                info[f"{table.name}_rows"] = conn.execute(count).scalar_one()
            losses = Loss.__table__
            by_kind = conn.execute(
                select(losses.c.kind, func.sum(losses.c.count)).group_by(losses.c.kind)
            ).all()
            info["losses"] = {kind: int(total) for kind, total in by_kind}
            path = sqlite_path(url)
            base = journal_base(url)
            died = journal.pending_counts(base) if base is not None else 0
            if died:  # not moved yet: counted by dead processes' journals
                kind = journal.UNSAVED_KIND
                info["losses"][kind] = info["losses"].get(kind, 0) + died
            # Counts kept in the side or fallback files (the database could not take
            # them then), not moved into the table yet: lost all the same.
            waiting, files = sidefile.pending(path) if path is not None else ({}, [])
            for kind, count in waiting.items():
                info["losses"][kind] = info["losses"].get(kind, 0) + count
            info["lost_pending"] = sum(waiting.values())
            if files:
                info["lost_pending_in"] = files
            info["rollup_pending_rows"] = rollups.pending_rows(engine)
            info["lost_total"] = sum(info["losses"].values())
            queries = QueryRecord.__table__
            first, last = conn.execute(
                select(func.min(queries.c.started_at), func.max(queries.c.started_at))
            ).one()
            info["first_query_at"] = first
            info["last_query_at"] = last
            path = sqlite_path(url)
            if path is not None:
                info["size_bytes"] = _sqlite_size_bytes(path)
            else:
                size = text(
                    "SELECT pg_total_relation_size('queries')"
                    " + pg_total_relation_size('idle_energy')"
                )
                info["size_bytes"] = conn.execute(size).scalar_one()
    finally:
        engine.dispose()
    return info
