"""The daemon's HTTP server: ``GET /metrics``, ``/healthz``, ``/readyz``, ``POST /v1/spans``.

It knows the daemon only through ``DaemonApi``. At most ``--max-http-connections`` are
served at once (a thread each; one more gets 503); at the open-files limit a request is
accepted with the daemon's spare descriptor, and the server never spins.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import socket
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol

from footprint.daemon.config import StartError
from footprint.daemon.limits import (
    ACCEPT_BACKOFF_MIN_S,
    ACCEPT_LIMIT_ERRNOS,
    ConnectionLimits,
    accept_limit_reason,
)
from footprint.daemon.ratelog import RateLimitedLog
from footprint.runtime.protocol import (
    MAX_BATCH_BYTES,
    Batch,
    ProtocolError,
    decode_batch,
    encode_reply,
)

log = logging.getLogger("footprint")

# A client that hung up, reset or stopped sending: its business, one debug line at most.
_HANGUP_ERRORS = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError)


class DaemonApi(Protocol):
    """What the HTTP server needs of the daemon."""

    def health(self) -> dict[str, Any]: ...

    def metrics_text(self) -> bytes: ...

    def accept_batch(self, batch: Batch, transit_s: float) -> None:
        """Apply a batch posted; ``ProtocolError`` (counted) when it is refused."""

    def refused(self, reason: str) -> None:
        """Count a request refused (unauthorized, too_large, truncated, invalid...)."""

    def internal_error(self, exc: Exception) -> None:
        """A bug of the daemon's while serving a request (called in its ``except``)."""


@dataclass(frozen=True)
class HttpAccess:
    """Who may do what: ``intake_token`` for POST /v1/spans (always wanted; None: nothing
    matches), ``metrics_token`` for /metrics (None: open), where the intake's is kept."""

    intake_token: str | None
    metrics_token: str | None
    token_path: Path


class DaemonHTTPServer(ThreadingHTTPServer):
    """The HTTP server: quiet about clients that hang up; at the open-files limit it
    accepts one request at a time with the daemon's spare descriptor, and never spins."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64  # listen backlog (socketserver's 5 drops connections under load)

    def __init__(
        self,
        address: tuple[str, int],
        api: DaemonApi,
        access: HttpAccess,
        limits: ConnectionLimits,
        limited_log: RateLimitedLog,
    ) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.api = api
        self.access = access
        self.limits = limits
        self.limited_log = limited_log
        self._open: set[int] = set()  # the connections served now (their sockets' ids)
        self._open_lock = threading.Lock()
        super().__init__(address, DaemonHandler)

    def get_request(self) -> tuple[socket.socket, Any]:
        try:
            return super().get_request()
        except OSError as exc:
            if exc.errno not in ACCEPT_LIMIT_ERRNOS:
                raise
            reason = accept_limit_reason(exc.errno)
            self.limits.hit(reason)
            if self.limits.release_spare():  # room for this one (/healthz says "degraded")
                with contextlib.suppress(OSError):
                    return super().get_request()
            self.limited_log.warning(
                f"http-accept:{reason}",
                "footprint daemon: http: cannot accept: %s",
                exc.strerror,
            )
            time.sleep(ACCEPT_BACKOFF_MIN_S)  # no spare either: try again later, not at once
            raise

    def process_request(self, request: Any, client_address: Any) -> None:
        """A thread per connection, at most ``--max-http-connections`` at once; one more
        gets ``503`` (``overloaded``) at once, read nothing from, and is closed."""
        with self._open_lock:
            full = len(self._open) >= self.limits.max_http_connections
            if not full:
                self._open.add(id(request))
        if full:
            self._refuse(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            with self._open_lock:
                self._open.discard(id(request))
            raise

    def _refuse(self, request: socket.socket) -> None:
        limits = self.limits
        limits.refused["http"] += 1
        limits.hit("connection_limit")
        cap = limits.max_http_connections
        body = encode_reply(
            f"too many HTTP connections to the daemon (at most {cap}): this one is closed, "
            "try again later",
            "overloaded",
        )
        head = (
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
        )
        with contextlib.suppress(OSError):
            request.setblocking(False)  # a client that does not read never holds us
            request.send(head.encode() + body)
        super().shutdown_request(request)
        limits.restore_spare()
        self.limited_log.warning(
            "refused:http",
            "footprint daemon: refused an HTTP connection: over --max-http-connections %d",
            cap,
        )

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(id(request))
        super().shutdown_request(request)
        self.limits.restore_spare()

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        who = client_address[0] if isinstance(client_address, tuple) else client_address
        if isinstance(exc, _HANGUP_ERRORS):
            self.limited_log.log(
                logging.DEBUG,
                "http-hangup",
                "footprint daemon: http client %s went away: %r",
                who,
                exc,
            )
        else:  # a bug of the daemon's: its traceback, a few times per interval
            self.limited_log.log(
                logging.ERROR,
                "http-error",
                "footprint daemon: http request of %s failed: %r",
                who,
                exc,
                exc_info=True,
            )


def make_http_server(
    host: str,
    port: int,
    api: DaemonApi,
    access: HttpAccess,
    limits: ConnectionLimits,
    limited_log: RateLimitedLog,
) -> DaemonHTTPServer:
    """The server, bound and listening (not serving yet); ``StartError`` if it cannot."""
    try:
        return DaemonHTTPServer((host, port), api, access, limits, limited_log)
    except OSError as exc:
        raise StartError(f"cannot listen on http://{host}:{port}: {exc.strerror or exc}") from None


class DaemonHandler(BaseHTTPRequestHandler):
    """``GET /metrics``, ``GET /healthz``, ``POST /v1/spans``."""

    server: DaemonHTTPServer
    protocol_version = "HTTP/1.1"
    server_version = "footprint-daemon"
    timeout = 30  # a client that stops sending mid-request is dropped

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        if log.isEnabledFor(logging.DEBUG):  # a line per request: rate-limited all the same
            self.server.limited_log.log(
                logging.DEBUG, "http", "footprint daemon: http %s", format % args
            )

    def _send(
        self,
        code: int,
        body: bytes,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, code: int, data: Any, headers: dict[str, str] | None = None) -> None:
        self._send(code, json.dumps(data).encode() + b"\n", headers=headers)

    def _error(self, code: int, message: str, reason: str) -> None:
        self._send(code, encode_reply(message, reason))

    def _authorized(self, intake: bool = False) -> bool:
        """``Authorization: Bearer TOKEN``, else a 401 (counted). The intake (POST
        /v1/spans) always wants it: the token given with --token, else the one the daemon
        wrote into ``PATH.token``; ``/metrics`` only a token given with --token (open to
        whoever reaches the address otherwise: loopback, since any other needs one)."""
        access = self.server.access
        token = access.intake_token if intake else access.metrics_token
        if not token and not intake:
            return True
        given = self.headers.get("Authorization", "")
        scheme, _, value = given.partition(" ")
        matches = bool(token and hmac.compare_digest(value.strip().encode(), token.encode()))
        if scheme.lower() == "bearer" and matches:  # no token known: nothing matches
            return True
        self.server.api.refused("unauthorized")
        where = "" if access.metrics_token else f" (its token is in {access.token_path})"
        self._send(
            401,
            encode_reply(f"this daemon wants 'Authorization: Bearer TOKEN'{where}", "unauthorized"),
            headers={"WWW-Authenticate": 'Bearer realm="footprint"'},
        )
        return False

    def handle_expect_100(self) -> bool:
        """``Expect: 100-continue`` with a body over the limit: no "100 Continue", so the
        client gets the 413 before sending the body."""
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = 0
        if length > MAX_BATCH_BYTES:
            return True
        return super().handle_expect_100()

    def _discard_some(self, length: int) -> None:
        """Read (and drop) what the client already sent of a refused body, a little and
        briefly, so that closing does not reset the connection under its answer."""
        with contextlib.suppress(OSError):
            self.connection.settimeout(0.1)
            left = min(length, 256 * 1024)
            while left > 0:
                chunk = self.rfile.read1(min(left, 65536))
                if not chunk:
                    break
                left -= len(chunk)

    def do_GET(self) -> None:  # noqa: N802
        path = self.path.split("?", 1)[0]
        if path == "/healthz":  # liveness: answers 200 whatever the status says
            self._json(200, self.server.api.health())
        elif path == "/readyz":  # readiness: 503 unless the status is "ok"
            health = self.server.api.health()
            self._json(200 if health["status"] == "ok" else 503, health)
        elif path == "/metrics":
            if self._authorized():
                from footprint.daemon.metrics import CONTENT_TYPE_LATEST

                self._send(200, self.server.api.metrics_text(), CONTENT_TYPE_LATEST)
        else:
            self._error(
                404,
                f"no such page: {path}; try /metrics, /healthz, /readyz, POST /v1/spans",
                "not_found",
            )

    do_HEAD = do_GET

    def do_POST(self) -> None:  # noqa: N802
        started_s = time.monotonic()
        path = self.path.split("?", 1)[0]
        if path != "/v1/spans":
            self.close_connection = True
            self._error(
                404, f"no such endpoint: POST {path}; spans go to POST /v1/spans", "not_found"
            )
            return
        length = self._body_length()
        if length is None or not self._authorized(intake=True):
            return
        body = self.rfile.read(length)
        if len(body) < length:
            self.server.api.refused("truncated")
            return
        self.close_connection = False
        self._apply(body, started_s)

    def _body_length(self) -> int | None:
        """The body's length, once checked; None when the request was answered already
        (no length, a bad one, one over the limit). The connection is closed after a
        refusal: the body was not read."""
        length_text = self.headers.get("Content-Length")
        self.close_connection = True  # until the body is read: refused unread, then closed
        if self.headers.get("Transfer-Encoding") or length_text is None:
            self._error(411, "POST /v1/spans needs a Content-Length (no chunked bodies)", "invalid")
            return None
        try:
            length = int(length_text)
            if length < 0:
                raise ValueError
        except ValueError:
            self._error(400, f"bad Content-Length: {length_text!r}", "invalid")
            return None
        if length > MAX_BATCH_BYTES:  # refused unread: the connection is closed after it
            self.server.api.refused("too_large")
            self._error(
                413, f"a body of {length:,} bytes; at most {MAX_BATCH_BYTES:,}", "too_large"
            )
            self._discard_some(length)
            return None
        return length

    def _apply(self, body: bytes, started_s: float) -> None:
        api = self.server.api
        try:
            batch = decode_batch(body)
        except ProtocolError as exc:
            api.refused(exc.reason)
            self._error(400, str(exc), exc.reason)
            return
        try:
            api.accept_batch(batch, time.monotonic() - started_s)
        except ProtocolError as exc:
            self._error(400, str(exc), exc.reason)
            return
        except Exception as exc:  # a bug: say so, count it, stay up
            api.internal_error(exc)
            self._error(500, f"internal error of the daemon: {exc!r}", "internal")
            return
        self._json(202, {"accepted": {"starts": len(batch.starts), "ends": len(batch.ends)}})
