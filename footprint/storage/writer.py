"""The writer: a bounded buffer of finished rows, written in batches, never blocking.

The runtime's background thread hands it rows and calls ``flush`` at least every
``flush_interval_s`` and at exit. A failed write (database locked past the busy timeout,
read-only file, disk full) keeps the rows for the next try; only when the buffer is full
are the oldest records dropped, counted, and the count written as a ``losses`` row as
soon as the database accepts writes again.

A batch refused for what it holds (a value out of range, text that cannot be encoded: see
``errors.is_data_error``) is written in halves instead: the good rows at once, each row
refused alone dropped and counted (``losses`` kind ``rejected:<error>``, ``rejected``).
A SQLite file deleted or replaced while open is left for the one at the path; a
malformed one is not written into until it changes. What is still buffered at exit is
counted beside the database (``footprint.storage.sidefile``) when the database cannot
take the count.

A database that stays unwritable (disk full, folder removed, file read-only) is told from
one that is only busy: the counts of records dropped meanwhile are kept at once where
the next process finds them (the side file, else its reserve on a full disk, else a
fallback file under the runtime directory: ``sidefile.save``), not only in memory, at
most every ``SPILL_EVERY_S``. A full disk is said in one line (again at most every
``DISK_FULL_LOG_EVERY_S``), naming where the counts go. The loss counts and where they
are kept are ``footprint.storage.losses``.
"""

from __future__ import annotations

import errno
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

from footprint._forksafe import no_fork
from footprint.storage.losses import (
    Backlog,
    LossCounts,
    LossKey,
    counts_text,
    loss_rows,
    row_counts,
)

log = logging.getLogger("footprint")

BATCH_ROWS = 5_000  # per transaction; also how long a fork may wait (~50 ms)
_FULL_ERRNOS = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})


class Writer:
    """Buffers records, idle rows and loss counts; ``flush`` writes them in batches.

    ``db`` (the database URL or path) names the side file that ``abandon`` writes when
    the store was never opened; without it, the open store's URL is used.
    """

    def __init__(
        self,
        open_store: Callable[[], Any],
        host: str,
        pid: int,
        max_buffered: int = 200_000,
        db: str | None = None,
    ) -> None:
        self._open_store = open_store
        self.store: Any = None
        self.host = host
        self.pid = pid
        self.max_buffered = max_buffered
        self.db = db
        self.records: list[dict[str, Any]] = []
        self.idle_rows: list[dict[str, Any]] = []
        self._losses = LossCounts(host, pid, self._database_path)
        self.written = 0
        self.dropped = 0
        self.rejected = 0  # records the database refused for their values, dropped
        self.failed_flushes = 0
        self.last_error: str | None = None
        self.losses_saved_to: str | None = None  # the side file abandon() wrote, if any
        self._malformed: Any = None  # the MalformedDatabase that stopped the writes
        self._written_since_open = 0
        self._warned: set[str] = set()
        self.unwritable: str | None = None  # why the last flush failed, if it stays so
        self._lock = threading.RLock()

    def open_store(self) -> Any:
        """The store, opened on first use (not on the caller's hot path)."""
        if self.store is None:
            self.store = self._open_store()
            self._written_since_open = 0
        return self.store

    def abandon(self) -> int:
        """Give up on what is still buffered (at exit): count it as dropped, and keep the
        counts (with those not yet written) beside a SQLite database or in its fallback
        file (``save_loss_counts``), moved into ``losses`` by the next process that can
        write it. Where neither can be written (PostgreSQL), the counts are logged.
        Returns the records given up."""
        with self._lock:
            lost = len(self.records)
            kinds = self._losses.take_all()
            kinds[self._losses.own("unsaved_at_exit")] += lost
            kinds[self._losses.own("unsaved_idle_rows")] += len(self.idle_rows)
            self.records.clear()
            self.idle_rows.clear()
            self.dropped += lost
            kinds = +kinds  # positive counts only
            if kinds:
                self.save_loss_counts(kinds)
            return lost

    def save_loss_counts(self, kinds: Mapping[str, int] | Mapping[LossKey, int]) -> str | None:
        """Keep loss counts the database cannot take now where the next process that
        opens it finds them, and log them: the side file beside it, else (disk full) its
        reserve, else the fallback file under the runtime directory (``sidefile.save``).
        Returns that file, or None when there is none (PostgreSQL, nothing writable):
        then they are only logged. Takes no lock: the runtime may call it while a write
        still hangs at exit. Plain kinds are this writer's process's own."""
        where = self._losses.save(kinds)
        if where is not None:
            self.losses_saved_to = where
        return where

    def journal_base(self) -> str | None:
        """What the call journal is named after: the SQLite file, else (a server database)
        a name under the runtime directory (``journal.server_base``)."""
        from footprint.storage.engine import normalize_db_url
        from footprint.storage.info import journal_base

        try:
            url = getattr(self.store, "url", None) or (self.db and normalize_db_url(self.db))
            return journal_base(url) if url else None
        except Exception:  # a URL that never opened
            return None

    def _database_path(self) -> str | None:
        """The SQLite file of this writer's database (None for PostgreSQL or unknown)."""
        from footprint.storage.engine import normalize_db_url, sqlite_path

        try:
            url = getattr(self.store, "url", None) or (self.db and normalize_db_url(self.db))
            return sqlite_path(url) if url else None
        except Exception:  # a URL that never opened
            return None

    def switch_database(self, db: str, then: Callable[[], None] | None = None) -> None:
        """Write into ``db`` from the next flush on (between two writes: the one under
        way ends first); ``then`` runs at that point too, before the next write."""
        with self._lock:
            self.db = db
            self.close()
            if then is not None:
                then()

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None

    @property
    def buffered(self) -> int:
        return len(self.records)

    def submit(self, records: list[dict[str, Any]], idle_rows: list[dict[str, Any]]) -> None:
        """Queue rows; if over capacity, drop the oldest records and count them."""
        with self._lock:
            self.records.extend(records)
            self.idle_rows.extend(idle_rows)
            overflow = len(self.records) - self.max_buffered
            if overflow > 0:
                del self.records[:overflow]
                self.dropped += overflow
                self._losses.add("write_failed", overflow)
            idle_overflow = len(self.idle_rows) - self.max_buffered
            if idle_overflow > 0:
                del self.idle_rows[:idle_overflow]
                self._losses.add("idle_rows_overflow", idle_overflow)

    def count_loss(
        self, kind: str, count: int, host: str | None = None, pid: int | None = None
    ) -> None:
        """Record ``count`` things lost for ``kind``; written with the next batch, under
        ``host`` and ``pid`` (a daemon client's) or else this writer's process."""
        if count > 0:
            with self._lock:
                self._losses.add(kind, count, host, pid)

    def flush(self) -> int:
        """Write everything buffered; returns the number of records written.

        On failure the rows stay buffered, ``last_error`` says why and ``WriteFailed``
        is raised; the next flush tries again (reopening the database if needed). Rows
        the database refuses for their values are dropped and counted, the others
        written (``_isolate``).
        """
        written = 0
        with self._lock:
            if self.records or self.idle_rows or self._losses:
                self._check_file()
            while self.records or self.idle_rows or self._losses:
                records = self.records[:BATCH_ROWS]
                idle = self.idle_rows[:BATCH_ROWS]
                counts = self._losses.pending()
                losses = loss_rows(counts)
                try:
                    with no_fork():
                        self.open_store()  # failing to open is never about the rows
                except Exception as exc:
                    self._failed(exc)
                try:
                    self._insert(records, idle, losses)
                except Exception as exc:
                    if not _is_data_error(exc):
                        self._failed(exc)
                    try:
                        written += self._isolate(records, idle, losses, exc)
                    except Exception as again:
                        self._failed(again)
                    continue
                del self.records[: len(records)]
                del self.idle_rows[: len(idle)]
                self._losses.settle(counts)
                self._count_written(len(records))
                written += len(records)
            self.unwritable = None
            waiting = getattr(self.store, "has_side_losses", None)
            if written and waiting is not None and waiting():
                with no_fork():  # counts left at another process's exit, or spilled
                    self.store.move_side_losses()
        return written

    def _insert(self, records: list[dict], idle: list[dict], losses: list[dict]) -> None:
        # A fork waits for this batch: a child must not inherit SQLite's or a driver's
        # locks held mid-write by this thread.
        with no_fork():
            self.open_store().insert(records, idle, losses)

    def _count_written(self, n: int) -> None:
        self.written += n
        self._written_since_open += n

    def _failed(self, exc: Exception) -> NoReturn:
        """The rows stay buffered: say why (once) and raise ``WriteFailed``."""
        from footprint.storage.errors import MalformedDatabase

        self.failed_flushes += 1
        self.last_error = f"{type(exc).__name__}: {exc}".splitlines()[0]
        self.unwritable = reason = None if isinstance(exc, MalformedDatabase) else _unwritable(exc)
        if isinstance(exc, MalformedDatabase):
            self._malformed = exc  # not written into (nor reopened) until the file changes
            self.close()
            first = f"malformed:{exc.path}" not in self._warned
            self._warned.add(f"malformed:{exc.path}")
            log.log(logging.WARNING if first else logging.DEBUG, "footprint: %s", exc)
        else:
            spilled = self._spill() if reason is not None else None
            if reason == "disk full":
                backlog = Backlog(len(self.records), self.dropped, self.max_buffered)
                url = getattr(self.store, "url", None) or self.db
                self._losses.say_disk_full(exc, spilled, backlog, url)
            elif "write" not in self._warned:
                self._warned.add("write")
                log.warning("footprint: could not write records: %s", self.last_error)
        raise WriteFailed(self.last_error, reason) from exc

    def _spill(self) -> str | None:
        """While the database stays unwritable: keep the counts of records dropped so far
        where the next process finds them (``LossCounts.spill``). Returns the file."""
        where = self._losses.spill()
        if where is not None:
            self.losses_saved_to = where
        return where

    def _check_file(self) -> None:
        """Before a flush: is the SQLite file open still the one at its path?

        A malformed file still there: ``WriteFailed`` at once, nothing tried (trying
        would only find the same damage, at the cost of a check of the whole file).
        A file removed or replaced while open: closed, counted (``database_replaced``),
        and the buffer written to the database at the path (a new one if none).
        """
        if self._malformed is not None:
            if self._malformed.unchanged():
                self.failed_flushes += 1
                raise WriteFailed(self.last_error or str(self._malformed))
            log.warning("footprint: %s changed; writing to it again", self._malformed.path)
            self._malformed = None
        replaced = getattr(self.store, "replaced", None)
        why = replaced() if replaced is not None else None
        if why is None:
            return
        log.warning(
            "footprint: the database file %s %s while footprint was writing to it: the %d "
            "records written since it was opened are not in the file now at that path "
            "(gone with the old file, or wherever it was moved); writing on into %s",
            self.store.path,
            why,
            self._written_since_open,
            "a new database there" if why == "was removed" else "the file now there",
        )
        old = self.store
        self.close()
        getattr(old, "discard_old_log", lambda: None)()
        self._losses.add("database_replaced", 1)

    def _isolate(
        self, records: list[dict], idle: list[dict], losses: list[dict], error: Exception
    ) -> int:
        """Write a batch refused for its data (``error``) in parts; returns records written.

        Records are written in halves, each half that fails again split again, in order:
        the rows done leave the buffer as they are done, so a database that becomes
        unavailable midway (the error is raised) leaves nothing written twice or lost.
        A record refused alone is dropped and counted; then idle rows the same way
        (``rejected_idle:<error>``), then the loss rows, which are dropped (and logged)
        if the database refuses them too.
        """

        def write_records(rows: list[dict]) -> None:
            self._insert(rows, [], [])

        def write_idle(rows: list[dict]) -> None:
            self._insert([], rows, [])

        known = None if idle or losses else error  # else the records may be fine
        written = self._bisect(records, known, write_records, self.records, "rejected")
        try:
            self._insert([], idle, losses)
        except Exception as exc:
            if not _is_data_error(exc):
                raise
            known = None if losses else exc
            self._bisect(idle, known, write_idle, self.idle_rows, "rejected_idle")
            try:
                self._insert([], [], losses)
            except Exception as refused:
                if not _is_data_error(refused):
                    raise
                counts = counts_text(row_counts(losses))
                log.warning("footprint: loss counts refused, not stored: %s (%s)", counts, refused)
        else:
            del self.idle_rows[: len(idle)]
        self._losses.settle(row_counts(losses))
        return written

    def _bisect(
        self,
        rows: list[dict],
        error: Exception | None,
        write: Callable[[list[dict]], None],
        buffer: list[dict],
        kind: str,
    ) -> int:
        """Write ``rows`` (the head of ``buffer``; known to fail with ``error`` unless it
        is None), splitting what fails; a row refused alone is counted as
        ``kind:<error class>``. Each part done leaves ``buffer``. Returns rows written."""
        written = 0
        parts: list[tuple[list[dict], Exception | None]] = [(rows, error)] if rows else []
        while parts:
            part, failed = parts.pop()
            if failed is None:
                try:
                    write(part)
                    written += len(part)
                    del buffer[: len(part)]
                    if kind == "rejected":
                        self._count_written(len(part))
                    continue
                except Exception as exc:
                    if not _is_data_error(exc):
                        raise
                    failed = exc
            if len(part) > 1:
                half = len(part) // 2
                parts += [(part[half:], None), (part[:half], None)]  # the first half first
                continue
            self._reject(kind, failed)
            del buffer[:1]
        return written

    def _reject(self, kind: str, error: Exception) -> None:
        orig = getattr(error, "orig", None) or error
        name = f"{kind}:{type(orig).__name__}"
        self._losses.add(name, 1)
        if kind == "rejected":
            self.rejected += 1
        if name not in self._warned:
            self._warned.add(name)
            reason = f"{type(orig).__name__}: {orig}".splitlines()[0]
            log.warning(
                "footprint: the database refused a %s (%s); it is dropped and counted "
                "(losses kind %r), the rows around it are written",
                "record" if kind == "rejected" else "row of idle energy",
                reason,
                name,
            )


def _is_data_error(exc: Exception) -> bool:
    from footprint.storage.errors import is_data_error

    return is_data_error(exc)


def _unwritable(exc: BaseException) -> str | None:
    """``disk full``, ``folder removed``, ``read-only`` or ``cannot open`` when ``exc`` (or
    what it wraps) says the database stays unwritable; None for a lock, a timeout,
    anything else."""
    from footprint.storage.errors import StoreError

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = str(current)
        code = getattr(current, "sqlite_errorcode", None)  # Python >= 3.11
        if isinstance(current, OSError) and current.errno in _FULL_ERRNOS:
            return "disk full"
        if isinstance(code, int) and code & 0xFF == 13:  # SQLITE_FULL
            return "disk full"
        if getattr(current, "sqlstate", None) == "53100":  # PostgreSQL's disk_full
            return "disk full"
        if "database or disk is full" in text:
            return "disk full"
        if (isinstance(code, int) and code & 0xFF == 8) or "readonly database" in text:
            return "read-only"
        if "unable to open database file" in text:  # SQLITE_CANTOPEN: read-only file system…
            return "cannot open"
        if isinstance(current, StoreError) and ": folder " in text and "does not exist" in text:
            return "folder removed"
        current = getattr(current, "orig", None) or current.__cause__ or current.__context__
    return None


class WriteFailed(RuntimeError):
    """A flush failed; the rows are still buffered. ``reason``: ``disk full``, ``folder
    removed``, ``read-only`` or ``cannot open`` when the database stays unwritable (the
    writer keeps the counts of what it drops durably; a full disk it said in its own
    line), else None."""

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
