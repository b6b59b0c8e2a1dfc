"""A process's count of ended calls not yet stored, kept where its death cannot erase it.

A process can end without running its exit flush: ``kill -9``, the OOM killer, or a
server that drains, restores SIGTERM's default action and raises it again (uvicorn,
gunicorn's ``UvicornWorker``). Its last records are then gone; this journal makes sure
they are not gone *silently*. Each runtime writing to a SQLite database maps a small file
beside it, ``<database>.calls-<host>-<pid>-<n>``, shared (``MAP_SHARED``): the tracked
call's end adds one to ``ended`` in the mapping (a store to memory, well under a µs), the
writer thread adds to ``settled`` once records are written or their loss counted. The
mapping's pages belong to the kernel's page cache, so whatever kills the process, the
file holds both numbers as they were at its last instruction.

A clean exit removes the file. The next store that opens the database and can write it
claims the files of processes of this host that are gone (pid not running, or running
since another boot time) and moves ``ended - settled`` into ``losses`` as kind
``UNSAVED_KIND``. The file is created with ``O_EXCL | O_NOFOLLOW`` (never through a
planted symlink), mode 0600. A database on a server (PostgreSQL) has no folder beside
it: its journals go under the runtime directory, named after a hash of its URL without
the password (``server_base``); they are claimed by the next process of this host that
opens the same URL.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import logging
import mmap
import os
import re
import socket
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("footprint")

UNSAVED_KIND = "unsaved_process_died"
INFIX = ".calls-"
SERVER_FOLDER = "calls"  # under the runtime directory: journals of server databases
_MAGIC = b"FPCALLS1"
_LAYOUT = struct.Struct("<8sqqqq")  # magic, pid, process start (clock ticks), ended, settled
_COUNT = struct.Struct("<q")
_ENDED_AT = _LAYOUT.size - 2 * _COUNT.size  # where ``ended`` is, for the hot path
_SIZE = 4096
_counter = 0
_counter_lock = threading.Lock()


def server_base(url: str) -> str | None:
    """The name a server database's journals are made from: ``<runtime dir>/calls/
    <backend>-<sha256 of its URL, driver and password left out>`` (None for a URL that
    does not parse, or no private folder there)."""
    from sqlalchemy.engine import make_url

    from footprint._paths import runtime_dir
    from footprint.storage.sidefile import private_folder

    try:
        parsed = make_url(url)
        backend = parsed.get_backend_name()
        identity = parsed.set(drivername=backend, password=None).render_as_string(False)
    except Exception:
        return None
    digest = hashlib.sha256(identity.encode("utf-8", "surrogateescape")).hexdigest()[:32]
    folder = runtime_dir() / SERVER_FOLDER
    try:
        private_folder(folder)
    except OSError as exc:
        log.debug("footprint: no call journal for %s: %s", backend, exc)
        return None
    return str(folder / f"{re.sub(r'[^a-z0-9]', '_', backend)}-{digest}")


def _host_label(host: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", host)[:64] or "host"


def process_start_ticks(pid: int) -> int:
    """When ``pid`` started, in clock ticks since boot (Linux; 0 where unknown): a pid
    reused by another process has another start."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return int(stat[stat.rindex(b")") + 2 :].split()[19])
    except (OSError, ValueError, IndexError):
        return 0


def _alive(pid: int, start_ticks: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process with that pid: it exists
    current = process_start_ticks(pid)
    return not (start_ticks and current and current != start_ticks)


class CallJournal:
    """The counts of one runtime: ``ended`` by the calls, ``settled`` by the writer."""

    def __init__(self) -> None:
        self.ended_count = 0
        self.settled_count = 0
        self.path: Path | None = None
        self._map: mmap.mmap | None = None
        self._pid = os.getpid()
        self._start_ticks = 0
        self._lock = threading.Lock()

    @property
    def unsettled(self) -> int:
        return self.ended_count - self.settled_count

    def open(self, database_path: str, host: str) -> bool:
        """Create and map the file beside ``database_path``; False if it cannot be (the
        counts are then kept in memory only)."""
        global _counter
        with _counter_lock:
            _counter += 1
            serial = _counter
        path = Path(f"{database_path}{INFIX}{_host_label(host)}-{self._pid}-{serial}")
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0), 0o600)
        except OSError as exc:
            log.debug("footprint: no call journal at %s: %s", path, exc)
            return False
        try:
            os.ftruncate(fd, _SIZE)
            mapping = mmap.mmap(fd, _SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except (OSError, ValueError) as exc:
            log.debug("footprint: no call journal at %s: %s", path, exc)
            with contextlib.suppress(OSError):
                path.unlink()
            return False
        finally:
            os.close(fd)
        with self._lock:
            self._start_ticks = process_start_ticks(self._pid)
            self._map, self.path = mapping, path
            self._store()
        return True

    def _store(self) -> None:
        if self._map is not None:
            _LAYOUT.pack_into(
                self._map,
                0,
                _MAGIC,
                self._pid,
                self._start_ticks,
                self.ended_count,
                self.settled_count,
            )

    def ended(self) -> None:
        """One call ended (the hot path)."""
        with self._lock:
            self.ended_count += 1
            if self._map is not None:
                _COUNT.pack_into(self._map, _ENDED_AT, self.ended_count)

    def settled(self, count: int) -> None:
        """``count`` ended calls are stored, or their loss counted durably."""
        if count <= 0:
            return
        with self._lock:
            self.settled_count += count
            self._store()

    def close(self) -> bool:
        """Unmap; the file is removed when every ended call is settled (True), kept for
        the next store to count otherwise."""
        with self._lock:
            mapping, self._map = self._map, None
            done = self.unsettled <= 0
            if mapping is not None:
                with contextlib.suppress(Exception):
                    mapping.close()
            if done and self.path is not None:
                with contextlib.suppress(OSError):
                    self.path.unlink()
            return done

    def forget(self) -> None:
        """In a forked child: drop the parent's mapping without touching its file."""
        self._map = None
        self.path = None


class NoJournal:
    """Where nothing is journaled (a daemon's client: the daemon acknowledges)."""

    unsettled = 0
    path = None

    def ended(self) -> None:
        pass

    def settled(self, count: int) -> None:
        pass


def _read(path: Path) -> tuple[int, int, int, int] | None:
    """(pid, start ticks, ended, settled) from a journal file, or None if it is not one."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    try:
        data = os.read(fd, _LAYOUT.size)
    finally:
        os.close(fd)
    if len(data) < _LAYOUT.size:
        return None
    magic, pid, start_ticks, ended, settled = _LAYOUT.unpack_from(data)
    if magic != _MAGIC or pid <= 0 or ended < 0 or settled < 0:
        return None
    return pid, start_ticks, ended, settled


def move_into(database_path: str, insert: Callable[[list[dict[str, Any]]], None]) -> int:
    """Count the journals of this host's dead processes into ``losses`` with ``insert``
    and remove them; returns the calls counted. Journals of live processes, of other
    hosts, and files that are not journals are left alone."""
    base = Path(database_path)
    prefix = f"{base.name}{INFIX}{_host_label(socket.gethostname())}-"
    try:
        names = [n for n in os.listdir(base.parent or ".") if n.startswith(prefix)]
    except OSError:
        return 0
    rows: list[dict[str, Any]] = []
    claimed: list[Path] = []
    for name in names:
        if ".claimed-" in name:
            continue
        path = base.parent / name
        fields = _read(path)
        if fields is None:
            continue
        pid, start_ticks, ended, settled = fields
        if pid == os.getpid() or _alive(pid, start_ticks):
            continue
        taken = path.with_name(f"{name}.claimed-{os.getpid()}")
        try:
            os.replace(path, taken)  # one claimer per file
        except OSError:
            continue
        claimed.append(taken)
        try:
            mtime_s = taken.stat().st_mtime
        except OSError:
            mtime_s = 0.0
        if ended > settled:
            rows.append(
                {
                    "recorded_at": _dt.datetime.fromtimestamp(mtime_s, _dt.timezone.utc),
                    "kind": UNSAVED_KIND,
                    "count": ended - settled,
                    "host": socket.gethostname(),
                    "pid": pid,
                }
            )
    try:
        if rows:
            insert(rows)
    except Exception as exc:  # locked, read-only: the files go back for a later try
        log.debug("footprint: call journals stay for now: %s", exc)
        for taken in claimed:
            with contextlib.suppress(OSError):
                os.replace(taken, taken.with_name(taken.name.rsplit(".claimed-", 1)[0]))
        return 0
    for taken in claimed:
        with contextlib.suppress(OSError):
            taken.unlink()
    counted = sum(row["count"] for row in rows)
    if counted:
        log.warning(
            "footprint: %d calls ended in processes that died before storing them; "
            "counted in the losses table (kind %s)",
            counted,
            UNSAVED_KIND,
        )
    return counted


def pending_counts(database_path: str) -> int:
    """Calls counted by the journals of this host's dead processes, not moved yet (for
    read-only views such as ``footprint db info`` on a database it cannot write)."""
    base = Path(database_path)
    prefix = f"{base.name}{INFIX}{_host_label(socket.gethostname())}-"
    total = 0
    with contextlib.suppress(OSError):
        for name in os.listdir(base.parent or "."):
            if not name.startswith(prefix) or ".claimed-" in name:
                continue
            fields = _read(base.parent / name)
            if fields is not None and not _alive(fields[0], fields[1]):
                total += max(0, fields[2] - fields[3])
    return total
