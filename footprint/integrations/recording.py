"""One HTTP request as one footprint query, whatever the server protocol: what the ASGI and
WSGI middleware share (the options, the tags, and how a response's outcome becomes a status).

Only the request line, the allow-listed request headers and the response's status and
headers are looked at; bodies pass through untouched (their chunks' lengths are all that
is seen, for the first chunk's time).
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from footprint._tracing import parse_traceparent
from footprint.runtime.spans import FootprintWarning
from footprint.tracking import Query, Tracker, default_tracker

MAX_TAG_CHARS = 128  # a tag value from a header or a path is cut to this
ROUTE_TAG = "route"
STATUS_TAG = "http_status"
_RESERVED_TAGS = {"model", "tokens", "gpus", "sync", ROUTE_TAG, STATUS_TAG}

ModelFn = Callable[[Any], "str | None"]
HeaderTokensFn = Callable[[Mapping[str, str]], "tuple[int | None, int | None]"]


class ResponseStatus(Exception):
    """A response with a 5xx status; subclasses are named ``HTTP<status>`` (the record's
    ``error_type``, as the proxy writes it)."""


class IncompleteResponse(Exception):
    """The application returned without finishing its response, the client still there."""


_STATUS_ERRORS: dict[int, type[ResponseStatus]] = {}


def status_error(status: int) -> ResponseStatus:
    cls = _STATUS_ERRORS.get(status)
    if cls is None:
        cls = _STATUS_ERRORS[status] = type(f"HTTP{status}", (ResponseStatus,), {})
    return cls(status)


def capped(value: str) -> str:
    return value[:MAX_TAG_CHARS]


@dataclass
class Options:
    """What a middleware records each request under (checked once, at construction)."""

    model: str | ModelFn
    tracker: Tracker
    tag_headers: dict[str, str]  # lower-case request header name -> tag name
    tokens: HeaderTokensFn | None
    _warned: set[str] = field(default_factory=set)
    # Requests whose ``traceparent`` header was not a valid W3C version-00 one: ignored.
    bad_traceparents: int = 0

    @classmethod
    def checked(
        cls,
        model: str | ModelFn,
        tracker: Tracker | None,
        tag_headers: Mapping[str, str] | None,
        tokens: HeaderTokensFn | None,
    ) -> Options:
        """The options, or ``TypeError``/``ValueError`` saying which one is wrong."""
        if not callable(model) and (not isinstance(model, str) or not model):
            raise TypeError("model= must be a model name or a callable returning one (or None)")
        if tracker is not None and not isinstance(tracker, Tracker):
            raise TypeError("tracker= must be a footprint.Tracker")
        if tokens is not None and not callable(tokens):
            raise TypeError("tokens= must be a callable given the response headers")
        return cls(model, tracker or default_tracker(), _checked_headers(tag_headers), tokens)

    def model_of(self, request: Any) -> str | None:
        """The model for ``request`` (an ASGI scope or a WSGI environ); None: untracked."""
        if not callable(self.model):
            return self.model
        try:
            model = self.model(request)
        except Exception as exc:
            self.warn_once("model", f"footprint: model= callable failed: {exc!r}")
            return None
        if model is not None and (not isinstance(model, str) or not model):
            self.warn_once("model-type", f"footprint: model= callable returned {model!r}")
            return None
        return model

    def warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, FootprintWarning, stacklevel=3)


def _checked_headers(tag_headers: Mapping[str, str] | None) -> dict[str, str]:
    checked: dict[str, str] = {}
    for header, tag in (tag_headers or {}).items():
        if not isinstance(header, str) or not header or not isinstance(tag, str) or not tag:
            raise TypeError("tag_headers= maps header names to tag names (non-empty strings)")
        if tag in _RESERVED_TAGS:
            raise ValueError(f"tag_headers=: {tag!r} cannot be used as a tag name")
        checked[header.lower()] = tag
    return checked


class RequestRecord:
    """One tracked request: its query, entered when the request came in, and what the
    response said so far. Ended once: when the body is complete (5xx: when the
    application returns, to learn the exception behind it), when the application fails,
    or when the client goes away."""

    __slots__ = (
        "_query",
        "_options",
        "_route_of",
        "_route",
        "_tags",
        "status_code",
        "_complete",
        "_client_gone",
        "_chunks",
        "_ended",
    )

    def __init__(
        self, query: Query, options: Options, route_of: Callable[[], str], tags: dict[str, Any]
    ) -> None:
        self._query = query
        self._options = options
        self._route_of = route_of
        self._route: str | None = None
        self._tags = tags
        self.status_code: int | None = None
        self._complete = False
        self._client_gone = False
        self._chunks = 0
        self._ended = False

    @classmethod
    def open(
        cls,
        options: Options,
        request: Any,
        header_tags: dict[str, Any],
        route_of: Callable[[], str],
        traceparent: Callable[[], str | None] = lambda: None,
    ) -> RequestRecord | None:
        """The request's record, its query started; None when it is not tracked.

        Its trace context is the OpenTelemetry span current now (a server span of OTel's
        instrumentation around this middleware), else the request's W3C ``traceparent``
        header (read only then; an invalid one is ignored and counted)."""
        model = options.model_of(request)
        if model is None:
            return None
        try:
            query = options.tracker.query(model=model, **header_tags)
            query.__enter__()
        except Exception as exc:
            options.warn_once("open", f"footprint: request not tracked: {exc!r}")
            return None
        if query.trace is None:
            header = traceparent()
            if header is not None:
                ids = parse_traceparent(header)
                if ids is None:
                    options.bad_traceparents += 1
                else:
                    query.trace = ids
        return cls(query, options, route_of, header_tags)

    def response_started(self, status_code: int, headers: Mapping[str, str]) -> None:
        """The status and headers are out. The route is read now: the framework may
        forget it once its handler returned (Flask does), before the body is sent."""
        self.status_code = status_code
        self._route = self._route_of()
        if self._options.tokens is None:
            return
        try:
            tokens_in, tokens_out = self._options.tokens(headers)
        except Exception as exc:
            self._options.warn_once("tokens", f"footprint: tokens= callable failed: {exc!r}")
            return
        self._query.set_tokens(tokens_in, tokens_out)

    def chunk_sent(self, size: int, streamed: bool) -> None:
        """A body chunk went to the server; the first non-empty one of a streamed body
        is the query's first token."""
        if size and not self._chunks:
            self._chunks = 1
            if streamed:
                self._query.first_token()

    def body_complete(self) -> None:
        """The last chunk went out: the query ends now, unless the status is 5xx."""
        self._complete = True
        if self.status_code is None or self.status_code < 500:
            self._end(None)

    def client_gone(self) -> None:
        self._client_gone = True

    def returned(self) -> None:
        """The application returned (ASGI) or the server closed the body (WSGI)."""
        if self._complete:
            status = self.status_code
            self._end(status_error(status) if status is not None and status >= 500 else None)
        elif self._client_gone:
            self._end(asyncio.CancelledError())
        else:
            self._end(IncompleteResponse())

    def failed(self, exc: BaseException) -> None:
        """The application raised ``exc`` (cancelled instead when the client was gone)."""
        self._end(asyncio.CancelledError() if self._client_gone else exc)

    def _end(self, exc: BaseException | None) -> None:
        if self._ended:
            return
        self._ended = True
        query = self._query
        try:
            route = self._route if self._route is not None else self._route_of()
            tags: dict[str, Any] = {**self._tags, ROUTE_TAG: capped(route)}
            if self.status_code is not None:
                tags[STATUS_TAG] = self.status_code
            query.tags = tags
            query.__exit__(None if exc is None else type(exc), exc, None)
        except Exception as failure:
            self._options.warn_once("end", f"footprint: request not recorded: {failure!r}")
