"""How a tracked process talks to the daemon (found by ``footprint.runtime.discovery``):
``UnixTransport``, ``HttpTransport``, and ``MemoryTransport`` for tests.

A transport owns its connection, its I/O and when to try connecting again, and reports
a failure as a value (``Attempt``, ``Outcome``), never by raising into the client
(``footprint.runtime.remote``), which decides what a failure means for its spans.

Backoff (``Backoff``): a failed connect, or a lost connection, puts the next try off by
``BACKOFF_MIN_S``, doubling up to ``BACKOFF_MAX_S``; it starts again from the minimum once
a connection proved itself (the daemon acknowledged something on it, or it lasted
``STABLE_CONNECTION_S``), not on a connect alone.

Over HTTP every batch carries ``Authorization: Bearer TOKEN`` (the daemon refuses spans
without it): ``FOOTPRINT_DAEMON_TOKEN``, else the file ``FOOTPRINT_DAEMON_TOKEN_FILE``
names, else, for a loopback address, the file the daemon writes beside the default socket
(``<socket>.token``), read again at each connection and after a 401.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import stat
import sys
import time
from collections import deque
from collections.abc import Iterable
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from footprint.runtime.discovery import Target
from footprint.runtime.protocol import default_socket_path, encode_acks, encode_reply

IN_MEMORY = Target("memory", "memory")  # ``MemoryTransport``'s
BACKOFF_MIN_S = 0.05  # first retry after a failed connection; doubles up to the max
BACKOFF_MAX_S = 2.0
# The backoff starts again from the minimum once a connection has proved itself: the
# daemon acknowledged something on it, or it lasted this long. A daemon that accepts and
# then closes at once (over its connection cap: "overloaded") so gets ever rarer retries.
STABLE_CONNECTION_S = 5.0
# A connect or send that takes longer: the daemon is stuck, reconnect (it may hold a
# reader up to 2 s for room in its queue: back-pressure, not a failure).
IO_TIMEOUT_S = 5.0
MAX_REPLY_BYTES = 65536  # a partial reply line longer than this is dropped
HTTP_PATH = "/v1/spans"
MAX_TOKEN_BYTES = 4096


def token_file(
    url: str, named: str | None = None, environ: dict[str, str] | None = None
) -> str | None:
    """Where a client posting to ``url`` reads the daemon's token: ``named`` (the
    ``daemon_token_file`` setting), else, for a loopback address, the one the daemon
    writes beside the default socket (``<socket>.token``); None: no file (a remote daemon's
    token is only sent when given, never this host's)."""
    env = os.environ if environ is None else environ
    if named:
        return named
    host = urlsplit(url).hostname or ""
    if host != "localhost":
        import ipaddress

        try:
            if not ipaddress.ip_address(host).is_loopback:
                return None
        except ValueError:
            return None
    return f"{default_socket_path(env)}.token"


def read_token(path: str) -> str | None:
    """The token in ``path`` (a regular file: never waits on a FIFO); None when there is
    none, or what is there is not a token (empty, too long, spaces, not ASCII)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        data = os.read(fd, MAX_TOKEN_BYTES + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    text = data.decode("ascii", "replace").strip()
    if not text or len(data) > MAX_TOKEN_BYTES or not all(" " < c < "\x7f" for c in text):
        return None
    return text


# -- what a transport reports -----------------------------------------------------------
class Reply(NamedTuple):
    """A line the daemon answered: ``{"acked": [ids]}`` (``acked``), else a refusal
    (``{"error": ..., "refused": [ids]}``)."""

    body: bytes
    acked: bool


class Attempt(NamedTuple):
    """A ``connect``: connected, or not (``error`` None: not yet time to try again)."""

    connected: bool
    error: BaseException | None = None


class Outcome(NamedTuple):
    """A ``send`` or ``receive``: the replies read (in order), then the failure that lost
    the connection, if one did (the client then calls ``drop``)."""

    replies: tuple[Reply, ...] = ()
    error: BaseException | None = None


SENT = Outcome()


class Backoff:
    """When to try connecting again (the module doc's rules)."""

    def __init__(self) -> None:
        self.delay_s = BACKOFF_MIN_S
        self.next_attempt_s = 0.0  # monotonic
        self.down_since_s: float | None = None  # unreachable since (monotonic)

    def failed(self, mono_s: float) -> None:
        """A connect failed, or a connection was lost, at ``mono_s``."""
        if self.down_since_s is None:
            self.down_since_s = mono_s
        self.next_attempt_s = mono_s + self.delay_s
        self.delay_s = min(self.delay_s * 2, BACKOFF_MAX_S)

    def proven(self) -> None:
        """The connection works: the next failure is retried soon again."""
        self.delay_s = BACKOFF_MIN_S


# -- the transports ---------------------------------------------------------------------
class Transport:
    """One connection to the daemon, made again after failures as ``Backoff`` allows.

    ``acknowledges``: the daemon answers sent ends with ``{"acked": [ids]}`` (else the
    answer to a send is the acknowledgement). ``deadline_s`` (monotonic; set at shutdown)
    bounds every I/O."""

    acknowledges = False

    def __init__(self, target: Target) -> None:
        self.target = target
        self.backoff = Backoff()
        self.connected = False
        self.connected_at_s = time.monotonic()
        self.deadline_s: float | None = None

    def connect(self, now: bool) -> Attempt:
        """Connect, unless the backoff says to wait (``now``: try anyway)."""
        mono_s = time.monotonic()
        if not now and mono_s < self.backoff.next_attempt_s:
            return Attempt(False)
        try:
            self._open()
        except (OSError, ValueError, _http_error()) as exc:
            self.backoff.failed(mono_s)
            return Attempt(False, exc)
        self.connected = True
        self.backoff.down_since_s = None
        self.connected_at_s = mono_s
        return Attempt(True)

    def proven(self) -> None:
        """The daemon acknowledged something on this connection."""
        self.backoff.proven()

    def drop(self) -> None:
        """After a failed ``send`` or ``receive``: close, try again later."""
        self.close()
        now_s = time.monotonic()
        if self.connected and now_s - self.connected_at_s >= STABLE_CONNECTION_S:
            self.backoff.proven()
        self.connected = False
        self.backoff.failed(now_s)

    def io_timeout_s(self) -> float:
        """``IO_TIMEOUT_S``, or what is left before the deadline when shutting down."""
        end_s = self.deadline_s
        if end_s is None:
            return IO_TIMEOUT_S
        return max(0.01, min(IO_TIMEOUT_S, end_s - time.monotonic()))

    def _open(self) -> None:
        """Make the connection; raises what ``connect`` counts as a failure."""
        raise NotImplementedError

    def send(self, data: bytes) -> Outcome:
        """One batch to the daemon (``error`` set: it did not go)."""
        raise NotImplementedError

    def receive(self) -> Outcome:
        """The replies the daemon wrote since, without waiting."""
        return SENT

    def last_replies(self) -> tuple[Reply, ...]:
        """Replies still readable from a connection that failed (before ``drop``)."""
        return ()

    def close(self) -> None:
        raise NotImplementedError

    def forget_after_fork(self) -> None:
        """In a forked child: let go of the parent's connection without ending it."""


class UnixTransport(Transport):
    """Batches as lines on the daemon's Unix socket; it answers with lines too."""

    acknowledges = True

    def __init__(self, target: Target, sock: socket.socket | None = None) -> None:
        super().__init__(target)
        self._sock: socket.socket | None = None
        self._poller: Any = None  # readable replies on the socket
        self._replies = b""  # an incomplete reply line
        if sock is not None:  # connected by ``probe``
            sock.settimeout(IO_TIMEOUT_S)
            self._use(sock)
            self.connected = True

    def _open(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.io_timeout_s())
        try:
            sock.connect(self.target.address)
        except BaseException:
            sock.close()
            raise
        self._use(sock)
        self._replies = b""

    def _use(self, sock: socket.socket) -> None:
        self._sock = sock
        self._poller = select.poll()
        self._poller.register(sock, select.POLLIN)

    def send(self, data: bytes) -> Outcome:
        assert self._sock is not None
        try:
            self._sock.settimeout(self.io_timeout_s())
            self._sock.sendall(data)
        except OSError as exc:
            return Outcome(error=exc)
        return SENT

    def receive(self) -> Outcome:
        """Lines the daemon wrote back (non-blocking); EOF: it went away."""
        sock, poller = self._sock, self._poller
        if sock is None or poller is None:
            return SENT
        replies: list[Reply] = []
        while True:
            try:
                if not poller.poll(0):  # recv on a socket with a timeout would wait
                    return Outcome(tuple(replies))
                chunk = sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return Outcome(tuple(replies))
            except OSError as exc:
                return Outcome(tuple(replies), exc)
            if not chunk:
                gone = ConnectionResetError("the daemon closed the connection")
                return Outcome(tuple(replies), gone)
            replies.extend(self._lines(chunk))

    def last_replies(self) -> tuple[Reply, ...]:
        """Acknowledgements a daemon sent before it went away (still in our buffer)."""
        sock = self._sock
        if sock is None:
            return ()
        replies: list[Reply] = []
        with contextlib.suppress(OSError):
            sock.setblocking(False)
            while chunk := sock.recv(65536):
                replies.extend(self._lines(chunk))
        return tuple(replies)

    def _lines(self, chunk: bytes) -> list[Reply]:
        """The complete reply lines, with what came before ``chunk``."""
        self._replies += chunk
        *lines, self._replies = self._replies.split(b"\n")
        if len(self._replies) > MAX_REPLY_BYTES:
            self._replies = b""
        return _replies(lines)

    def close(self) -> None:
        sock, self._sock = self._sock, None
        self._poller = None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    def forget_after_fork(self) -> None:
        _detach(self._sock)


class HttpTransport(Transport):
    """Batches POSTed to the daemon's HTTP intake; a 2xx answer is the acknowledgement."""

    def __init__(
        self, target: Target, token: str | None = None, token_file_path: str | None = None
    ) -> None:
        super().__init__(target)
        import http.client  # noqa: F401  (here: the sender thread never imports)

        self._http: Any = None  # an http.client.HTTPConnection
        self._headers = {"Content-Type": "application/json"}
        self._token = token  # the daemon_token setting: sent as is
        self._token_path = token_file(target.address, token_file_path)  # read at each connection

    def _open(self) -> None:
        self._load_token()
        parts = urlsplit(self.target.address)
        conn = sys.modules["http.client"].HTTPConnection(
            parts.hostname or "localhost", parts.port or 80, timeout=self.io_timeout_s()
        )
        conn.connect()
        self._http = conn

    def send(self, data: bytes) -> Outcome:
        try:
            return self._post(data)
        except (OSError, _http_error()) as exc:
            return Outcome(error=exc)

    def _post(self, data: bytes) -> Outcome:
        conn = self._http
        assert conn is not None
        conn.timeout = self.io_timeout_s()
        if conn.sock is not None:
            conn.sock.settimeout(conn.timeout)
        conn.request("POST", HTTP_PATH, body=data, headers=self._headers)
        response = conn.getresponse()
        body = response.read()  # a closing response closes it; the next request reopens
        if response.status >= 500:
            raise OSError(f"HTTP {response.status} from the daemon")
        if response.status >= 400:
            if response.status == 401:  # a token made since, or changed: read it again
                self._load_token()
            return Outcome((Reply(body, False),))
        self.backoff.proven()  # the daemon took a batch
        return SENT

    def _load_token(self) -> None:
        """The bearer token: the ``daemon_token`` setting, else the token file."""
        token = self._token or (read_token(self._token_path) if self._token_path else None)
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        else:
            self._headers.pop("Authorization", None)

    def close(self) -> None:
        conn, self._http = self._http, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def forget_after_fork(self) -> None:
        _detach(getattr(self._http, "sock", None))


class MemoryTransport(Transport):
    """A daemon in memory, for tests: records the batches sent (decoded, in ``batches``)
    and answers as a test scripts it (``ack``, ``refuse``, ``disconnect``; ``down``:
    connects fail). It acknowledges like the Unix socket's daemon."""

    acknowledges = True

    def __init__(self, target: Target = IN_MEMORY) -> None:
        super().__init__(target)
        self.batches: list[dict[str, Any]] = []
        self.down = False  # connects fail while set
        self._replies: deque[Reply] = deque()  # scripted, read by the next receive
        self._cut: BaseException | None = None  # the next send or receive fails so

    def ack(self, ids: Iterable[int]) -> None:
        """The daemon wrote the ends ``ids`` (it acknowledges them)."""
        self._replies.extend(_replies(encode_acks(list(ids)).splitlines()))

    def refuse(self, ids: Iterable[int], error: str = "refused", reason: str = "invalid") -> None:
        """The daemon refuses a batch holding the ends ``ids`` (it counts them lost)."""
        self._replies.extend(_replies(encode_reply(error, reason, list(ids)).splitlines()))

    def disconnect(self, reason: str = "the daemon closed the connection") -> None:
        """The connection ends once the replies scripted so far are read."""
        self._cut = ConnectionResetError(reason)

    def ends(self) -> list[dict[str, Any]]:
        """Every end sent, in order (an end sent again appears again)."""
        return [end for batch in self.batches for end in batch["ends"]]

    def _open(self) -> None:
        if self.down:
            raise ConnectionRefusedError("the daemon is down")

    def send(self, data: bytes) -> Outcome:
        if self._cut is not None:
            return Outcome(error=self._cut)
        self.batches.append(json.loads(data))
        return SENT

    def receive(self) -> Outcome:
        replies = self.last_replies()
        return Outcome(replies, self._cut)

    def last_replies(self) -> tuple[Reply, ...]:
        replies = tuple(self._replies)
        self._replies.clear()
        return replies

    def close(self) -> None:
        self._cut = None  # the next connection works


def _replies(lines: Iterable[bytes]) -> list[Reply]:
    """Reply lines, told apart (blank ones left out)."""
    return [Reply(line, line.startswith(b'{"acked":')) for line in lines if line.strip()]


def transport_for(
    target: Target, sock: socket.socket | None = None, settings: Any = None
) -> Transport:
    """The transport to ``target`` (``sock``: a connection to it ``probe`` opened;
    ``settings``: the token settings, for HTTP)."""
    if target.kind == "http":
        token = getattr(settings, "daemon_token", None)
        return HttpTransport(target, token, getattr(settings, "daemon_token_file", None))
    return UnixTransport(target, sock)


def _detach(sock: socket.socket | None) -> None:
    """Close this process's descriptor of ``sock``, leaving the connection to the other
    processes that hold it."""
    if sock is None:
        return
    with contextlib.suppress(Exception):
        fd = sock.detach()
        if fd >= 0:
            os.close(fd)


def _http_error() -> type[Exception]:
    """``http.client.HTTPException`` once http.client is in use (imported lazily: it
    costs ~10 ms at ``import footprint``), else an exception nothing raises."""
    module = sys.modules.get("http.client")
    return module.HTTPException if module is not None else _NeverRaised


class _NeverRaised(Exception):
    pass
