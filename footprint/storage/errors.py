"""What goes wrong with a database, told apart: unusable (``StoreError``), corrupt
(``MalformedDatabase``, ``sqlite_integrity``), or refusing rows for their values
(``is_data_error``), so that the writer knows whether to retry, isolate or stop."""

from __future__ import annotations

import os
import sqlite3

from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, StatementError

# Raised for a value before or by the driver: Python int over 64 bits, lone surrogate,
# NUL byte (psycopg's ValueError), a type with no SQL form, a key missing from a record.
_VALUE_ERRORS = (ValueError, OverflowError, TypeError, KeyError)


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


def is_malformed(exc: BaseException) -> bool:
    """SQLITE_CORRUPT (11) or SQLITE_NOTADB (26), from the driver or wrapped by SQLAlchemy."""
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    if type(orig) is not sqlite3.DatabaseError:  # not its subclasses (locked, constraint…)
        return False
    code = getattr(orig, "sqlite_errorcode", None)  # Python >= 3.11
    if code is not None:
        return code & 0xFF in (11, 26)
    return "malformed" in str(orig) or "not a database" in str(orig)


def is_malformed_text(message: str) -> bool:
    """Whether an error's message is SQLite's for a corrupt file."""
    return "database disk image is malformed" in message or "file is not a database" in message


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
        if is_malformed(exc):
            return f"malformed: {exc}"
        return f"not checked: {exc}"
    finally:
        con.close()
    if found == ["ok"]:
        return "ok"
    return "malformed: " + "; ".join(" ".join(str(line).split()) for line in found)


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


def error_reason(exc: BaseException | None) -> str:
    """The first line of the driver's message (of what SQLAlchemy wraps), else ``str``."""
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        return str(exc.orig).strip().splitlines()[0]
    return str(exc)
