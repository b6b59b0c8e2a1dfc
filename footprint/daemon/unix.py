"""The selector loop over the daemon's Unix-socket clients, with their caps.

The loop reads each connection's lines and hands every complete one to ``on_line``; what
a line means is the daemon's business (``PeerHandlers``). At the caps (per process, in
all, the open-files limit) it refuses new connections with one line, closes idle ones to
make room, and backs off instead of spinning when accept() finds no descriptor.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import selectors
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from footprint.daemon.claim import SocketClaim
from footprint.daemon.limits import (
    ACCEPT_BACKOFF_MAX_S,
    ACCEPT_BACKOFF_MIN_S,
    ACCEPT_LIMIT_ERRNOS,
    ConnectionLimits,
    accept_limit_reason,
)
from footprint.daemon.ratelog import RateLimitedLog
from footprint.runtime.protocol import MAX_BATCH_BYTES, encode_reply

log = logging.getLogger("footprint")

IDLE_RECLAIM_S = 5.0  # at the limit, a connection silent this long may be closed for room
RECLAIM_BATCH = 16  # idle connections closed at once when accept() finds no descriptor
RECV_BYTES = 1 << 18
DRAIN_DEADLINE_S = 1.0  # at stop, reading what clients had sent


def peer_credentials(sock: socket.socket) -> tuple[int | None, int | None]:
    """(pid, uid) of the process at the other end, as the daemon's namespaces see them
    (None: not Linux, or a process of a namespace the daemon cannot see)."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return None, None
    try:
        pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, option, 12))
    except OSError:
        return None, None
    return pid or None, uid


class Peer:
    """A client connection's socket, its partial line and the daemon's state for it
    (``conn``, set by ``on_connect``); ``key``: whose connection it is, for the per-peer
    cap; ``last_recv_s``: when it last sent anything (idle connections are the first
    closed to make room at the limit)."""

    __slots__ = ("sock", "pid", "conn", "partial", "key", "last_recv_s", "connected_after_s")

    def __init__(
        self,
        sock: socket.socket,
        pid: int | None = None,
        key: tuple[str, int] | None = None,
        now_s: float = 0.0,
    ) -> None:
        self.sock = sock
        self.pid = pid  # in the daemon's pid namespace (None: unknown)
        self.conn: Any = None
        self.partial = bytearray()
        self.key = key
        self.last_recv_s = now_s
        # The client connected after this instant (the daemon's clock): its first batch
        # may have waited in the listen backlog since then (a daemon starting, or full).
        self.connected_after_s = now_s

    def idle(self, now_s: float) -> bool:
        """Silent for ``IDLE_RECLAIM_S``, with no partial line and no end awaiting its
        acknowledgement: closing it loses nothing (its client reconnects when it sends)."""
        return (
            now_s - self.last_recv_s >= IDLE_RECLAIM_S
            and not self.partial
            and not getattr(self.conn, "awaiting", 0)
        )


@dataclass(frozen=True)
class PeerHandlers:
    """What the loop calls, on its thread: the daemon's side of the connections."""

    on_connect: Callable[[Peer], None]  # a new connection: set ``peer.conn``
    on_line: Callable[[Peer, bytes], None]  # a complete, non-blank line it sent
    on_disconnect: Callable[[Peer], None]  # closed (its socket is closed already)
    on_refused: Callable[[str], None]  # a line refused unread (truncated, too_large)
    on_wake: Callable[[], None]  # woken by ``wake``: send what is queued (``reply``)
    on_error: Callable[[Exception], None]  # a bug with one client (then closed)


class UnixServer:
    """Accepts the clients of ``claim``'s listener and reads their lines on a thread of
    its own, from ``start`` until ``finish``."""

    def __init__(
        self,
        claim: SocketClaim,
        handlers: PeerHandlers,
        limits: ConnectionLimits,
        limited_log: RateLimitedLog,
    ) -> None:
        self._claim = claim
        self._handlers = handlers
        self._limits = limits
        self._limited_log = limited_log
        self._selector: selectors.BaseSelector | None = None
        self._peers: dict[int, Peer] = {}  # by socket file number
        self._peers_of: Counter[tuple[str, int]] = Counter()  # open connections per peer
        self._stopping = threading.Event()
        self._backlog_empty_s = time.monotonic()  # the listen backlog was last seen empty
        self._drained = threading.Event()  # at stop: what clients sent is applied
        self._final_written = threading.Event()  # at stop: the runtime's final write is done
        self._wake_r, self._wake_w = -1, -1
        self._thread: threading.Thread | None = None
        self._drain_until_s = 0.0
        self._accept_paused_until_s = 0.0  # 0: the listener is selected
        self._accept_backoff_s = 0.0
        self.replies_dropped = 0

    def open_connections(self) -> int:
        return len(self._peers)

    # -- start and stop ----------------------------------------------------------------
    def start(self) -> None:
        """Select the claimed listener, reserve descriptors, serve on a thread."""
        listener = self._claim.listener
        assert listener is not None
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._selector.register(listener, selectors.EVENT_READ, "accept")
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._limits.reserve_descriptors()
        self._thread = threading.Thread(
            target=self._loop, name="footprint-daemon-socket", daemon=True
        )
        self._thread.start()

    def wake(self) -> None:
        """Have the loop call ``on_wake`` (acknowledgements to send); any thread."""
        if self._wake_w >= 0:
            with contextlib.suppress(OSError):  # full pipe: a wake is pending anyway
                os.write(self._wake_w, b"a")

    def stop_accepting(self) -> None:
        """Leave the loop: apply what clients already sent (``DRAIN_DEADLINE_S`` at most),
        read nothing more, keep the connections open for the last acknowledgements."""
        self._stopping.set()
        self.wake()

    def wait_drained(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._drained.wait(DRAIN_DEADLINE_S + 0.5)

    def finish(self, deadline_s: float) -> None:
        """The final write is done: send its acknowledgements, close every client, and
        wait for the loop's thread (until ``deadline_s`` on the monotonic clock)."""
        self._final_written.set()
        self.wake()
        if self._thread is not None:
            self._thread.join(max(0.2, deadline_s - time.monotonic()))

    def close(self) -> None:
        """Free the selector (once the thread is gone) and the wake pipe."""
        if self._selector is not None and (self._thread is None or not self._thread.is_alive()):
            with contextlib.suppress(Exception):
                self._selector.close()
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)

    # -- the loop ----------------------------------------------------------------------
    def _loop(self) -> None:
        selector = self._selector
        assert selector is not None
        while not self._stopping.is_set():
            paused_until_s = self._accept_paused_until_s
            timeout_s = 5.0 if not paused_until_s else paused_until_s - time.monotonic()
            try:
                events = selector.select(timeout=max(0.0, timeout_s))
                if paused_until_s and time.monotonic() >= paused_until_s:
                    self._resume_accept()
            except OSError as exc:  # pragma: no cover - EBADF during shutdown
                if self._stopping.is_set():
                    break
                log.warning("footprint daemon: select failed: %s", exc)
                time.sleep(0.1)
                continue
            for key, _ in events:
                self._dispatch(key.data)
        self._drain_peers()
        self._acknowledge_final_write()

    def _dispatch(self, what: Any) -> None:
        try:
            if what == "accept":
                self._accept()
            elif what == "wake":
                self._take_wake()
            else:
                self._read(what)
        except Exception as exc:  # a bug with one client never stops the others
            self._internal_error(exc, what)

    def _take_wake(self) -> None:
        with contextlib.suppress(OSError):
            os.read(self._wake_r, 4096)
        self._handlers.on_wake()

    def _internal_error(self, exc: Exception, peer: Any) -> None:
        self._handlers.on_error(exc)
        if isinstance(peer, Peer):
            with contextlib.suppress(Exception):
                self.close_peer(peer)

    def _accept(self) -> None:
        listener = self._claim.listener
        if listener is None:
            return
        limits = self._limits
        for _ in range(64):
            # Out of descriptors for clients: new ones wait in the listen backlog (they
            # have connected and may send) until a connection closes; none is refused.
            if len(self._peers) >= limits.fd_budget and not self._accept_blocked(
                "fd_limit", f"the open-files limit leaves room for {limits.fd_budget}"
            ):
                return
            try:
                sock, _addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                self._backlog_empty_s = time.monotonic()  # later clients connected later
                return
            except OSError as exc:
                if exc.errno in ACCEPT_LIMIT_ERRNOS and self._accept_blocked(
                    accept_limit_reason(exc.errno), f"accept(): {exc.strerror}"
                ):
                    continue
                return
            self._accept_backoff_s = 0.0
            self._admit(sock)

    def _admit(self, sock: socket.socket) -> None:
        """A new connection: served, or refused over a cap."""
        limits = self._limits
        sock.setblocking(False)
        pid, uid = peer_credentials(sock)
        key = ("pid", pid) if pid else ("uid", uid) if uid is not None else None
        now_s = time.monotonic()
        if key is not None and self._peers_of[key] >= limits.max_connections_per_peer:
            self._refuse_connection(sock, "per_peer")
            return
        if len(self._peers) >= limits.max_connections and not self._reclaim_idle(now_s, 1):
            self._refuse_connection(sock, "max_connections")
            return
        peer = Peer(sock, pid, key, now_s)
        self._handlers.on_connect(peer)
        peer.connected_after_s = self._backlog_empty_s
        self._peers[sock.fileno()] = peer
        if key is not None:
            self._peers_of[key] += 1
        assert self._selector is not None
        self._selector.register(sock, selectors.EVENT_READ, peer)

    # -- connection limits -------------------------------------------------------------
    def _refuse_connection(self, sock: socket.socket, reason: str) -> None:
        """Over a cap: one line saying so, then closed (counted, logged rate-limited)."""
        limits = self._limits
        limits.refused[reason] += 1
        if reason == "per_peer":
            cap = limits.max_connections_per_peer
            message = f"too many connections from this process (at most {cap} per peer)"
        else:
            limits.hit("connection_limit")
            cap = limits.max_connections
            message = f"too many connections to the daemon (at most {cap})"
        with contextlib.suppress(OSError):
            sock.send(encode_reply(message + ": this one is closed, try again later", "overloaded"))
        sock.close()
        self._limited_log.warning(
            f"refused:{reason}", "footprint daemon: refused a client connection: %s", message
        )

    def _reclaim_idle(self, now_s: float, count: int) -> int:
        """Close up to ``count`` idle connections, the longest silent first; how many."""
        idle = [peer for peer in self._peers.values() if peer.idle(now_s)]
        if not idle:
            return 0
        idle.sort(key=lambda peer: peer.last_recv_s)
        for peer in idle[:count]:
            self.close_peer(peer)
        closed = min(count, len(idle))
        self._limits.reclaimed += closed
        self._limited_log.log(
            logging.INFO,
            "reclaimed",
            "footprint daemon: at the connection limit: closed %d idle connection(s)",
            closed,
            burst=1,
        )
        return closed

    def _accept_blocked(self, reason: str, detail: str) -> bool:
        """No descriptor (or memory) for another client: close idle connections to make
        room (True); with none idle, stop selecting the listener until a connection
        closes or a backoff passes (False), logging a line per interval at most."""
        now_s = time.monotonic()
        self._limits.hit(reason, now_s)
        if self._reclaim_idle(now_s, RECLAIM_BATCH):
            return True
        self._limits.accept_failures[reason] += 1
        self._accept_backoff_s = min(
            ACCEPT_BACKOFF_MAX_S, max(ACCEPT_BACKOFF_MIN_S, 2 * self._accept_backoff_s)
        )
        self._pause_accept(now_s + self._accept_backoff_s)
        self._limited_log.log(
            logging.WARNING,
            f"accept:{reason}",
            "footprint daemon: no room for another client (%s; %d connections open, none "
            "idle): new ones wait until one closes (raise the open-files limit, e.g. "
            "LimitNOFILE= in systemd)",
            detail,
            len(self._peers),
            burst=1,
        )
        return False

    def _pause_accept(self, until_s: float) -> None:
        listener = self._claim.listener
        if not self._accept_paused_until_s and listener is not None:
            with contextlib.suppress(KeyError, ValueError):
                assert self._selector is not None
                self._selector.unregister(listener)
        self._accept_paused_until_s = until_s

    def _resume_accept(self) -> None:
        """Select the listener again (a descriptor freed, or the backoff passed)."""
        if not self._accept_paused_until_s:
            return
        self._accept_paused_until_s = 0.0
        listener = self._claim.listener
        if listener is not None and self._selector is not None and not self._stopping.is_set():
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._selector.register(listener, selectors.EVENT_READ, "accept")

    # -- reading lines -----------------------------------------------------------------
    def _read(self, peer: Peer, final: bool = False) -> bool:
        """Read what the peer sent and hand on its complete lines; False once it is closed.

        ``final``: read until nothing is left (at stop); the connection stays open for the
        acknowledgements of the final write."""
        while True:
            if final and time.monotonic() > self._drain_until_s:
                return True  # a client still sending at stop resends the rest (unacked)
            try:
                data = peer.sock.recv(RECV_BYTES)
            except (BlockingIOError, InterruptedError):
                return True
            except OSError:
                data = b""
            if not data:
                if peer.partial:  # it ended in the middle of a line
                    self._refuse(peer, "truncated", "the connection ended in the middle of a line")
                self.close_peer(peer)
                return False
            peer.last_recv_s = time.monotonic()
            if not self._feed(peer, data):
                return False
            if not final and len(data) < RECV_BYTES:
                return True

    def _feed(self, peer: Peer, data: bytes) -> bool:
        newline = data.find(b"\n")
        if newline < 0:
            peer.partial += data
            return self._check_partial(peer)
        if peer.partial:
            peer.partial += data[:newline]
            first = bytes(peer.partial)
            peer.partial.clear()
        else:
            first = data[:newline]
        lines = data[newline + 1 :].split(b"\n")
        tail = lines.pop()
        for line in (first, *lines):
            if len(line) > MAX_BATCH_BYTES:
                return self._too_large(peer, len(line))
            if line.strip():
                self._handlers.on_line(peer, line)
        peer.partial += tail
        return self._check_partial(peer)

    def _check_partial(self, peer: Peer) -> bool:
        if len(peer.partial) > MAX_BATCH_BYTES:
            return self._too_large(peer, len(peer.partial))
        return True

    def _too_large(self, peer: Peer, size: int) -> bool:
        self._refuse(
            peer,
            "too_large",
            f"a line of more than {size:,} bytes; at most {MAX_BATCH_BYTES:,}: the connection "
            "is closed (send smaller batches)",
        )
        self.close_peer(peer)
        return False

    def _refuse(self, peer: Peer, reason: str, message: str) -> None:
        self._handlers.on_refused(reason)
        self.reply(peer, encode_reply(message, reason))

    def reply(self, peer: Peer, data: bytes) -> None:
        """Answer a batch (refused, or acknowledged); never waits (a client that does
        not read loses it: an acknowledgement lost is repeated by the next one)."""
        try:
            sent = peer.sock.send(data)
        except OSError:
            self.replies_dropped += 1
            return
        if sent < len(data):  # half a line would garble the next: start afresh
            self.replies_dropped += 1
            self.close_peer(peer)

    def close_peer(self, peer: Peer) -> None:
        fileno = peer.sock.fileno()
        if self._peers.pop(fileno, None) is None:
            return
        if peer.key is not None:
            self._peers_of[peer.key] -= 1
            if self._peers_of[peer.key] <= 0:
                del self._peers_of[peer.key]
        with contextlib.suppress(KeyError, ValueError):
            assert self._selector is not None
            self._selector.unregister(peer.sock)
        peer.sock.close()
        self._handlers.on_disconnect(peer)
        self._limits.restore_spare()  # a descriptor is free: the spare first, then clients
        self._resume_accept()

    # -- at stop -----------------------------------------------------------------------
    def _drain_peers(self) -> None:
        """At stop: hand on what every client has already sent (for up to
        ``DRAIN_DEADLINE_S``); read nothing more, but keep the connections open."""
        self._drain_until_s = time.monotonic() + DRAIN_DEADLINE_S
        assert self._selector is not None
        for peer in list(self._peers.values()):
            try:
                self._read(peer, final=True)
            except Exception as exc:
                self._internal_error(exc, peer)
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(peer.sock)
        listener = self._claim.listener
        if listener is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(listener)

    def _acknowledge_final_write(self) -> None:
        """At stop, after the drain: send the acknowledgements the final write makes
        possible as they come, then close every client. A client told its spans are
        stored never resends them to the next daemon (a restart duplicates nothing)."""
        self._drained.set()
        while not self._final_written.wait(0.05):
            ready = select.select([self._wake_r], [], [], 0.05)[0] if self._wake_r >= 0 else []
            if ready:
                with contextlib.suppress(OSError):
                    os.read(self._wake_r, 4096)
            self._handlers.on_wake()
        self._handlers.on_wake()
        for peer in list(self._peers.values()):
            self.close_peer(peer)
