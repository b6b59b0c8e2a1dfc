"""Loss counts kept beside a SQLite database until it can be written.

At exit the writer may still hold records it could not store (database locked, disk
full, file read-only, folder removed). Their count belongs in the ``losses`` table, which
cannot be written just then, so it is kept as one JSON line per kind (``save``)::

    {"recorded_at": "2026-05-01T10:00:00+00:00", "kind": "unsaved_at_exit", "count": 24000,
     "host": "gpu-7", "pid": 4242}

where the first of these can be written:

1. the side file ``<database>.losses``, beside the database;
2. on a full disk, the reserve ``<database>.losses-reserve``: a few KiB the store
   allocated when it opened the database (``ensure_reserve``). The lines (after those of
   the side file, if any) are written over its allocated bytes, which needs no free
   space, and it is renamed to the side file. The bytes left are NUL padding, which
   readers skip and later lines on a full disk are written into;
3. a fallback file under the runtime directory (``$XDG_RUNTIME_DIR/footprint``, else
   ``<tempdir>/footprint-<uid>``; then ``/dev/shm/footprint-<uid>``), in ``losses/``,
   named after the database's absolute path: ``<file name>-<sha256 of the path, 32 hex
   digits>.losses``. Its lines also carry ``"database": <absolute path>``. That folder is
   usually a tmpfs: it survives the database's folder being removed or its disk filling
   up, not a reboot.

The next store that opens the database and can write moves those lines into ``losses``
and deletes the files (``move_into``); ``pending`` reads them without moving them (``db
info`` counts them). A file is first renamed to a name of this process's own, so that two
processes opening the database at once move each line once. Appends hold an exclusive
``flock`` on the file and check it is still the one at its path (else the appender starts
a new one), and the mover takes that lock before reading: no line is appended to a file
already read. A failed append (full disk) takes back what it wrote: no empty or torn
file is left. Files are opened with ``O_NOFOLLOW`` (never through a symlink), created
with ``O_EXCL``: the side file and reserve mode 0644, fallback files 0600 in folders
0700 owned by the user.

PostgreSQL has no side file: there the count is only logged.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import hashlib
import json
import logging
import os
import re
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no lock
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("footprint")

SUFFIX = ".losses"
RESERVE_SUFFIX = ".losses-reserve"
RESERVE_BYTES = 8192  # ~60 lines
LOCK_WAIT_S = 2.0  # then the next place is tried (a forked child may hold the lock)
FALLBACK_FOLDER = "losses"
FULL_ERRNOS = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_PAD = b"\0"


def side_path(database_path: str) -> Path:
    """The side file of a SQLite database file."""
    return Path(database_path + SUFFIX)


def reserve_path(database_path: str) -> Path:
    """The space kept beside a SQLite database file for its loss counts."""
    return Path(database_path + RESERVE_SUFFIX)


def fallback_name(database_path: str) -> str:
    """The fallback file's name: the database's file name and a hash of its absolute path."""
    absolute = os.path.abspath(database_path)
    digest = hashlib.sha256(absolute.encode("utf-8", "surrogateescape")).hexdigest()[:32]
    label = re.sub(r"[^A-Za-z0-9._-]", "_", os.path.basename(absolute))[:64] or "db"
    return f"{label}-{digest}{SUFFIX}"


def _fallback_roots() -> list[Path]:
    from footprint._paths import runtime_dir

    uid = os.getuid() if hasattr(os, "getuid") else 0
    roots = [runtime_dir()]
    if os.path.isdir("/dev/shm"):
        roots.append(Path("/dev/shm") / f"footprint-{uid}")
    return list(dict.fromkeys(roots))


def fallback_paths(database_path: str) -> list[Path]:
    """Where the database's counts go when nothing beside it can be written, in order."""
    name = fallback_name(database_path)
    return [root / FALLBACK_FOLDER / name for root in _fallback_roots()]


def loss_files(database_path: str) -> list[Path]:
    """The side file and fallback files of the database that exist now."""
    candidates = [side_path(database_path), *fallback_paths(database_path)]
    return [path for path in candidates if os.path.lexists(path)]


def _lines(kinds: dict[str, int], host: str, pid: int, database: str | None = None) -> bytes:
    now = _dt.datetime.now(_dt.timezone.utc).isoformat()
    extra = {"database": database} if database is not None else {}
    return "".join(
        json.dumps(
            {"recorded_at": now, "kind": kind, "count": count, "host": host, "pid": pid, **extra}
        )
        + "\n"
        for kind, count in kinds.items()
        if count > 0
    ).encode("utf-8", "surrogateescape")


def append(path: Path, kinds: dict[str, int], host: str, pid: int) -> bool:
    """Append one line per kind with a positive count; False if the file cannot be
    written (read-only folder, full disk, a symlink): nothing is then left of the try."""
    data = _lines(kinds, host, pid)
    if not data:
        return True
    try:
        _append(path, data, 0o644)
    except OSError:
        return False
    return True


def save(database_path: str, kinds: dict[str, int], host: str, pid: int) -> Path | None:
    """Keep the counts where the next store that opens the database finds them: the side
    file, else (disk full) the reserve renamed to the side file, else a fallback file.
    Returns where they are, or None when none of these can be written."""
    data = _lines(kinds, host, pid)
    if not data:
        return None
    side = side_path(database_path)
    try:
        _append(side, data, 0o644)
        return side
    except OSError as exc:
        full = exc.errno in FULL_ERRNOS
        log.debug("footprint: cannot append to %s: %s", side, exc)
    if full:
        try:
            _into_reserve(side, reserve_path(database_path), data)
            return side
        except OSError as exc:
            log.debug("footprint: cannot use the reserve of %s: %s", database_path, exc)
    data = _lines(kinds, host, pid, database=os.path.abspath(database_path))
    for path in fallback_paths(database_path):
        try:
            private_folder(path.parent)
            _append(path, data, 0o600)
            return path
        except OSError as exc:
            log.debug("footprint: cannot append to %s: %s", path, exc)
    return None


# -- writing ------------------------------------------------------------------------------


def _lock(fd: int) -> None:
    """An exclusive ``flock``, waited for at most ``LOCK_WAIT_S`` (OSError after): a
    child forked while this process held it keeps it as long as it keeps the file open.
    Where the file system has no ``flock``, none is taken."""
    if fcntl is None:
        return
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise OSError(errno.EWOULDBLOCK, "the file stays locked") from None
            time.sleep(0.005)
        except OSError as exc:
            if exc.errno in (errno.ENOLCK, errno.EINVAL, errno.EOPNOTSUPP):
                return
            raise


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``fd`` is still the regular file at ``path`` (a mover may have renamed it)."""
    mine = os.fstat(fd)
    try:
        there = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return (mine.st_dev, mine.st_ino) == (there.st_dev, there.st_ino)


@contextlib.contextmanager
def _locked(path: Path, flags: int, mode: int = 0o644) -> Iterator[tuple[int, bool]]:
    """The file at ``path`` opened (never through a symlink) and locked, still the one at
    the path once locked; and whether this call created it (``O_CREAT`` in ``flags``)."""
    flags |= _NOFOLLOW | _CLOEXEC
    for _ in range(10):
        created = False
        if flags & os.O_CREAT:
            try:
                fd = os.open(path, flags | os.O_EXCL, mode)
                created = True
            except FileExistsError:
                fd = os.open(path, flags & ~os.O_CREAT)
        else:
            fd = os.open(path, flags)
        try:
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise OSError(errno.EINVAL, "not a regular file", str(path))
                _lock(fd)
            except OSError:
                if created:  # nothing is left of this try
                    with contextlib.suppress(OSError):
                        os.unlink(path)
                raise
            if _same_file(fd, path):
                yield fd, created
                return
        finally:
            os.close(fd)  # and the lock with it
    raise OSError(errno.EAGAIN, "the file kept being replaced", str(path))


def _write_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        done = os.pwrite(fd, view, offset)
        if done <= 0:
            raise OSError(errno.EIO, "short write")
        view, offset = view[done:], offset + done


def _padding_start(fd: int, size: int) -> int:
    """Where the NUL padding at the end of the file starts (``size`` when there is none)."""
    if size == 0 or os.pread(fd, 1, size - 1) != _PAD:
        return size
    window = min(size, 4 * RESERVE_BYTES)
    tail = os.pread(fd, window, size - window)
    kept = len(tail.rstrip(_PAD))
    if kept == 0 and window < size:
        return _padding_start_slow(fd, size)
    return size - window + kept


def _padding_start_slow(fd: int, size: int) -> int:
    data = os.pread(fd, size, 0)
    return len(data.rstrip(_PAD))


def _append(path: Path, data: bytes, mode: int) -> None:
    """Append ``data`` (whole lines) to the file at ``path``, creating it; written into
    its NUL padding when there is room there. On failure (``OSError``) the file is left
    as it was: removed if this call created it, else cut back to its length."""
    with _locked(path, os.O_RDWR | os.O_CREAT, mode) as (fd, created):
        size = os.fstat(fd).st_size
        start = _padding_start(fd, size)
        if start and os.pread(fd, 1, start - 1) != b"\n":
            data = b"\n" + data  # a line torn by a process that died while writing it
        room = size - start
        at = start if len(data) <= room else size
        try:
            _write_all(fd, data, at)
            os.fsync(fd)
        except OSError:
            with contextlib.suppress(OSError):
                if created:
                    os.unlink(path)
                elif at == size:
                    os.ftruncate(fd, size)  # shrinking needs no free space
                else:
                    _write_all(fd, _PAD * len(data), at)
            raise


def _into_reserve(side: Path, reserve: Path, data: bytes) -> None:
    """On a full disk: the side file's lines and ``data`` written over the reserve's
    allocated bytes (the rest NUL padding), the reserve renamed to the side file."""
    with _locked(reserve, os.O_RDWR) as (fd, _), contextlib.ExitStack() as held:
        size = os.fstat(fd).st_size
        try:  # the side file stays locked until the reserve replaces it
            side_fd, _ = held.enter_context(_locked(side, os.O_RDONLY))
            old = os.pread(side_fd, os.fstat(side_fd).st_size, 0).rstrip(_PAD)
        except FileNotFoundError:
            old = b""
        _fill_and_rename(fd, size, old, data, reserve, side)


def _fill_and_rename(fd: int, size: int, old: bytes, data: bytes, src: Path, dst: Path) -> None:
    if old and not old.endswith(b"\n"):
        old += b"\n"
    content = old + data
    if len(content) > size:
        raise OSError(errno.ENOSPC, "the reserve is too small", str(src))
    _write_all(fd, content + _PAD * (size - len(content)), 0)
    os.fsync(fd)
    os.replace(src, dst)


def ensure_reserve(database_path: str) -> bool:
    """Keep ``RESERVE_BYTES`` allocated beside the database (``<database>.losses-reserve``)
    for its loss counts on a full disk. Never raises; False when it cannot be made."""
    path = reserve_path(database_path)
    try:
        st = os.stat(path, follow_symlinks=False)
        if stat.S_ISREG(st.st_mode) and st.st_size >= RESERVE_BYTES:
            return True
    except FileNotFoundError:
        pass
    except OSError:
        return False
    temporary = path.with_name(f"{path.name}.{os.getpid()}-{os.urandom(4).hex()}")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, 0o644)
    except OSError:
        return False
    try:
        try:
            _allocate(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)
        return True
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        return False


def _allocate(fd: int) -> None:
    """``RESERVE_BYTES`` allocated in the file (zeros written where the file system
    cannot allocate without writing)."""
    try:
        os.posix_fallocate(fd, 0, RESERVE_BYTES)
        return
    except AttributeError:  # pragma: no cover - macOS, Windows
        pass
    except OSError as exc:
        if exc.errno in FULL_ERRNOS:
            raise
    _write_all(fd, _PAD * RESERVE_BYTES, 0)
    os.fsync(fd)


def private_folder(folder: Path) -> None:
    """Create ``folder`` (and its parent) mode 0700; OSError unless both are real
    folders owned by this user, not writable by others."""
    for each in (folder.parent, folder):
        with contextlib.suppress(FileExistsError):
            os.mkdir(each, 0o700)
        st = os.stat(each, follow_symlinks=False)
        uid = os.geteuid() if hasattr(os, "geteuid") else st.st_uid
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid or st.st_mode & 0o022:
            raise OSError(errno.EPERM, "not a private folder of this user", str(each))


# -- reading ------------------------------------------------------------------------------


def _parse(line: str) -> dict[str, Any] | None:
    """A ``losses`` row from one line, or None if the line is not one (torn, edited)."""
    try:
        raw = json.loads(line)
        recorded_at = _dt.datetime.fromisoformat(raw["recorded_at"])
        kind = str(raw["kind"])
        count = int(raw["count"])
        host = str(raw["host"])
        pid = int(raw["pid"])
        for text in (kind, host):
            text.encode("utf-8")  # a lone surrogate would be refused at every try
    except (ValueError, TypeError, KeyError):
        return None
    if recorded_at.tzinfo is None:
        recorded_at = recorded_at.replace(tzinfo=_dt.timezone.utc)
    if not 0 < count < 2**63:
        return None
    return {"recorded_at": recorded_at, "kind": kind, "count": count, "host": host, "pid": pid}


def _split(text: str) -> list[str]:
    """The lines of a file's text, NUL padding left out."""
    return [line for line in (raw.strip("\0") for raw in text.splitlines()) if line.strip()]


def _read_locked(path: Path) -> str:
    """The file's text, read under its lock (an appender finishes first)."""
    with _locked(path, os.O_RDONLY) as (fd, _):
        size = os.fstat(fd).st_size
        return os.pread(fd, size, 0).decode("utf-8", errors="replace")


def pending(database_path: str) -> tuple[dict[str, int], list[str]]:
    """The counts per kind waiting in the database's side and fallback files (not yet in
    ``losses``), and those files; read only, nothing moved."""
    totals: dict[str, int] = {}
    files = []
    for path in loss_files(database_path):
        try:
            text = _read_locked(path)
        except OSError:
            continue
        rows = [row for row in map(_parse, _split(text)) if row is not None]
        if rows:
            files.append(str(path))
        for row in rows:
            totals[row["kind"]] = totals.get(row["kind"], 0) + row["count"]
    return totals, files


def move_into(path: Path, insert: Callable[[list[dict[str, Any]]], None]) -> int:
    """Move the file's lines into ``losses`` with ``insert`` (one transaction);
    returns the rows moved. If ``insert`` fails the lines go back to the file."""
    claimed = path.with_name(f"{path.name}.moving-{os.getpid()}")
    try:
        if not stat.S_ISREG(os.stat(path, follow_symlinks=False).st_mode):
            return 0
        os.replace(path, claimed)
    except OSError:  # gone (another process took it) or not ours to move
        return 0
    try:
        mode = os.stat(claimed, follow_symlinks=False).st_mode & 0o777
        text = _read_locked(claimed)
    except OSError as exc:  # kept for a later try, under its name if it is free
        log.debug("footprint: cannot read %s now: %s", claimed, exc)
        if not os.path.lexists(path):
            with contextlib.suppress(OSError):
                os.replace(claimed, path)
        return 0
    lines = _split(text)
    rows = [row for row in map(_parse, lines) if row is not None]
    unreadable = len(lines) - len(rows)
    if unreadable:
        log.warning("footprint: %d unreadable lines in %s were skipped", unreadable, path)
    try:
        if rows:
            insert(rows)
    except Exception as exc:  # locked, read-only: keep them for a later try
        log.debug("footprint: loss counts stay in %s for now: %s", path, exc)
        _put_back(claimed, path, "".join(line + "\n" for line in lines), mode)
        return 0
    claimed.unlink(missing_ok=True)
    if rows:
        log.info("footprint: moved %d loss counts from %s into the losses table", len(rows), path)
    return len(rows)


def _put_back(claimed: Path, path: Path, text: str, mode: int) -> None:
    """Return the claimed lines to the file (appending: it may have a new line)."""
    try:
        if text:
            _append(path, text.encode("utf-8", "surrogateescape"), mode)
        claimed.unlink(missing_ok=True)
    except OSError:
        pass  # the claimed file stays, named after this process
