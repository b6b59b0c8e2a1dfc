"""The process-wide runtime's life cycle: first use, settings changes, fork, signals, exit.

footprint lives inside someone else's server, so this module is the one place that
touches process-wide state, and each piece is installed once per process:

- **one runtime at a time**: ``configure()`` stops the current one (flushing it) and the
  next tracked call starts a new one; nothing is stacked;
- **fork**: the child drops the runtime it inherited without touching it (the parent owns
  those spans, and its locks may be held by threads that do not exist in the child),
  re-creates this module's lock, and starts its own runtime on first use, so its records
  carry its own pid. A ``multiprocessing`` child leaves through ``os._exit``, which skips
  ``atexit``: its runtime is flushed by a ``multiprocessing`` finalizer instead;
- **signals**: SIGTERM (and SIGINT when Python's KeyboardInterrupt is not in charge) ask
  the writer thread for a flush and hand over to the handler that was there before.
  Tracking carries on, since a server's own handler may drain requests for seconds. Only
  when the previous disposition was the default (the process is about to end) does the
  handler wait for the flush, within ``SIGNAL_FLUSH_DEADLINE_S``, before re-raising;
- **exit**: one ``atexit`` hook flushes the current runtime.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
import threading
import warnings
from typing import Any

from footprint._clock import SYSTEM_CLOCK, Clock
from footprint.config import Settings, resolve_settings
from footprint.runtime.local import FootprintWarning, Runtime
from footprint.runtime.remote import DaemonClient, choose

SIGNAL_FLUSH_DEADLINE_S = 2.0  # a dying process waits this long for its records

# Read by the hot path: ``runtime or ensure()``. A ``DaemonClient`` when a daemon measures
# this host (the ``daemon`` setting): the same surface, spans sent instead of measured.
runtime: Runtime | DaemonClient | None = None
_failed = False
_overrides: dict[str, Any] = {}
_clock: Clock = SYSTEM_CLOCK
_lock = threading.Lock()
_pid = os.getpid()
_orphans: list[Runtime | DaemonClient] = []  # runtimes inherited through fork: kept, never touched
_previous_handlers: dict[int, Any] = {}
_finalizer_pid = 0  # the process that registered a multiprocessing exit finalizer
_ending = False  # a signal's default action is about to end the process
_in_handler = False  # footprint's signal handler is asking for a flush
_reraise_warned = False  # the uvicorn warning was given


def ensure() -> Runtime | DaemonClient | None:
    """The current runtime, started now if there is none (None: tracking disabled)."""
    global runtime, _failed
    with _lock:
        if runtime is None and not _failed:
            try:
                started = _build(resolve_settings(_overrides))
                started.start()
            except Exception as exc:
                _failed = True
                warnings.warn(
                    f"footprint: tracking disabled: {exc}", FootprintWarning, stacklevel=4
                )
                return None
            runtime = started
            _watch_process()
        return runtime


def _build(settings: Settings) -> Runtime | DaemonClient:
    """A client of the daemon when the ``daemon`` setting picks one (``auto``: one
    accepts connections at the default socket; tried without blocking, tens of µs),
    else a runtime measuring in this process. Either only queues here: its thread
    connects, or opens the sensors and pricing, so the first call costs what the
    others cost."""
    choice = choose(settings)
    if choice.target is not None:
        return DaemonClient(settings, _clock, choice.target, sock=choice.sock)
    started = Runtime(settings, _clock, open_now=False)
    if choice.note:
        started.warn_once("daemon-auto", choice.note)
    return started


def set_overrides(overrides: dict[str, Any], clock: Clock | None) -> None:
    """New settings: the running runtime is flushed and stopped; the next call restarts."""
    global _overrides, _clock, _failed
    with _lock:
        _overrides = overrides
        if clock is not None:
            _clock = clock
        _failed = False
    shutdown()


def overrides() -> dict[str, Any]:
    return dict(_overrides)


def reset() -> None:
    """Forget ``configure()`` overrides and the clock; stop the runtime."""
    global _overrides, _clock, _failed
    shutdown()
    with _lock:
        _overrides, _clock, _failed = {}, SYSTEM_CLOCK, False


def install(new: Runtime | DaemonClient) -> None:
    """Make ``new`` the current runtime without starting its threads (simulations)."""
    global runtime, _failed
    shutdown()
    with _lock:
        runtime, _failed = new, False


def shutdown() -> None:
    """Flush and stop the current runtime (the next tracked call starts another)."""
    global runtime
    with _lock:
        stopping, runtime = runtime, None
    if stopping is not None:
        stopping.shutdown()


# -- process hooks, installed once ---------------------------------------------------


def _watch_process() -> None:
    """Signal handlers (main thread only) and, in a multiprocessing child, a finalizer."""
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
    if owner.split(".")[0] != "uvicorn" or isinstance(runtime, DaemonClient):
        return
    _reraise_warned = True
    warnings.warn(
        "footprint: uvicorn ends a worker on SIGTERM without Python's exit: the calls of "
        "its last flush interval are counted as lost (losses kind unsaved_process_died), "
        "not stored; run `footprint daemon` beside the server to store them",
        FootprintWarning,
        stacklevel=5,
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
    global _in_handler
    current = runtime
    previous = _previous_handlers.get(signum, signal.SIG_DFL)
    if callable(previous):
        # A signal arriving while this handler runs (interrupting it inside an Event's
        # lock) must not take that lock again: only the outer call asks for the flush.
        if current is not None and not _in_handler:
            _in_handler = True
            try:
                current.request_flush()  # the server drains; tracking carries on
            finally:
                _in_handler = False
        previous(signum, frame)
        return
    # The default action ends the process: write what can be written first (bounded),
    # then let the default action happen. A second signal meanwhile (``timeout`` sends
    # one after the other) does not cut the flush short: the first one ends the process.
    global _ending
    if _ending:
        return
    _ending = True
    if current is not None:
        current.flush_before_exit(SIGNAL_FLUSH_DEADLINE_S)
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _at_exit() -> None:
    if os.getpid() == _pid:
        shutdown()


def _after_fork_in_child() -> None:
    global runtime, _lock, _pid, _ending
    _lock = threading.Lock()
    _ending = False
    _pid = os.getpid()
    if runtime is not None:
        _orphans.append(runtime)  # never flushed, closed or collected here
        runtime = None


atexit.register(_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
