"""WSGI middleware (Flask, Django, any WSGI app): one footprint query per HTTP request.

    app.wsgi_app = FootprintWSGIMiddleware(app.wsgi_app, model="llama-3-8b")

A response ends when the server closes its body iterable, so a generator body (Flask's
streamed responses) is measured to its end; a body without ``Content-Length`` is a stream,
its first non-empty chunk the query's first token.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from footprint.integrations.recording import (
    HeaderTokensFn,
    ModelFn,
    Options,
    RequestRecord,
    capped,
)
from footprint.tracking import Tracker

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]


class FootprintWSGIMiddleware:
    """Records each HTTP request to ``app`` as one query.

    ``model``: a name, or a callable given the WSGI environ (path, headers…) returning
    one, or None for a request not to track. ``tag_headers``, ``tokens`` and ``tracker``
    as for ``FootprintASGIMiddleware``, and the trace context too (the current
    OpenTelemetry span, else the ``traceparent`` header; ``bad_traceparents``).
    """

    def __init__(
        self,
        app: WSGIApp,
        *,
        model: str | ModelFn,
        tracker: Tracker | None = None,
        tag_headers: Mapping[str, str] | None = None,
        tokens: HeaderTokensFn | None = None,
    ) -> None:
        self.app = app
        self._options = Options.checked(model, tracker, tag_headers, tokens)
        self._environ_keys = {
            _environ_key(header): tag for header, tag in self._options.tag_headers.items()
        }

    @property
    def bad_traceparents(self) -> int:
        """Requests whose ``traceparent`` header was invalid (ignored, never an error)."""
        return self._options.bad_traceparents

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        tags = {
            tag: capped(str(environ[key]).strip())
            for key, tag in self._environ_keys.items()
            if key in environ
        }
        record = RequestRecord.open(
            self._options,
            environ,
            tags,
            lambda: _route_of(environ),
            lambda: environ.get("HTTP_TRACEPARENT"),
        )
        if record is None:
            return self.app(environ, start_response)
        body = _TrackedBody(record)
        try:
            body.iterable = self.app(environ, body.wrap(start_response))
        except BaseException as exc:
            record.failed(exc)
            raise
        return body


class _TrackedBody:
    """The application's body iterable, watched: chunk sizes as they are handed to the
    server, and its end (``close``, which a WSGI server calls however the response ended)."""

    def __init__(self, record: RequestRecord) -> None:
        self._record = record
        self.iterable: Iterable[bytes] = ()
        self._streamed = True
        self._exhausted = False

    def wrap(self, start_response: StartResponse) -> StartResponse:
        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            named = {name.lower(): value for name, value in headers}
            self._streamed = "content-length" not in named
            self._record.response_started(_status_code(status), named)
            return start_response(status, headers, exc_info)

        return start

    def __iter__(self) -> Iterator[bytes]:
        record = self._record
        try:
            for chunk in self.iterable:
                record.chunk_sent(len(chunk), self._streamed)
                yield chunk
        except GeneratorExit:  # the server stopped reading: closed below
            raise
        except BaseException as exc:
            record.failed(exc)
            raise
        self._exhausted = True
        record.body_complete()

    def close(self) -> None:
        try:
            close = getattr(self.iterable, "close", None)
            if close is not None:
                close()
        except BaseException as exc:
            self._record.failed(exc)
            raise
        if not self._exhausted:
            self._record.client_gone()
        self._record.returned()


def _environ_key(header: str) -> str:
    """The environ key of a request header (``X-Team``: ``HTTP_X_TEAM``)."""
    key = header.upper().replace("-", "_")
    return key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else f"HTTP_{key}"


def _status_code(status: str) -> int:
    try:
        return int(status.split(" ", 1)[0])
    except ValueError:
        return 0


def _route_of(environ: Environ) -> str:
    """Flask's matched URL rule (``/items/<int:item_id>``: werkzeug keeps the request in
    the environ), else the request's path."""
    rule = getattr(environ.get("werkzeug.request"), "url_rule", None)
    template = getattr(rule, "rule", None)
    if isinstance(template, str):
        return template
    return str(environ.get("SCRIPT_NAME", "")) + str(environ.get("PATH_INFO", ""))
