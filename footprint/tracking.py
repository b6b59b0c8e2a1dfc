"""The hot path: ``track`` and ``query`` take two timestamps and queue a span.

Nothing here touches NVML, the database or a lock held for long: a call costs a dict
insert at its start (``SpanQueue.begin``) and a deque append at its end (``end``). A
``Tracker`` owns one runtime (sensors, sampler, resolver, writer, or a daemon client),
started on its first tracked call; the module-level ``track``, ``query``, ``configure``,
``flush``, ``stats`` and ``shutdown`` use the default tracker. Exceptions of the wrapped
code propagate unchanged; footprint's own failures are turned into one warning and
counters.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypedDict, TypeVar

from footprint._calls import CallSite, Query, SyncFn, TokensFn, check_names, check_sync, gpu_tuple
from footprint._calls import wrap as _wrap
from footprint._clock import SYSTEM_CLOCK, Clock
from footprint.config import Settings, check_files, resolve_settings
from footprint.runtime import lifecycle
from footprint.runtime.discovery import choose
from footprint.runtime.local import Runtime
from footprint.runtime.remote import DaemonClient
from footprint.runtime.spans import FootprintWarning, SpanSink

if TYPE_CHECKING:
    from typing import Unpack  # 3.11; only read by type checkers (mypy runs as 3.11)

F = TypeVar("F", bound=Callable[..., Any])

__all__ = [
    "Query",
    "SettingsOverrides",
    "Tracker",
    "configure",
    "flush",
    "query",
    "reset_configuration",
    "shutdown",
    "stats",
    "track",
]


class SettingsOverrides(TypedDict, total=False):
    """The keywords of ``Tracker(...)`` and ``configure(...)``: ``Settings``' fields."""

    db: str
    sensor: str
    region: str | None
    sampling_period_s: float
    flush_interval_s: float
    daemon: str
    cpu: bool
    max_pending_spans: int
    exit_deadline_s: float
    db_timeout_s: float
    max_span_age_s: float
    counter_window_s: float | None
    attribution: str
    detect_cloud: bool
    provider: str | None
    ownership: str | None
    hourly_intensity_csv: str | None
    electricitymaps_token: str | None
    electricitymaps_url: str | None
    daemon_token: str | None
    daemon_token_file: str | None
    regions_dir: str | None
    price_per_kwh: float | None
    currency: str | None
    usd_per_gpu_hour: float | None
    pue: float | None
    market_intensity_g_per_kwh: float | None
    embodied_kgco2e: float | None
    lifetime_years: float | None


class Tracker:
    """A tracker you own: its settings (database, region, sensor, daemon…), its runtime.

    ``Tracker(db="a.db")`` validates the settings now (``ValueError``); the runtime starts
    on the first tracked call and measures in this process or, when the ``daemon``
    setting picks one, sends to the host's daemon. Settings not given come from the
    environment, ``footprint.toml`` and the defaults, as for ``configure``. Use it as a
    context manager, or ``close()`` it: its last records are written then. The
    module-level functions use a default tracker; trackers with different databases
    record side by side in one process.
    """

    def __init__(self, *, clock: Clock | None = None, **settings: Unpack[SettingsOverrides]):
        if settings:
            _checked(dict(settings))  # validate before anything starts
        self._overrides: dict[str, Any] = dict(settings)
        self._clock = clock or SYSTEM_CLOCK
        self.runtime: SpanSink | None = None  # read by the hot path: ``runtime or ensure()``
        self._failed = False  # the runtime could not start: calls run untracked
        self._closed = False
        self._lock = threading.Lock()
        self._orphans: list[SpanSink] = []  # runtimes inherited through fork: never touched
        lifecycle.register(self)

    # -- what the user calls -------------------------------------------------------
    def track(
        self,
        *args: Any,
        model: str | None = None,
        tokens: TokensFn | None = None,
        gpus: Sequence[int | str] | None = None,
        sync: SyncFn | None = None,
        **tags: Any,
    ) -> Callable[[F], F]:
        """Decorator recording one query per call of a sync, async or (async) generator
        function (see ``footprint.track``)."""
        if args:
            raise TypeError("track() takes keyword arguments only: @footprint.track(model='...')")
        check_names(model, tags, "track()")
        if tokens is not None and not callable(tokens):
            raise TypeError("track(): tokens= must be a callable returning (input, output)")
        check_sync(sync, "track()")
        site = CallSite(self, model, dict(tags), gpu_tuple(gpus, "track()"), sync, tokens)
        return lambda fn: _wrap(fn, site)

    def query(
        self,
        *,
        model: str,
        gpus: Sequence[int | str] | None = None,
        sync: SyncFn | None = None,
        **tags: Any,
    ) -> Query:
        """Context manager (sync and async) recording one query for the block it wraps."""
        check_names(model, tags, "query()")
        check_sync(sync, "query()")
        return Query(CallSite(self, model, dict(tags), gpu_tuple(gpus, "query()"), sync))

    def configure(self, *, clock: Clock | None = None, **settings: Unpack[SettingsOverrides]):
        """Change some settings (validated now): the running runtime is flushed and
        stopped; the next tracked call starts one with the new settings."""
        merged = {**self._overrides, **settings}
        _checked(merged)  # validate before changing anything
        with self._lock:
            self._overrides = merged
            if clock is not None:
                self._clock = clock
            self._failed = False
        self.shutdown()

    def reset_configuration(self) -> None:
        """Forget the settings given here and the clock (environment and files apply)."""
        self.shutdown()
        with self._lock:
            self._overrides, self._clock, self._failed = {}, SYSTEM_CLOCK, False

    def settings(self) -> Settings:
        """The settings the next runtime starts with."""
        return resolve_settings(self._overrides)

    def flush(self) -> int:
        """Write every span that has ended; returns the records written (behind a
        daemon: the spans sent to it)."""
        runtime = self.runtime
        return runtime.flush() if runtime is not None else 0

    def stats(self) -> dict[str, int]:
        """Counters (``footprint.runtime.spans.CORE_STATS`` in every mode, and the
        mode's own); empty before the first tracked call. Safe from any thread."""
        runtime = self.runtime
        return runtime.stats() if runtime is not None else {}

    def shutdown(self) -> None:
        """Flush and stop the runtime (the next tracked call starts another)."""
        with self._lock:
            stopping, self.runtime = self.runtime, None
        if stopping is not None:
            stopping.shutdown()

    def close(self) -> None:
        """Shut down and leave the process's hooks; later calls run untracked."""
        self._closed = True
        self.shutdown()
        lifecycle.unregister(self)

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- the runtime ---------------------------------------------------------------
    def ensure(self) -> SpanSink | None:
        """The runtime, started now if there is none (None: tracking disabled)."""
        with self._lock:
            if self.runtime is None and not self._failed:
                if self._closed:
                    self._failed = True
                    warnings.warn(
                        "footprint: this Tracker is closed; calls run untracked",
                        FootprintWarning,
                        stacklevel=4,
                    )
                    return None
                try:
                    started = _build(resolve_settings(self._overrides), self._clock)
                    started.start()
                except Exception as exc:
                    self._failed = True
                    warnings.warn(
                        f"footprint: tracking disabled: {exc}", FootprintWarning, stacklevel=4
                    )
                    return None
                self.runtime = started
                lifecycle.watch_process(measures_here=isinstance(started, Runtime))
            return self.runtime

    def install(self, runtime: SpanSink) -> None:
        """Make ``runtime`` this tracker's, without starting its threads (simulations)."""
        self.shutdown()
        with self._lock:
            self.runtime, self._failed = runtime, False

    # -- process hooks (``footprint.runtime.lifecycle``) ---------------------------
    def request_flush(self) -> None:
        runtime = self.runtime
        if runtime is not None:
            runtime.request_flush()

    def flush_before_exit(self, deadline_s: float) -> bool:
        runtime = self.runtime
        return runtime.flush_before_exit(deadline_s) if runtime is not None else True

    def forget_after_fork(self) -> None:
        """In a forked child: drop the parent's runtime untouched; start anew on use."""
        self._lock = threading.Lock()
        if self.runtime is not None:
            self._orphans.append(self.runtime)  # never flushed, closed or collected here
            self.runtime = None


def _checked(overrides: dict[str, Any]) -> Settings:
    """The settings ``overrides`` give, checked now with the files they name (the hourly
    intensity CSV, read once here): ``ValueError`` naming the file and line."""
    settings = resolve_settings(overrides)
    check_files(settings)
    return settings


def _build(settings: Settings, clock: Clock) -> SpanSink:
    """A client of the daemon when the ``daemon`` setting picks one (``auto``: one
    accepts connections at the default socket; tried without blocking, tens of µs),
    else a runtime measuring in this process. Either only queues here: its thread
    connects, or opens the sensors and pricing, so the first call costs what the
    others cost."""
    choice = choose(settings)
    if choice.target is not None:
        return DaemonClient(settings, clock, choice.target, sock=choice.sock)
    started = Runtime(settings, clock, open_now=False)
    if choice.note:
        started.warn_once("daemon-auto", choice.note)
    return started


# -- the module-level API: the default tracker ------------------------------------
_default = Tracker()


def default_tracker() -> Tracker:
    """The tracker ``footprint.track``, ``query``, ``configure``… use."""
    return _default


def track(
    *args: Any,
    model: str | None = None,
    tokens: TokensFn | None = None,
    gpus: Sequence[int | str] | None = None,
    sync: SyncFn | None = None,
    **tags: Any,
) -> Callable[[F], F]:
    """Decorator recording one query per call of a sync, async or (async) generator function.

    ``tokens`` maps the result to ``(input_tokens, output_tokens)``; for generators it
    gets the number of items yielded. ``gpus`` restricts attribution to some GPUs
    (indices or UUIDs; default: every visible GPU). ``sync`` is called before the end
    time is taken, for calls that return before their GPU work is done (e.g.
    ``torch.cuda.synchronize``). Other keywords are stored as tags.
    """
    return _default.track(*args, model=model, tokens=tokens, gpus=gpus, sync=sync, **tags)


def query(
    *,
    model: str,
    gpus: Sequence[int | str] | None = None,
    sync: SyncFn | None = None,
    **tags: Any,
) -> Query:
    """Context manager (sync and async) recording one query for the block it wraps.

    ``gpus`` and ``sync`` as for ``track``.
    """
    return _default.query(model=model, gpus=gpus, sync=sync, **tags)


def configure(*, clock: Clock | None = None, **settings: Unpack[SettingsOverrides]) -> None:
    """Set db, sensor, region, sampling_period_s, flush_interval_s, daemon, cpu, ...

    Values are validated now (ValueError names the allowed values). A running tracker
    is flushed and stopped; the next tracked call starts one with the new settings.
    """
    _default.configure(clock=clock, **settings)


def reset_configuration() -> None:
    """Forget ``configure()`` overrides (files and environment still apply)."""
    _default.reset_configuration()


def install_runtime(runtime: Runtime) -> None:
    """Make ``runtime`` the one ``track``/``query`` use, without starting its threads.

    For simulations on a ``ManualClock`` (the demo): the caller drives sampling
    (``runtime.sample()``) and resolution (``runtime.step()``) at simulated instants.
    ``shutdown()`` still flushes and closes it.
    """
    _default.install(runtime)


def get_runtime() -> SpanSink | None:
    """The default tracker's runtime (started if needed), or None when disabled."""
    return _default.runtime or _default.ensure()


def flush() -> int:
    """Write every span that has ended; returns the number of records written."""
    return _default.flush()


def shutdown() -> None:
    """Flush and stop the tracker (the next tracked call starts it again)."""
    _default.shutdown()


def stats() -> dict[str, int]:
    """Counters: records written, spans dropped, records that could not be stored."""
    return _default.stats()
