"""Loss counts kept beside a SQLite database until it can be written.

At exit the writer may still hold records it could not store (database locked, disk
full, file read-only). Their count belongs in the ``losses`` table, which cannot be
written just then, so it is appended as one JSON line per kind to ``<database>.losses``::

    {"recorded_at": "2026-05-01T10:00:00+00:00", "kind": "unsaved_at_exit", "count": 24000,
     "host": "gpu-7", "pid": 4242}

The next store that opens the database and can write moves those lines into ``losses``
and deletes the file (``move_into``). The file is first renamed to a name of this
process's own, so that two processes opening the database at once move each line once,
and a process appending at exit meanwhile starts a new file instead of losing its line.

PostgreSQL has no side file: there the count is only logged.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("footprint")

SUFFIX = ".losses"


def side_path(database_path: str) -> Path:
    """The side file of a SQLite database file."""
    return Path(database_path + SUFFIX)


def append(path: Path, kinds: dict[str, int], host: str, pid: int) -> bool:
    """Append one line per kind with a positive count; False if the file cannot be
    written (read-only folder, full disk): the caller then logs the counts."""
    now = _dt.datetime.now(_dt.timezone.utc).isoformat()
    lines = "".join(
        json.dumps({"recorded_at": now, "kind": kind, "count": count, "host": host, "pid": pid})
        + "\n"
        for kind, count in kinds.items()
        if count > 0
    )
    if not lines:
        return True
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(lines)
            f.flush()
            os.fsync(f.fileno())
    except OSError:
        return False
    return True


def _parse(line: str) -> dict[str, Any] | None:
    """A ``losses`` row from one line, or None if the line is not one (torn, edited)."""
    try:
        raw = json.loads(line)
        row = {
            "recorded_at": _dt.datetime.fromisoformat(raw["recorded_at"]),
            "kind": str(raw["kind"]),
            "count": int(raw["count"]),
            "host": str(raw["host"]),
            "pid": int(raw["pid"]),
        }
        for name in ("kind", "host"):
            row[name].encode("utf-8")  # a lone surrogate would be refused at every try
    except (ValueError, TypeError, KeyError):
        return None
    if row["recorded_at"].tzinfo is None:
        row["recorded_at"] = row["recorded_at"].replace(tzinfo=_dt.timezone.utc)
    return row if 0 < row["count"] < 2**63 else None


def move_into(path: Path, insert: Callable[[list[dict[str, Any]]], None]) -> int:
    """Move the side file's lines into ``losses`` with ``insert`` (one transaction);
    returns the rows moved. If ``insert`` fails the lines go back to the side file."""
    claimed = path.with_name(f"{path.name}.moving-{os.getpid()}")
    try:
        os.replace(path, claimed)
    except OSError:  # gone (another process took it) or not ours to move
        return 0
    try:
        text = claimed.read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    rows = [row for row in map(_parse, text.splitlines()) if row is not None]
    unreadable = sum(1 for line in text.splitlines() if line.strip()) - len(rows)
    if unreadable:
        log.warning("footprint: %d unreadable lines in %s were skipped", unreadable, path)
    try:
        if rows:
            insert(rows)
    except Exception as exc:  # locked, read-only: keep them for a later try
        log.debug("footprint: loss counts stay in %s for now: %s", path, exc)
        _put_back(claimed, path, text)
        return 0
    claimed.unlink(missing_ok=True)
    if rows:
        log.info("footprint: moved %d loss counts from %s into the losses table", len(rows), path)
    return len(rows)


def _put_back(claimed: Path, path: Path, text: str) -> None:
    """Return the claimed lines to the side file (appending: it may have a new line)."""
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(text)
        claimed.unlink(missing_ok=True)
    except OSError:
        pass  # the claimed file stays, named after this process
