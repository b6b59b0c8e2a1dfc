"""``footprint daemon`` as a command: logging, the open-files limit, the start line, and
the main thread's wait for SIGTERM/SIGINT (stop) and SIGHUP (reload)."""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from footprint.daemon.config import DaemonConfig, StartError
from footprint.daemon.server import Daemon

log = logging.getLogger("footprint")


def _show_warning(
    message: Any,
    category: Any,
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
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


class _Signals:
    """What SIGTERM/SIGINT (stop) and SIGHUP (reload) asked for. The handlers run on the
    main thread, between two of its bytecodes, maybe inside a lock it holds: they only
    set a flag and write a byte to a pipe (no lock, no Event)."""

    def __init__(self) -> None:
        self.stop = False
        self.reload = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        if hasattr(signal, "SIGHUP"):
            signal.signal(signal.SIGHUP, self._on_reload)

    def _on_stop(self, signum: int, frame: Any) -> None:
        self.stop = True
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"s")

    def _on_reload(self, signum: int, frame: Any) -> None:
        self.reload = True
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"h")

    def wait(self, timeout_s: float) -> None:
        """Until a signal comes, or ``timeout_s``."""
        if select.select([self._wake_r], [], [], timeout_s)[0]:
            with contextlib.suppress(OSError):
                os.read(self._wake_r, 4096)

    def close(self) -> None:
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)


def _start(config: DaemonConfig) -> Daemon | StartError:
    """The daemon, started; or why it could not start (its line written to stderr)."""
    try:
        daemon = Daemon(config)
        daemon.start()
    except StartError as exc:
        message = str(exc)
        if not message.startswith("footprint daemon:"):
            message = f"footprint daemon: {message}"
        sys.stderr.write(message + "\n")
        return exc
    return daemon


def _listening_line(daemon: Daemon) -> str:
    http = ""
    if daemon.http_address is not None:
        host, port = daemon.http_address
        http = f" and http://{f'[{host}]' if ':' in host else host}:{port}"
    return f"footprint daemon: listening on {daemon.socket_path}{http} (pid {os.getpid()})\n"


def _stop(daemon: Daemon) -> None:
    """Stop the daemon, then say in one line what its stop left."""
    stopping_s = time.monotonic()
    daemon.stop()
    stats = daemon.runtime.stats()
    log.warning(
        "footprint daemon: stopped in %.2f s; %d records written, %d spans were still "
        "running, %d not stored",
        time.monotonic() - stopping_s,
        stats["records_written"],
        stats["running_at_exit"],
        stats["unsaved_records"] + stats["unsaved_at_exit"],
    )


def run_daemon(config: DaemonConfig, ready: Any = None) -> int:
    """Run until SIGTERM/SIGINT; the exit code (0; 1 if it could not start, 2 on bad
    input, the line saying why already on stderr). ``ready`` (default: stdout) gets one
    line when the daemon listens: its socket and HTTP address."""
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(asctime)s %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S",
    )
    warnings.showwarning = _show_warning
    files_limit = raise_open_files_limit()
    daemon = _start(config)
    if isinstance(daemon, StartError):
        return daemon.exit_code
    if files_limit is not None:
        soft, was = files_limit
        log.info(
            "footprint daemon: open-files limit %d%s; at most %d client connections",
            soft,
            f" (raised from {was})" if soft != was else "",
            daemon.limits.cap(),
        )
    signals = _Signals()
    signals.install()
    out = ready or sys.stdout
    out.write(_listening_line(daemon))
    out.flush()
    try:
        while not signals.stop:
            signals.wait(1.0)
            if signals.reload and not signals.stop:
                signals.reload = False
                daemon.reload()
            daemon.sweep()
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second signal: keep finishing
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        _stop(daemon)
        signals.close()
    return 0
