"""What ``footprint db info`` shows of a database: schema version, row counts, losses
(recorded and still waiting in journals or side files), size and integrity; and where a
database's call journals are kept (``journal_base``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, func, select, text
from sqlalchemy.exc import DBAPIError

from footprint.storage import journal, rollups, sidefile
from footprint.storage.engine import normalize_db_url, open_engine, sqlite_path
from footprint.storage.errors import StoreError, error_reason, sqlite_integrity
from footprint.storage.migrations import TABLES, schema_version
from footprint.storage.models import Loss, QueryRecord, table_of


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
        reason = error_reason(exc).removeprefix(f"cannot open database {url}: ")
        info = {"db": url, "error": reason}
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
            _add_losses(info, conn, engine, url)
            queries = table_of(QueryRecord)
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


def _add_losses(info: dict[str, Any], conn: Connection, engine: Engine, url: str) -> None:
    """``losses`` (per kind: the table's, and counts not moved into it yet),
    ``lost_pending`` (``lost_pending_in``), ``rollup_pending_rows`` and ``lost_total``."""
    losses = table_of(Loss)
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
