"""The hot path: ``track`` and ``query`` take two timestamps and queue a span.

Nothing here touches NVML, the database or a lock held for long: a call costs a dict
insert at its start and a deque append at its end. The runtime (sensors, sampler,
resolver, writer) starts on first use. Exceptions of the wrapped code propagate unchanged;
footprint's own failures are turned into one warning and counters.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from footprint._clock import Clock
from footprint.config import resolve_settings
from footprint.runtime import lifecycle
from footprint.runtime.local import EndedSpan, Runtime

F = TypeVar("F", bound=Callable[..., Any])
TokensFn = Callable[[Any], "tuple[int | None, int | None]"]
SyncFn = Callable[[], Any]

_RESERVED = {"model", "tokens", "gpus", "sync"}

# A time to first token outside [0, the call's duration] (or NaN) is stored as NULL and
# counted in ``stats()["invalid_ttft"]`` and the ``losses`` table, with one warning.
INVALID_TTFT = "invalid_ttft"


def configure(*, clock: Clock | None = None, **settings: Any) -> None:
    """Set db, sensor, region, sampling_period_s, flush_interval_s, daemon, cpu, ...

    Values are validated now (ValueError names the allowed values). A running tracker
    is flushed and stopped; the next tracked call starts one with the new settings.
    """
    merged = {**lifecycle.overrides(), **settings}
    resolve_settings(merged)  # validate before changing anything
    lifecycle.set_overrides(merged, clock)


def reset_configuration() -> None:
    """Forget ``configure()`` overrides (files and environment still apply)."""
    lifecycle.reset()


def install_runtime(runtime: Runtime) -> None:
    """Make ``runtime`` the one ``track``/``query`` use, without starting its threads.

    For simulations on a ``ManualClock`` (the demo): the caller drives sampling
    (``runtime.gpu_sampler.sample_once()``) and resolution (``runtime.cycle(...)``) at
    simulated instants. ``shutdown()`` still flushes and closes it.
    """
    lifecycle.install(runtime)


def get_runtime() -> Runtime | None:
    """The running runtime (started if needed), or None when tracking is disabled."""
    return lifecycle.runtime or lifecycle.ensure()


def flush() -> int:
    """Write every span that has ended; returns the number of records written."""
    runtime = lifecycle.runtime
    return runtime.flush() if runtime is not None else 0


def shutdown() -> None:
    """Flush and stop the tracker (the next tracked call starts it again)."""
    lifecycle.shutdown()


def stats() -> dict[str, int]:
    """Counters: records written, spans dropped, records that could not be stored."""
    runtime = lifecycle.runtime
    return runtime.stats() if runtime is not None else {}


def _safe_tokens(runtime: Runtime, tokens: TokensFn, value: Any) -> tuple[Any, Any]:
    try:
        tokens_in, tokens_out = tokens(value)
        return tokens_in, tokens_out
    except Exception as exc:
        runtime.warn_once("tokens", f"footprint: tokens= callable failed: {exc!r}")
        return None, None


def _gpu_tuple(gpus: Any, where: str) -> tuple | None:
    """``gpus=`` as a tuple of CUDA indices (int) or UUIDs (str); TypeError otherwise."""
    if gpus is None:
        return None
    if isinstance(gpus, (str, int)) or not all(
        isinstance(g, (int, str)) and not isinstance(g, bool) for g in gpus
    ):
        raise TypeError(f"{where}: gpus= must be a list of GPU indices or UUIDs, got {gpus!r}")
    return tuple(gpus)


def _check_sync(sync: Any, where: str) -> None:
    if sync is not None and not callable(sync):
        raise TypeError(f"{where}: sync= must be a callable (e.g. torch.cuda.synchronize)")


def _check_names(model: Any, tags: dict[str, Any], where: str) -> None:
    if not isinstance(model, str) or not model:
        raise TypeError(f"{where} needs model='name of the model' (a non-empty string)")
    clash = _RESERVED & tags.keys()
    if clash:
        raise TypeError(f"{where}: {', '.join(sorted(clash))} cannot be used as a tag name")


def track(
    *args: Any,
    model: str | None = None,
    tokens: TokensFn | None = None,
    gpus: list[int | str] | None = None,
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
    if args:
        raise TypeError("track() takes keyword arguments only: @footprint.track(model='...')")
    _check_names(model, tags, "track()")
    if tokens is not None and not callable(tokens):
        raise TypeError("track(): tokens= must be a callable returning (input, output)")
    _check_sync(sync, "track()")
    gpu_tuple = _gpu_tuple(gpus, "track()")
    frozen_tags = dict(tags)

    def decorate(fn: F) -> F:
        if inspect.isasyncgenfunction(fn):
            return _wrap_async_gen(fn, model, frozen_tags, tokens, gpu_tuple, sync)  # type: ignore
        if inspect.isgeneratorfunction(fn):
            return _wrap_gen(fn, model, frozen_tags, tokens, gpu_tuple, sync)  # type: ignore
        if inspect.iscoroutinefunction(fn):
            return _wrap_async(fn, model, frozen_tags, tokens, gpu_tuple, sync)  # type: ignore
        return _wrap_sync(fn, model, frozen_tags, tokens, gpu_tuple, sync)  # type: ignore

    return decorate


def _begin(gpus: tuple | None) -> tuple[Runtime | None, int, float]:
    runtime = lifecycle.runtime or lifecycle.ensure()
    if runtime is None:
        return None, 0, 0.0
    span_id = next(runtime.ids)
    start_s = runtime.now()
    runtime.inflight[span_id] = (start_s, gpus)
    if runtime.drives_simulator:
        runtime.begin_simulated_load(gpus, start_s)
    return runtime, span_id, start_s


def _run_sync(runtime: Runtime, sync: SyncFn) -> None:
    """Wait for the call's GPU work (``sync=``) before taking the end time."""
    try:
        sync()
    except Exception as exc:
        runtime.warn_once("sync", f"footprint: sync= callable failed: {exc!r}")


def _end(
    runtime: Runtime,
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
    sync: SyncFn | None = None,
) -> None:
    if sync is not None:  # no call at all on the hot path without it
        _run_sync(runtime, sync)
    end_s = runtime.now()
    if ttft_s is not None and not (
        isinstance(ttft_s, (int, float)) and 0.0 <= ttft_s <= end_s - start_s  # NaN fails
    ):
        runtime._count_bad(INVALID_TTFT, 1)
        ttft_s = None
    if runtime.drives_simulator:
        runtime.end_simulated_load(gpus, end_s)
    if len(runtime.ended) < runtime.max_pending:
        runtime.journal.ended()  # before the append: the writer may settle it at once
        runtime.ended.append(
            EndedSpan(span_id, start_s, end_s, model, tags, status, error_type, tokens_in,
                      tokens_out, ttft_s, gpus)
        )  # fmt: skip
    else:
        runtime.dropped_spans += 1
        runtime.warn_once("queue", "footprint: span queue full; dropping and counting spans")
    runtime.inflight.pop(span_id, None)


def _status_of(exc: BaseException) -> str:
    name = type(exc).__name__
    return "cancelled" if name in ("CancelledError", "GeneratorExit") else "error"


def _wrap_sync(fn, model, tags, tokens, gpus, sync):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        runtime, span_id, start_s = _begin(gpus)
        if runtime is None:
            return fn(*args, **kwargs)
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            _end(runtime, span_id, start_s, model, tags, _status_of(exc), type(exc).__name__,
                 None, None, None, gpus, sync)  # fmt: skip
            raise
        tokens_in = tokens_out = None
        if tokens is not None:
            tokens_in, tokens_out = _safe_tokens(runtime, tokens, result)
        _end(runtime, span_id, start_s, model, tags, "ok", None, tokens_in, tokens_out, None, gpus,
             sync)  # fmt: skip
        return result

    return wrapper


def _wrap_async(fn, model, tags, tokens, gpus, sync):
    @functools.wraps(fn)
    async def wrapper(*args, **kwargs):
        runtime, span_id, start_s = _begin(gpus)
        if runtime is None:
            return await fn(*args, **kwargs)
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            _end(runtime, span_id, start_s, model, tags, _status_of(exc), type(exc).__name__,
                 None, None, None, gpus, sync)  # fmt: skip
            raise
        tokens_in = tokens_out = None
        if tokens is not None:
            tokens_in, tokens_out = _safe_tokens(runtime, tokens, result)
        _end(runtime, span_id, start_s, model, tags, "ok", None, tokens_in, tokens_out, None, gpus,
             sync)  # fmt: skip
        return result

    return wrapper


def _finish_stream(runtime, span_id, start_s, model, tags, tokens, gpus, sync, items, ttft_s,
                   exc):  # fmt: skip
    tokens_in = tokens_out = None
    if exc is None or isinstance(exc, GeneratorExit):
        status, error_type = "ok", None
        if tokens is not None:
            tokens_in, tokens_out = _safe_tokens(runtime, tokens, items)
    else:
        status, error_type = _status_of(exc), type(exc).__name__
    _end(runtime, span_id, start_s, model, tags, status, error_type, tokens_in, tokens_out,
         ttft_s, gpus, sync)  # fmt: skip


def _wrap_gen(fn, model, tags, tokens, gpus, sync):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        runtime, span_id, start_s = _begin(gpus)
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
            _finish_stream(runtime, span_id, start_s, model, tags, tokens, gpus, sync, items,
                           ttft_s, error)  # fmt: skip

    return wrapper


def _wrap_async_gen(fn, model, tags, tokens, gpus, sync):
    @functools.wraps(fn)
    async def wrapper(*args, **kwargs):
        runtime, span_id, start_s = _begin(gpus)
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
            _finish_stream(runtime, span_id, start_s, model, tags, tokens, gpus, sync, items,
                           ttft_s, error)  # fmt: skip

    return wrapper


class Query:
    """A tracked block: ``with footprint.query(model=...) as q: q.set_tokens(...)``."""

    __slots__ = ("model", "tags", "gpus", "sync", "input_tokens", "output_tokens", "_ttft_s",
                 "_runtime", "_span_id", "_start_s")  # fmt: skip

    def __init__(
        self, model: str, tags: dict[str, Any], gpus: tuple | None, sync: SyncFn | None = None
    ) -> None:
        self.model = model
        self.tags = tags
        self.gpus = gpus
        self.sync = sync
        self.input_tokens: int | None = None
        self.output_tokens: int | None = None
        self._ttft_s: float | None = None
        self._runtime: Runtime | None = None
        self._span_id = 0
        self._start_s = 0.0

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
        self._runtime, self._span_id, self._start_s = _begin(self.gpus)
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        runtime = self._runtime
        if runtime is not None:
            status = "ok" if exc is None else _status_of(exc)
            error_type = None if exc is None else type(exc).__name__
            _end(runtime, self._span_id, self._start_s, self.model, self.tags, status, error_type,
                 self.input_tokens, self.output_tokens, self._ttft_s, self.gpus,
                 self.sync)  # fmt: skip
            self._runtime = None
        return False

    async def __aenter__(self) -> Query:
        return self.__enter__()

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        return self.__exit__(exc_type, exc, tb)


def query(
    *,
    model: str,
    gpus: list[int | str] | None = None,
    sync: SyncFn | None = None,
    **tags: Any,
) -> Query:
    """Context manager (sync and async) recording one query for the block it wraps.

    ``gpus`` and ``sync`` as for ``track``.
    """
    _check_names(model, tags, "query()")
    _check_sync(sync, "query()")
    return Query(model, dict(tags), _gpu_tuple(gpus, "query()"), sync)
