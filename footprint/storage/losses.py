"""The writer's loss counts: kept by kind and process until written as ``losses`` rows.

When the database cannot take them (at exit, or while it stays unwritable) they are kept
where the next process that opens it finds them (``sidefile.save``): at exit at once
(``save``), meanwhile at most every ``SPILL_EVERY_S`` (``spill``). A full disk is said in
one line, again at most every ``DISK_FULL_LOG_EVERY_S`` (``say_disk_full``).
"""

from __future__ import annotations

import datetime as _dt
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from footprint._forksafe import no_fork

log = logging.getLogger("footprint")

SPILL_EVERY_S = 5.0  # counts of records dropped while the database stays unwritable
DISK_FULL_LOG_EVERY_S = 600.0


class LossKey(NamedTuple):
    """What a loss count is kept under: its kind and the process it belongs to (the
    writer's own, or a daemon client's, so a client's counts are attributed to it)."""

    kind: str
    host: str
    pid: int


class Backlog(NamedTuple):
    """The writer's records not stored, as the disk-full line tells them."""

    buffered: int  # kept in memory to retry
    dropped: int  # given up (counted)
    max_buffered: int


class LossCounts:
    """Loss counts not yet written, of this writer's process (``own``) or another's.

    ``database_path`` gives the SQLite file they are kept beside when the database
    cannot take them (None: PostgreSQL or unknown, then they are only logged). The
    caller holds its lock around the changes; ``save`` needs none.
    """

    def __init__(self, host: str, pid: int, database_path: Callable[[], str | None]) -> None:
        self.host = host
        self.pid = pid
        self._database_path = database_path
        self.counts: Counter[LossKey] = Counter()
        self._spilled_at: float | None = None
        self._disk_full_said_at: float | None = None

    def __bool__(self) -> bool:
        return bool(self.counts)

    def own(self, kind: str) -> LossKey:
        return LossKey(kind, self.host, self.pid)

    def add(self, kind: str, count: int, host: str | None = None, pid: int | None = None) -> None:
        """``count`` more of ``kind``, under ``host`` and ``pid`` or else this process."""
        key = LossKey(kind, self.host if host is None else host, self.pid if pid is None else pid)
        self.counts[key] += count

    def pending(self) -> Counter[LossKey]:
        """The positive counts, a copy."""
        return +self.counts

    def settle(self, counts: Mapping[LossKey, int]) -> None:
        """Take off what was written (or kept elsewhere)."""
        self.counts -= Counter(counts)

    def take_all(self) -> Counter[LossKey]:
        """Every count (a copy), none left."""
        taken = Counter(self.counts)
        self.counts.clear()
        return taken

    def keyed(self, kinds: Mapping[str, int] | Mapping[LossKey, int]) -> Counter[LossKey]:
        """``kinds`` under their keys; plain kinds are this process's own."""
        return Counter(
            {key if isinstance(key, LossKey) else self.own(key): n for key, n in kinds.items()}
        )

    def save(self, kinds: Mapping[str, int] | Mapping[LossKey, int]) -> str | None:
        """Keep counts the database cannot take now where the next process that opens it
        finds them, and log them (``Writer.save_loss_counts``). Returns that file, or
        None when there is none: then they are only logged."""
        from footprint.storage import sidefile

        keyed = self.keyed(kinds)
        path = self._database_path()
        where = _save_side(path, keyed) if path is not None else None
        if where is not None and path is not None:
            side = sidefile.side_path(path)
            log.warning(
                "footprint: could not store before exit: %s; counted in %s%s, moved into the "
                "losses table when the database can be written",
                counts_text(keyed),
                where,
                "" if where == side else f" ({side} could not be written)",
            )
            return str(where)
        log.warning(
            "footprint: could not store before exit, nor count it in the database: %s",
            counts_text(keyed),
        )
        return None

    def spill(self) -> str | None:
        """While the database stays unwritable: keep the counts so far where the next
        process finds them (``sidefile.save``), at most every ``SPILL_EVERY_S``, instead
        of in memory only. Returns the file, if written (the counts kept there are
        taken off)."""
        counts = +self.counts
        now = time.monotonic()
        if not counts or (self._spilled_at is not None and now - self._spilled_at < SPILL_EVERY_S):
            return None
        path = self._database_path()
        if path is None:
            return None
        self._spilled_at = now
        with no_fork():  # a child must not inherit the side file's lock
            where = _save_side(path, counts)
        if where is None:
            return None
        self.counts -= counts
        return str(where)

    def say_disk_full(
        self, exc: Exception, spilled: str | None, backlog: Backlog, url: str | None
    ) -> None:
        """One line for a full disk (of the database at ``url``), naming where the counts
        go; again at most every ``DISK_FULL_LOG_EVERY_S``."""
        from footprint.storage import sidefile

        now = time.monotonic()
        said = self._disk_full_said_at
        if said is not None and now - said < DISK_FULL_LOG_EVERY_S:
            return
        self._disk_full_said_at = now
        path = self._database_path()
        if spilled is not None:
            where = spilled
        elif path is not None:
            fallback = sidefile.fallback_paths(path)[0]
            where = f"{sidefile.side_path(path)}, else {fallback}"
        else:
            where = "the log at exit"
        orig = getattr(exc, "orig", None) or exc
        log.warning(
            "footprint: disk full at %s (%s): %d records not stored so far (%d kept in memory "
            "to retry, up to %d; %d dropped); what is not stored is counted in %s",
            path or _url_text(url),
            str(orig).splitlines()[0] if str(orig) else type(orig).__name__,
            backlog.buffered + backlog.dropped,
            backlog.buffered,
            backlog.max_buffered,
            backlog.dropped,
            where,
        )


def loss_rows(counts: Mapping[LossKey, int]) -> list[dict[str, Any]]:
    """The ``losses`` rows of ``counts``, recorded now."""
    now = _dt.datetime.now(_dt.timezone.utc)
    return [{"recorded_at": now, "count": count, **key._asdict()} for key, count in counts.items()]


def row_counts(rows: list[dict[str, Any]]) -> Counter[LossKey]:
    """The counts of ``losses`` rows (``loss_rows`` undone)."""
    return Counter({LossKey(row["kind"], row["host"], row["pid"]): row["count"] for row in rows})


def counts_text(counts: Mapping[LossKey, int]) -> str:
    """``3 write_failed, 2 unsaved_at_exit``: the counts summed by kind."""
    summed: Counter[str] = Counter()
    for key, count in counts.items():
        summed[key.kind] += count
    return ", ".join(f"{count} {kind}" for kind, count in summed.items())


def _save_side(path: str, counts: Counter[LossKey]) -> Path | None:
    """``sidefile.save`` for each process the counts belong to; the last file written
    (None when one of them could not be written anywhere)."""
    from footprint.storage import sidefile

    by_process: dict[tuple[str, int], dict[str, int]] = {}
    for key, count in counts.items():
        by_process.setdefault((key.host, key.pid), {})[key.kind] = count
    where: Path | None = None
    for (host, pid), kinds in by_process.items():
        where = sidefile.save(path, kinds, host, pid)
        if where is None:
            return None
    return where


def _url_text(url: str | None) -> str:
    """A database URL as a message names it: no password."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url or "").render_as_string(hide_password=True)
    except Exception:
        return "the database"
