"""``footprint daemon``: the host's one sampler, resolver and store writer.

Worker processes send their span starts and ends (``footprint.runtime.protocol``) over a
Unix socket (or ``POST /v1/spans``); the daemon measures every GPU once and splits its
energy among the spans of all of them, so N processes sharing a GPU no longer count its
energy N times. It serves Prometheus metrics on ``GET /metrics`` and a health check on
``GET /healthz``.

- The Unix socket is 0600 (0660 and the group's with ``--group``), in a directory made
  0700 (0750). One daemon per socket: a lock file beside it (``PATH.lock``) is held for
  the daemon's life; a socket file left by a killed daemon is removed and reused.
- HTTP listens on loopback (``DEFAULT_HTTP``) unless told otherwise; any other address
  needs ``--token``. ``POST /v1/spans`` always wants ``Authorization: Bearer TOKEN``:
  the ``--token`` given, else one generated at the first start into ``PATH.token``
  (0600, beside the socket; reused), where local clients read it. ``/metrics`` wants it
  only when given with ``--token``; ``/healthz`` never. The lock and token files are
  never opened through a symlink (a daemon that finds one there refuses to start).
- SIGTERM/SIGINT: stop accepting, read what clients already sent, resolve and write
  everything that ended, exit 0 (within ``STOP_DEADLINE_S``). SIGHUP: read the settings
  again (footprint.toml, FOOTPRINT_* environment): pricing and the database change at
  once; a different sensor or sampling period needs a restart (logged).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hmac
import ipaddress
import json
import logging
import math
import os
import secrets
import select
import selectors
import signal
import socket
import stat
import struct
import sys
import threading
import time
import warnings
from collections import Counter
from dataclasses import dataclass, fields, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from footprint.pricing.pricer import PRICER_SETTINGS
from footprint.runtime.protocol import (
    MAX_BATCH_BYTES,
    ProtocolError,
    decode_batch,
    default_socket_path,
    encode_acks,
    encode_reply,
)

log = logging.getLogger("footprint")

DEFAULT_HTTP = "127.0.0.1:9464"
STOP_DEADLINE_S = 5.0  # SIGTERM to exit, at most
EXIT_WRITE_DEADLINE_S = 3.5  # of which the runtime's final resolve and write
MAX_CONNECTIONS = 4096  # client connections on the Unix socket (--max-connections)
MAX_HTTP_CONNECTIONS = 64  # HTTP connections at once, a thread each (--max-http-connections)
MAX_CONNECTIONS_PER_PEER = 256  # of one process (pid; uid where the pid is not visible)
# Descriptors never given to clients: HTTP requests, the database's files, /proc reads.
# The client connections are capped at the open-files limit less these (and those open at
# start), so a daemon full of clients still answers /healthz and writes its records.
FD_HEADROOM = 32
IDLE_RECLAIM_S = 5.0  # at the limit, a connection silent this long may be closed for room
RECLAIM_BATCH = 16  # idle connections closed at once when accept() finds no descriptor
ACCEPT_BACKOFF_MIN_S = 0.1  # accept() out of descriptors or memory: wait, doubling to
ACCEPT_BACKOFF_MAX_S = 1.0
LIMIT_RECENT_S = 10.0  # /healthz says "degraded" this long after a limit was hit
LOG_INTERVAL_S = 10.0  # log lines a peer can cause: a few per key per interval, then a count
RECV_BYTES = 1 << 18
# accept() errors that mean "no room now", not "this client": back off, never spin.
_ACCEPT_LIMIT_ERRNOS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
DRAIN_DEADLINE_S = 1.0  # at stop, reading what clients had sent
UNIX_PATH_MAX = 107  # bytes of sun_path, less the NUL
# Settings that change what is measured: a new value needs a restart of the daemon.
RESTART_FIELDS = ("sensor", "sampling_period_s", "cpu", "flush_interval_s", "max_pending_spans")


class StartError(Exception):
    """The daemon cannot start: one line for the user, and the exit code."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class DaemonConfig:
    """What ``footprint daemon`` was asked for; None: the settings' value or the default."""

    socket_path: str | None = None
    http: str | None = DEFAULT_HTTP  # HOST:PORT, or None / "off" for no HTTP
    db: str | None = None
    sampling_period_s: float | None = None
    sensor: str | None = None
    region: str | None = None
    group: str | None = None
    token: str | None = None
    max_connections: int = MAX_CONNECTIONS
    max_connections_per_peer: int = MAX_CONNECTIONS_PER_PEER
    max_http_connections: int = MAX_HTTP_CONNECTIONS

    def overrides(self) -> dict[str, Any]:
        given = {
            "db": self.db,
            "sensor": self.sensor,
            "region": self.region,
            "sampling_period_s": self.sampling_period_s,
        }
        return {name: value for name, value in given.items() if value is not None}


def parse_http_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) -> (host, port); ValueError if malformed."""
    host, sep, port_text = text.strip().rpartition(":")
    if not sep or not host:
        raise ValueError(f"--http must be HOST:PORT (e.g. {DEFAULT_HTTP}) or off, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"--http: not a port number: {port_text!r}") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"--http: port must be 0-65535 (0: any free one), got {port}")
    return host, port


def is_loopback(host: str) -> bool:
    """Whether every address ``host`` names is a loopback address."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def check_config(config: DaemonConfig) -> tuple[str, int] | None:
    """Validate what needs no runtime; the HTTP address (None: no HTTP). ``StartError``
    (exit 2) for bad input, e.g. a non-loopback address without a token."""
    if config.token is not None and not _valid_token(config.token):
        raise StartError(
            f"--token must be 8 to {MAX_TOKEN_CHARS} printable ASCII characters, no spaces", 2
        )
    for name in ("max_connections", "max_connections_per_peer", "max_http_connections"):
        if getattr(config, name) < 1:
            raise StartError(f"--{name.replace('_', '-')} must be at least 1", 2)
    if config.http is None or config.http.strip().lower() in ("off", "none", ""):
        return None
    try:
        host, port = parse_http_address(config.http)
    except ValueError as exc:
        raise StartError(str(exc), 2) from None
    if not is_loopback(host) and not config.token:
        raise StartError(
            f"--http {config.http} is not a loopback address: give --token TOKEN (or "
            "FOOTPRINT_DAEMON_TOKEN) so that only holders of it can post spans or read metrics",
            2,
        )
    return host, port


def daemon_settings(config: DaemonConfig) -> Any:
    """The runtime's settings: files and environment, then the command's options; the
    daemon never hands its spans to another daemon. ``StartError`` (exit 2) if invalid."""
    from footprint.config import resolve_settings

    try:
        settings = resolve_settings(config.overrides())
    except ValueError as exc:
        raise StartError(str(exc), 2) from None
    for daemon in ("off", None):  # None where the setting takes any value (older config)
        try:
            settings = replace(settings, daemon=daemon)
            break
        except ValueError:
            continue
    return replace(settings, exit_deadline_s=min(settings.exit_deadline_s, EXIT_WRITE_DEADLINE_S))


# -- the Unix socket -------------------------------------------------------------------
MAX_TOKEN_CHARS = 4096


def _valid_token(text: str) -> bool:
    """A bearer token the daemon takes: 8 to 4,096 printable ASCII characters, no spaces
    (what an ``Authorization`` header carries as is)."""
    return 8 <= len(text) <= MAX_TOKEN_CHARS and all(" " < c < "\x7f" for c in text)


def _symlink_refusal(path: Path) -> str:
    try:
        target = repr(os.readlink(path))
    except OSError:
        target = "?"
    return (
        f"{path} is a symbolic link (to {target}), not a file of the daemon's: refusing to "
        "follow it (remove it; the daemon writes its files only in a folder of its own)"
    )


def _not_own_file(info: os.stat_result) -> str | None:
    """Why a file opened (without following links) is not one the daemon may write."""
    if not stat.S_ISREG(info.st_mode):
        return "is not a regular file"
    if info.st_uid != os.geteuid():
        return f"belongs to uid {info.st_uid}"
    if info.st_nlink != 1:
        return f"has {info.st_nlink} hard links"
    return None


class _SocketClaim:
    """The socket path, owned: the lock beside it held, the socket bound and listening.

    Every file is made in the socket's folder, which must be a real folder (not a symlink)
    of the daemon's user or root's; the lock and token files are opened with O_NOFOLLOW
    and written only if they are the daemon user's own regular files with no other link
    (a symlink there: the daemon refuses to start, saying so in one line; its target is
    left as it was). ``token_file``: the HTTP intake's token is ``token`` (--token), else
    one generated at the first start into ``PATH.token`` (0600) and reused after."""

    def __init__(self, path: Path, group: str | None, token: str | None = None,
                 token_file: bool = False) -> None:  # fmt: skip
        self.path = path
        self.lock_path = path.with_name(path.name + ".lock")
        self.token_path = path.with_name(path.name + ".token")
        self.group = group
        self.lock_fd: int | None = None
        self.listener: socket.socket | None = None
        self.given_token = token
        self.token_file = token_file
        self.token: str | None = token  # what POST /v1/spans wants (set by claim)

    def claim(self) -> socket.socket:
        path = self.path
        if len(os.fsencode(path)) > UNIX_PATH_MAX:
            raise StartError(
                f"socket path {path} is {len(os.fsencode(path))} bytes; a Unix socket path "
                f"has at most {UNIX_PATH_MAX}: give a shorter --socket",
                2,
            )
        gid = _group_id(self.group) if self.group else None
        self._make_directory(gid)
        self._lock()
        try:
            self._remove_stale()
            if self.token_file:
                self.token = self._claim_token()
        except BaseException:
            self.release()  # the lock too: nothing of this start is left
            raise
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        mode = 0o660 if gid is not None else 0o600
        old_umask = os.umask(0o777 & ~mode)  # no moment with a wider mode (no threads yet)
        try:
            listener.bind(os.fspath(path))  # a new name: bind never follows a link there
        except OSError as exc:
            listener.close()
            raise StartError(f"cannot bind {path}: {exc.strerror or exc}") from None
        finally:
            os.umask(old_umask)
        try:
            if gid is not None:
                os.chown(path, -1, gid, follow_symlinks=False)
            info = os.lstat(path)
            if not stat.S_ISSOCK(info.st_mode):
                raise OSError(errno.EEXIST, "replaced by something else after bind")
            if stat.S_IMODE(info.st_mode) != mode:  # the umask made it so, on Linux
                os.chmod(path, mode)
        except OSError as exc:
            listener.close()
            raise StartError(f"cannot set the owner group or mode of {path}: {exc}") from None
        listener.listen(512)
        listener.setblocking(False)
        self.listener = listener
        return listener

    def _make_directory(self, gid: int | None) -> None:
        """The socket's folder: made 0700 (0750 and the group's with --group) if missing.
        It must be a real folder (not a symlink) of the daemon's user or root's: another
        user who owns it could swap the files the daemon makes there."""
        directory = self.path.parent
        mode = 0o750 if gid is not None else 0o700
        created = False
        try:
            os.lstat(directory)
        except FileNotFoundError:
            try:
                directory.mkdir(mode=mode, parents=True, exist_ok=True)
                created = True
            except OSError as exc:
                raise StartError(
                    f"cannot create {directory} for the socket: {exc.strerror or exc} (give "
                    "--socket PATH in a folder you can write, or set XDG_RUNTIME_DIR)"
                ) from None
        except OSError as exc:
            raise StartError(f"cannot use {directory} for the socket: {exc.strerror}") from None
        try:  # the folder itself, never through a link: checked and set on what was opened
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            if os.path.islink(directory):
                raise StartError(_symlink_refusal(directory)) from None
            raise StartError(f"cannot use {directory} for the socket: {exc.strerror}") from None
        try:
            info = os.fstat(fd)
            euid = os.geteuid()
            if info.st_uid not in (euid, 0):
                raise StartError(
                    f"{directory} belongs to uid {info.st_uid}, not to this daemon's user "
                    f"(uid {euid}) nor root: give --socket PATH in a folder of its own"
                )
            if created:
                os.fchmod(fd, mode)
                if gid is not None:
                    os.fchown(fd, -1, gid)
        except OSError as exc:
            raise StartError(f"cannot set the mode of {directory}: {exc.strerror}") from None
        finally:
            os.close(fd)

    def _open_own(self, path: Path, flags: int, what: str) -> int:
        """Open (or create, 0600) a file of the daemon's in the socket's folder: never
        through a symlink, never a file that is not the daemon user's own (StartError)."""
        try:
            fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            if exc.errno == errno.ELOOP or os.path.islink(path):
                raise StartError(_symlink_refusal(path)) from None
            raise StartError(f"cannot open {path}: {exc.strerror}") from None
        problem = _not_own_file(os.fstat(fd))
        if problem is not None:
            os.close(fd)
            raise StartError(f"{path} {problem}: not this daemon's {what}; refusing to write it "
                             "(remove it)")  # fmt: skip
        return fd

    def _lock(self) -> None:
        """Hold ``PATH.lock`` for the daemon's life: one daemon per socket."""
        while True:
            fd = self._open_own(self.lock_path, os.O_RDWR | os.O_CREAT, "lock file")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise StartError(
                    f"footprint daemon: another daemon is listening on {self.path}"
                ) from None
            try:  # the file locked must still be the one at the path (see release)
                if os.lstat(self.lock_path).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.lock_fd = fd

    def _claim_token(self) -> str:
        """The HTTP intake's token: the one given (--token), else the one in
        ``PATH.token`` when that is the daemon user's own 0600 file, else a new one
        (``secrets.token_urlsafe(32)``). The file then holds it, for local clients."""
        current = self._read_token()
        token = self.given_token or current or secrets.token_urlsafe(32)
        if token != current:
            self._write_token(token)
        log.info("footprint daemon: POST /v1/spans wants the bearer token in %s",
                 self.token_path)  # fmt: skip
        return token

    def _read_token(self) -> str | None:
        """The token in ``PATH.token``; None when there is none, or when the file is not
        one to keep (mode other than 0600, another owner or link, no valid token): it is
        replaced. A symlink or a non-file there: StartError."""
        path = self.token_path
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP or os.path.islink(path):
                raise StartError(_symlink_refusal(path)) from None
            raise StartError(f"cannot read {path}: {exc.strerror}") from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise StartError(f"{path} is not a regular file: not this daemon's token "
                                 "file (remove it)")  # fmt: skip
            problem = _not_own_file(info)
            if problem is None and stat.S_IMODE(info.st_mode) != 0o600:
                problem = f"has mode {stat.S_IMODE(info.st_mode):04o}, not 0600"
            data = os.read(fd, MAX_TOKEN_CHARS + 2)
        finally:
            os.close(fd)
        token = data.decode("ascii", "replace").strip()
        if problem is None and not _valid_token(token):
            problem = "holds no valid token"
        if problem is not None:
            log.warning("footprint daemon: %s %s: a new token is written there", path, problem)
            return None
        return token

    def _write_token(self, token: str) -> None:
        """``PATH.token``, 0600, holding ``token``: written under a new name (O_EXCL,
        O_NOFOLLOW), then renamed over the path (which replaces a name, never follows
        one), so that a reader never finds it half written."""
        path = self.token_path
        temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)  # left by a start of the same pid that was killed
            fd = os.open(temporary, flags, 0o600)
            try:
                os.fchmod(fd, 0o600)  # whatever the umask
                os.write(fd, f"{token}\n".encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(temporary, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise StartError(f"cannot write the token file {path}: {exc.strerror or exc}") from None

    def _remove_stale(self) -> None:
        """A socket file nobody accepts on (a killed daemon's) is removed; one that
        answers belongs to something else, and is left alone."""
        path = self.path
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(mode):
            raise StartError(f"{path} exists and is not a socket; remove it or give --socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(os.fspath(path))
        except (ConnectionRefusedError, FileNotFoundError):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            log.info("footprint daemon: removed the stale socket %s", path)
            return
        except OSError:
            pass
        finally:
            probe.close()
        raise StartError(f"footprint daemon: another daemon is listening on {path}")

    def close_listener(self) -> None:
        """Close and remove the socket: new clients find no daemon. The lock stays held
        until ``release`` (this daemon still writes)."""
        if self.listener is not None:
            with contextlib.suppress(OSError):
                self.listener.close()
            self.listener = None
            with contextlib.suppress(OSError):
                os.unlink(self.path)

    def release(self) -> None:
        """Close and remove the socket, then the lock (removed while still held, so a
        daemon starting now locks the new file, never this one)."""
        self.close_listener()
        if self.lock_fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.lock_path)
            os.close(self.lock_fd)
            self.lock_fd = None


def _group_id(name: str) -> int:
    import grp

    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        if name.isdigit():
            return int(name)
        raise StartError(f"--group: no group named {name!r}", 2) from None


def _peer_credentials(sock: socket.socket) -> tuple[int | None, int | None]:
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


def _peer_pid(sock: socket.socket) -> int | None:
    """The pid of the process at the other end, as the daemon's pid namespace sees it
    (None: not Linux, or a process of a namespace the daemon cannot see)."""
    return _peer_credentials(sock)[0]


class _Peer:
    """A client connection's socket, its partial line and its intake state; ``key``: whose
    connection it is, for the per-peer cap; ``last_recv_s``: when it last sent anything
    (idle connections are the first closed to make room at the limit)."""

    __slots__ = ("sock", "conn", "partial", "key", "last_recv_s", "connected_after_s")

    def __init__(self, sock: socket.socket, conn: Any, key: tuple[str, int] | None = None,
                 now_s: float = 0.0) -> None:  # fmt: skip
        self.sock = sock
        self.conn = conn
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


class RateLimitedLog:
    """Log lines a peer can cause, bounded: at most ``burst`` per key per ``interval_s``;
    the ones left out are counted and said in one line when the key logs again (or at
    ``flush``), so a flood of clients cannot flood the log."""

    def __init__(self, interval_s: float = LOG_INTERVAL_S, burst: int = 3) -> None:
        self.interval_s = interval_s
        self.burst = burst
        self._lock = threading.Lock()
        self._windows: dict[str, list[float]] = {}  # key -> [start_s, logged, left out, level]

    def log(self, level: int, key: str, message: str, *args: Any, exc_info: bool = False,
            now_s: float | None = None, burst: int | None = None) -> None:  # fmt: skip
        now_s = time.monotonic() if now_s is None else now_s
        with self._lock:
            window = self._windows.get(key)
            summary = 0
            if window is None or now_s - window[0] >= self.interval_s:
                summary = int(window[2]) if window is not None else 0
                window = self._windows[key] = [now_s, 0, 0, level]
            emit = window[1] < (self.burst if burst is None else burst)
            window[1 if emit else 2] += 1
        if summary:
            self._summary(level, key, summary)
        if emit:
            log.log(level, message, *args, exc_info=exc_info)

    def warning(self, key: str, message: str, *args: Any, now_s: float | None = None) -> None:
        self.log(logging.WARNING, key, message, *args, now_s=now_s)

    def flush(self, now_s: float | None = None) -> None:
        """Say the counts of the intervals that ended with lines left out."""
        now_s = time.monotonic() if now_s is None else now_s
        due: list[tuple[int, str, int]] = []
        with self._lock:
            for key, window in list(self._windows.items()):
                if now_s - window[0] >= self.interval_s:
                    if window[2]:
                        due.append((int(window[3]), key, int(window[2])))
                    del self._windows[key]
        for level, key, count in due:
            self._summary(level, key, count)

    def _summary(self, level: int, key: str, count: int) -> None:
        log.log(level, "footprint daemon: %d more like it (%s) in the last %g s, not logged",
                count, key, self.interval_s)  # fmt: skip


# -- the daemon ------------------------------------------------------------------------
class Daemon:
    """A runtime, the Unix socket and the HTTP server around it."""

    def __init__(self, config: DaemonConfig) -> None:
        self.config = config
        self.http_bind = check_config(config)
        self.settings = daemon_settings(config)
        self.socket_path = Path(config.socket_path or default_socket_path()).absolute()
        self.http_address: tuple[str, int] | None = None
        self.started_s = time.monotonic()
        self.runtime: Any = None
        self.intake: Any = None
        self._claim = _SocketClaim(self.socket_path, config.group, token=config.token,
                                   token_file=self.http_bind is not None)  # fmt: skip
        self._selector: selectors.BaseSelector | None = None
        self._peers: dict[int, _Peer] = {}  # by socket file number
        self._peer_of_conn: dict[int, _Peer] = {}  # by intake connection id
        self._stopping = threading.Event()
        self._backlog_empty_s = time.monotonic()  # the listen backlog was last seen empty
        self._drained = threading.Event()  # at stop: what clients sent is applied
        self._final_written = threading.Event()  # at stop: the runtime's final write is done
        self._wake_r, self._wake_w = -1, -1
        self._loop_thread: threading.Thread | None = None
        self._http: ThreadingHTTPServer | None = None
        self._http_thread: threading.Thread | None = None
        self.stopped = False
        self.replies_dropped = 0
        self.refused_connections = 0
        self.internal_errors = 0
        self._drain_until_s = 0.0
        # Connection limits (see _accept): counters for the metrics, times for /healthz.
        # max_connections | per_peer | http (over --max-http-connections)
        self.connections_refused: Counter[str] = Counter()
        self.connections_reclaimed = 0  # idle ones closed to make room
        self.accept_failures: Counter[str] = Counter()  # fd_limit | no_memory
        self.fd_budget = MAX_CONNECTIONS  # connections the open-files limit leaves room for
        self._limit_hit_s: dict[str, float] = {}  # health reason -> when last hit
        self._peers_of: Counter[tuple[str, int]] = Counter()  # open connections per peer
        self._accept_paused_until_s = 0.0  # 0: the listener is selected
        self._accept_backoff_s = 0.0
        self._spare_fd = -1  # opened at start, closed to accept a request at the fd limit
        self._spare_lock = threading.Lock()
        self.limited_log = RateLimitedLog()

    # -- start -----------------------------------------------------------------------
    def start(self) -> None:
        """Claim the socket, bind HTTP, open the runtime, then serve. ``StartError``."""
        listener = self._claim.claim()
        try:
            if self.http_bind is not None:
                self._http = self._make_http(*self.http_bind)
            self._open_runtime()
        except BaseException:
            if self._http is not None:
                self._http.server_close()
            self._claim.release()
            raise
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._selector.register(listener, selectors.EVENT_READ, "accept")
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._reserve_descriptors()
        self._loop_thread = threading.Thread(
            target=self._loop, name="footprint-daemon-socket", daemon=True
        )
        self._loop_thread.start()
        if self._http is not None:
            self._http_thread = threading.Thread(
                target=self._http.serve_forever, kwargs={"poll_interval": 0.5},
                name="footprint-daemon-http", daemon=True,
            )  # fmt: skip
            self._http_thread.start()

    def _open_runtime(self) -> None:
        from footprint.daemon.metrics import (
            DaemonCollector,
            PowerTracker,
            RecordTotals,
            registry,
        )
        from footprint.daemon.spans import SpanIntake
        from footprint.runtime.local import Runtime

        try:
            # Its GPUs are claimed as the daemon's: an in-process measurer is told so.
            runtime = Runtime(self.settings, presence_role="daemon")
        except Exception as exc:
            raise StartError(f"cannot start measuring: {exc}") from None
        try:  # a database that cannot be opened now is said now, not at the first write
            runtime.writer.open_store()
        except Exception as exc:
            with contextlib.suppress(Exception):
                runtime.gpu_sensor.close()
            reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
            raise StartError(f"cannot open the database {self.settings.db}: {reason}") from None
        self.runtime = runtime
        self.intake = SpanIntake(runtime)
        self.intake.on_ack_due = self._wake_loop
        gpu_labels = {d.uuid: str(d.index) for d in runtime.gpu_devices}
        self.totals = RecordTotals(gpu_labels)
        self.power = PowerTracker(len(runtime.gpu_devices))
        self._hook_runtime(runtime)
        collector = DaemonCollector(runtime, self.intake, self.totals, self.power, self.started_s)
        collector.connection_limits = self.connection_limits
        self.registry = registry(collector)
        runtime.start()
        runtime.wait_until_measuring(2.0)

    def _hook_runtime(self, runtime: Any) -> None:
        """Observe the records the runtime writes and the samples it resolves (see the
        module doc of ``footprint.daemon.metrics``) without changing either."""
        runtime.on_records.append(self.totals.observe)
        runtime.on_gpu_samples.append(self.power.observe)

    # -- the Unix socket -------------------------------------------------------------
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
                try:
                    if key.data == "accept":
                        self._accept()
                    elif key.data == "wake":
                        with contextlib.suppress(OSError):
                            os.read(self._wake_r, 4096)
                        self._send_acks()
                    else:
                        self._read(key.data)
                except Exception as exc:  # a bug with one client never stops the others
                    self._internal_error(exc, key.data)
        self._drain_peers()
        self._acknowledge_final_write()

    def _wake_loop(self) -> None:
        """Have the socket thread look at its queues (acknowledgements to send)."""
        if self._wake_w >= 0:
            with contextlib.suppress(OSError):  # full pipe: a wake is pending anyway
                os.write(self._wake_w, b"a")

    def _send_acks(self) -> None:
        for conn, ids in self.intake.take_acks():
            peer = self._peer_of_conn.get(conn.id)
            if peer is not None:
                self._reply(peer, encode_acks(ids))

    def _internal_error(self, exc: Exception, peer: Any) -> None:
        self.internal_errors += 1
        if self.internal_errors == 1:
            log.exception("footprint daemon: internal error (the client is disconnected): %r",
                          exc)  # fmt: skip
        if isinstance(peer, _Peer):
            with contextlib.suppress(Exception):
                self._close(peer)

    def _accept(self) -> None:
        listener = self._claim.listener
        if listener is None:
            return
        for _ in range(64):
            # Out of descriptors for clients: new ones wait in the listen backlog (they
            # have connected and may send) until a connection closes; none is refused.
            if len(self._peers) >= self.fd_budget and not self._accept_blocked(
                "fd_limit", f"the open-files limit leaves room for {self.fd_budget}"
            ):  # fmt: skip
                return
            try:
                sock, _addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                self._backlog_empty_s = time.monotonic()  # later clients connected later
                return
            except OSError as exc:
                if exc.errno in _ACCEPT_LIMIT_ERRNOS and self._accept_blocked(
                    "fd_limit" if exc.errno in (errno.EMFILE, errno.ENFILE) else "no_memory",
                    f"accept(): {exc.strerror}",
                ):  # fmt: skip
                    continue
                return
            self._accept_backoff_s = 0.0
            sock.setblocking(False)
            pid, uid = _peer_credentials(sock)
            key = ("pid", pid) if pid else ("uid", uid) if uid is not None else None
            now_s = time.monotonic()
            if key is not None and self._peers_of[key] >= self.config.max_connections_per_peer:
                self._refuse_connection(sock, "per_peer")
                continue
            if len(self._peers) >= self.config.max_connections and not self._reclaim_idle(
                now_s, 1
            ):  # fmt: skip
                self._refuse_connection(sock, "max_connections")
                continue
            peer = _Peer(sock, self.intake.connect(pid), key, now_s)
            peer.connected_after_s = self._backlog_empty_s
            self._peers[sock.fileno()] = peer
            self._peer_of_conn[peer.conn.id] = peer
            if key is not None:
                self._peers_of[key] += 1
            assert self._selector is not None
            self._selector.register(sock, selectors.EVENT_READ, peer)

    # -- connection limits -------------------------------------------------------------
    def _reserve_descriptors(self) -> None:
        """Keep a spare descriptor (closed to accept a /healthz request when the process
        has no other), and cap the client connections at what the open-files limit
        leaves after the descriptors open now and ``FD_HEADROOM``."""
        self._restore_spare()
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
        if self.fd_budget < self.config.max_connections:
            log.warning(
                "footprint daemon: at most %d client connections (the open-files limit is "
                "%d; raise it, e.g. LimitNOFILE= in systemd, for --max-connections %d)",
                self.fd_budget, soft, self.config.max_connections,
            )  # fmt: skip

    def _refuse_connection(self, sock: socket.socket, reason: str) -> None:
        """Over a cap: one line saying so, then closed (counted, logged rate-limited)."""
        self.refused_connections += 1
        self.connections_refused[reason] += 1
        if reason == "per_peer":
            cap = self.config.max_connections_per_peer
            message = f"too many connections from this process (at most {cap} per peer)"
        else:
            self._limit_hit_s["connection_limit"] = time.monotonic()
            cap = self.config.max_connections
            message = f"too many connections to the daemon (at most {cap})"
        with contextlib.suppress(OSError):
            sock.send(encode_reply(message + ": this one is closed, try again later",
                                   "overloaded"))  # fmt: skip
        sock.close()
        self.limited_log.warning(
            f"refused:{reason}", "footprint daemon: refused a client connection: %s", message
        )

    def _reclaim_idle(self, now_s: float, count: int) -> int:
        """Close up to ``count`` idle connections, the longest silent first; how many."""
        idle = [peer for peer in self._peers.values() if peer.idle(now_s)]
        if not idle:
            return 0
        idle.sort(key=lambda peer: peer.last_recv_s)
        for peer in idle[:count]:
            self._close(peer)
        closed = min(count, len(idle))
        self.connections_reclaimed += closed
        self.limited_log.log(
            logging.INFO, "reclaimed",
            "footprint daemon: at the connection limit: closed %d idle connection(s)", closed,
            burst=1,
        )  # fmt: skip
        return closed

    def _accept_blocked(self, reason: str, detail: str) -> bool:
        """No descriptor (or memory) for another client: close idle connections to make
        room (True); with none idle, stop selecting the listener until a connection
        closes or a backoff passes (False), logging a line per interval at most."""
        now_s = time.monotonic()
        self._limit_hit_s[reason] = now_s
        if self._reclaim_idle(now_s, RECLAIM_BATCH):
            return True
        self.accept_failures[reason] += 1
        self._accept_backoff_s = min(
            ACCEPT_BACKOFF_MAX_S, max(ACCEPT_BACKOFF_MIN_S, 2 * self._accept_backoff_s)
        )
        self._pause_accept(now_s + self._accept_backoff_s)
        self.limited_log.log(
            logging.WARNING, f"accept:{reason}",
            "footprint daemon: no room for another client (%s; %d connections open, none "
            "idle): new ones wait until one closes (raise the open-files limit, e.g. "
            "LimitNOFILE= in systemd)",
            detail, len(self._peers), burst=1,
        )  # fmt: skip
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

    def _restore_spare(self) -> None:
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

    def connection_limits(self) -> dict[str, Any]:
        """What the metrics show of the connection limits."""
        return {
            "max_connections": min(self.config.max_connections, self.fd_budget),
            "refused": self.connections_refused,
            "reclaimed": self.connections_reclaimed,
            "accept_failures": self.accept_failures,
        }

    def limit_reasons(self, now_s: float) -> list[str]:
        """The limits hit now or in the last ``LIMIT_RECENT_S``, for /healthz."""
        open_now = len(self._peers)
        reasons = []
        for reason, at_limit in (
            ("fd_limit", open_now >= self.fd_budget),
            ("connection_limit", open_now >= self.config.max_connections),
            ("no_memory", False),
        ):
            if at_limit or now_s - self._limit_hit_s.get(reason, -math.inf) < LIMIT_RECENT_S:
                reasons.append(reason)
        return reasons

    def _read(self, peer: _Peer, final: bool = False) -> bool:
        """Read what the peer sent and apply its complete lines; False once it is closed.

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
                self._close(peer)
                return False
            peer.last_recv_s = time.monotonic()
            if not self._feed(peer, data):
                return False
            if not final and len(data) < RECV_BYTES:
                return True

    def _feed(self, peer: _Peer, data: bytes) -> bool:
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
                self._line(peer, line)
        peer.partial += tail
        return self._check_partial(peer)

    def _check_partial(self, peer: _Peer) -> bool:
        if len(peer.partial) > MAX_BATCH_BYTES:
            return self._too_large(peer, len(peer.partial))
        return True

    def _too_large(self, peer: _Peer, size: int) -> bool:
        self._refuse(
            peer, "too_large",
            f"a line of more than {size:,} bytes; at most {MAX_BATCH_BYTES:,}: the connection "
            "is closed (send smaller batches)",
        )  # fmt: skip
        self._close(peer)
        return False

    def _line(self, peer: _Peer, line: bytes) -> None:
        try:
            batch = decode_batch(line)
        except ProtocolError as exc:
            self._refuse(peer, exc.reason, str(exc))
            return
        # The first batch of a connection may have waited since the client connected.
        waited_s = 0.0 if peer.conn.clock_checked else time.monotonic() - peer.connected_after_s
        try:
            self.intake.apply(batch, peer.conn, transit_s=max(0.0, waited_s))
        except ProtocolError as exc:  # counted by the intake
            refused = [e.id for e in batch.ends] if batch.ack else None
            self._reply(peer, encode_reply(str(exc), exc.reason, refused))

    def _refuse(self, peer: _Peer, reason: str, message: str) -> None:
        self.intake.refused(reason)
        self._reply(peer, encode_reply(message, reason))

    def _reply(self, peer: _Peer, data: bytes) -> None:
        """Answer a batch (refused, or acknowledged); never waits (a client that does
        not read loses it: an acknowledgement lost is repeated by the next one)."""
        try:
            sent = peer.sock.send(data)
        except OSError:
            self.replies_dropped += 1
            return
        if sent < len(data):  # half a line would garble the next: start afresh
            self.replies_dropped += 1
            self._close(peer)

    def _close(self, peer: _Peer) -> None:
        fileno = peer.sock.fileno()
        if self._peers.pop(fileno, None) is None:
            return
        self._peer_of_conn.pop(peer.conn.id, None)
        if peer.key is not None:
            self._peers_of[peer.key] -= 1
            if self._peers_of[peer.key] <= 0:
                del self._peers_of[peer.key]
        with contextlib.suppress(KeyError, ValueError):
            assert self._selector is not None
            self._selector.unregister(peer.sock)
        peer.sock.close()
        self.intake.disconnect(peer.conn)
        self._restore_spare()  # a descriptor is free: the spare first, then clients
        self._resume_accept()

    def _drain_peers(self) -> None:
        """At stop: apply what every client has already sent (for up to
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
            self._send_acks()
        self._send_acks()
        for peer in list(self._peers.values()):
            self._close(peer)

    # -- HTTP ------------------------------------------------------------------------
    def _make_http(self, host: str, port: int) -> ThreadingHTTPServer:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        server_class = type(
            "DaemonHTTPServer", (_DaemonHTTPServer,),
            {"address_family": family, "daemon_threads": True, "allow_reuse_address": True,
             "owner": self},
        )  # fmt: skip
        handler = type("DaemonHandler", (_Handler,), {"owner": self})
        try:
            server = server_class((host, port), handler)
        except OSError as exc:
            raise StartError(
                f"cannot listen on http://{host}:{port}: {exc.strerror or exc}"
            ) from None
        bound = server.server_address
        self.http_address = (host, bound[1])
        return server

    def health(self) -> dict[str, Any]:
        runtime = self.runtime
        now_s = time.monotonic()
        latest = runtime.gpu_sampler.latest_sample_times_s()
        ages = [now_s - (self.started_s if t is None else t) for t in latest]
        stale_s = max(2.0, 20 * runtime.settings.sampling_period_s)
        worst = max(ages, default=None)
        # status: "ok"; "stale_samples" (alone, as before); else "degraded" (see reasons)
        reasons = [] if worst is None or worst <= stale_s else ["stale_samples"]
        reasons += self.limit_reasons(now_s)
        status = "ok" if not reasons else reasons[0] if reasons == ["stale_samples"] else "degraded"
        return {
            "status": status,
            "reasons": reasons,
            "pid": os.getpid(),
            "uptime_s": round(now_s - self.started_s, 3),
            "socket": str(self.socket_path),
            "connections": len(self.intake.connections),
            "max_connections": min(self.config.max_connections, self.fd_budget),
            "clients": self.intake.client_count(),
            "spans_in_flight": len(runtime.inflight),
            "queue_depth": len(runtime.ended) + runtime.writer.buffered,
            "last_sample_age_s": None if worst is None else round(worst, 3),
            "gpus": len(latest),
            "spans_received": dict(self.intake.received),
            "records_written": runtime.writer.written,
            "protocol_errors": sum(self.intake.protocol_errors.values()),
            "stats": runtime.stats(),
        }

    # -- control ---------------------------------------------------------------------
    def sweep(self) -> None:
        """Housekeeping, about once a second: clients that went away."""
        if self.intake is not None:
            self.intake.sweep()
        self._restore_spare()  # taken by a /healthz request at the fd limit
        self.limited_log.flush()

    def stop(self) -> None:
        """Stop accepting, apply what clients sent, resolve and write, release the socket:
        all within ``STOP_DEADLINE_S`` (what the database did not take by then is
        counted, as the runtime counts it at exit)."""
        if self.stopped:
            return
        self.stopped = True
        deadline_s = time.monotonic() + STOP_DEADLINE_S
        self._stopping.set()
        if self._wake_w >= 0:
            with contextlib.suppress(OSError):
                os.write(self._wake_w, b"x")
        http = self._http
        if http is not None:
            # shutdown() waits for serve_forever's loop (poll_interval): on its own thread
            closer = threading.Thread(target=http.shutdown, daemon=True)
            closer.start()
        if self._loop_thread is not None and self._loop_thread.is_alive():
            self._drained.wait(DRAIN_DEADLINE_S + 0.5)
        self._claim.close_listener()  # new clients now find no daemon (and measure themselves)
        if http is not None:
            closer.join(max(0.0, min(0.6, deadline_s - time.monotonic() - 1.0)))
            with contextlib.suppress(Exception):
                http.server_close()
        runtime = self.runtime
        if runtime is not None:
            left_s = deadline_s - time.monotonic() - 0.3  # the interpreter's own exit
            runtime.settings = replace(
                runtime.settings,
                exit_deadline_s=max(0.5, min(runtime.settings.exit_deadline_s, left_s)),
            )
            runtime.shutdown()  # within exit_deadline_s; unsaved records are counted
        self._final_written.set()  # the loop sends the last acknowledgements and closes
        self._wake_loop()
        if self._loop_thread is not None:
            self._loop_thread.join(max(0.2, deadline_s - time.monotonic()))
        self._claim.release()
        if self._selector is not None and (
            self._loop_thread is None or not self._loop_thread.is_alive()
        ):
            with contextlib.suppress(Exception):
                self._selector.close()
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def reload(self) -> None:
        """SIGHUP: read the settings again; apply pricing and database changes now."""
        try:
            new = daemon_settings(self.config)
        except StartError as exc:
            log.warning("footprint daemon: SIGHUP: settings not reloaded: %s", exc)
            return
        runtime = self.runtime
        old = runtime.settings
        changed = [f.name for f in fields(old) if getattr(old, f.name) != getattr(new, f.name)]
        if not changed:
            log.warning("footprint daemon: SIGHUP: settings re-read, nothing changed")
            return
        later = [name for name in changed if name in RESTART_FIELDS]
        applied = {name: getattr(new, name) for name in changed if name not in RESTART_FIELDS}
        if later:
            log.warning(
                "footprint daemon: SIGHUP: %s changed; restart the daemon to apply it",
                ", ".join(later),
            )
        if not applied:
            return
        target = replace(old, **applied)
        if any(name in PRICER_SETTINGS for name in applied):
            from footprint.pricing.pricer import Pricer

            gpu_model = runtime.gpu_devices[0].name if runtime.gpu_devices else None
            try:
                runtime.pricer = Pricer(target, gpu_model)
            except Exception as exc:
                log.warning("footprint daemon: SIGHUP: pricing kept as it was: %s", exc)
                target = replace(target, **{n: getattr(old, n) for n in PRICER_SETTINGS})
        if target.db != old.db:
            runtime.flush()  # what has ended goes to the database it was measured for
            runtime.writer.switch_database(
                target.db, then=lambda: setattr(runtime, "settings", target)
            )
        else:
            runtime.settings = target
        log.warning("footprint daemon: SIGHUP: applied %s", ", ".join(sorted(applied)))


# A client that hung up, reset or stopped sending: its business, one debug line at most.
_HANGUP_ERRORS = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError)


class _DaemonHTTPServer(ThreadingHTTPServer):
    """The HTTP server: quiet about clients that hang up; at the open-files limit it
    accepts one request at a time with the daemon's spare descriptor, and never spins."""

    owner: Daemon
    request_queue_size = 64  # listen backlog (socketserver's 5 drops connections under load)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._open: set[int] = set()  # the connections served now (their sockets' ids)
        self._open_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def get_request(self) -> tuple[socket.socket, Any]:
        try:
            return super().get_request()
        except OSError as exc:
            if exc.errno not in _ACCEPT_LIMIT_ERRNOS:
                raise
            owner = self.owner
            reason = "fd_limit" if exc.errno in (errno.EMFILE, errno.ENFILE) else "no_memory"
            owner._limit_hit_s[reason] = time.monotonic()
            if owner.release_spare():  # room for this one (/healthz says "degraded")
                with contextlib.suppress(OSError):
                    return super().get_request()
            owner.limited_log.warning(
                f"http-accept:{reason}", "footprint daemon: http: cannot accept: %s",
                exc.strerror,
            )  # fmt: skip
            time.sleep(ACCEPT_BACKOFF_MIN_S)  # no spare either: try again later, not at once
            raise

    def process_request(self, request: socket.socket, client_address: Any) -> None:
        """A thread per connection, at most ``--max-http-connections`` at once; one more
        gets ``503`` (``overloaded``) at once, read nothing from, and is closed."""
        with self._open_lock:
            full = len(self._open) >= self.owner.config.max_http_connections
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
        owner = self.owner
        owner.connections_refused["http"] += 1
        owner._limit_hit_s["connection_limit"] = time.monotonic()
        cap = owner.config.max_http_connections
        body = encode_reply(
            f"too many HTTP connections to the daemon (at most {cap}): this one is closed, "
            "try again later", "overloaded"
        )  # fmt: skip
        head = (
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
        )
        with contextlib.suppress(OSError):
            request.setblocking(False)  # a client that does not read never holds us
            request.send(head.encode() + body)
        super().shutdown_request(request)
        owner._restore_spare()
        owner.limited_log.warning(
            "refused:http", "footprint daemon: refused an HTTP connection: over "
            "--max-http-connections %d", cap,
        )  # fmt: skip

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(id(request))
        super().shutdown_request(request)
        self.owner._restore_spare()

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        who = client_address[0] if isinstance(client_address, tuple) else client_address
        if isinstance(exc, _HANGUP_ERRORS):
            self.owner.limited_log.log(
                logging.DEBUG, "http-hangup", "footprint daemon: http client %s went away: %r",
                who, exc,
            )  # fmt: skip
        else:  # a bug of the daemon's: its traceback, a few times per interval
            self.owner.limited_log.log(
                logging.ERROR, "http-error", "footprint daemon: http request of %s failed: %r",
                who, exc, exc_info=True,
            )  # fmt: skip


class _Handler(BaseHTTPRequestHandler):
    """``GET /metrics``, ``GET /healthz``, ``POST /v1/spans``."""

    owner: Daemon
    protocol_version = "HTTP/1.1"
    server_version = "footprint-daemon"
    timeout = 30  # a client that stops sending mid-request is dropped

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        if log.isEnabledFor(logging.DEBUG):  # a line per request: rate-limited all the same
            self.owner.limited_log.log(
                logging.DEBUG, "http", "footprint daemon: http %s", format % args
            )

    def _send(self, code: int, body: bytes, content_type: str = "application/json",
              headers: dict[str, str] | None = None) -> None:  # fmt: skip
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
        owner = self.owner
        claim = owner._claim
        token = claim.token if intake else owner.config.token
        if not token and not intake:
            return True
        given = self.headers.get("Authorization", "")
        scheme, _, value = given.partition(" ")
        matches = bool(token) and hmac.compare_digest(value.strip().encode(), token.encode())
        if scheme.lower() == "bearer" and matches:  # no token known: nothing matches
            return True
        owner.intake.refused("unauthorized")
        where = "" if owner.config.token else f" (its token is in {claim.token_path})"
        self._send(
            401, encode_reply(f"this daemon wants 'Authorization: Bearer TOKEN'{where}",
                              "unauthorized"),
            headers={"WWW-Authenticate": 'Bearer realm="footprint"'},
        )  # fmt: skip
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
        if path == "/healthz":
            self._json(200, self.owner.health())
        elif path == "/metrics":
            if self._authorized():
                from footprint.daemon.metrics import CONTENT_TYPE_LATEST, render

                self._send(200, render(self.owner.registry), CONTENT_TYPE_LATEST)
        else:
            self._error(404, f"no such page: {path}; try /metrics, /healthz, POST /v1/spans",
                        "not_found")  # fmt: skip

    do_HEAD = do_GET

    def do_POST(self) -> None:  # noqa: N802
        started_s = time.monotonic()
        path = self.path.split("?", 1)[0]
        if path != "/v1/spans":
            self.close_connection = True
            self._error(404, f"no such endpoint: POST {path}; spans go to POST /v1/spans",
                        "not_found")  # fmt: skip
            return
        length_text = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding") or length_text is None:
            self.close_connection = True
            self._error(411, "POST /v1/spans needs a Content-Length (no chunked bodies)",
                        "invalid")  # fmt: skip
            return
        try:
            length = int(length_text)
            if length < 0:
                raise ValueError
        except ValueError:
            self.close_connection = True
            self._error(400, f"bad Content-Length: {length_text!r}", "invalid")
            return
        if length > MAX_BATCH_BYTES:  # refused unread: the connection is closed after it
            self.close_connection = True
            self.owner.intake.refused("too_large")
            self._error(413, f"a body of {length:,} bytes; at most {MAX_BATCH_BYTES:,}",
                        "too_large")  # fmt: skip
            self._discard_some(length)
            return
        self.close_connection = True  # until the body is read: refused unread, then closed
        if not self._authorized(intake=True):
            return
        body = self.rfile.read(length)
        if len(body) < length:
            self.owner.intake.refused("truncated")
            return
        self.close_connection = False
        intake = self.owner.intake
        try:
            batch = decode_batch(body)
        except ProtocolError as exc:
            intake.refused(exc.reason)
            self._error(400, str(exc), exc.reason)
            return
        try:
            intake.apply(batch, None, transit_s=time.monotonic() - started_s)
        except ProtocolError as exc:
            self._error(400, str(exc), exc.reason)
            return
        except Exception as exc:  # a bug: say so, count it, stay up
            self.owner._internal_error(exc, None)
            self._error(500, f"internal error of the daemon: {exc!r}", "internal")
            return
        self._json(202, {"accepted": {"starts": len(batch.starts), "ends": len(batch.ends)}})


# -- the command -----------------------------------------------------------------------
def _show_warning(message: Any, category: Any, filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:  # fmt: skip
    log.warning("%s", message)


def raise_open_files_limit() -> tuple[int, int] | None:
    """Raise the soft RLIMIT_NOFILE to the hard one (systemd starts services at 1,024):
    (the limit now, the one before); None where there is no such limit."""
    try:
        import resource
    except ImportError:
        return None
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return None
    target = hard
    if hard == resource.RLIM_INFINITY:  # the kernel's cap: setting "infinity" fails
        try:
            target = int(Path("/proc/sys/fs/nr_open").read_text())
        except (OSError, ValueError):
            target = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            return target, soft
        except (OSError, ValueError):
            pass
    return soft, soft


def run_daemon(config: DaemonConfig, ready: Any = None) -> int:
    """Run until SIGTERM/SIGINT; the exit code (0; 1 if it could not start, 2 on bad
    input, the line saying why already on stderr). ``ready`` (default: stdout) gets one
    line when the daemon listens: its socket and HTTP address."""
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S",
    )  # fmt: skip
    warnings.showwarning = _show_warning
    files_limit = raise_open_files_limit()
    try:
        daemon = Daemon(config)
        daemon.start()
    except StartError as exc:
        message = str(exc)
        if not message.startswith("footprint daemon:"):
            message = f"footprint daemon: {message}"
        sys.stderr.write(message + "\n")
        return exc.exit_code
    if files_limit is not None:
        soft, was = files_limit
        log.info(
            "footprint daemon: open-files limit %d%s; at most %d client connections", soft,
            f" (raised from {was})" if soft != was else "",
            min(config.max_connections, daemon.fd_budget),
        )  # fmt: skip
    # The handlers run on the main thread, between two of its bytecodes, maybe inside a
    # lock it holds: they only set a flag and write a byte to a pipe (no lock, no Event).
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    requests: dict[str, bool] = {"stop": False, "reload": False}

    def on_stop(signum: int, frame: Any) -> None:
        requests["stop"] = True
        with contextlib.suppress(OSError):
            os.write(wake_w, b"s")

    def on_reload(signum: int, frame: Any) -> None:
        requests["reload"] = True
        with contextlib.suppress(OSError):
            os.write(wake_w, b"h")

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, on_reload)
    http = ""
    if daemon.http_address is not None:
        host, port = daemon.http_address
        http = f" and http://{f'[{host}]' if ':' in host else host}:{port}"
    out = ready or sys.stdout
    out.write(f"footprint daemon: listening on {daemon.socket_path}{http} (pid {os.getpid()})\n")
    out.flush()
    try:
        while not requests["stop"]:
            if select.select([wake_r], [], [], 1.0)[0]:
                with contextlib.suppress(OSError):
                    os.read(wake_r, 4096)
            if requests["reload"] and not requests["stop"]:
                requests["reload"] = False
                daemon.reload()
            daemon.sweep()
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second signal: keep finishing
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        stopping_s = time.monotonic()
        daemon.stop()
        stats = daemon.runtime.stats()
        log.warning(
            "footprint daemon: stopped in %.2f s; %d records written, %d spans were still "
            "running, %d not stored",
            time.monotonic() - stopping_s, stats["records_written"], stats["running_at_exit"],
            stats["unsaved_records"] + stats["unsaved_at_exit"],
        )  # fmt: skip
        for fd in (wake_r, wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
    return 0
