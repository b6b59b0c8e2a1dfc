"""Who else measures this GPU: in-process runtimes that would double count it.

Without the daemon, every process that tracks calls samples the whole GPU and splits
its energy among its own calls, so N processes sharing a GPU count its energy N times.
Two checks say so:

- **while measuring** (``claim_gpus``): each measuring process holds an advisory lock
  (``fcntl.flock``, non-blocking) on ``gpu-<uuid>.lock`` per GPU it samples, under
  ``$XDG_RUNTIME_DIR/footprint/`` (else ``<tempdir>/footprint-<uid>/``). A process that
  cannot take the lock warns once, naming the holder's pid (written in the file). The
  kernel drops a lock when its process dies, so a crash never leaves a stale claim;
- **in the reports** (``overlapping_measurements``): ``idle_energy`` rows of one device
  and minute written by more than one process of one host are the same energy measured
  twice.

Locks are per process: runtimes of one process (``configure()`` restarts) share them,
and a forked child closes the copies it inherited, so it neither keeps its parent's
claims alive nor mistakes them for its own.

A lock file is never opened through a symlink, nor written unless it is a regular file
of this user with no other link, in a folder of this user: anything else planted there
leaves that GPU unchecked (the check is advisory) and the planted file's target as it was.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NamedTuple

from footprint._paths import runtime_dir
from footprint.runtime import lifecycle

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no presence check
    fcntl = None  # type: ignore[assignment]

ROLES = ("process", "daemon")

_lock = threading.Lock()
_held: dict[str, list[int]] = {}  # uuid -> [fd, number of claims in this process]
_owner_pid = os.getpid()


def lock_path(uuid: str, directory: Path | None = None) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", uuid)[:200] or "unnamed"
    return (directory or runtime_dir()) / f"gpu-{safe}.lock"


class Holder(NamedTuple):
    """A GPU this process could not claim: who measures it (pid None: unknown)."""

    uuid: str
    pid: int | None
    role: str


class GpuClaims:
    """The GPUs one runtime claimed; ``release()`` when it stops measuring them."""

    def __init__(self, claimed: list[str], others: list[Holder]) -> None:
        self.claimed = claimed
        self.others = others
        self._released = False

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        _release(self.claimed)


def claim_gpus(
    uuids: Iterable[str],
    warn: Callable[[str, str], None] | None = None,
    *,
    role: str = "process",
    directory: Path | None = None,
) -> GpuClaims:
    """Claim each GPU this runtime measures in-process; warn once about those that
    another process measures too (``warn(key, message)``: a runtime's ``warn_once``).

    Never raises: a runtime directory that cannot be written only skips the check.
    """
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    claimed: list[str] = []
    others: list[Holder] = []
    uuids = list(dict.fromkeys(uuids))
    if fcntl is None or not uuids:
        return GpuClaims(claimed, others)
    try:
        folder = directory or runtime_dir()
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        _check_folder(folder)
    except OSError:
        return GpuClaims(claimed, others)
    with _lock:
        _forget_inherited()
        for uuid in uuids:
            held = _held.get(uuid)
            if held is not None:  # another runtime of this process: same measurement
                held[1] += 1
                claimed.append(uuid)
                if role == "daemon":  # the daemon's own claim names it, whoever came first
                    _write_owner(held[0], role)
                continue
            try:
                holder = _try_lock(uuid, lock_path(uuid, folder), role)
            except OSError:
                continue  # cannot tell: say nothing rather than something wrong
            if holder is None:
                claimed.append(uuid)
            else:
                others.append(holder)
    if others and warn is not None:
        warn("double-count", double_count_message(others, role))
    return GpuClaims(claimed, others)


def double_count_message(others: list[Holder], role: str = "process") -> str:
    first = others[0]
    who = "the footprint daemon" if first.role == "daemon" else "another process"
    pid = f"pid {first.pid}" if first.pid is not None else "pid unknown"
    gpus = first.uuid if len(others) == 1 else ", ".join(h.uuid for h in others)
    what = "GPU" if len(others) == 1 else "GPUs"
    if role == "daemon":
        return (
            f"footprint: {who} ({pid}) is measuring {what} {gpus} in-process, beside this "
            "daemon: both count its whole energy, so the totals double count. Let that "
            "process report to this daemon (its daemon setting: auto or this socket)."
        )
    advice = (
        "Let this process report to it (daemon=auto, or its socket path)."
        if first.role == "daemon"
        else "Run `footprint daemon` beside them and every process will report to it."
    )
    return (
        f"footprint: {who} ({pid}) is measuring {what} {gpus} in-process: both count its "
        f"whole energy, so the totals double count. {advice}"
    )


def _check_folder(folder: Path) -> None:
    """The lock folder must be a real folder of this user (not a symlink, nor another
    user's, e.g. a ``<tempdir>/footprint-<uid>`` made by someone else): OSError if not."""
    info = os.lstat(folder)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        raise OSError(errno.EPERM, "not a folder of this user", str(folder))


def _try_lock(uuid: str, path: Path, role: str) -> Holder | None:
    """Take ``path``'s lock (None) or say who holds it. Never through a symlink, nor into
    a file that is not this user's own lock file (a hard link to another file, a FIFO):
    OSError, and the GPU is left unchecked rather than that file written."""
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    fd = os.open(path, flags, 0o600)  # ELOOP for a symlink
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid() or info.st_nlink != 1:
        os.close(fd)
        raise OSError(errno.EPERM, "not this user's lock file", str(path))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        try:
            text = os.pread(fd, 64, 0).decode("ascii", "replace").split()
        except OSError:
            text = []
        os.close(fd)
        pid = int(text[0]) if text and text[0].isdigit() else None
        return Holder(uuid, pid, text[1] if len(text) > 1 and text[1] in ROLES else "process")
    _write_owner(fd, role)
    _held[uuid] = [fd, 1]
    return None


def _write_owner(fd: int, role: str) -> None:
    data = f"{os.getpid()} {role}\n".encode()
    try:  # written, then cut to size: a reader never finds the file empty
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
    except OSError:
        pass  # the lock is what counts; the pid is for the message


def _release(uuids: list[str]) -> None:
    with _lock:
        if os.getpid() != _owner_pid:
            return  # a forked child: its copies are closed already
        for uuid in uuids:
            held = _held.get(uuid)
            if held is None:
                continue
            held[1] -= 1
            if held[1] <= 0:
                del _held[uuid]
                with contextlib.suppress(OSError):
                    os.close(held[0])  # unlocks (the next holder writes its own pid)


def _forget_inherited() -> None:
    """In a forked child: close the parent's lock descriptors (the parent keeps its
    locks: they belong to its open files, which the parent still holds)."""
    global _owner_pid
    if os.getpid() == _owner_pid:
        return
    for fd, _ in _held.values():
        with contextlib.suppress(OSError):
            os.close(fd)
    _held.clear()
    _owner_pid = os.getpid()


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()
    _forget_inherited()


lifecycle.at_fork_child(_after_fork_in_child)
