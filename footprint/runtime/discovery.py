"""Where a tracked process's spans go: in-process, or to the daemon at a ``Target``.

``choose`` reads the ``daemon`` setting; under ``auto`` it ``probe``s the default socket
with a non-blocking connect, so that a process without a daemon pays tens of µs for it.
"""

from __future__ import annotations

import errno
import os
import socket
from typing import NamedTuple

from footprint.config import Settings
from footprint.runtime.protocol import default_socket_path

BUSY = "busy"  # ``probe``: a daemon listens, its backlog is full for now


class Target(NamedTuple):
    """Where spans go: ``kind`` "unix" (``address`` a socket path) or "http" (a URL)."""

    kind: str
    address: str

    @classmethod
    def of(cls, setting: str) -> Target:
        return cls("http" if setting.startswith("http://") else "unix", setting)


class Choice(NamedTuple):
    """What ``choose`` decided: a target (None: measure in-process), the connection the
    probe opened (kept), and why a daemon that seems to be there is not used."""

    target: Target | None
    sock: socket.socket | None = None
    note: str | None = None


def choose(settings: Settings, environ: dict[str, str] | None = None) -> Choice:
    """Where this process's spans go, from the ``daemon`` setting.

    ``off``: in-process. A socket path or URL: the daemon, always (one that is down is
    retried; spans are kept meanwhile, within bounds). ``auto``: the daemon if one
    accepts connections at ``default_socket_path()`` (a non-blocking connect, tens of
    µs), else in-process; simulated GPUs are always measured in-process under ``auto``,
    since the tracked calls drive them.
    """
    daemon = settings.daemon or "auto"
    if daemon == "off":
        return Choice(None)
    if daemon != "auto":
        return Choice(Target.of(daemon))
    if settings.sensor.partition(":")[0] == "simulated":
        return Choice(None)
    path = str(default_socket_path(environ))
    sock, note = probe(path)
    if sock is not None or note == BUSY:
        return Choice(Target("unix", path), sock)
    return Choice(None, note=note)


def default_target(settings: Settings) -> Target:
    """The target of a client given no ``choose`` result: the ``daemon`` setting's
    socket or URL, else (``auto``, ``off``) the default socket."""
    daemon = settings.daemon
    if daemon not in ("auto", "off"):
        return Target.of(daemon)
    return Target("unix", str(default_socket_path()))


def probe(path: str) -> tuple[socket.socket | None, str | None]:
    """A non-blocking connect to a Unix socket: (the connected socket, None) when a
    daemon accepts; (None, "busy") when one listens with a full backlog; (None, None)
    when nothing listens; (None, reason) when one listens that this process may not use.
    """
    if not hasattr(socket, "AF_UNIX"):
        return None, None
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    except OSError:
        return None, None
    try:
        sock.setblocking(False)
        err = sock.connect_ex(path)
    except (OSError, ValueError):
        sock.close()
        return None, None
    if err == 0:
        sock.setblocking(True)
        return sock, None
    sock.close()
    if err in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINPROGRESS):
        return None, BUSY
    if err in (errno.EACCES, errno.EPERM):
        return None, (
            f"footprint: a footprint daemon listens at {path} but this process may not "
            f"connect to it ({os.strerror(err)}); measuring in-process, so this GPU's "
            "energy is counted by both. Fix the socket's permissions or set daemon=off."
        )
    return None, None  # ENOENT, ECONNREFUSED (a stale socket), ENOTDIR, ...
