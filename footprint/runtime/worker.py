"""The runtime's writer thread and its pace, and the exit flush's deadline.

A step every ``interval_s`` measured start to start (a long step does not push the next
one back: under heavy traffic records stay one interval late), at once when a flush is
requested, never again once stopped.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class WriterThread:
    """The thread that runs a runtime's cycles (``start``), woken by ``request_flush``
    and ``stop``."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._flush_requested = threading.Event()
        self._flushed = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, run: Callable[[], None]) -> None:
        """Run ``run`` on the thread (it calls ``pace`` once ready)."""
        self._thread = threading.Thread(target=run, name="footprint-writer", daemon=True)
        self._thread.start()

    @property
    def stopped(self) -> bool:
        """Whether ``stop`` was called."""
        return self._stop.is_set()

    def stop(self) -> None:
        """No step after the one running, if any."""
        self._stop.set()
        self._wake.set()

    def join(self) -> None:
        """Wait for the thread to end, if it was started."""
        if self._thread is not None:
            self._thread.join()

    def request_flush(self) -> None:
        """A step at once, with ``flush_all`` True (no waiting)."""
        self._flushed.clear()
        self._flush_requested.set()
        self._wake.set()

    def pace(self, interval_s: float, step: Callable[[bool], None]) -> None:
        """Call ``step(flush_all)`` at the thread's pace until ``stop``."""
        next_s = time.monotonic() + interval_s
        while not self._stop.is_set():
            self._wake.wait(max(0.0, next_s - time.monotonic()))
            self._wake.clear()
            if self._stop.is_set():
                return
            requested = self._flush_requested.is_set()
            self._flush_requested.clear()
            next_s = max(next_s + interval_s, time.monotonic()) if not requested else next_s
            try:
                step(requested)
            finally:
                if requested:
                    self._flushed.set()


def finished_within(finish: Callable[[], None], deadline_s: float) -> bool:
    """Run ``finish`` on its own thread, waiting for it at most ``deadline_s``: False if
    it is still running then (a database that stops answering cannot hold the process).
    Late in interpreter shutdown, when no thread can start, it runs here."""
    finisher = threading.Thread(target=finish, name="footprint-exit", daemon=True)
    try:
        finisher.start()
    except RuntimeError:  # no new threads this late in interpreter shutdown
        finish()
        return True
    finisher.join(deadline_s)
    return not finisher.is_alive()
