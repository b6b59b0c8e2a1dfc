"""What ``footprint daemon`` was asked for, checked before anything starts: its options, the
HTTP address, the bearer token, and the token file (``PATH.token``) local clients read."""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import os
import secrets
import socket
import stat
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

log = logging.getLogger("footprint")

DEFAULT_HTTP = "127.0.0.1:9464"
EXIT_WRITE_DEADLINE_S = 3.5  # of the stop's deadline, the runtime's final resolve and write
MAX_CONNECTIONS = 4096  # client connections on the Unix socket (--max-connections)
MAX_HTTP_CONNECTIONS = 64  # HTTP connections at once, a thread each (--max-http-connections)
MAX_CONNECTIONS_PER_PEER = 256  # of one process (pid; uid where the pid is not visible)
MAX_TOKEN_CHARS = 4096


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
    # Told each batch of records (and idle rows) the daemon writes, as the metrics are:
    # ``--otel-metrics`` adds the OpenTelemetry publisher's ``observe`` here.
    record_observers: tuple[Callable[[list[dict], list[dict]], None], ...] = ()

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
    if config.token is not None and not valid_token(config.token):
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
    from footprint.config import check_files, resolve_settings

    try:
        settings = resolve_settings(config.overrides())
        check_files(settings)
    except ValueError as exc:
        raise StartError(str(exc), 2) from None
    deadline_s = min(settings.exit_deadline_s, EXIT_WRITE_DEADLINE_S)
    return replace(settings, daemon="off", exit_deadline_s=deadline_s)


# -- the daemon's own files --------------------------------------------------------------
def valid_token(text: str) -> bool:
    """A bearer token the daemon takes: 8 to 4,096 printable ASCII characters, no spaces
    (what an ``Authorization`` header carries as is)."""
    return 8 <= len(text) <= MAX_TOKEN_CHARS and all(" " < c < "\x7f" for c in text)


def symlink_refusal(path: Path) -> str:
    """The one line refusing a symbolic link where the daemon writes a file of its own."""
    try:
        target = repr(os.readlink(path))
    except OSError:
        target = "?"
    return (
        f"{path} is a symbolic link (to {target}), not a file of the daemon's: refusing to "
        "follow it (remove it; the daemon writes its files only in a folder of its own)"
    )


def not_own_file(info: os.stat_result) -> str | None:
    """Why a file opened (without following links) is not one the daemon may write."""
    if not stat.S_ISREG(info.st_mode):
        return "is not a regular file"
    if info.st_uid != os.geteuid():
        return f"belongs to uid {info.st_uid}"
    if info.st_nlink != 1:
        return f"has {info.st_nlink} hard links"
    return None


class TokenFile:
    """``PATH.token`` beside the socket, 0600: the HTTP intake's bearer token, for local
    clients. Never opened through a symlink (StartError); replaced when it is not one to
    keep (another mode, owner or link, no valid token)."""

    def __init__(self, path: Path, given: str | None = None) -> None:
        self.path = path
        self.given = given  # --token

    def claim(self) -> str:
        """The HTTP intake's token: the one given (--token), else the one in the file
        when that is the daemon user's own 0600 file, else a new one
        (``secrets.token_urlsafe(32)``). The file then holds it, for local clients."""
        current = self._read()
        token = self.given or current or secrets.token_urlsafe(32)
        if token != current:
            self._write(token)
        log.info("footprint daemon: POST /v1/spans wants the bearer token in %s", self.path)
        return token

    def _read(self) -> str | None:
        """The token in the file; None when there is none, or when the file is not one to
        keep: it is replaced. A symlink or a non-file there: StartError."""
        path = self.path
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP or os.path.islink(path):
                raise StartError(symlink_refusal(path)) from None
            raise StartError(f"cannot read {path}: {exc.strerror}") from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise StartError(
                    f"{path} is not a regular file: not this daemon's token file (remove it)"
                )
            problem = not_own_file(info)
            if problem is None and stat.S_IMODE(info.st_mode) != 0o600:
                problem = f"has mode {stat.S_IMODE(info.st_mode):04o}, not 0600"
            data = os.read(fd, MAX_TOKEN_CHARS + 2)
        finally:
            os.close(fd)
        token = data.decode("ascii", "replace").strip()
        if problem is None and not valid_token(token):
            problem = "holds no valid token"
        if problem is not None:
            log.warning("footprint daemon: %s %s: a new token is written there", path, problem)
            return None
        return token

    def _write(self, token: str) -> None:
        """The file, 0600, holding ``token``: written under a new name (O_EXCL,
        O_NOFOLLOW), then renamed over the path (which replaces a name, never follows
        one), so that a reader never finds it half written."""
        path = self.path
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
