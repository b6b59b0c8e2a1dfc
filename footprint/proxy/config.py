"""The proxy's settings, parsed from the command line: every mistake is one clear line."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from yarl import URL

from footprint.proxy.callers import API_KEY_HASH_TAG, USER_TAG, CallerTagging, TagHeader

DEFAULT_LISTEN = "127.0.0.1:8001"
MAX_PARSED_BODY = 10 * 1024 * 1024  # request bodies beyond this are forwarded, not parsed
RESERVED_TAGS = frozenset({"model", "tokens", "gpus", "sync"})
# Tags the proxy sets itself: a --tag-header may not take their names.
PROXY_TAGS = frozenset({"endpoint", "tokens_estimated", USER_TAG, API_KEY_HASH_TAG})
# Headers that carry credentials: never stored (--tag-api-key-hash stores a keyed hash).
SECRET_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "cookie", "x-api-key", "api-key"}
)
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


class ProxyConfigError(ValueError):
    """A setting that cannot work: the command exits 2 with this message."""


@dataclass(frozen=True)
class ProxyConfig:
    upstream: str  # http(s)://host[:port][/prefix], no trailing slash
    host: str = "127.0.0.1"
    port: int = 8001
    gpus: tuple[int | str, ...] | None = None  # None: every GPU footprint sees
    tags: dict[str, Any] = field(default_factory=dict)
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 600.0  # the longest wait for the next byte from the upstream
    grace_s: float = 15.0  # on SIGTERM/SIGINT, how long requests in flight may finish
    max_parsed_body: int = MAX_PARSED_BODY
    callers: CallerTagging = field(default_factory=CallerTagging)

    @property
    def listen_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


def parse_upstream(text: str) -> str:
    """``http://127.0.0.1:8000`` (or https, with an optional path prefix), normalised."""
    example = "e.g. http://127.0.0.1:8000"
    try:
        parts = urlsplit(text.strip())
        port = parts.port  # raises ValueError on a bad port
    except ValueError as exc:
        raise ProxyConfigError(f"--upstream {text!r} is not a URL ({exc}); {example}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ProxyConfigError(f"--upstream {text!r} is not an http(s) URL with a host; {example}")
    if parts.query or parts.fragment:
        raise ProxyConfigError(f"--upstream {text!r} must not have a query or fragment; {example}")
    if parts.username or parts.password:
        raise ProxyConfigError(
            f"--upstream {text!r} must not carry credentials (clients send their own "
            "Authorization header, which the proxy forwards)"
        )
    if port == 0:
        raise ProxyConfigError(f"--upstream {text!r} has port 0; {example}")
    normalised = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"
    upstream_url(normalised)  # what the proxy will use, read the same way
    return normalised


def upstream_url(text: str) -> URL:
    """The upstream's base URL, parsed once: http(s), a host, no credentials, query or
    fragment; the port explicit (80 or 443 when the URL names none)."""
    example = "e.g. http://127.0.0.1:8000"
    try:
        url = URL(text)
        port = url.port
        explicit_port = urlsplit(text).port  # 0 stays 0 here, whatever yarl's version
    except (ValueError, TypeError) as exc:
        raise ProxyConfigError(f"upstream {text!r} is not a URL ({exc}); {example}") from None
    if explicit_port == 0:
        port = 0
    if url.scheme not in ("http", "https") or not url.raw_host or not port:
        raise ProxyConfigError(f"upstream {text!r} is not an http(s) URL with a host; {example}")
    if url.raw_query_string or url.raw_fragment or url.raw_user or url.raw_password:
        raise ProxyConfigError(f"upstream {text!r} must not have credentials, query or fragment")
    return url.with_port(port)


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8001`` for IPv6); port 0 picks a free one."""
    text = text.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ProxyConfigError(f"--listen {text!r} must be HOST:PORT, e.g. {DEFAULT_LISTEN}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ProxyConfigError(f"--listen {text!r}: {host!r} is not an IPv6 address") from None
    elif ":" in host:
        raise ProxyConfigError(f"--listen {text!r}: write an IPv6 address in brackets, [::1]:8001")
    try:
        port = int(port_text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise ProxyConfigError(f"--listen {text!r}: the port must be a number from 0 to 65535")
    return host, port


def parse_gpus(text: str | None) -> tuple[int | str, ...] | None:
    """``0,1`` (CUDA indices) or GPU UUIDs, comma-separated; None or ``all``: every GPU."""
    if text is None or text.strip().lower() in ("", "all"):
        return None
    out: list[int | str] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            raise ProxyConfigError(f"--gpus {text!r} has an empty item; e.g. --gpus 0,1")
        out.append(int(item) if item.isdigit() else item)
    return tuple(out)


def parse_tags(items: list[str] | None) -> dict[str, str]:
    """``--tag team=search --tag env=prod`` as a dict."""
    tags: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ProxyConfigError(f"--tag {item!r} must be KEY=VALUE, e.g. --tag team=search")
        if key in RESERVED_TAGS:
            raise ProxyConfigError(f"--tag {key!r} is reserved; choose another name")
        tags[key] = value
    return tags


def parse_tag_headers(items: list[str] | None, tags: dict[str, str]) -> tuple[TagHeader, ...]:
    """``--tag-header X-Footprint-Team=team``: the header whose value is stored as tag
    ``team``. Not a credential header, nor a tag name the proxy or ``--tag`` sets."""
    out: list[TagHeader] = []
    for item in items or []:
        header, sep, tag = (part.strip() for part in item.partition("="))
        example = "e.g. --tag-header X-Footprint-Team=team"
        if not sep or not tag or not _HEADER_NAME.fullmatch(header):
            raise ProxyConfigError(f"--tag-header {item!r} must be HEADER=TAG; {example}")
        if header.lower() in SECRET_HEADERS:
            raise ProxyConfigError(
                f"--tag-header {header!r} carries credentials and is never stored "
                "(--tag-api-key-hash stores a hash of the API key)"
            )
        if tag in RESERVED_TAGS or tag in PROXY_TAGS or tag in tags:
            raise ProxyConfigError(f"--tag-header tag {tag!r} is reserved or already a --tag")
        if any(h.header.lower() == header.lower() or h.tag == tag for h in out):
            raise ProxyConfigError(f"--tag-header {item!r} repeats a header or a tag")
        out.append(TagHeader(header, tag))
    return tuple(out)


def read_secret(path: str | None) -> bytes | None:
    """The per-deployment secret of the API key hash: a file's bytes, less the line end."""
    if path is None:
        return None
    try:
        secret = Path(path).read_bytes().strip()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ProxyConfigError(f"--api-key-secret-file {path!r}: {reason}") from None
    if not secret:
        raise ProxyConfigError(f"--api-key-secret-file {path!r} is empty")
    return secret


def parse_caller_tagging(
    tag_headers: list[str] | None,
    tag_user: bool,
    tag_api_key_hash: bool,
    api_key_secret_file: str | None,
    tags: dict[str, str],
) -> CallerTagging:
    """The caller tags asked for on the command line."""
    if api_key_secret_file is not None and not tag_api_key_hash:
        raise ProxyConfigError("--api-key-secret-file needs --tag-api-key-hash")
    for name in (USER_TAG, API_KEY_HASH_TAG):
        if name in tags and (tag_user if name == USER_TAG else tag_api_key_hash):
            raise ProxyConfigError(f"--tag {name!r} is set by the proxy from each request")
    return CallerTagging(
        headers=parse_tag_headers(tag_headers, tags),
        user=tag_user,
        api_key_hash=tag_api_key_hash,
        api_key_secret=read_secret(api_key_secret_file),
    )
