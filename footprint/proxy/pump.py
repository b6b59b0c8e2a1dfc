"""Bodies moved through the proxy: a request's read (up to a cap) then streamed on, and an
upstream's response sent to the client, whole or as it comes, read on the side by an
accountant. Accounting never breaks a response; an upstream that cuts its response short
has the client's cut short too."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from footprint.proxy.accounting import BodyAccountant, Inflater, SSEAccountant
from footprint.proxy.errors import (
    READ_ERRORS,
    ClientGone,
    StreamError,
    gateway_reply,
    read_failure,
)
from footprint.proxy.exchange import Exchange, ProxyStats
from footprint.proxy.headers import Headers
from footprint.proxy.ollama import KINDS as OLLAMA_KINDS
from footprint.proxy.ollama import NDJSONAccountant, is_ndjson, ollama_tokens
from footprint.proxy.openai import is_event_stream

# Accountants of a stream: closed at its end, with a stream's errors and oversized events.
STREAM_ACCOUNTANTS = (SSEAccountant, NDJSONAccountant)
WHOLE_BODY_MAX = 1024 * 1024  # a body this small, of known length, is sent in one write
ERROR_PEEK = 64 * 1024  # of a 4xx body read to see whether it refuses stream_options

# -- the request ----------------------------------------------------------------------------


async def read_body(request: web.BaseRequest, cap: int) -> tuple[list[bytes], bool]:
    """The body's first pieces, and whether they are all of it (within ``cap`` bytes)."""
    if not request.body_exists:
        return [], True
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


async def rest_of_body(pieces: list[bytes], request: web.BaseRequest) -> AsyncIterator[bytes]:
    """The pieces already read, then the rest of the request's body as it comes."""
    for piece in pieces:
        yield piece
    pieces.clear()
    async for piece in request.content.iter_any():
        yield piece


async def peek(upstream: aiohttp.ClientResponse) -> bytes:
    """The start of an upstream's (error) body, up to ``ERROR_PEEK`` bytes."""
    out = bytearray()
    while len(out) < ERROR_PEEK:
        piece = await upstream.content.readany()
        if not piece:
            break
        out += piece
    return bytes(out)


# -- the response ---------------------------------------------------------------------------


@dataclass
class Reading:
    """How a response is read on the side; the accountant is dropped if it fails."""

    accountant: SSEAccountant | NDJSONAccountant | BodyAccountant | None = None
    inflater: Inflater | None = None
    strip_usage: bool = False  # the accountant gives back the bytes to forward


def choose_reading(
    exchange: Exchange | None,
    upstream: aiohttp.ClientResponse,
    strip_usage: bool,
    count_chunks: bool,
) -> Reading:
    """The accountant of a measured, successful response; none for the others."""
    if exchange is None or upstream.status >= 400:
        return Reading()
    headers = upstream.headers
    encoding = headers.get("Content-Encoding", "identity").strip().lower()
    content_type = headers.get("Content-Type", "")
    first_token = exchange.query.first_token if exchange.query else None
    accountant: SSEAccountant | NDJSONAccountant | BodyAccountant | None
    if is_event_stream(content_type):
        if strip_usage and encoding not in ("", "identity"):
            strip_usage = False  # the upstream compressed anyway: forward as is
        accountant = SSEAccountant(
            exchange.kind,
            strip_usage=strip_usage,
            count_chunks=count_chunks,
            on_first_content=first_token,
        )
        exchange.tokens_estimated = count_chunks
    else:
        strip_usage = False
        accountant = _body_accountant(exchange.kind, content_type, first_token)
    inflater = None
    if encoding in ("gzip", "x-gzip", "deflate"):
        inflater = Inflater("deflate" if encoding == "deflate" else "gzip")
    elif encoding not in ("", "identity"):
        accountant = None  # br, zstd: forwarded, not read
    return Reading(accountant, inflater, strip_usage)


def _body_accountant(
    kind: str, content_type: str, first_token: Callable[[], Any] | None
) -> NDJSONAccountant | BodyAccountant:
    """The accountant of a body that is not server-sent events: an Ollama stream, or a
    JSON body (Ollama's or OpenAI's)."""
    if kind not in OLLAMA_KINDS:
        return BodyAccountant(kind)
    if is_ndjson(content_type):
        return NDJSONAccountant(kind, on_first_content=first_token)
    return BodyAccountant(kind, ollama_tokens)


def _fits_one_write(
    request: web.BaseRequest, upstream: aiohttp.ClientResponse, reading: Reading, prefix: bytes
) -> bool:
    length = upstream.content_length
    return (
        length is not None
        and length <= WHOLE_BODY_MAX
        and not reading.strip_usage
        and "Content-Type" in upstream.headers
        and request.method != "HEAD"
        and upstream.status not in (204, 304)
        and not prefix
    )


def _cancelled(exchange: Exchange | None) -> None:
    if exchange is not None:
        exchange.error = asyncio.CancelledError()


async def _write(response: web.StreamResponse, data: bytes) -> None:
    try:
        await response.write(data)
    except ConnectionError as exc:  # aiohttp's ClientConnectionResetError included
        raise ClientGone() from exc


class Pump:
    """Sends upstream responses to clients, counting into ``stats``; an accounting failure
    goes to ``accounting_failed``."""

    def __init__(
        self, stats: ProxyStats, upstream: str, accounting_failed: Callable[[Exception], None]
    ) -> None:
        self._stats = stats
        self._upstream = upstream
        self._accounting_failed = accounting_failed

    async def send(
        self,
        request: web.BaseRequest,
        upstream: aiohttp.ClientResponse,
        exchange: Exchange | None,
        reading: Reading,
        headers: Headers,
        prefix: bytes,
    ) -> web.StreamResponse:
        """The response: ``prefix`` (bytes already read of the body), then the rest."""
        if _fits_one_write(request, upstream, reading, prefix):
            return await self._whole(upstream, exchange, reading, headers)
        return await self._stream(request, upstream, exchange, reading, headers, prefix)

    async def _whole(
        self,
        upstream: aiohttp.ClientResponse,
        exchange: Exchange | None,
        reading: Reading,
        headers: Headers,
    ) -> web.StreamResponse:
        """A small body of known length, read and sent with its headers in one write."""
        try:
            body = await upstream.read()
        except READ_ERRORS as exc:
            failure = read_failure(exc, self._upstream)
            upstream.close()
            if exchange is not None:
                exchange.error = failure
            self._stats.upstream_errors += 1
            return gateway_reply(failure)
        if exchange is not None:
            self._read_whole(exchange, reading, body)
        return web.Response(
            status=upstream.status, reason=upstream.reason, headers=headers, body=body
        )

    def _read_whole(self, exchange: Exchange, reading: Reading, body: bytes) -> None:
        accountant = reading.accountant
        if accountant is not None:
            inflater = reading.inflater
            try:
                accountant.feed(inflater.decode(body) if inflater is not None else body)
                if isinstance(accountant, STREAM_ACCOUNTANTS):
                    accountant.close()
            except Exception as exc:  # accounting never breaks a response
                self._accounting_failed(exc)
                accountant = None
        self.finish_accounting(exchange, accountant)

    async def _stream(
        self,
        request: web.BaseRequest,
        upstream: aiohttp.ClientResponse,
        exchange: Exchange | None,
        reading: Reading,
        headers: Headers,
        prefix: bytes,
    ) -> web.StreamResponse:
        """Headers first, then the body as it comes."""
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        response.headers.extend(headers)
        try:
            await response.prepare(request)
        except ConnectionError:  # the client is gone already
            upstream.close()
            _cancelled(exchange)
            return response
        try:
            await self._pump(response, upstream, reading, prefix)
        except ClientGone:
            # The client went away: so does the upstream connection (the model server
            # stops generating); aiohttp ends this response quietly.
            upstream.close()
            _cancelled(exchange)
            return response
        except READ_ERRORS as exc:
            # Cut the client's response short too, as the upstream did: no final chunk.
            self._stats.upstream_errors += 1
            upstream.close()
            if request.transport is not None:
                request.transport.close()
            if exchange is not None:
                exchange.error = read_failure(exc, self._upstream)
        if exchange is not None:
            self.finish_accounting(exchange, reading.accountant)
        return response

    async def _pump(
        self,
        response: web.StreamResponse,
        upstream: aiohttp.ClientResponse,
        reading: Reading,
        prefix: bytes,
    ) -> None:
        piece = prefix
        content = upstream.content
        while True:
            if piece:
                out = self._feed(reading, piece)
                if out:
                    await _write(response, out)
            piece = await content.readany()
            if not piece:
                break
        rest = self._close(reading)
        if rest:
            await _write(response, rest)

    def _feed(self, reading: Reading, piece: bytes) -> bytes:
        """The accountant reads ``piece``; the bytes to forward for it."""
        accountant = reading.accountant
        if accountant is None:
            return piece
        try:
            readable = reading.inflater.decode(piece) if reading.inflater is not None else piece
            held = accountant.feed(readable)
            return held if reading.strip_usage else piece  # type: ignore[return-value]
        except Exception as exc:  # accounting never breaks a response
            self._accounting_failed(exc)
            out = accountant.pending() if reading.strip_usage else piece  # type: ignore[union-attr]
            reading.accountant, reading.strip_usage = None, False
            return out

    def _close(self, reading: Reading) -> bytes:
        """The end of a stream: what the accountant still held, to forward."""
        accountant = reading.accountant
        if not isinstance(accountant, STREAM_ACCOUNTANTS):
            return b""
        try:
            rest = accountant.close()
        except Exception as exc:
            self._accounting_failed(exc)
            rest, reading.accountant = accountant.pending(), None
        return rest if reading.strip_usage else b""

    def finish_accounting(
        self,
        exchange: Exchange,
        accountant: SSEAccountant | NDJSONAccountant | BodyAccountant | None,
    ) -> None:
        """The tokens the accountant found, on the exchange's query."""
        query = exchange.query
        if accountant is None or query is None:
            return
        try:
            tokens = accountant.tokens()
            if isinstance(accountant, STREAM_ACCOUNTANTS):
                tokens = self._stream_tokens(exchange, accountant, tokens)
            if tokens is None:
                if exchange.error is None:
                    self._stats.no_usage += 1
            else:
                query.set_tokens(input=tokens[0], output=tokens[1])
        except Exception as exc:  # accounting never breaks a response
            self._accounting_failed(exc)

    def _stream_tokens(
        self,
        exchange: Exchange,
        accountant: SSEAccountant | NDJSONAccountant,
        tokens: tuple[int | None, int | None] | None,
    ) -> tuple[int | None, int | None] | None:
        """A stream's tokens: its usage, else its content chunks counted when estimating."""
        query = exchange.query
        self._stats.oversized_events += accountant.oversized_events
        if accountant.stream_error and exchange.error is None:
            exchange.error = StreamError("the upstream sent an error event")
        if tokens is None and exchange.tokens_estimated:
            tokens = (None, accountant.content_chunks)
            query.tags = {**query.tags, "tokens_estimated": True}
            self._stats.estimated += 1
        return tokens
