"""What goes wrong between client and upstream: the exceptions whose class names are a
record's ``error_type``, and the JSON error replies (OpenAI's error shape) clients get."""

from __future__ import annotations

import asyncio
import json

import aiohttp
from aiohttp import web


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


class ClientGone(Exception):
    """The client's connection closed while its response was being written."""


UPSTREAM_ERRORS = (UpstreamUnreachable, UpstreamTimeout, UpstreamDisconnected)
# What reading an upstream body raises when the upstream stops or cuts it short.
READ_ERRORS = (
    asyncio.TimeoutError,
    aiohttp.ClientPayloadError,
    aiohttp.ClientConnectionError,
    OSError,
)

_STATUS_ERRORS: dict[int, type[UpstreamStatus]] = {}


def status_error(status: int) -> UpstreamStatus:
    cls = _STATUS_ERRORS.get(status)
    if cls is None:
        cls = _STATUS_ERRORS[status] = type(f"HTTP{status}", (UpstreamStatus,), {})
    return cls(status)


def read_failure(exc: BaseException, upstream: str) -> Exception:
    """The record's error for one of ``READ_ERRORS`` raised reading the upstream's body."""
    if isinstance(exc, asyncio.TimeoutError):  # checked first: it is an OSError too
        failure = UpstreamTimeout(f"the upstream {upstream} stopped sending")
        failure.__cause__ = exc
        return failure
    return UpstreamDisconnected(f"the upstream {upstream} cut the response short: {exc!r}")


def error_reply(status: int, kind: str, message: str) -> web.Response:
    body = json.dumps({"error": {"message": message, "type": kind, "param": None, "code": None}})
    return web.Response(status=status, body=body.encode(), content_type="application/json")


def gateway_reply(exc: Exception) -> web.Response:
    """502 or 504 for an upstream that could not answer."""
    if isinstance(exc, UpstreamTimeout):
        return error_reply(504, "upstream_timeout", str(exc))
    if isinstance(exc, UpstreamUnreachable):
        return error_reply(502, "upstream_unreachable", str(exc))
    return error_reply(502, "upstream_disconnected", str(exc))


def target_refused_reply() -> web.Response:
    """400 to a request target that is not a path; the connection is closed after it."""
    response = error_reply(
        400,
        "invalid_request_target",
        "the request target must be a path such as /v1/chat/completions: the proxy "
        "forwards no CONNECT, absolute URL, //host path or *",
    )
    response.force_close()
    return response
