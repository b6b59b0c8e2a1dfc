"""Opening the database a report reads: never written unless it may be.

A SQLite file the report may not write (file or folder) is read read-only, never written
(``probe_sqlite``); what cannot be read is one line, ``cannot read <file>: <why>``
(``ReportError``). The report writes nothing but the hourly rollups it brings up to date
(SQLite), and only to a file it may write.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from sqlalchemy import Engine, func, literal_column
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from footprint.reporting.request import ReportError
from footprint.storage import rollups
from footprint.storage.engine import normalize_db_url, open_engine, sqlite_path
from footprint.storage.errors import StoreError


@dataclass
class SqliteAccess:
    """How a SQLite file can be read, found by ``probe_sqlite``."""

    path: str
    uri: str  # a ``file:`` URI that opens it read-only (``mode=ro``, or ``immutable=1``)
    immutable: bool  # read with ``immutable=1``: no lock, no -shm (the folder is read-only)
    writable: bool  # the file and its folder may be written (rollups, migrations)
    schema_version: int | None


# SQLite's primary result codes that mean "cannot write or create here", not "cannot read".
_SQLITE_READONLY, _SQLITE_CANTOPEN = 8, 14


def _file_uri(path: str, **params: str) -> str:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return f"file:{quote(path)}?{query}"


def probe_sqlite(path: str, timeout_s: float = 10.0) -> SqliteAccess:
    """Open an existing SQLite file read-only and read its schema version, or say in one
    line (``ReportError``: ``cannot read <file>: <why>``) why it cannot be read.

    ``mode=ro`` first: it reads a WAL database as of its last commit, alongside a live
    writer. Where that fails for want of write access (a WAL database needs its -shm file,
    which SQLite creates in the file's folder), ``immutable=1``: no lock, no -shm; only
    when no write-ahead log holds changes it could not see. Nothing is written.
    """
    import sqlite3

    if not os.access(path, os.R_OK):
        raise ReportError(f"cannot read {path}: permission denied")
    folder = os.path.dirname(path) or "."
    writable = os.access(path, os.W_OK) and os.access(folder, os.W_OK)
    immutable = False
    uri = _file_uri(path, mode="ro")
    try:
        version = _probe_version(path, uri, timeout_s)
    except sqlite3.Error as exc:
        code = getattr(exc, "sqlite_errorcode", None)
        if code is None or code & 0xFF not in (_SQLITE_READONLY, _SQLITE_CANTOPEN):
            raise ReportError(f"cannot read {path}: {reason(exc)}") from None
        wal = path + "-wal"
        if os.path.exists(wal) and os.path.getsize(wal) > 0:
            raise ReportError(
                f"cannot read {path}: its write-ahead log {os.path.basename(wal)} holds "
                f"changes, and reading them needs write access to {folder} (for "
                f"{os.path.basename(path)}-shm; SQLite said: {reason(exc)}); run this "
                "as a user who may write there, or once the writer has stopped"
            ) from None
        immutable = True
        uri = _file_uri(path, mode="ro", immutable="1")
        try:
            version = _probe_version(path, uri, timeout_s)
        except sqlite3.Error as again:
            raise ReportError(f"cannot read {path}: {reason(again)}") from None
    from footprint.storage.models import SCHEMA_VERSION

    if version is not None and version > SCHEMA_VERSION:
        raise ReportError(
            f"cannot read {path}: database schema version {version} is newer than this "
            f"footprint (which knows up to {SCHEMA_VERSION}); upgrade footprint to use it"
        )
    return SqliteAccess(path, uri, immutable, writable and not immutable, version)


def _probe_version(path: str, uri: str, timeout_s: float) -> int | None:
    """The schema version stored in the file (None: footprint wrote no version yet)."""
    import sqlite3

    con = sqlite3.connect(uri, uri=True, timeout=timeout_s)
    try:
        tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master")}
        if "footprint_meta" not in tables:
            if tables:
                raise ReportError(f"cannot read {path}: not a footprint database")
            raise ReportError(f"cannot read {path}: an empty database (no footprint tables)")
        row = con.execute(
            "SELECT value FROM footprint_meta WHERE key = 'schema_version'"
        ).fetchone()
    finally:
        con.close()
    try:
        return None if row is None else int(row[0])
    except ValueError:
        raise ReportError(
            f"cannot read {path}: schema version {row[0]!r} is not a number"
        ) from None


def _asks_read_only(url: str) -> bool:
    query = make_url(url).query
    return str(query.get("mode", "")) == "ro" or str(query.get("immutable", "")) == "1"


def _check_read_only_schema(access: SqliteAccess) -> None:
    from footprint.storage.models import SCHEMA_VERSION

    version = access.schema_version
    if version != SCHEMA_VERSION:
        what = "has no schema version" if version is None else f"has schema version {version}"
        raise ReportError(
            f"cannot read {access.path} without writing it: it {what} and this footprint "
            f"reads version {SCHEMA_VERSION}; one run of footprint with write access to the "
            "file and its folder (footprint db info) brings it up to date"
        )


def read_only_engine(access: SqliteAccess, timeout_s: float = 10.0) -> Engine:
    """An engine on ``access.uri``: every connection read-only (any file name)."""
    import sqlite3

    from sqlalchemy import create_engine

    def connect() -> Any:
        return sqlite3.connect(access.uri, uri=True, timeout=timeout_s, check_same_thread=False)

    return create_engine("sqlite://", creator=connect)


def reading_db(db: str) -> str:
    """``db`` for the store's readers (``db info``, ``db export``): a SQLite file that
    cannot be written (file or folder), or given with ``mode=ro``, becomes a read-only URL
    (``mode=ro``, else ``immutable=1``, see ``probe_sqlite``); anything else is unchanged
    (a writable file opens as before: its schema may be brought up to date). A missing
    file is left to the store to report. ``ReportError``: one line, why it cannot be read.
    """
    try:
        url = normalize_db_url(db)
        path = sqlite_path(url)
    except (StoreError, ArgumentError):
        return db
    if path is None or not os.path.isfile(path):
        return db
    access = probe_sqlite(path)
    if access.writable and not _asks_read_only(url):
        return db
    _check_read_only_schema(access)
    if any(c in path for c in "?#%"):  # a URL cannot carry such a name through SQLAlchemy
        return db
    flags = "immutable=1&" if access.immutable else ""
    return f"sqlite:///file:{path}?{flags}mode=ro&uri=true"


def open_report_engine(db: str) -> Engine:
    """Open an existing database; a missing SQLite file is an error.

    The report writes nothing but the hourly rollups it brings up to date (SQLite), and
    only to a file it may write (file and folder); any other file it reads read-only
    (``probe_sqlite``). What cannot be read is one line: ``ReportError``.
    """
    try:
        url = normalize_db_url(db)
    except StoreError as exc:
        raise ReportError(str(exc)) from None
    path = sqlite_path(url)  # also the file of a sqlite:///file:…?mode=ro&uri=true URL
    if path is None:
        try:
            return open_engine(url, create=False)
        except StoreError as exc:
            raise ReportError(str(exc)) from None
    if not os.path.isfile(path):
        raise ReportError(missing_database(path))
    access = probe_sqlite(path)
    if access.writable and not _asks_read_only(url):
        try:
            return _with_read_pragmas(open_engine(url, create=False))
        except StoreError as exc:
            if "readonly" not in str(exc):
                raise ReportError(read_error(db, exc)) from None
    _check_read_only_schema(access)
    return _with_read_pragmas(read_only_engine(access))


DEMO_DB = "footprint-demo.db"  # where ``footprint demo`` writes by default


def missing_database(path: str) -> str:
    """Why there is nothing to report at ``path``, and how to name another database: with
    the exact command when ``footprint demo``'s database is beside it or in this folder."""
    text = (
        f"no database at {path}; name the database to read with --db PATH or the "
        "FOOTPRINT_DB environment variable"
    )
    folder = os.path.dirname(path) or "."
    for demo in dict.fromkeys([os.path.join(folder, DEMO_DB), DEMO_DB]):
        full = os.path.abspath(demo)
        if os.path.isfile(demo) and full != os.path.abspath(path):
            here = os.getcwd()
            shown = os.path.relpath(full) if os.path.commonpath([full, here]) == here else full
            command = f"footprint report --db {shlex.quote(shown)}"
            return f"{text}. footprint demo wrote its database to {shown}: {command}"
    return text


def _with_read_pragmas(engine: Engine) -> Engine:
    if engine.dialect.name == "sqlite":
        from sqlalchemy import event

        @event.listens_for(engine, "connect")
        def _read_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA temp_store=MEMORY")  # sorts of GROUP BY stay in memory
            # 16 MiB: the OS caches the file; a larger page cache only costs memory (1M
            # records: 1.0 s at 16 MiB, 1.2 s and 220 MB more at 256 MiB, here).
            cursor.execute("PRAGMA cache_size=-16384")
            cursor.close()

        engine.dispose()  # the pragmas apply to connections opened from now on
    return engine


def database_name(db: str) -> str:
    """The database as a message names it: a SQLite file's path, else its URL (no password)."""
    try:
        url = normalize_db_url(db)
        path = sqlite_path(url)
        if path is not None:
            return path
        return make_url(url).render_as_string(hide_password=True)
    except (StoreError, ArgumentError, ValueError):
        return db


def read_error(db: str, exc: BaseException) -> str:
    """One line for a database that could not be read: ``cannot read <file>: <SQLite's
    message>`` (a store's own message, such as ``no database at <file>``, as it is)."""
    why = reason(exc)
    if isinstance(exc, StoreError):
        head, sep, rest = why.partition(": ")
        if not (sep and head.startswith("cannot open database ")):
            return why
        why = rest  # "cannot open database <url>: <SQLite's message>"
    return f"cannot read {database_name(db)}: {why}"


def day_expr(engine: Engine, column: Any) -> Any:
    if engine.dialect.name == "sqlite":  # constants inline: SELECT and GROUP BY match
        return func.substr(column, literal_column("1"), literal_column("10"))
    return func.to_char(func.timezone("UTC", column), literal_column("'YYYY-MM-DD'"))


def reason(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def prepare_rollups(engine: Engine) -> str | None:
    """Bring the hourly rollups up to date: None when they can be read, else why not.

    ``catch_up`` takes SQLite's write lock; on a read-only file it fails, and the rollups
    are still complete when no query was written since the last catch-up.
    """
    try:
        rollups.catch_up(engine)
        return None
    except (SQLAlchemyError, OSError) as exc:
        why = reason(exc)
    try:
        if rollups.pending_rows(engine) == 0:
            return None
    except (SQLAlchemyError, OSError):
        pass
    return why
