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
``tokens_estimated=true``.

Records: status ``ok``; ``error`` with ``error_type`` ``HTTP<status>`` (the upstream
answered 4xx/5xx), ``UpstreamUnreachable``, ``UpstreamTimeout``, ``UpstreamDisconnected``
(the upstream cut a response short: the client's is cut short too) or ``StreamError``
(an error event inside a stream); ``cancelled`` when the client went away (the upstream
connection is then closed, so the model server stops generating).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from typing import Any

import aiohttp
from aiohttp import web
from yarl import URL

import footprint
from footprint.proxy.accounting import (
    ENDPOINTS,
    INJECTABLE,
    BodyAccountant,
    Inflater,
    SSEAccountant,
)
from footprint.proxy.config import ProxyConfig, ProxyConfigError, upstream_url

log = logging.getLogger("footprint.proxy")

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    "te", "trailer", "trailers", "transfer-encoding", "upgrade",
})  # fmt: skip
_NOT_FORWARDED_UP = HOP_BY_HOP | {"host", "expect"}
_AUTO_HEADERS = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")
INLINE_PARSE_MAX = 256 * 1024  # larger request bodies are parsed off the event loop
WHOLE_BODY_MAX = 1024 * 1024  # a body this small, of known length, is sent in one write
ERROR_PEEK = 64 * 1024  # of a 4xx body read to see whether it refuses stream_options
MAX_MODEL_CHARS = 256
REFUSAL_LOG_INTERVAL_S = 60.0  # refused request targets: one warning at most this often
Headers = list[tuple[str, str]]


# Exception types whose names are the ``error_type`` of a record.
class UpstreamUnreachable(Exception):
    pass


class UpstreamTimeout(Exception):
    pass


class UpstreamDisconnected(Exception):
    pass


class StreamError(Exception):
    pass


class UpstreamStatus(Exception):
    """The upstream answered with an error status; subclasses are named ``HTTP<status>``."""


_STATUS_ERRORS: dict[int, type[UpstreamStatus]] = {}


def status_error(status: int) -> UpstreamStatus:
    cls = _STATUS_ERRORS.get(status)
    if cls is None:
        cls = _STATUS_ERRORS[status] = type(f"HTTP{status}", (UpstreamStatus,), {})
    return cls(status)


class _ClientGone(Exception):
    """The client's connection closed while its response was being written."""


def _error_response(status: int, kind: str, message: str) -> web.Response:
    body = json.dumps({"error": {"message": message, "type": kind, "param": None, "code": None}})
    return web.Response(status=status, body=body.encode(), content_type="application/json")


def is_origin_form(method: str, target: str) -> bool:
    """Whether a request target is a path (``/v1/models?x=1``): not ``CONNECT host:port``,
    an absolute URL, ``*``, nor a ``//host`` path (a network-path reference)."""
    return (
        method != "CONNECT" and target.startswith("/") and not target.startswith("//")
        and "#" not in target
    )  # fmt: skip


def upstream_target(base: URL, target: str) -> URL:
    """The upstream URL of an origin-form target: the base's scheme, host and port, its
    path then the target's (still encoded, as received). The host is never the target's."""
    path, _, query = target.partition("?")
    return URL.build(
        scheme=base.scheme, authority=base.raw_authority,
        path=base.raw_path.rstrip("/") + path, query_string=query, encoded=True,
    )  # fmt: skip


def _connection_tokens(headers: Any) -> set[str]:
    named = set()
    for value in headers.getall("Connection", ()):
        named.update(t.strip().lower() for t in value.split(",") if t.strip())
    return named


def _parse_body(body: bytes) -> dict | None:
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


def _asks_usage(obj: dict) -> bool:
    options = obj.get("stream_options")
    return isinstance(options, dict) and bool(options.get("include_usage"))


def _plain_stream_options(obj: dict) -> bool:
    """No stream option but ``include_usage``: adding it changes nothing else (vLLM's
    ``continuous_usage_stats``, for one, would put usage in every chunk once it is on)."""
    options = obj.get("stream_options")
    return options is None or (isinstance(options, dict) and options.keys() <= {"include_usage"})


def _with_include_usage(body: bytes, obj: dict) -> bytes:
    """The body with ``stream_options.include_usage`` true; untouched bytes otherwise."""
    options = obj.get("stream_options")
    if options is None and "stream_options" not in obj:
        start = body.index(b"{") + 1
        return body[:start] + b'"stream_options":{"include_usage":true},' + body[start:]
    merged = dict(obj)
    merged["stream_options"] = {**(options if isinstance(options, dict) else {}),
                                "include_usage": True}  # fmt: skip
    return json.dumps(merged, ensure_ascii=False, separators=(",", ":")).encode()


class ProxyStats:
    """Counters, printed at shutdown."""

    def __init__(self) -> None:
        self.requests = 0
        self.measured = 0
        self.unparsed_bodies = 0  # over the cap, or not JSON: model "unknown"
        self.no_usage = 0  # measured responses in which no usage was found
        self.estimated = 0  # streams whose output tokens were counted as chunks
        self.upstream_errors = 0
        self.cancelled = 0
        self.accounting_errors = 0
        self.oversized_events = 0
        self.refused_targets = 0  # not a path (CONNECT, absolute URL, *): 400, not forwarded

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class _Exchange:
    """One measured request: its query and how it ended."""

    __slots__ = ("query", "kind", "error", "tokens_estimated")

    def __init__(self, query: Any, kind: str) -> None:
        self.query = query
        self.kind = kind
        self.error: BaseException | None = None
        self.tokens_estimated = False


class Proxy:
    """An aiohttp server forwarding to ``config.upstream``; ``start()``, then ``stop()``."""

    def __init__(self, config: ProxyConfig) -> None:
        self.config = config
        self.stats = ProxyStats()
        self._upstream = config.upstream
        self._base = upstream_url(config.upstream)
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

    def _target(self, request: web.BaseRequest) -> URL:
        return upstream_target(self._base, request.raw_path)

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
        response = _error_response(
            400, "invalid_request_target",
            "the request target must be a path such as /v1/chat/completions: the proxy "
            "forwards no CONNECT, absolute URL, //host path or *",
        )  # fmt: skip
        response.force_close()
        return response

    def _headers_up(self, request: web.BaseRequest, keep_length: bool) -> Headers:
        drop = _NOT_FORWARDED_UP | _connection_tokens(request.headers)
        if not keep_length:
            drop = drop | {"content-length"}
        return [(k, v) for k, v in request.headers.items() if k.lower() not in drop]

    @staticmethod
    def _skip_auto(request: web.BaseRequest) -> tuple[str, ...]:
        return tuple(h for h in _AUTO_HEADERS if h not in request.headers)

    async def _send(self, request: web.BaseRequest, headers: Headers, data: Any):
        """The upstream's response (headers read); errors as the exceptions above."""
        assert self._session is not None
        try:
            return await self._session.request(
                request.method, self._target(request), headers=headers, data=data,
                skip_auto_headers=self._skip_auto(request), allow_redirects=False,
                compress=None,
            )  # fmt: skip
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
        if isinstance(exc, UpstreamTimeout):
            return _error_response(504, "upstream_timeout", str(exc))
        if isinstance(exc, UpstreamUnreachable):
            return _error_response(502, "upstream_unreachable", str(exc))
        return _error_response(502, "upstream_disconnected", str(exc))

    async def _passthrough(self, request: web.BaseRequest) -> web.StreamResponse:
        data = request.content if request.body_exists else None
        headers = self._headers_up(request, keep_length=True)
        try:
            upstream = await self._send(request, headers, data)
        except (UpstreamUnreachable, UpstreamTimeout, UpstreamDisconnected) as exc:
            return self._gateway_error(exc)
        try:
            return await self._relay(request, upstream, None, b"")
        except BaseException:
            upstream.close()
            raise
        finally:
            upstream.release()

    async def _read_body(self, request: web.BaseRequest) -> tuple[list[bytes], bool]:
        """The body's first pieces, and whether they are all of it (within the cap)."""
        if not request.body_exists:
            return [], True
        cap = self.config.max_parsed_body
        pieces: list[bytes] = []
        size = 0
        content = request.content
        while True:
            piece = await content.readany()
            if not piece:
                return pieces, True
            pieces.append(piece)
            size += len(piece)
            if size > cap:
                return pieces, False

    async def _measured(self, request: web.BaseRequest, kind: str) -> web.StreamResponse:
        pieces, complete = await self._read_body(request)
        obj = None
        body = b""
        if complete:
            body = pieces[0] if len(pieces) == 1 else b"".join(pieces)
            if len(body) <= INLINE_PARSE_MAX:
                obj = _parse_body(body)
            else:
                obj = await asyncio.get_running_loop().run_in_executor(None, _parse_body, body)
        model = obj.get("model") if obj is not None else None
        if not isinstance(model, str) or not model.strip():
            model = "unknown"
            self.stats.unparsed_bodies += obj is None
        exchange = _Exchange(self._open_query(model[:MAX_MODEL_CHARS], kind), kind)
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
        self, request: web.BaseRequest, exchange: _Exchange, obj: dict | None, body: bytes,
        pieces: list[bytes], complete: bool,
    ) -> web.StreamResponse:  # fmt: skip
        # A stream that did not ask for usage: ask for it, or count its chunks.
        needs_usage = (
            obj is not None and obj.get("stream") is True and exchange.kind in INJECTABLE
            and not _asks_usage(obj)
        )  # fmt: skip
        inject = (
            needs_usage and request.path not in self._no_stream_options
            and _plain_stream_options(obj)  # type: ignore[arg-type]
        )  # fmt: skip
        estimate = needs_usage and not inject
        if complete:
            headers = self._headers_up(request, keep_length=False)
            data: Any = body
        else:
            headers = self._headers_up(request, keep_length=True)
            data = self._rest_of_body(pieces, request)
        try:
            if inject:
                up_headers = [(k, v) for k, v in headers if k.lower() != "accept-encoding"]
                up_headers.append(("Accept-Encoding", "identity"))
                asking = _with_include_usage(body, obj)  # type: ignore[arg-type]
                upstream = await self._send(request, up_headers, asking)
                if 400 <= upstream.status < 500:
                    peek = await self._peek(upstream)
                    if b"stream_options" in peek or b"include_usage" in peek:
                        upstream.release()
                        self._no_stream_options.add(request.path)
                        self._warn_once(
                            f"refused:{request.path}",
                            f"footprint proxy: the upstream refuses stream_options on "
                            f"{request.path}; output tokens of its streams are counted as "
                            "content chunks (tokens_estimated=true)",
                        )
                        inject, estimate = False, True
                        upstream = await self._send(request, headers, data)
                        prefix = b""
                    else:
                        inject, prefix = False, peek  # an error of its own: forward it
                else:
                    prefix = b""
            else:
                upstream = await self._send(request, headers, data)
                prefix = b""
        except (UpstreamUnreachable, UpstreamTimeout, UpstreamDisconnected) as exc:
            exchange.error = exc
            return self._gateway_error(exc)
        try:
            if upstream.status >= 400:
                exchange.error = status_error(upstream.status)
                self.stats.upstream_errors += 1
            return await self._relay(request, upstream, exchange, prefix, inject, estimate)
        except BaseException:  # cancelled (the client went away) or worse
            upstream.close()  # the model server sees the client leave and stops
            raise
        finally:
            upstream.release()

    @staticmethod
    async def _rest_of_body(pieces: list[bytes], request: web.BaseRequest):
        for piece in pieces:
            yield piece
        pieces.clear()
        async for piece in request.content.iter_any():
            yield piece

    @staticmethod
    async def _peek(upstream: aiohttp.ClientResponse) -> bytes:
        out = bytearray()
        while len(out) < ERROR_PEEK:
            piece = await upstream.content.readany()
            if not piece:
                break
            out += piece
        return bytes(out)

    # -- the response ------------------------------------------------------------------

    async def _relay(
        self, request: web.BaseRequest, upstream: aiohttp.ClientResponse,
        exchange: _Exchange | None, prefix: bytes, strip_usage: bool = False,
        count_chunks: bool = False,
    ) -> web.StreamResponse:  # fmt: skip
        """Send the upstream's response to the client as it comes, accounting on the side."""
        headers = upstream.headers
        encoding = headers.get("Content-Encoding", "identity").strip().lower()
        accountant: SSEAccountant | BodyAccountant | None = None
        inflater = None
        if exchange is not None and upstream.status < 400:
            content_type = headers.get("Content-Type", "")
            if content_type.startswith("text/event-stream"):
                if strip_usage and encoding not in ("", "identity"):
                    strip_usage = False  # the upstream compressed anyway: forward as is
                accountant = SSEAccountant(
                    exchange.kind, strip_usage=strip_usage, count_chunks=count_chunks,
                    on_first_content=exchange.query.first_token if exchange.query else None,
                )  # fmt: skip
                exchange.tokens_estimated = count_chunks
            else:
                strip_usage = False
                accountant = BodyAccountant(exchange.kind)
            if encoding in ("gzip", "x-gzip", "deflate"):
                inflater = Inflater("deflate" if encoding == "deflate" else "gzip")
            elif encoding not in ("", "identity"):
                accountant = None  # br, zstd: forwarded, not read
        else:
            strip_usage = False

        drop = HOP_BY_HOP | _connection_tokens(headers)
        if strip_usage:
            drop = drop | {"content-length"}
        out_headers = [(k, v) for k, v in headers.items() if k.lower() not in drop]
        length = upstream.content_length
        if (
            length is not None and length <= WHOLE_BODY_MAX and not strip_usage
            and "Content-Type" in headers and request.method != "HEAD"
            and upstream.status not in (204, 304) and not prefix
        ):  # fmt: skip
            return await self._relay_whole(request, upstream, exchange, accountant, inflater,
                                           out_headers)  # fmt: skip
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        response.headers.extend(out_headers)
        try:
            await response.prepare(request)
        except ConnectionError:  # the client is gone already
            upstream.close()
            if exchange is not None:
                exchange.error = asyncio.CancelledError()
            return response

        failure: BaseException | None = None
        try:
            piece = prefix
            content = upstream.content
            while True:
                if piece:
                    out = piece
                    if accountant is not None:
                        try:
                            readable = inflater.decode(piece) if inflater is not None else piece
                            held = accountant.feed(readable)
                            if strip_usage:
                                out = held
                        except Exception as exc:  # accounting never breaks a response
                            self._accounting_failed(exc)
                            if strip_usage:  # what it held back (this piece included)
                                out = accountant.pending()  # type: ignore[union-attr]
                            accountant, strip_usage = None, False
                    if out:
                        await self._write(response, out)
                piece = await content.readany()
                if not piece:
                    break
            if isinstance(accountant, SSEAccountant):
                try:
                    rest = accountant.close()
                except Exception as exc:
                    self._accounting_failed(exc)
                    rest, accountant = accountant.pending(), None
                if rest and strip_usage:
                    await self._write(response, rest)
        except _ClientGone:
            # The client went away: so does the upstream connection (the model server
            # stops generating); aiohttp ends this response quietly.
            upstream.close()
            if exchange is not None:
                exchange.error = asyncio.CancelledError()
            return response
        except asyncio.TimeoutError as exc:
            failure = UpstreamTimeout(f"the upstream {self._upstream} stopped sending")
            failure.__cause__ = exc
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, OSError) as exc:
            failure = UpstreamDisconnected(
                f"the upstream {self._upstream} cut the response short: {exc!r}"
            )
        if failure is not None:
            # Cut the client's response short too, as the upstream did: no final chunk.
            self.stats.upstream_errors += 1
            upstream.close()
            if request.transport is not None:
                request.transport.close()
            if exchange is not None:
                exchange.error = failure
                self._finish_accounting(exchange, accountant)
            return response
        if exchange is not None:
            self._finish_accounting(exchange, accountant)
        return response

    async def _relay_whole(
        self, request: web.BaseRequest, upstream: aiohttp.ClientResponse,
        exchange: _Exchange | None, accountant: Any, inflater: Inflater | None,
        headers: Headers,
    ) -> web.StreamResponse:  # fmt: skip
        """A small body of known length, read and sent with its headers in one write."""
        try:
            body = await upstream.read()
        except asyncio.TimeoutError as exc:
            failure: Exception = UpstreamTimeout(f"the upstream {self._upstream} stopped sending")
            failure.__cause__ = exc
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, OSError) as exc:
            failure = UpstreamDisconnected(
                f"the upstream {self._upstream} cut the response short: {exc!r}"
            )
        else:
            if exchange is not None:
                if accountant is not None:
                    try:
                        accountant.feed(inflater.decode(body) if inflater is not None else body)
                        if isinstance(accountant, SSEAccountant):
                            accountant.close()
                    except Exception as exc:  # accounting never breaks a response
                        self._accounting_failed(exc)
                        accountant = None
                self._finish_accounting(exchange, accountant)
            return web.Response(
                status=upstream.status, reason=upstream.reason, headers=headers, body=body
            )
        upstream.close()
        if exchange is not None:
            exchange.error = failure
        return self._gateway_error(failure)

    @staticmethod
    async def _write(response: web.StreamResponse, data: bytes) -> None:
        try:
            await response.write(data)
        except ConnectionError as exc:  # aiohttp's ClientConnectionResetError included
            raise _ClientGone() from exc

    def _finish_accounting(self, exchange: _Exchange, accountant: Any) -> None:
        query = exchange.query
        if accountant is None or query is None:
            return
        try:
            tokens = accountant.tokens()
            if isinstance(accountant, SSEAccountant):
                self.stats.oversized_events += accountant.oversized_events
                if accountant.stream_error and exchange.error is None:
                    exchange.error = StreamError("the upstream sent an error event")
                if tokens is None and exchange.tokens_estimated:
                    tokens = (None, accountant.content_chunks)
                    query.tags = {**query.tags, "tokens_estimated": True}
                    self.stats.estimated += 1
            if tokens is None:
                if exchange.error is None:
                    self.stats.no_usage += 1
            else:
                query.set_tokens(input=tokens[0], output=tokens[1])
        except Exception as exc:  # accounting never breaks a response
            self._accounting_failed(exc)

    # -- footprint -----------------------------------------------------------------------

    def _open_query(self, model: str, kind: str) -> Any:
        self.stats.measured += 1
        try:
            query = footprint.query(model=model, gpus=self.config.gpus,  # type: ignore[arg-type]
                                    **{"endpoint": kind, **self.config.tags})  # fmt: skip
            query.__enter__()
            return query
        except Exception as exc:
            self._accounting_failed(exc)
            return None

    def _close_query(self, exchange: _Exchange, error: BaseException | None) -> None:
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
