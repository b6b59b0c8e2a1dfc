"""Which headers cross the proxy: never the hop-by-hop ones nor those a ``Connection``
header names; ``Host`` is the upstream's, and aiohttp's automatic headers are sent only
when the client sent them."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
_NOT_FORWARDED_UP = HOP_BY_HOP | {"host", "expect"}
_AUTO_HEADERS = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")
Headers = list[tuple[str, str]]


def connection_tokens(headers: Any) -> set[str]:
    """The header names listed in ``Connection`` headers, lower-case."""
    named: set[str] = set()
    for value in headers.getall("Connection", ()):
        named.update(t.strip().lower() for t in value.split(",") if t.strip())
    return named


def _kept(headers: Any, drop: Iterable[str]) -> Headers:
    return [(k, v) for k, v in headers.items() if k.lower() not in drop]


def request_headers(headers: Any, keep_length: bool) -> Headers:
    """A client's request headers to send upstream (``Content-Length`` if ``keep_length``)."""
    drop = _NOT_FORWARDED_UP | connection_tokens(headers)
    if not keep_length:
        drop = drop | {"content-length"}
    return _kept(headers, drop)


def skip_auto_headers(headers: Any) -> tuple[str, ...]:
    """The automatic headers aiohttp must not add: those the client did not send."""
    return tuple(h for h in _AUTO_HEADERS if h not in headers)


def identity_encoding(headers: Headers) -> Headers:
    """The headers asking for an uncompressed response, whatever the client accepts."""
    kept = [(k, v) for k, v in headers if k.lower() != "accept-encoding"]
    kept.append(("Accept-Encoding", "identity"))
    return kept


def response_headers(headers: Any, drop_length: bool) -> Headers:
    """An upstream's response headers to send the client (less ``Content-Length`` when the
    body will change length)."""
    drop = HOP_BY_HOP | connection_tokens(headers)
    if drop_length:
        drop = drop | {"content-length"}
    return _kept(headers, drop)
