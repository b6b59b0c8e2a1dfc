"""``footprint daemon``: the host's one sampler, resolver and store writer.

Worker processes send their span starts and ends (``footprint.daemon.protocol``) over a
Unix socket (or ``POST /v1/spans``); the daemon measures every GPU once and splits its
energy among the spans of all of them, so N processes sharing a GPU no longer count its
energy N times. It serves Prometheus metrics on ``GET /metrics`` and a health check on
``GET /healthz``.

- The Unix socket is 0600 (0660 and the group's with ``--group``), in a directory made
  0700 (0750). One daemon per socket: a lock file beside it (``PATH.lock``) is held for
  the daemon's life; a socket file left by a killed daemon is removed and reused.
- HTTP listens on loopback (``DEFAULT_HTTP``) unless told otherwise; any other address
  needs ``--token`` (then every endpoint but ``/healthz`` wants ``Authorization: Bearer
  TOKEN``).
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
import os
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
from dataclasses import dataclass, fields, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from footprint.daemon.protocol import (
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
MAX_CONNECTIONS = 4096
RECV_BYTES = 1 << 18
DRAIN_DEADLINE_S = 1.0  # at stop, reading what clients had sent
UNIX_PATH_MAX = 107  # bytes of sun_path, less the NUL
# Settings that change what is measured: a new value needs a restart of the daemon.
RESTART_FIELDS = ("sensor", "sampling_period_s", "cpu", "flush_interval_s", "max_pending_spans")
PRICING_FIELDS = (
    "region", "detect_cloud", "provider", "hourly_intensity_csv", "electricitymaps_token",
    "price_per_kwh", "currency", "usd_per_gpu_hour", "pue", "market_intensity_g_per_kwh",
    "embodied_kgco2e", "lifetime_years", "ownership",
)  # fmt: skip


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
    if config.token is not None and (not config.token or len(config.token) < 8):
        raise StartError("--token must be at least 8 characters", 2)
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
class _SocketClaim:
    """The socket path, owned: the lock beside it held, the socket bound and listening."""

    def __init__(self, path: Path, group: str | None) -> None:
        self.path = path
        self.lock_path = path.with_name(path.name + ".lock")
        self.group = group
        self.lock_fd: int | None = None
        self.listener: socket.socket | None = None

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
        self._remove_stale()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        mode = 0o660 if gid is not None else 0o600
        old_umask = os.umask(0o777 & ~mode)  # no moment with a wider mode (no threads yet)
        try:
            listener.bind(os.fspath(path))
        except OSError as exc:
            listener.close()
            raise StartError(f"cannot bind {path}: {exc.strerror or exc}") from None
        finally:
            os.umask(old_umask)
        try:
            if gid is not None:
                os.chown(path, -1, gid)
            os.chmod(path, mode)
        except OSError as exc:
            listener.close()
            raise StartError(f"cannot set the owner group or mode of {path}: {exc}") from None
        listener.listen(512)
        listener.setblocking(False)
        self.listener = listener
        return listener

    def _make_directory(self, gid: int | None) -> None:
        directory = self.path.parent
        if directory.is_dir():
            return
        mode = 0o750 if gid is not None else 0o700
        try:
            directory.mkdir(mode=mode, parents=True, exist_ok=True)
            os.chmod(directory, mode)
            if gid is not None:
                os.chown(directory, -1, gid)
        except OSError as exc:
            raise StartError(
                f"cannot create {directory} for the socket: {exc.strerror or exc} (give "
                "--socket PATH in a folder you can write, or set XDG_RUNTIME_DIR)"
            ) from None

    def _lock(self) -> None:
        """Hold ``PATH.lock`` for the daemon's life: one daemon per socket."""
        while True:
            try:
                fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError as exc:
                raise StartError(f"cannot open {self.lock_path}: {exc.strerror}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise StartError(
                    f"footprint daemon: another daemon is listening on {self.path}"
                ) from None
            try:  # the file locked must still be the one at the path (see release)
                if os.stat(self.lock_path).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.lock_fd = fd

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

    def release(self) -> None:
        """Close and remove the socket, then the lock (removed while still held, so a
        daemon starting now locks the new file, never this one)."""
        if self.listener is not None:
            with contextlib.suppress(OSError):
                self.listener.close()
            self.listener = None
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        if self.lock_fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.lock_path)
            os.close(self.lock_fd)
            self.lock_fd = None


def runtime_stats(runtime: Any) -> dict[str, int]:
    """``runtime.stats()`` from another thread than the writer's: it iterates counters
    the writer thread may be adding to, so a collision is retried."""
    for _ in range(5):
        try:
            return runtime.stats()
        except RuntimeError:  # dictionary changed size during iteration
            time.sleep(0.001)
    return runtime.stats()


def _group_id(name: str) -> int:
    import grp

    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        if name.isdigit():
            return int(name)
        raise StartError(f"--group: no group named {name!r}", 2) from None


def _peer_pid(sock: socket.socket) -> int | None:
    """The pid of the process at the other end, as the daemon's pid namespace sees it
    (None: not Linux, or a process of a namespace the daemon cannot see)."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return None
    try:
        pid, _uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, option, 12))
    except OSError:
        return None
    return pid or None


class _Peer:
    """A client connection's socket, its partial line and its intake state."""

    __slots__ = ("sock", "conn", "partial")

    def __init__(self, sock: socket.socket, conn: Any) -> None:
        self.sock = sock
        self.conn = conn
        self.partial = bytearray()


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
        self._claim = _SocketClaim(self.socket_path, config.group)
        self._selector: selectors.BaseSelector | None = None
        self._peers: dict[int, _Peer] = {}  # by socket file number
        self._peer_of_conn: dict[int, _Peer] = {}  # by intake connection id
        self._stopping = threading.Event()
        self._wake_r, self._wake_w = -1, -1
        self._loop_thread: threading.Thread | None = None
        self._http: ThreadingHTTPServer | None = None
        self._http_thread: threading.Thread | None = None
        self.stopped = False
        self.replies_dropped = 0
        self.refused_connections = 0
        self.internal_errors = 0
        self._drain_until_s = 0.0

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
        from footprint._runtime import Runtime
        from footprint.daemon.metrics import (
            DaemonCollector,
            PowerTracker,
            RecordTotals,
            registry,
        )
        from footprint.daemon.spans import SpanIntake

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
        self.registry = registry(collector)
        runtime.start()
        runtime.wait_until_measuring(2.0)

    def _hook_runtime(self, runtime: Any) -> None:
        """Observe the records the runtime writes and the samples it resolves (see the
        module doc of ``footprint.daemon.metrics``) without changing either."""
        totals, power = self.totals, self.power
        submit, drain = runtime.writer.submit, runtime.gpu_sampler.drain

        def observed_submit(records: list[dict], idle_rows: list[dict]) -> None:
            try:
                totals.observe(records, idle_rows)
            except Exception as exc:  # metrics never stop the records
                runtime.warn_once("metrics", f"footprint daemon: metrics not updated: {exc!r}")
            submit(records, idle_rows)

        def observed_drain() -> list:
            samples = drain()
            try:
                power.observe(samples)
            except Exception as exc:
                runtime.warn_once("power", f"footprint daemon: power not updated: {exc!r}")
            return samples

        runtime.writer.submit = observed_submit
        runtime.gpu_sampler.drain = observed_drain

    # -- the Unix socket -------------------------------------------------------------
    def _loop(self) -> None:
        selector = self._selector
        assert selector is not None
        while not self._stopping.is_set():
            try:
                events = selector.select(timeout=5.0)
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
            try:
                sock, _addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE):
                    log.warning("footprint daemon: cannot accept a client: %s", exc.strerror)
                return
            if len(self._peers) >= MAX_CONNECTIONS:
                self.refused_connections += 1
                with contextlib.suppress(OSError):
                    sock.send(encode_reply("too many connections", "overloaded"))
                sock.close()
                continue
            sock.setblocking(False)
            peer = _Peer(sock, self.intake.connect(_peer_pid(sock)))
            self._peers[sock.fileno()] = peer
            self._peer_of_conn[peer.conn.id] = peer
            assert self._selector is not None
            self._selector.register(sock, selectors.EVENT_READ, peer)

    def _read(self, peer: _Peer, final: bool = False) -> bool:
        """Read what the peer sent and apply its complete lines; False once it is closed.

        ``final``: read until nothing is left (at stop), then close it."""
        while True:
            if final and time.monotonic() > self._drain_until_s:
                self._close(peer)  # a client still sending at stop: the rest is its to count
                return False
            try:
                data = peer.sock.recv(RECV_BYTES)
            except (BlockingIOError, InterruptedError):
                if final:
                    self._close(peer)
                    return False
                return True
            except OSError:
                data = b""
            if not data:
                if peer.partial:  # it ended in the middle of a line
                    self._refuse(peer, "truncated", "the connection ended in the middle of a line")
                self._close(peer)
                return False
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
        try:
            self.intake.apply(batch, peer.conn)
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
        with contextlib.suppress(KeyError, ValueError):
            assert self._selector is not None
            self._selector.unregister(peer.sock)
        peer.sock.close()
        self.intake.disconnect(peer.conn)

    def _drain_peers(self) -> None:
        """At stop: apply what every client has already sent (for up to
        ``DRAIN_DEADLINE_S``), then close them all."""
        self._drain_until_s = time.monotonic() + DRAIN_DEADLINE_S
        for peer in list(self._peers.values()):
            try:
                self._read(peer, final=True)
            except Exception as exc:
                self._internal_error(exc, peer)

    # -- HTTP ------------------------------------------------------------------------
    def _make_http(self, host: str, port: int) -> ThreadingHTTPServer:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        server_class = type(
            "DaemonHTTPServer", (ThreadingHTTPServer,),
            {"address_family": family, "daemon_threads": True, "allow_reuse_address": True},
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
        return {
            "status": "ok" if worst is None or worst <= stale_s else "stale_samples",
            "pid": os.getpid(),
            "uptime_s": round(now_s - self.started_s, 3),
            "socket": str(self.socket_path),
            "connections": len(self.intake.connections),
            "clients": self.intake.client_count(),
            "spans_in_flight": len(runtime.inflight),
            "queue_depth": len(runtime.ended) + runtime.writer.buffered,
            "last_sample_age_s": None if worst is None else round(worst, 3),
            "gpus": len(latest),
            "spans_received": dict(self.intake.received),
            "records_written": runtime.writer.written,
            "protocol_errors": sum(self.intake.protocol_errors.values()),
            "stats": runtime_stats(runtime),
        }

    # -- control ---------------------------------------------------------------------
    def sweep(self) -> None:
        """Housekeeping, about once a second: clients that went away."""
        if self.intake is not None:
            self.intake.sweep()

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
        if self._loop_thread is not None:
            self._loop_thread.join(DRAIN_DEADLINE_S + 0.5)
        self._claim.release()  # new clients now find no daemon (and measure themselves)
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
        if any(name in PRICING_FIELDS for name in applied):
            from footprint.pricing.pricer import Pricer

            gpu_model = runtime.gpu_devices[0].name if runtime.gpu_devices else None
            try:
                runtime.pricer = Pricer(target, gpu_model)
            except Exception as exc:
                log.warning("footprint daemon: SIGHUP: pricing kept as it was: %s", exc)
                target = replace(target, **{n: getattr(old, n) for n in PRICING_FIELDS})
        if target.db != old.db:
            runtime.flush()  # what has ended goes to the database it was measured for
            writer = runtime.writer
            with writer._lock:  # between two writes of the writer thread
                runtime.settings = target
                writer.db = target.db
                writer.close()  # the next write opens target.db
        else:
            runtime.settings = target
        log.warning("footprint daemon: SIGHUP: applied %s", ", ".join(sorted(applied)))


class _Handler(BaseHTTPRequestHandler):
    """``GET /metrics``, ``GET /healthz``, ``POST /v1/spans``."""

    owner: Daemon
    protocol_version = "HTTP/1.1"
    server_version = "footprint-daemon"
    timeout = 30  # a client that stops sending mid-request is dropped

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug("footprint daemon: http %s", format % args)

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

    def _authorized(self) -> bool:
        token = self.owner.config.token
        if not token:
            return True
        given = self.headers.get("Authorization", "")
        scheme, _, value = given.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(),
                                                              token.encode()):  # fmt: skip
            return True
        self.owner.intake.refused("unauthorized")
        self._send(
            401, encode_reply("this daemon wants 'Authorization: Bearer TOKEN'", "unauthorized"),
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
        if not self._authorized():
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


def run_daemon(config: DaemonConfig, ready: Any = None) -> int:
    """Run until SIGTERM/SIGINT; the exit code (0; 1 if it could not start, 2 on bad
    input, the line saying why already on stderr). ``ready`` (default: stdout) gets one
    line when the daemon listens: its socket and HTTP address."""
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S",
    )  # fmt: skip
    warnings.showwarning = _show_warning
    try:
        daemon = Daemon(config)
        daemon.start()
    except StartError as exc:
        message = str(exc)
        if not message.startswith("footprint daemon:"):
            message = f"footprint daemon: {message}"
        sys.stderr.write(message + "\n")
        return exc.exit_code
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
        stats = runtime_stats(daemon.runtime)
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
