"""Log lines a daemon's clients can cause, rate-limited per key, so that a flood of clients
cannot flood the daemon's log: what is left out is counted and said in one line."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

log = logging.getLogger("footprint")

LOG_INTERVAL_S = 10.0  # log lines a peer can cause: a few per key per interval, then a count


class RateLimitedLog:
    """Log lines a peer can cause, bounded: at most ``burst`` per key per ``interval_s``;
    the ones left out are counted and said in one line when the key logs again (or at
    ``flush``), so a flood of clients cannot flood the log."""

    def __init__(self, interval_s: float = LOG_INTERVAL_S, burst: int = 3) -> None:
        self.interval_s = interval_s
        self.burst = burst
        self._lock = threading.Lock()
        self._windows: dict[str, list[float]] = {}  # key -> [start_s, logged, left out, level]

    def log(
        self,
        level: int,
        key: str,
        message: str,
        *args: Any,
        exc_info: bool = False,
        now_s: float | None = None,
        burst: int | None = None,
    ) -> None:
        now_s = time.monotonic() if now_s is None else now_s
        with self._lock:
            window = self._windows.get(key)
            summary = 0
            if window is None or now_s - window[0] >= self.interval_s:
                summary = int(window[2]) if window is not None else 0
                window = self._windows[key] = [now_s, 0, 0, level]
            emit = window[1] < (self.burst if burst is None else burst)
            window[1 if emit else 2] += 1
        if summary:
            self._summary(level, key, summary)
        if emit:
            log.log(level, message, *args, exc_info=exc_info)

    def warning(self, key: str, message: str, *args: Any, now_s: float | None = None) -> None:
        self.log(logging.WARNING, key, message, *args, now_s=now_s)

    def flush(self, now_s: float | None = None) -> None:
        """Say the counts of the intervals that ended with lines left out."""
        now_s = time.monotonic() if now_s is None else now_s
        due: list[tuple[int, str, int]] = []
        with self._lock:
            for key, window in list(self._windows.items()):
                if now_s - window[0] >= self.interval_s:
                    if window[2]:
                        due.append((int(window[3]), key, int(window[2])))
                    del self._windows[key]
        for level, key, count in due:
            self._summary(level, key, count)

    def _summary(self, level: int, key: str, count: int) -> None:
        log.log(
            level,
            "footprint daemon: %d more like it (%s) in the last %g s, not logged",
            count,
            key,
            self.interval_s,
        )
