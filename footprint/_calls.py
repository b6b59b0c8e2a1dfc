"""One tracked call, whatever wraps it: a decorated function of any of the four kinds
(sync, async, generator, async generator) or a ``query()`` block.

A ``CallSite`` is made once per decorated function (or block): the tracker it reports to,
the model, tags, GPUs, ``sync`` and ``tokens``. Each call asks it for a runtime and a span
(``begin``) and hands the outcome back (``end``); the runtime does the rest off the hot
path. Exceptions of the wrapped code propagate unchanged.
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from footprint._tracing import (
    OTEL_TRACE_MODULE,
    RawIds,
    TraceIds,
    current_ids,
    hex_ids,
    raw_ids,
    valid_ids,
)

if TYPE_CHECKING:
    from footprint.runtime.spans import SpanSink
    from footprint.tracking import Tracker

TokensFn = Callable[[Any], "tuple[int | None, int | None]"]
SyncFn = Callable[[], Any]

_RESERVED = {"model", "tokens", "gpus", "sync"}
_UNTRACKED: tuple[None, int, float, None] = (None, 0, 0.0, None)
# The caller's trace context is read at each call's begin only once OpenTelemetry's API
# is imported (by anyone): until then the hot path pays one dict lookup for it.
_OTEL = OTEL_TRACE_MODULE
_modules = sys.modules


class CallSite:
    """What a tracked function or block records each of its calls under."""

    __slots__ = ("tracker", "model", "tags", "gpus", "sync", "tokens")

    def __init__(
        self,
        tracker: Tracker,
        model: Any,
        tags: dict[str, Any],
        gpus: tuple | None,
        sync: SyncFn | None,
        tokens: TokensFn | None = None,
    ) -> None:
        self.tracker = tracker
        self.model = model
        self.tags = tags
        self.gpus = gpus
        self.sync = sync
        self.tokens = tokens

    def begin(self) -> tuple[SpanSink | None, int, float, RawIds | None]:
        """The runtime (None: untracked), the span id, its start (monotonic s) and the
        caller's trace context (the OpenTelemetry span current now, if any)."""
        tracker = self.tracker
        runtime = tracker.runtime or tracker.ensure()
        if runtime is None:
            return _UNTRACKED
        span_id, start_s = runtime.begin(self.gpus)
        return runtime, span_id, start_s, current_ids() if _OTEL in _modules else None

    def end(
        self,
        runtime: SpanSink,
        span_id: int,
        start_s: float,
        status: str = "ok",
        error_type: str | None = None,
        tokens_in: Any = None,
        tokens_out: Any = None,
        ttft_s: float | None = None,
        trace: RawIds | None = None,
    ) -> None:
        """The call is over: wait for its GPU work (``sync``), then queue its end."""
        if self.sync is not None:  # no call at all on the hot path without it
            _run_sync(runtime, self.sync)
        runtime.end(
            span_id,
            start_s,
            self.model,
            self.tags,
            status,
            error_type,
            tokens_in,
            tokens_out,
            ttft_s,
            self.gpus,
            trace,
        )

    def failed(
        self,
        runtime: SpanSink,
        span_id: int,
        start_s: float,
        exc: BaseException,
        trace: RawIds | None = None,
    ) -> None:
        self.end(
            runtime, span_id, start_s, _status_of(exc), type(exc).__name__, None, None, None, trace
        )

    def returned(
        self,
        runtime: SpanSink,
        span_id: int,
        start_s: float,
        result: Any,
        trace: RawIds | None = None,
    ) -> None:
        tokens_in = tokens_out = None
        if self.tokens is not None:
            tokens_in, tokens_out = _safe_tokens(runtime, self.tokens, result)
        if self.sync is not None:
            _run_sync(runtime, self.sync)
        runtime.end(
            span_id,
            start_s,
            self.model,
            self.tags,
            "ok",
            None,
            tokens_in,
            tokens_out,
            None,
            self.gpus,
            trace,
        )  # (``end`` inlined: the common case's hot path)

    def streamed(
        self,
        runtime: SpanSink,
        span_id: int,
        start_s: float,
        items: int,
        ttft_s: float | None,
        exc: BaseException | None,
        trace: RawIds | None = None,
    ) -> None:
        """A generator's end: ``items`` yielded; ``exc`` what ended it, if anything."""
        tokens_in = tokens_out = None
        if exc is None or isinstance(exc, GeneratorExit):
            status, error_type = "ok", None
            if self.tokens is not None:
                tokens_in, tokens_out = _safe_tokens(runtime, self.tokens, items)
        else:
            status, error_type = _status_of(exc), type(exc).__name__
        self.end(
            runtime, span_id, start_s, status, error_type, tokens_in, tokens_out, ttft_s, trace
        )


def wrap(fn: Callable, site: CallSite) -> Any:
    """``fn`` tracked at ``site``, keeping its kind (sync, async, generators)."""
    if inspect.isasyncgenfunction(fn):
        return _wrap_async_gen(fn, site)
    if inspect.isgeneratorfunction(fn):
        return _wrap_gen(fn, site)
    if inspect.iscoroutinefunction(fn):
        return _wrap_async(fn, site)
    return _wrap_sync(fn, site)


def _wrap_sync(fn: Callable, site: CallSite) -> Callable:
    tracker, gpus = site.tracker, site.gpus

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        # ``site.begin`` inlined: the most common call's hot path, one call less.
        runtime = tracker.runtime or tracker.ensure()
        if runtime is None:
            return fn(*args, **kwargs)
        span_id, start_s = runtime.begin(gpus)
        trace = current_ids() if _OTEL in _modules else None
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            site.failed(runtime, span_id, start_s, exc, trace)
            raise
        site.returned(runtime, span_id, start_s, result, trace)
        return result

    return wrapper


def _wrap_async(fn: Callable, site: CallSite) -> Callable:
    @functools.wraps(fn)
    async def wrapper(*args, **kwargs):
        runtime, span_id, start_s, trace = site.begin()
        if runtime is None:
            return await fn(*args, **kwargs)
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            site.failed(runtime, span_id, start_s, exc, trace)
            raise
        site.returned(runtime, span_id, start_s, result, trace)
        return result

    return wrapper


def _wrap_gen(fn: Callable, site: CallSite) -> Callable:
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        runtime, span_id, start_s, trace = site.begin()
        if runtime is None:
            return (yield from fn(*args, **kwargs))
        items, ttft_s, error = 0, None, None
        inner = fn(*args, **kwargs)
        try:
            value = next(inner)
            while True:
                if items == 0:
                    ttft_s = runtime.now() - start_s
                items += 1
                try:
                    sent = yield value
                except GeneratorExit:
                    inner.close()
                    raise
                except BaseException as thrown:
                    value = inner.throw(thrown)
                else:
                    value = inner.send(sent)
        except StopIteration as stop:
            return stop.value
        except BaseException as exc:
            error = exc
            raise
        finally:
            site.streamed(runtime, span_id, start_s, items, ttft_s, error, trace)

    return wrapper


def _wrap_async_gen(fn: Callable, site: CallSite) -> Callable:
    @functools.wraps(fn)
    async def wrapper(*args, **kwargs):
        runtime, span_id, start_s, trace = site.begin()
        inner = fn(*args, **kwargs)
        if runtime is None:
            async for item in inner:
                yield item
            return
        items, ttft_s, error = 0, None, None
        try:
            value = await inner.__anext__()
            while True:
                if items == 0:
                    ttft_s = runtime.now() - start_s
                items += 1
                try:
                    sent = yield value
                except GeneratorExit:
                    await inner.aclose()
                    raise
                except BaseException as thrown:
                    value = await inner.athrow(thrown)
                else:
                    value = await inner.asend(sent)
        except StopAsyncIteration:
            return
        except BaseException as exc:
            error = exc
            raise
        finally:
            site.streamed(runtime, span_id, start_s, items, ttft_s, error, trace)

    return wrapper


class Query:
    """A tracked block: ``with footprint.query(model=...) as q: q.set_tokens(...)``."""

    __slots__ = (
        "_site",
        "input_tokens",
        "output_tokens",
        "_ttft_s",
        "_runtime",
        "_span_id",
        "_start_s",
        "_trace",
    )

    def __init__(self, site: CallSite) -> None:
        self._site = site
        self.input_tokens: int | None = None
        self.output_tokens: int | None = None
        self._ttft_s: float | None = None
        self._runtime: SpanSink | None = None
        self._span_id = 0
        self._start_s = 0.0
        self._trace: RawIds | None = None

    @property
    def model(self) -> str:
        return self._site.model

    @property
    def tags(self) -> dict[str, Any]:
        return self._site.tags

    @tags.setter
    def tags(self, tags: dict[str, Any]) -> None:
        """Tags known only once the block ran (the proxy's ``tokens_estimated``): each
        ``query()`` block has a site of its own, so no other call sees them."""
        self._site.tags = tags

    @property
    def gpus(self) -> tuple | None:
        return self._site.gpus

    @property
    def trace(self) -> TraceIds | None:
        """The caller's trace context this call's record will carry: (trace id, span id)
        in lowercase hex (32 and 16 digits), read from the OpenTelemetry span current
        when the block was entered; None when there was none."""
        return hex_ids(self._trace)

    @trace.setter
    def trace(self, ids: TraceIds | None) -> None:
        """Link the call to a trace context known otherwise (an incoming W3C
        ``traceparent``: see ``footprint._tracing.parse_traceparent``); ``ValueError``
        for ids that are not 32 and 16 lowercase hex digits (not all zeros)."""
        if ids is not None and (not isinstance(ids, tuple) or len(ids) != 2 or not valid_ids(*ids)):
            raise ValueError(
                "trace= must be (trace id, span id): 32 and 16 lowercase hex digits, "
                f"not all zeros; got {ids!r}"
            )
        self._trace = None if ids is None else raw_ids(ids)

    def set_tokens(self, input: int | None = None, output: int | None = None) -> None:  # noqa: A002
        """Record token counts (only counts are stored, never text).

        Never raises: a value that is not a count in [0, 2^40) is stored as NULL and
        counted in ``stats()["invalid_tokens"]``."""
        if input is not None:
            self.input_tokens = input
        if output is not None:
            self.output_tokens = output

    def first_token(self) -> None:
        """Mark now as the time the first token (or item) was produced."""
        if self._runtime is not None and self._ttft_s is None:
            self._ttft_s = self._runtime.now() - self._start_s

    def __enter__(self) -> Query:
        if self._runtime is not None:
            raise RuntimeError(
                "this footprint.query() block is already running; "
                "make one footprint.query(...) per block"
            )
        self._runtime, self._span_id, self._start_s, self._trace = self._site.begin()
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> Literal[False]:
        runtime = self._runtime
        if runtime is not None:
            status = "ok" if exc is None else _status_of(exc)
            error_type = None if exc is None else type(exc).__name__
            self._site.end(
                runtime,
                self._span_id,
                self._start_s,
                status,
                error_type,
                self.input_tokens,
                self.output_tokens,
                self._ttft_s,
                self._trace,
            )
            self._runtime = None
        return False

    async def __aenter__(self) -> Query:
        return self.__enter__()

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> Literal[False]:
        return self.__exit__(exc_type, exc, tb)


def check_names(model: Any, tags: dict[str, Any], where: str) -> None:
    if not isinstance(model, str) or not model:
        raise TypeError(f"{where} needs model='name of the model' (a non-empty string)")
    clash = _RESERVED & tags.keys()
    if clash:
        raise TypeError(f"{where}: {', '.join(sorted(clash))} cannot be used as a tag name")


def check_sync(sync: Any, where: str) -> None:
    if sync is not None and not callable(sync):
        raise TypeError(f"{where}: sync= must be a callable (e.g. torch.cuda.synchronize)")


def gpu_tuple(gpus: Any, where: str) -> tuple | None:
    """``gpus=`` as a tuple of CUDA indices (int) or UUIDs (str); TypeError otherwise."""
    if gpus is None:
        return None
    if isinstance(gpus, (str, int)) or not all(
        isinstance(g, (int, str)) and not isinstance(g, bool) for g in gpus
    ):
        raise TypeError(f"{where}: gpus= must be a list of GPU indices or UUIDs, got {gpus!r}")
    return tuple(gpus)


def _safe_tokens(runtime: SpanSink, tokens: TokensFn, value: Any) -> tuple[Any, Any]:
    try:
        tokens_in, tokens_out = tokens(value)
        return tokens_in, tokens_out
    except Exception as exc:
        runtime.warn_once("tokens", f"footprint: tokens= callable failed: {exc!r}")
        return None, None


def _run_sync(runtime: SpanSink, sync: SyncFn) -> None:
    """Wait for the call's GPU work (``sync=``) before taking the end time."""
    try:
        sync()
    except Exception as exc:
        runtime.warn_once("sync", f"footprint: sync= callable failed: {exc!r}")


def _status_of(exc: BaseException) -> str:
    name = type(exc).__name__
    return "cancelled" if name in ("CancelledError", "GeneratorExit") else "error"
