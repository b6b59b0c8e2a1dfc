"""Opening a database: URLs and paths normalised, the engine created with SQLite's
pragmas or PostgreSQL's timeouts, the tables created and the schema brought up to date."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, OperationalError
from sqlmodel import SQLModel

from footprint.storage.errors import StoreError, error_reason
from footprint.storage.migrations import TABLES, migrate

SUPPORTED_SCHEMES = ("sqlite", "postgresql")


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
    engine = _new_engine(url, path, busy_timeout_s, statement_timeout_s)
    _create_schema(engine, url, create, busy_timeout_s)
    return engine


def _new_engine(
    url: str, path: str | None, busy_timeout_s: float, statement_timeout_s: float | None
) -> Engine:
    """The engine with its timeouts; a server database is connected to once, to fail here."""
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
            raise StoreError(f"cannot open database {url}: {error_reason(exc)}") from None
    return engine


def _create_schema(engine: Engine, url: str, create: bool, busy_timeout_s: float) -> None:
    """Create the tables (``create``) and migrate, retried while another process does the
    same; the engine is disposed of when that fails (``StoreError``)."""
    last_error: Exception | None = None
    deadline = time.monotonic() + busy_timeout_s  # a timed-out attempt is not retried
    for attempt in range(5):  # several processes may create the same fresh file at once
        try:
            if create:
                SQLModel.metadata.create_all(engine, tables=TABLES)
            migrate(engine)
            return
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
    raise StoreError(f"cannot open database {url}: {error_reason(last_error)}")
