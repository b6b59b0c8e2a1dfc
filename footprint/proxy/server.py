"""The proxy: forwards every request to the upstream, measures the inference ones.

One aiohttp event loop serves the clients (``aiohttp.web`` low-level server) and talks to
the upstream (``aiohttp.ClientSession``, kept-alive connections). Only origin-form request
targets (a path such as ``/v1/models?x=1``) are forwarded, to the upstream's host and port
under its base path; ``CONNECT``, absolute URLs, ``//host`` paths and ``*`` get a 400.
Requests and responses are forwarded as they are: method, path and query as received,
headers less the hop-by-hop ones, bodies streamed both ways (the client's ``Accept``,
``Accept-Encoding``, ``User-Agent`` and ``Content-Type`` are sent only if the client sent
them; ``Host`` is the upstream's). The upstream's bytes reach the client unchanged:
compressed bodies stay compressed (they are decoded on the side, for reading only), and
one exception is made, below.

For ``POST`` to ``/v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings`` and
``/v1/responses``, one ``footprint.query`` per request: the request body is read (up to
``max_parsed_body``; beyond it, it is forwarded as it comes and recorded as model
``unknown``) for ``model`` and ``stream``; tokens come from the response's ``usage``, or
from the stream's final usage chunk. A stream that did not ask for usage (chat and
completions) is sent upstream with ``stream_options.include_usage`` and
``Accept-Encoding: identity``, and what the option adds is taken out of what the client
receives (see :mod:`footprint.proxy.accounting`). An upstream that refuses the option
(a 4xx naming it) gets the request again without it, and is not asked again; its
streams' output tokens are the number of content chunks, tagged
``tokens_estimated=true``. Ollama's ``/api/chat``, ``/api/generate``, ``/api/embed`` and
``/api/embeddings`` are measured too, their tokens read from ``prompt_eval_count`` and
``eval_count`` (see :mod:`footprint.proxy.ollama`). The caller tags asked for (allowed
headers, ``user``, the API key's hash: :mod:`footprint.proxy.callers`) join the record's.

Records: status ``ok``; ``error`` with ``error_type`` ``HTTP<status>`` (the upstream
answered 4xx/5xx), ``UpstreamUnreachable``, ``UpstreamTimeout``, ``UpstreamDisconnected``
(the upstream cut a response short: the client's is cut short too) or ``StreamError``
(an error event inside a stream); ``cancelled`` when the client went away (the upstream
connection is then closed, so the model server stops generating).

This module holds the server, its routes and its calls upstream; the OpenAI wire format
is in :mod:`footprint.proxy.openai`, header filtering in :mod:`footprint.proxy.headers`,
the error replies in :mod:`footprint.proxy.errors` and body moving in
:mod:`footprint.proxy.pump`.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from typing import Any, NamedTuple

import aiohttp
from aiohttp import web
from yarl import URL

import footprint
from footprint._tracing import parse_traceparent
from footprint.proxy.callers import caller_tags
from footprint.proxy.config import ProxyConfig, ProxyConfigError, upstream_url
from footprint.proxy.errors import (
    UPSTREAM_ERRORS,
    UpstreamDisconnected,
    UpstreamTimeout,
    UpstreamUnreachable,
    gateway_reply,
    status_error,
    target_refused_reply,
)
from footprint.proxy.exchange import Exchange, ProxyStats
from footprint.proxy.headers import (
    Headers,
    identity_encoding,
    request_headers,
    response_headers,
    skip_auto_headers,
)
from footprint.proxy.ollama import ENDPOINTS as OLLAMA_ENDPOINTS
from footprint.proxy.openai import ENDPOINTS as OPENAI_ENDPOINTS
from footprint.proxy.openai import (
    model_of,
    parse_body,
    plain_stream_options,
    refuses_stream_options,
    stream_without_usage,
    with_include_usage,
)
from footprint.proxy.pump import Pump, choose_reading, peek, read_body, rest_of_body

log = logging.getLogger("footprint.proxy")

ENDPOINTS = {**OPENAI_ENDPOINTS, **OLLAMA_ENDPOINTS}  # measured paths: their kind
INLINE_PARSE_MAX = 256 * 1024  # larger request bodies are parsed off the event loop
REFUSAL_LOG_INTERVAL_S = 60.0  # refused request targets: one warning at most this often


def is_origin_form(method: str, target: str) -> bool:
    """Whether a request target is a path (``/v1/models?x=1``): not ``CONNECT host:port``,
    an absolute URL, ``*``, nor a ``//host`` path (a network-path reference)."""
    return (
        method != "CONNECT"
        and target.startswith("/")
        and not target.startswith("//")
        and "#" not in target
    )


def upstream_target(base: URL, target: str) -> URL:
    """The upstream URL of an origin-form target: the base's scheme, host and port, its
    path then the target's (still encoded, as received). The host is never the target's."""
    path, _, query = target.partition("?")
    return URL.build(
        scheme=base.scheme,
        authority=base.raw_authority,
        path=base.raw_path.rstrip("/") + path,
        query_string=query,
        encoded=True,
    )


class _Sent(NamedTuple):
    """A measured request's upstream response, and how its body is to be read."""

    upstream: aiohttp.ClientResponse
    prefix: bytes = b""  # of its body, read already
    strip_usage: bool = False  # the proxy asked for usage: take it out of what is forwarded
    count_chunks: bool = False  # no usage to be had: count the content chunks


class Proxy:
    """An aiohttp server forwarding to ``config.upstream``; ``start()``, then ``stop()``."""

    def __init__(self, config: ProxyConfig) -> None:
        self.config = config
        self.stats = ProxyStats()
        self._upstream = config.upstream
        self._base = upstream_url(config.upstream)
        self._pump = Pump(self.stats, config.upstream, self._accounting_failed)
        self._runner: web.ServerRunner | None = None
        self._site: web.TCPSite | None = None
        self._session: aiohttp.ClientSession | None = None
        self._no_stream_options: set[str] = set()  # paths whose upstream refused the option
        self._handlers: set[asyncio.Task] = set()
        self._idle: asyncio.Event | None = None
        self.address: tuple[str, int] | None = None
        self._warned: set[str] = set()
        self._refusals_unlogged = 0
        self._next_refusal_log = float("-inf")

    # -- life cycle --------------------------------------------------------------------

    async def start(self) -> tuple[str, int]:
        """Listen; the (host, port) bound. ``ProxyConfigError`` if the address is taken."""
        config = self.config
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=config.connect_timeout_s, sock_read=config.read_timeout_s
        )
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=60),
            timeout=timeout,
            auto_decompress=False,  # the client gets the upstream's bytes as they are
            cookie_jar=aiohttp.DummyCookieJar(),  # never carry one client's cookies to another
            trust_env=False,
        )
        self._idle = asyncio.Event()
        self._idle.set()
        server = web.Server(self._handle, handler_cancellation=True, access_log=None)
        self._runner = web.ServerRunner(server)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, config.host, config.port)
        try:
            await self._site.start()
        except OSError as exc:
            await self._close()
            reason = exc.strerror or str(exc)
            raise ProxyConfigError(
                f"cannot listen on {config.host}:{config.port}: {reason}"
            ) from None
        sockets = self._runner.addresses
        host, port = sockets[0][:2] if sockets else (config.host, config.port)
        self.address = (host, port)
        return host, port

    async def stop(self, grace_s: float | None = None) -> None:
        """Stop listening, let requests in flight finish (up to ``grace_s``), close."""
        grace = self.config.grace_s if grace_s is None else grace_s
        if self._site is not None:
            await self._site.stop()
            self._site = None
        if self._handlers and self._idle is not None:
            try:
                await asyncio.wait_for(self._idle.wait(), grace)
            except asyncio.TimeoutError:
                for task in list(self._handlers):
                    task.cancel()
                await asyncio.sleep(0)
        await self._close()

    async def _close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- requests ----------------------------------------------------------------------

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        self.stats.requests += 1
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
            self._idle.clear()  # type: ignore[union-attr]
        try:
            if not is_origin_form(request.method, request.raw_path):
                return self._refuse_target(request)
            kind = ENDPOINTS.get(request.path) if request.method == "POST" else None
            if kind is None:
                return await self._passthrough(request)
            return await self._measured(request, kind)
        finally:
            if task is not None:
                self._handlers.discard(task)
                if not self._handlers:
                    self._idle.set()  # type: ignore[union-attr]

    def _refuse_target(self, request: web.BaseRequest) -> web.Response:
        """400 to a target that is not a path; counted, logged once per interval at most."""
        self.stats.refused_targets += 1
        self._refusals_unlogged += 1
        now = time.monotonic()
        if now >= self._next_refusal_log:
            self._next_refusal_log = now + REFUSAL_LOG_INTERVAL_S
            message = (
                f"footprint proxy: refused {self._refusals_unlogged} request(s) whose target "
                f"is not a path, the last {request.method} {request.raw_path[:100]!r} (400)"
            )
            self._refusals_unlogged = 0
            log.warning(message)
            print(message, file=sys.stderr, flush=True)
        return target_refused_reply()

    async def _send(self, request: web.BaseRequest, headers: Headers, data: Any):
        """The upstream's response (headers read); errors as the ``Upstream*`` exceptions."""
        assert self._session is not None
        try:
            return await self._session.request(
                request.method,
                upstream_target(self._base, request.raw_path),
                headers=headers,
                data=data,
                skip_auto_headers=skip_auto_headers(request.headers),
                allow_redirects=False,
                compress=None,
            )
        except aiohttp.ClientConnectorError as exc:
            raise UpstreamUnreachable(f"cannot reach the upstream {self._upstream}: {exc}") from exc
        except asyncio.TimeoutError as exc:
            raise UpstreamTimeout(f"the upstream {self._upstream} did not answer in time") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamDisconnected(
                f"the upstream {self._upstream} closed the connection: {exc!r}"
            ) from exc

    def _gateway_error(self, exc: Exception) -> web.Response:
        self.stats.upstream_errors += 1
        return gateway_reply(exc)

    async def _passthrough(self, request: web.BaseRequest) -> web.StreamResponse:
        data = request.content if request.body_exists else None
        headers = request_headers(request.headers, keep_length=True)
        try:
            upstream = await self._send(request, headers, data)
        except UPSTREAM_ERRORS as exc:
            return self._gateway_error(exc)
        try:
            return await self._relay(request, upstream, None, b"")
        except BaseException:
            upstream.close()
            raise
        finally:
            upstream.release()

    async def _measured(self, request: web.BaseRequest, kind: str) -> web.StreamResponse:
        pieces, complete = await read_body(request, self.config.max_parsed_body)
        obj = None
        body = b""
        if complete:
            body = pieces[0] if len(pieces) == 1 else b"".join(pieces)
            if len(body) <= INLINE_PARSE_MAX:
                obj = parse_body(body)
            else:
                obj = await asyncio.get_running_loop().run_in_executor(None, parse_body, body)
        self.stats.unparsed_bodies += obj is None
        callers = caller_tags(self.config.callers, request.headers, obj)
        query = self._open_query(model_of(obj), kind, callers)
        if query is not None and query.trace is None:
            self._link_trace(query, request.headers)
        exchange = Exchange(query, kind)
        try:
            response = await self._forward_measured(request, exchange, obj, body, pieces, complete)
        except asyncio.CancelledError as exc:  # the client went away (or shutdown)
            self.stats.cancelled += 1
            self._close_query(exchange, exc)
            raise
        except BaseException as exc:
            self._close_query(exchange, exc)
            raise
        if isinstance(exchange.error, asyncio.CancelledError):
            self.stats.cancelled += 1
        self._close_query(exchange, exchange.error)
        return response

    async def _forward_measured(
        self,
        request: web.BaseRequest,
        exchange: Exchange,
        obj: dict | None,
        body: bytes,
        pieces: list[bytes],
        complete: bool,
    ) -> web.StreamResponse:
        # A stream that did not ask for usage: ask for it, or count its chunks.
        needs_usage = obj is not None and stream_without_usage(obj, exchange.kind)
        headers = request_headers(request.headers, keep_length=not complete)
        data: Any = body if complete else rest_of_body(pieces, request)
        try:
            if (
                obj is not None
                and needs_usage
                and request.path not in self._no_stream_options
                and plain_stream_options(obj)
            ):
                sent = await self._send_asking_usage(request, headers, body, obj)
            else:
                sent = _Sent(await self._send(request, headers, data), count_chunks=needs_usage)
        except UPSTREAM_ERRORS as exc:
            exchange.error = exc
            return self._gateway_error(exc)
        upstream = sent.upstream
        try:
            if upstream.status >= 400:
                exchange.error = status_error(upstream.status)
                self.stats.upstream_errors += 1
            return await self._relay(
                request, upstream, exchange, sent.prefix, sent.strip_usage, sent.count_chunks
            )
        except BaseException:  # cancelled (the client went away) or worse
            upstream.close()  # the model server sees the client leave and stops
            raise
        finally:
            upstream.release()

    async def _send_asking_usage(
        self, request: web.BaseRequest, headers: Headers, body: bytes, obj: dict
    ) -> _Sent:
        """A stream sent with ``include_usage``; an upstream refusing it (a 4xx naming it)
        gets the request again as it was, and is not asked again on this path."""
        asking = with_include_usage(body, obj)
        upstream = await self._send(request, identity_encoding(headers), asking)
        if not 400 <= upstream.status < 500:
            return _Sent(upstream, strip_usage=True)
        error_body = await peek(upstream)
        if not refuses_stream_options(error_body):
            return _Sent(upstream, prefix=error_body)  # an error of its own: forward it
        upstream.release()
        self._no_stream_options.add(request.path)
        self._warn_once(
            f"refused:{request.path}",
            f"footprint proxy: the upstream refuses stream_options on "
            f"{request.path}; output tokens of its streams are counted as "
            "content chunks (tokens_estimated=true)",
        )
        return _Sent(await self._send(request, headers, body), count_chunks=True)

    async def _relay(
        self,
        request: web.BaseRequest,
        upstream: aiohttp.ClientResponse,
        exchange: Exchange | None,
        prefix: bytes,
        strip_usage: bool = False,
        count_chunks: bool = False,
    ) -> web.StreamResponse:
        """Send the upstream's response to the client as it comes, accounting on the side."""
        reading = choose_reading(exchange, upstream, strip_usage, count_chunks)
        headers = response_headers(upstream.headers, drop_length=reading.strip_usage)
        return await self._pump.send(request, upstream, exchange, reading, headers, prefix)

    # -- footprint -----------------------------------------------------------------------

    def _open_query(self, model: str, kind: str, callers: dict[str, str]) -> Any:
        self.stats.measured += 1
        try:
            tags = {"endpoint": kind, **self.config.tags, **callers}
            query = footprint.query(model=model, gpus=self.config.gpus, **tags)
            query.__enter__()
            return query
        except Exception as exc:
            self._accounting_failed(exc)
            return None

    def _link_trace(self, query: Any, headers: Any) -> None:
        """The client's W3C ``traceparent`` as the query's trace context; a header that
        is not exactly one valid version-00 value is ignored and counted, and the request
        goes on as it came (the header is forwarded upstream unchanged)."""
        values = headers.getall("traceparent", ())
        if not values:
            return
        ids = parse_traceparent(values[0]) if len(values) == 1 else None
        if ids is None:
            self.stats.bad_traceparents += 1
            return
        try:
            query.trace = ids
        except Exception as exc:
            self._accounting_failed(exc)

    def _close_query(self, exchange: Exchange, error: BaseException | None) -> None:
        query = exchange.query
        if query is None:
            return
        exchange.query = None
        try:
            if error is None:
                query.__exit__(None, None, None)
            else:
                query.__exit__(type(error), error, None)
        except Exception as exc:
            self._accounting_failed(exc)

    def _accounting_failed(self, exc: Exception) -> None:
        self.stats.accounting_errors += 1
        self._warn_once("accounting", f"footprint proxy: accounting failed: {exc!r}")

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message)
            print(message, file=sys.stderr, flush=True)
