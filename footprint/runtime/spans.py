"""What the hot path calls, and what it queues: one contract for both kinds of runtime.

``footprint.tracking`` calls ``begin`` when a call starts and ``end`` when it ends, and
nothing else on the hot path. ``SpanQueue`` implements both over a dict of the calls
running and a deque of the calls ended; the runtime's own thread reads them: the local
``Runtime`` (measures in this process) or the ``DaemonClient`` (sends them to the host's
daemon). ``SpanSink`` is the whole surface a tracker and the process hooks use.
"""

from __future__ import annotations

import itertools
import warnings
from collections import deque
from collections.abc import Iterator
from typing import Any, NamedTuple, Protocol

from footprint._clock import Clock
from footprint.storage.journal import NoJournal


class FootprintWarning(UserWarning):
    """Something footprint could not do; the tracked code carried on."""


class EndedSpan(NamedTuple):
    """A call that ended, as queued by the hot path (times in monotonic s) and as the
    daemon rebuilds it from a client's batch (``pid``, ``host``, ``key`` set)."""

    span_id: int
    start_s: float
    end_s: float
    model: str
    tags: dict
    status: str
    error_type: str | None
    input_tokens: int | None
    output_tokens: int | None
    ttft_s: float | None  # time to the first item of a stream
    gpus: tuple | None  # indices or UUIDs as given; None: every GPU
    pid: int | None = None  # the process that made the call (the daemon's clients); None: this one
    host: str | None = None
    # The daemon's clients: "<session>:<client span id>", stored as ``span_key`` (how the
    # next daemon recognises an end sent again); None in-process.
    key: str | None = None
    resent: bool = False  # a client's end sent before, unacknowledged: perhaps stored already
    # The caller's trace context when the call began (``footprint._tracing``): its
    # OpenTelemetry (trace id, span id) as integers (hex in records); None: it had none.
    trace: tuple[int, int] | None = None


# Values replaced so that their record can be stored (``footprint._sanitize``).
BAD_VALUES = {
    "invalid_tokens": "a token count was not an integer in [0, 2^40); it is stored as NULL",
    "sanitized_models": "a model name was not storable text (over 256 characters, NUL, "
    "lone surrogate); it is stored cleaned",
    "unserializable_tags": "a tag key or value could not be stored as JSON; it is stored "
    "as its type name",
    "invalid_ttft": "a time to first token was negative, not finite or longer than its call; "
    "it is stored as NULL",
}
INVALID_TTFT = "invalid_ttft"

# The keys every ``stats()`` has, measuring here or behind a daemon (all counts):
CORE_STATS = (
    "records_written",  # stored (behind a daemon: acknowledged by it as stored)
    "pending_spans",  # ended, not yet written (or sent)
    "running_spans",  # started, not ended
    "dropped_spans",  # ended while the queue was full: counted, never stored
    "lost_spans",  # ended, never stored (what could not be written or sent), counted
    "running_at_exit",  # still running when the runtime stopped
    "record_failed",  # a record that could not be made from its span
    *BAD_VALUES,
)


class SpanQueue:
    """The hot path's side of a runtime: ``begin`` and ``end``, lock-free.

    ``begin`` is a dict insert; ``end`` a deque append (``max_pending``: past it, the end
    is dropped and counted in ``dropped_spans``). The runtime's thread drains ``ended``
    and reads ``inflight``; a subclass gives ``_count_bad`` and its ``journal``.
    """

    def __init__(self, clock: Clock, max_pending: int, ids: Iterator[int] | None = None) -> None:
        self.clock = clock
        self.now = clock.monotonic_s
        self.ids = itertools.count() if ids is None else ids
        self.inflight: dict[int, tuple[float, tuple | None]] = {}
        self.ended: deque[EndedSpan] = deque()
        self.max_pending = max_pending
        self.dropped_spans = 0
        self.journal: Any = NoJournal()
        self.bad_values: dict[str, int] = {}  # values replaced to be storable, by kind
        self.warnings_issued: set[str] = set()

    def begin(self, gpus: tuple | None) -> tuple[int, float]:
        """A call starts now on ``gpus`` (None: every GPU): its span id and start (s)."""
        span_id = next(self.ids)
        start_s = self.now()
        self.inflight[span_id] = (start_s, gpus)
        return span_id, start_s

    def end(
        self,
        span_id: int,
        start_s: float,
        model: str,
        tags: dict,
        status: str,
        error_type: str | None,
        tokens_in: Any,
        tokens_out: Any,
        ttft_s: float | None,
        gpus: tuple | None,
        trace: tuple[int, int] | None = None,
    ) -> float:
        """The call ends now: queue it for the runtime's thread; returns its end (s).

        A time to first token outside [0, the call's duration] (or NaN) is queued as
        None and counted (``invalid_ttft``). ``trace``: the caller's trace context at its
        begin (``footprint._tracing``), carried to its record."""
        end_s = self.now()
        if ttft_s is not None and not (
            isinstance(ttft_s, (int, float)) and 0.0 <= ttft_s <= end_s - start_s  # NaN fails
        ):
            self._count_bad(INVALID_TTFT, 1)
            ttft_s = None
        if len(self.ended) < self.max_pending:
            self.journal.ended()  # before the append: the writer may settle it at once
            self.ended.append(
                EndedSpan(
                    span_id,
                    start_s,
                    end_s,
                    model,
                    tags,
                    status,
                    error_type,
                    tokens_in,
                    tokens_out,
                    ttft_s,
                    gpus,
                    None,
                    None,
                    None,
                    False,
                    trace,
                )
            )
        else:
            self.dropped_spans += 1
            self.warn_once("queue", "footprint: span queue full; dropping and counting spans")
        self.inflight.pop(span_id, None)
        return end_s

    # -- spans made elsewhere (the daemon's intake of its clients' spans) ------------
    def begin_at(self, start_s: float, gpus: tuple | None) -> int | None:
        """A call that started at ``start_s`` in another process: its span id here, or
        None when ``max_pending`` calls run already (its end will still be taken)."""
        if len(self.inflight) >= self.max_pending:
            return None
        span_id = next(self.ids)
        self.inflight[span_id] = (start_s, gpus)
        return span_id

    def new_span_id(self) -> int:
        """An id for a span whose start was never seen here (its end comes alone)."""
        return next(self.ids)

    def has_room(self, count: int) -> bool:
        """Whether ``count`` more ended spans fit in the queue now."""
        return len(self.ended) + count <= self.max_pending

    def queue(self, span: EndedSpan) -> bool:
        """Queue a span that ended in another process; False (counted in
        ``dropped_spans``) when the queue is full."""
        taken = len(self.ended) < self.max_pending
        if taken:
            self.ended.append(span)
        else:
            self.dropped_spans += 1
        self.inflight.pop(span.span_id, None)
        return taken

    def warn_once(self, key: str, message: str) -> None:
        """One ``FootprintWarning`` per ``key`` for this runtime's life."""
        if key not in self.warnings_issued:
            self.warnings_issued.add(key)
            warnings.warn(message, FootprintWarning, stacklevel=3)

    def _count_bad(self, kind: str, count: int) -> None:
        """A value replaced so that its record can be stored: counted, warned about once."""
        self.bad_values[kind] = self.bad_values.get(kind, 0) + count
        if kind in BAD_VALUES:
            self.warn_once(kind, f"footprint: {BAD_VALUES[kind]} (counted in stats()['{kind}'])")


class SpanSink(Protocol):
    """What a tracker and the process hooks (``lifecycle``) use of a runtime."""

    def begin(self, gpus: tuple | None) -> tuple[int, float]: ...

    def end(
        self,
        span_id: int,
        start_s: float,
        model: str,
        tags: dict,
        status: str,
        error_type: str | None,
        tokens_in: Any,
        tokens_out: Any,
        ttft_s: float | None,
        gpus: tuple | None,
        trace: tuple[int, int] | None = None,
    ) -> float: ...

    def now(self) -> float: ...

    def warn_once(self, key: str, message: str) -> None: ...

    def start(self) -> None: ...

    def flush(self) -> int: ...

    def stats(self) -> dict[str, int]: ...

    def request_flush(self) -> None: ...

    def flush_before_exit(self, deadline_s: float) -> bool: ...

    def shutdown(self) -> None: ...
