"""The process-wide hooks: fork, signals and exit, each installed once per process.

footprint lives inside someone else's server, so this module is the one place that
touches process-wide state. It knows the live trackers (``register``), not how they
measure, and hands each event to every one of them:

- **fork**: each tracker drops the runtime it inherited without touching it (the parent
  owns those spans, and its locks may be held by threads that do not exist in the child)
  and starts its own on first use, so its records carry the child's pid. Other modules
  of the runtime register their own child-side resets here (``at_fork_child``); the one
  other fork hook of the package is ``footprint._forksafe``'s lock, a leaf the storage
  layer below uses (it cannot import this module). A
  ``multiprocessing`` child leaves through ``os._exit``, which skips ``atexit``: its
  trackers are flushed by a ``multiprocessing`` finalizer instead;
- **signals**: SIGTERM (and SIGINT when Python's KeyboardInterrupt is not in charge) ask
  every runtime for a flush and hand over to the handler that was there before.
  Tracking carries on, since a server's own handler may drain requests for seconds. Only
  when the previous disposition was the default (the process is about to end) does the
  handler wait for the flushes, within ``SIGNAL_FLUSH_DEADLINE_S`` in all, before
  re-raising;
- **exit**: one ``atexit`` hook shuts every live tracker down.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any, Protocol

from footprint.runtime.spans import FootprintWarning

SIGNAL_FLUSH_DEADLINE_S = 2.0  # a dying process waits this long for its records


class Hooked(Protocol):
    """What the process hooks call on a live tracker."""

    def request_flush(self) -> None: ...

    def flush_before_exit(self, deadline_s: float) -> bool: ...

    def shutdown(self) -> None: ...

    def forget_after_fork(self) -> None: ...


_trackers: dict[int, Hooked] = {}  # id -> tracker, in the order registered
_fork_child_hooks: list[Callable[[], None]] = []
_pid = os.getpid()
_previous_handlers: dict[int, Any] = {}
_finalizer_pid = 0  # the process that registered a multiprocessing exit finalizer
_ending = False  # a signal's default action is about to end the process
_in_handler = False  # footprint's signal handler is asking for a flush
_reraise_warned = False  # the uvicorn warning was given


def register(tracker: Hooked) -> None:
    """Hand ``tracker`` the process's events until ``unregister``."""
    _trackers[id(tracker)] = tracker


def unregister(tracker: Hooked) -> None:
    _trackers.pop(id(tracker), None)


def live() -> list[Hooked]:
    """The registered trackers, oldest first."""
    return list(_trackers.values())


def at_fork_child(hook: Callable[[], None]) -> None:
    """Run ``hook`` in each forked child, before the trackers forget their runtimes."""
    _fork_child_hooks.append(hook)


def watch_process(measures_here: bool) -> None:
    """Once a runtime started: signal handlers (main thread only), the uvicorn warning
    (``measures_here``: not behind a daemon) and, in a multiprocessing child, a
    finalizer."""
    if measures_here:
        _warn_if_reraised()
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            _install_handler(signum)
    global _finalizer_pid
    mp = sys.modules.get("multiprocessing")
    if mp is not None and mp.parent_process() is not None and _finalizer_pid != os.getpid():
        from multiprocessing import util

        util.Finalize(None, _at_exit, exitpriority=100)  # runs before its os._exit
        _finalizer_pid = os.getpid()


def _warn_if_reraised() -> None:
    """Say once that a server which re-raises SIGTERM with its default action after
    draining (uvicorn) ends the process without the exit flush: its last calls are
    counted by the call journal, not stored."""
    global _reraise_warned
    if _reraise_warned:
        return
    try:
        handler = signal.getsignal(signal.SIGTERM)
    except (ValueError, OSError):
        return
    owner = getattr(handler, "__module__", None) or ""
    if owner.split(".")[0] != "uvicorn":
        return
    _reraise_warned = True
    warnings.warn(
        "footprint: uvicorn ends a worker on SIGTERM without Python's exit: the calls of "
        "its last flush interval are counted as lost (losses kind unsaved_process_died), "
        "not stored; run `footprint daemon` beside the server to store them",
        FootprintWarning,
        stacklevel=6,
    )


def _install_handler(signum: int) -> None:
    if signum in _previous_handlers:
        return  # once per process, whatever the number of runtimes
    try:
        previous = signal.getsignal(signum)
    except (ValueError, OSError):
        return
    if previous == signal.SIG_IGN or previous is None:
        return  # ignored on purpose, or set outside Python: leave it alone
    if signum == signal.SIGINT and previous is signal.default_int_handler:
        return  # Python's KeyboardInterrupt unwinds to the atexit flush
    _previous_handlers[signum] = previous
    try:
        signal.signal(signum, _on_signal)
    except (ValueError, OSError):
        del _previous_handlers[signum]


def _on_signal(signum: int, frame: Any) -> None:
    global _in_handler, _ending
    previous = _previous_handlers.get(signum, signal.SIG_DFL)
    if callable(previous):
        # A signal arriving while this handler runs (interrupting it inside an Event's
        # lock) must not take that lock again: only the outer call asks for the flush.
        if not _in_handler:
            _in_handler = True
            try:
                for tracker in live():
                    tracker.request_flush()  # the server drains; tracking carries on
            finally:
                _in_handler = False
        previous(signum, frame)
        return
    # The default action ends the process: write what can be written first (bounded),
    # then let the default action happen. A second signal meanwhile (``timeout`` sends
    # one after the other) does not cut the flush short: the first one ends the process.
    if _ending:
        return
    _ending = True
    end_s = time.monotonic() + SIGNAL_FLUSH_DEADLINE_S
    for tracker in live():
        tracker.flush_before_exit(max(0.0, end_s - time.monotonic()))
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _at_exit() -> None:
    if os.getpid() == _pid:
        for tracker in reversed(live()):
            tracker.shutdown()


def _after_fork_in_child() -> None:
    global _pid, _ending
    _ending = False
    _pid = os.getpid()
    for hook in _fork_child_hooks:
        hook()
    for tracker in live():
        tracker.forget_after_fork()


atexit.register(_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
