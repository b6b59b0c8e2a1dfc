"""The writer: a bounded buffer of finished rows, written in batches, never blocking.

The runtime's background thread hands it rows and calls ``flush`` at least every
``flush_interval_s`` and at exit. A failed write (database locked past the busy timeout,
read-only file, disk full) keeps the rows for the next try; only when the buffer is full
are the oldest records dropped, counted, and the count written as a ``losses`` row as
soon as the database accepts writes again.
"""

from __future__ import annotations

import datetime as _dt
import logging
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

from footprint._forksafe import no_fork

log = logging.getLogger("footprint")

BATCH_ROWS = 5_000  # per transaction; also how long a fork may wait (~50 ms)


class Writer:
    """Buffers records, idle rows and loss counts; ``flush`` writes them in batches."""

    def __init__(
        self, open_store: Callable[[], Any], host: str, pid: int, max_buffered: int = 200_000
    ) -> None:
        self._open_store = open_store
        self.store: Any = None
        self.host = host
        self.pid = pid
        self.max_buffered = max_buffered
        self.records: list[dict[str, Any]] = []
        self.idle_rows: list[dict[str, Any]] = []
        self._losses: Counter[str] = Counter()
        self.written = 0
        self.dropped = 0
        self.failed_flushes = 0
        self.last_error: str | None = None
        self._lock = threading.RLock()

    def open_store(self) -> Any:
        """The store, opened on first use (not on the caller's hot path)."""
        if self.store is None:
            self.store = self._open_store()
        return self.store

    def abandon(self) -> int:
        """Give up on what is still buffered (at exit): count it as dropped."""
        with self._lock:
            lost = len(self.records)
            self.records.clear()
            self.idle_rows.clear()
            self.dropped += lost
            return lost

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
                self._losses["write_failed"] += overflow
            idle_overflow = len(self.idle_rows) - self.max_buffered
            if idle_overflow > 0:
                del self.idle_rows[:idle_overflow]
                self._losses["idle_rows_overflow"] += idle_overflow

    def count_loss(self, kind: str, count: int) -> None:
        """Record ``count`` things lost for ``kind``; written with the next batch."""
        if count > 0:
            with self._lock:
                self._losses[kind] += count

    def flush(self) -> int:
        """Write everything buffered; returns the number of records written.

        On failure the rows stay buffered, ``last_error`` says why and ``WriteFailed``
        is raised; the next flush tries again (reopening the database if needed).
        """
        written = 0
        with self._lock:
            while self.records or self.idle_rows or self._losses:
                records = self.records[:BATCH_ROWS]
                idle = self.idle_rows[:BATCH_ROWS]
                now = _dt.datetime.now(_dt.timezone.utc)
                losses = [
                    {"recorded_at": now, "kind": kind, "count": count, "host": self.host,
                     "pid": self.pid}
                    for kind, count in self._losses.items()
                ]  # fmt: skip
                try:
                    # A fork waits for this batch: a child must not inherit SQLite's or a
                    # driver's locks held mid-write by this thread.
                    with no_fork():
                        self.open_store().insert(records, idle, losses)
                except Exception as exc:
                    self.failed_flushes += 1
                    first = self.last_error is None
                    self.last_error = f"{type(exc).__name__}: {exc}".splitlines()[0]
                    if first:
                        log.warning("footprint: could not write records: %s", self.last_error)
                    raise WriteFailed(self.last_error) from exc
                del self.records[: len(records)]
                del self.idle_rows[: len(idle)]
                self._losses.clear()
                written += len(records)
                self.written += len(records)
        return written


class WriteFailed(RuntimeError):
    """A flush failed; the rows are still buffered."""
