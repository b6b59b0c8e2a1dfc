"""Opening the database and writing batches of records.

SQLite is opened in WAL mode with ``synchronous=NORMAL`` and a busy timeout so several
processes can write one file; PostgreSQL works through the same SQLAlchemy tables.
Writes are executemany batches of plain dicts through SQLAlchemy Core, one transaction per
batch: no ORM object per row.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, insert, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlmodel import SQLModel

from footprint.storage.models import SCHEMA_VERSION, IdleEnergy, Meta, QueryRecord

log = logging.getLogger("footprint")

SUPPORTED_SCHEMES = ("sqlite", "postgresql")


class StoreError(RuntimeError):
    """The database cannot be opened or used; the message says why."""


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
            "sqlite:///path or postgresql+psycopg://..."
        )
    return db


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def open_engine(db: str) -> Engine:
    """Create the engine and the tables; check the schema version."""
    url = normalize_db_url(db)
    is_sqlite = url.startswith("sqlite")
    if is_sqlite:
        path = make_url(url).database
        if path and path != ":memory:":
            parent = Path(path).parent
            if not parent.is_dir():
                raise StoreError(f"cannot create database {path}: folder {parent} does not exist")
    engine = create_engine(url, connect_args={"timeout": 10} if is_sqlite else {})
    if is_sqlite:
        event.listen(engine, "connect", _sqlite_pragmas)
    try:
        SQLModel.metadata.create_all(
            engine, tables=[QueryRecord.__table__, IdleEnergy.__table__, Meta.__table__]
        )
        _check_schema_version(engine)
    except StoreError:
        raise
    except Exception as exc:
        raise StoreError(f"cannot open database {url}: {exc}") from exc
    return engine


def _check_schema_version(engine: Engine) -> None:
    meta = Meta.__table__
    with engine.begin() as conn:
        row = conn.execute(select(meta.c.value).where(meta.c.key == "schema_version")).first()
        if row is None:
            conn.execute(insert(meta), [{"key": "schema_version", "value": str(SCHEMA_VERSION)}])
        elif int(row[0]) > SCHEMA_VERSION:
            raise StoreError(
                f"database schema version {row[0]} is newer than this footprint "
                f"(supports {SCHEMA_VERSION}); upgrade footprint to read it"
            )


class Store:
    """Batch writer over one database."""

    def __init__(self, db: str) -> None:
        self.url = normalize_db_url(db)
        self.engine = open_engine(db)
        self._queries = QueryRecord.__table__
        self._idle = IdleEnergy.__table__

    def write(self, records: list[dict[str, Any]], idle_rows: list[dict[str, Any]]) -> None:
        """Insert both batches in one transaction."""
        if not records and not idle_rows:
            return
        with self.engine.begin() as conn:
            if records:
                conn.execute(insert(self._queries), records)
            if idle_rows:
                conn.execute(insert(self._idle), idle_rows)

    def close(self) -> None:
        self.engine.dispose()
