"""The daemon's connection limits, shared by its Unix socket and its HTTP server: the caps,
what they refused, when each was last hit (``/healthz`` says "degraded" a while after),
and the spare descriptor that lets a ``/healthz`` request in at the open-files limit."""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import threading
import time
from collections import Counter
from typing import Any

from footprint.daemon.config import MAX_CONNECTIONS, DaemonConfig

log = logging.getLogger("footprint")

# Descriptors never given to clients: HTTP requests, the database's files, /proc reads.
# The client connections are capped at the open-files limit less these (and those open at
# start), so a daemon full of clients still answers /healthz and writes its records.
FD_HEADROOM = 32
LIMIT_RECENT_S = 10.0  # /healthz says "degraded" this long after a limit was hit
ACCEPT_BACKOFF_MIN_S = 0.1  # accept() out of descriptors or memory: wait, doubling to
ACCEPT_BACKOFF_MAX_S = 1.0
# accept() errors that mean "no room now", not "this client": back off, never spin.
ACCEPT_LIMIT_ERRNOS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


def accept_limit_reason(errno_value: int | None) -> str:
    """The limit an accept() error of ``ACCEPT_LIMIT_ERRNOS`` hit: fd_limit or no_memory."""
    return "fd_limit" if errno_value in (errno.EMFILE, errno.ENFILE) else "no_memory"


class ConnectionLimits:
    """The caps of ``config`` and the open-files limit; counters for the metrics, times
    for ``/healthz``."""

    def __init__(self, config: DaemonConfig) -> None:
        self.max_connections = config.max_connections
        self.max_connections_per_peer = config.max_connections_per_peer
        self.max_http_connections = config.max_http_connections
        self.refused: Counter[str] = Counter()  # max_connections | per_peer | http
        self.reclaimed = 0  # idle connections closed to make room
        self.accept_failures: Counter[str] = Counter()  # fd_limit | no_memory
        self.fd_budget = MAX_CONNECTIONS  # connections the open-files limit leaves room for
        self._hit_s: dict[str, float] = {}  # health reason -> when last hit
        self._spare_fd = -1  # opened at start, closed to accept a request at the fd limit
        self._spare_lock = threading.Lock()

    def hit(self, reason: str, now_s: float | None = None) -> None:
        """A limit was hit now: fd_limit, no_memory or connection_limit."""
        self._hit_s[reason] = time.monotonic() if now_s is None else now_s

    def cap(self) -> int:
        """Client connections at most: the option's cap, or less where the open-files
        limit leaves less room."""
        return min(self.max_connections, self.fd_budget)

    def reserve_descriptors(self) -> None:
        """Keep a spare descriptor (closed to accept a /healthz request when the process
        has no other), and cap the client connections at what the open-files limit
        leaves after the descriptors open now and ``FD_HEADROOM``."""
        self.restore_spare()
        try:
            import resource

            soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        except (ImportError, OSError, ValueError):
            return
        if soft == resource.RLIM_INFINITY or soft < 0:
            return
        try:
            open_now = len(os.listdir("/proc/self/fd"))
        except OSError:
            open_now = 64
        self.fd_budget = max(1, soft - open_now - FD_HEADROOM)
        if self.fd_budget < self.max_connections:
            log.warning(
                "footprint daemon: at most %d client connections (the open-files limit is "
                "%d; raise it, e.g. LimitNOFILE= in systemd, for --max-connections %d)",
                self.fd_budget,
                soft,
                self.max_connections,
            )

    def restore_spare(self) -> None:
        """Hold the spare descriptor again, if one is free."""
        if self._spare_fd >= 0:
            return
        with self._spare_lock:
            if self._spare_fd < 0:
                with contextlib.suppress(OSError):
                    self._spare_fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)

    def release_spare(self) -> bool:
        """Close the spare descriptor (for the accept of a /healthz request at the fd
        limit); False if it is in use already."""
        with self._spare_lock:
            if self._spare_fd < 0:
                return False
            with contextlib.suppress(OSError):
                os.close(self._spare_fd)
            self._spare_fd = -1
            return True

    def snapshot(self) -> dict[str, Any]:
        """What the metrics show of the connection limits."""
        return {
            "max_connections": self.cap(),
            "refused": self.refused,
            "reclaimed": self.reclaimed,
            "accept_failures": self.accept_failures,
        }

    def reasons(self, open_now: int, now_s: float) -> list[str]:
        """The limits hit now (``open_now`` client connections) or in the last
        ``LIMIT_RECENT_S``, for /healthz."""
        reasons = []
        for reason, at_limit in (
            ("fd_limit", open_now >= self.fd_budget),
            ("connection_limit", open_now >= self.max_connections),
            ("no_memory", False),
        ):
            if at_limit or now_s - self._hit_s.get(reason, -math.inf) < LIMIT_RECENT_S:
                reasons.append(reason)
        return reasons
