"""The database a command reads: ``--db`` or the settings' one; what stops a read, one line."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from footprint.cli._errors import InputError

DB_HELP = "Database URL or file path (default: settings, FOOTPRINT_DB)."


def settings_db(db: str | None) -> str:
    """``--db`` if given, else the database the settings (or FOOTPRINT_DB) name."""
    if db is not None:
        return db
    from footprint.config import resolve_settings

    try:
        return resolve_settings().db
    except ValueError as exc:
        raise InputError(str(exc)) from None


@contextlib.contextmanager
def reading(db: str) -> Iterator[None]:
    """Whatever stops a database from being read becomes one line (exit 2) naming it."""
    import sqlite3

    from sqlalchemy.exc import SQLAlchemyError

    from footprint.reporting.data import ReportError, read_error
    from footprint.storage.store import StoreError

    try:
        yield
    except ReportError as exc:
        raise InputError(str(exc)) from None
    except (StoreError, SQLAlchemyError, sqlite3.Error) as exc:
        raise InputError(read_error(db, exc)) from None
