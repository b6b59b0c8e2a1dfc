"""ASGI middleware (FastAPI, Starlette, any ASGI 3 app): one footprint query per HTTP request.

    app.add_middleware(FootprintASGIMiddleware, model="llama-3-8b")

Lifespan and websocket scopes pass through untracked. A response ends with its last
``http.response.body`` (``more_body`` false), so a ``StreamingResponse`` is measured to
its end, with its first non-empty chunk as the query's first token.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from typing import Any

from footprint.integrations.recording import (
    HeaderTokensFn,
    ModelFn,
    Options,
    RequestRecord,
    capped,
)
from footprint.tracking import Tracker

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class FootprintASGIMiddleware:
    """Records each HTTP request to ``app`` as one query.

    ``model``: a name, or a callable given the ASGI scope (path, headers…) returning one,
    or None for a request not to track. ``tag_headers`` maps request header names to tag
    names (``{"X-Team": "team"}``); no other header is read. ``tokens``: a callable given
    the response headers (lower-case names) returning ``(input, output)`` token counts.
    ``tracker``: a ``footprint.Tracker`` (default: the one ``footprint.query`` uses).

    Each record carries the request's trace context: the OpenTelemetry span current when
    the request comes in (OTel's ASGI instrumentation added outside this middleware),
    else the request's W3C ``traceparent`` header (``bad_traceparents`` counts invalid
    ones, ignored).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        model: str | ModelFn,
        tracker: Tracker | None = None,
        tag_headers: Mapping[str, str] | None = None,
        tokens: HeaderTokensFn | None = None,
    ) -> None:
        self.app = app
        self._options = Options.checked(model, tracker, tag_headers, tokens)

    @property
    def bad_traceparents(self) -> int:
        """Requests whose ``traceparent`` header was invalid (ignored, never an error)."""
        return self._options.bad_traceparents

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        tags = _header_tags(scope.get("headers", ()), self._options.tag_headers)
        record = RequestRecord.open(
            self._options,
            scope,
            tags,
            lambda: _route_of(scope),
            lambda: _traceparent(scope.get("headers", ())),
        )
        if record is None:
            await self.app(scope, receive, send)
            return
        exchange = _Exchange(record, receive, send)
        try:
            await self.app(scope, exchange.receive, exchange.send)
        except BaseException as exc:
            record.failed(exc)
            raise
        record.returned()


class _Exchange:
    """One request's ``receive`` and ``send``, watched: the response's status, headers and
    chunk sizes, and whether the client went away."""

    __slots__ = ("_record", "_receive", "_send")

    def __init__(self, record: RequestRecord, receive: Receive, send: Send) -> None:
        self._record = record
        self._receive = receive
        self._send = send

    async def receive(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.disconnect":
            self._record.client_gone()
        return message

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self._record.response_started(message["status"], _headers(message))
        try:
            await self._send(message)
        except OSError:  # the server's way of saying the client is gone (ASGI 2.4)
            self._record.client_gone()
            raise
        if kind == "http.response.body":
            more = bool(message.get("more_body", False))
            self._record.chunk_sent(len(message.get("body", b"")), streamed=more)
            if not more:
                self._record.body_complete()


def _headers(message: Message) -> dict[str, str]:
    return {
        name.decode("latin-1").lower(): value.decode("latin-1")
        for name, value in message.get("headers", ())
    }


def _header_tags(headers: Iterable[tuple[bytes, bytes]], tag_headers: dict[str, str]) -> dict:
    """The allow-listed request headers' values under their tag names (first one wins)."""
    tags: dict[str, str] = {}
    if not tag_headers:
        return tags
    for name, value in headers:
        tag = tag_headers.get(name.decode("latin-1").lower())
        if tag is not None and tag not in tags:
            tags[tag] = capped(value.decode("latin-1").strip())
    return tags


def _traceparent(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The request's ``traceparent`` header (the first one), or None."""
    for name, value in headers:
        if name.lower() == b"traceparent":
            return value.decode("latin-1")
    return None


def _route_of(scope: Scope) -> str:
    """The matched route's path template (Starlette and FastAPI put the route in the
    scope), else the request's path."""
    template = getattr(scope.get("route"), "path", None)
    return template if isinstance(template, str) else str(scope.get("path", ""))
