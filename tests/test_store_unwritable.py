"""A database that stays unwritable: nothing is lost without a durable count.

A folder removed while the process runs (``rm -rf``), a disk that stays full, a file that
stays read-only: what the writer cannot store is counted in the side file beside the
database (``<database>.losses``), else through the space reserved beside it
(``<database>.losses-reserve``), else in a fallback file under the runtime directory
named after the database's absolute path. The next store that opens the database moves
those counts into ``losses``; ``database_info`` (``footprint db info``) counts them
before that. A disk found full is said in one log line, not one per batch.

Disk full is injected (no mount needed): the store's inserts raise SQLite's
``database or disk is full`` and ``os.write`` to a file in the database's folder runs out
of space after a few bytes, as on a real full disk (``_FullDisk``).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from test_store_faults import _losses  # the losses table only, not the files

from footprint.bench.ingest import make_records
from footprint.storage import sidefile
from footprint.storage.engine import open_engine
from footprint.storage.info import database_info
from footprint.storage.store import Store
from footprint.storage.writer import WriteFailed, Writer

REPO = Path(__file__).resolve().parent.parent
LINUX = sys.platform.startswith("linux")


def _count_rows(db: str) -> int:
    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT COUNT(*) FROM queries").fetchone()[0]
    finally:
        con.close()


def _fallback_files() -> list[Path]:
    """Every fallback file of this test (its runtime directory is its own)."""
    runtime = Path(os.environ["XDG_RUNTIME_DIR"])
    return sorted(runtime.rglob("*.losses"))


class _FullDisk:
    """A full disk under ``folder``: a write (``os.write``, ``os.pwrite``) that extends a
    file there gets ``free`` bytes in all, then ENOSPC; writing over bytes the file
    already has (the preallocated reserve) succeeds, as it does on a real disk, and so do
    writes to other files. ``os.posix_fallocate`` there fails."""

    def __init__(self, folder: Path, free: int = 7) -> None:
        self.folder = str(folder) + os.sep
        self.free = free
        self.refused = 0
        self.real_write, self.real_pwrite = os.write, os.pwrite
        self.real_fallocate = os.posix_fallocate

    def install(self, monkeypatch) -> None:
        monkeypatch.setattr(os, "write", self.write)
        monkeypatch.setattr(os, "pwrite", self.pwrite)
        monkeypatch.setattr(os, "posix_fallocate", self.fallocate)

    def _here(self, fd: int) -> bool:
        try:
            return os.readlink(f"/proc/self/fd/{fd}").startswith(self.folder)
        except OSError:
            return False

    def _room(self, fd: int, offset: int, size: int) -> int:
        """How many of ``size`` bytes at ``offset`` fit; raises ENOSPC when none."""
        end = os.fstat(fd).st_size
        fits = max(0, end - offset) + self.free
        if fits <= 0:
            self.refused += 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        n = min(size, fits)
        self.free -= max(0, offset + n - end)
        return n

    def write(self, fd: int, data: bytes) -> int:
        if not self._here(fd):
            return self.real_write(fd, data)
        offset = os.lseek(fd, 0, os.SEEK_CUR)
        return self.real_write(fd, bytes(data[: self._room(fd, offset, len(data))]))

    def pwrite(self, fd: int, data: bytes, offset: int) -> int:
        if not self._here(fd):
            return self.real_pwrite(fd, data, offset)
        return self.real_pwrite(fd, bytes(data[: self._room(fd, offset, len(data))]), offset)

    def fallocate(self, fd: int, offset: int, size: int) -> None:
        if self._here(fd):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.real_fallocate(fd, offset, size)


class _FullStore:
    """A store whose inserts fail as SQLite's do on a full disk."""

    def __init__(self, real: Store) -> None:
        self.real = real
        self.url = real.url
        self.path = real.path
        self.full = True

    def insert(self, records, idle_rows=(), losses=()):
        if self.full:
            raise sqlite3.OperationalError("database or disk is full")
        self.real.insert(records, idle_rows, losses)

    def close(self):
        self.real.close()

    def __getattr__(self, name):  # has_side_losses, move_side_losses…: the real store's
        return getattr(self.real, name)


def _disk_full_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "disk full" in r.getMessage()]


# -- the side file itself -----------------------------------------------------------------


@pytest.mark.skipif(not LINUX, reason="/proc/self/fd names the file written")
def test_a_failed_append_leaves_no_empty_or_torn_side_file(tmp_path, monkeypatch):
    db = str(tmp_path / "fp.db")
    side = sidefile.side_path(db)
    full = _FullDisk(tmp_path)
    with monkeypatch.context() as m:
        full.install(m)
        assert not sidefile.append(side, {"unsaved_at_exit": 5}, "h", 1)
    assert full.refused and not side.exists()  # created, the write failed: not left empty

    assert sidefile.append(side, {"unsaved_at_exit": 3}, "h", 1)
    before = side.read_bytes()
    full.free = 9
    with monkeypatch.context() as m:
        full.install(m)
        assert not sidefile.append(side, {"write_failed": 7}, "h", 1)
    assert side.read_bytes() == before  # the 9 bytes that fitted are taken back


def test_a_torn_last_line_does_not_swallow_the_next_one(tmp_path):
    db = str(tmp_path / "fp.db")
    side = sidefile.side_path(db)
    side.write_text('{"recorded_at": "2026-')  # a process died mid-line
    assert sidefile.append(side, {"unsaved_at_exit": 4}, "h", 1)
    Store(db).close()
    assert _losses(db) == {"unsaved_at_exit": 4}


def test_the_side_file_is_never_written_through_a_symlink(tmp_path):
    db = str(tmp_path / "fp.db")
    Store(db).close()
    victim = tmp_path / "victim.txt"
    victim.write_text("keep\n")
    os.symlink(victim, sidefile.side_path(db))
    writer = Writer(lambda: Store(db), "h", 1, db=db)
    writer.count_loss("span_queue_full", 2)
    writer.abandon()
    assert victim.read_text() == "keep\n"
    assert writer.losses_saved_to in [str(p) for p in _fallback_files()]
    os.remove(sidefile.side_path(db))
    Store(db).close()
    assert _losses(db) == {"span_queue_full": 2}


@pytest.mark.skipif(not LINUX, reason="flock")
def test_a_side_file_locked_elsewhere_never_hangs_nor_loses_counts(tmp_path, monkeypatch):
    """A child forked while the lock was held keeps it: appends go to the fallback after
    a bounded wait, and a mover that cannot read the file keeps it for later."""
    import fcntl

    monkeypatch.setattr(sidefile, "LOCK_WAIT_S", 0.05)
    db = str(tmp_path / "fp.db")
    Store(db).close()
    side = sidefile.side_path(db)
    assert sidefile.append(side, {"unsaved_at_exit": 4}, "h", 1)
    holder = os.open(side, os.O_RDONLY)
    fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        [fallback] = [sidefile.save(db, {"write_failed": 2}, "h", 1)]
        assert fallback != side and fallback in _fallback_files()
        Store(db).close()  # moves the fallback's line; the side file's waits
        assert side.exists() and _losses(db) == {"write_failed": 2}
    finally:
        os.close(holder)
    Store(db).close()
    assert not side.exists() and _losses(db) == {"write_failed": 2, "unsaved_at_exit": 4}


# -- a database folder removed while the process runs -------------------------------------


def test_folder_removed_counts_go_to_the_fallback_and_db_info_shows_them(tmp_path, caplog):
    folder = tmp_path / "data"
    folder.mkdir()
    db = str(folder / "fp.db")
    writer = Writer(lambda: Store(db), "h", 7, db=db)
    writer.submit(make_records(10), [])
    assert writer.flush() == 10
    shutil.rmtree(folder)
    writer.submit(make_records(25, seed=1), [])
    with pytest.raises(WriteFailed, match="does not exist"):
        writer.flush()
    with caplog.at_level(logging.WARNING, logger="footprint"):
        assert writer.abandon() == 25
    writer.close()
    [fallback] = _fallback_files()
    assert writer.losses_saved_to == str(fallback)
    assert any(str(fallback) in r.getMessage() for r in caplog.records)
    lines = [json.loads(line) for line in fallback.read_text().splitlines()]
    assert {li["kind"]: li["count"] for li in lines} == {
        "unsaved_at_exit": 25,
        "database_replaced": 1,
    }
    assert {li["database"] for li in lines} == {db}
    assert fallback.stat().st_mode & 0o777 == 0o600

    folder.mkdir()  # the folder back, a database created there by a reader first
    open_engine(db).dispose()
    info = database_info(db)  # counted before any writer moved them
    assert info["losses"] == {"unsaved_at_exit": 25, "database_replaced": 1}
    assert info["lost_total"] == 26 and info["lost_pending"] == 26
    assert _losses(db) == {} and fallback.exists()

    Store(db).close()  # the next writer moves them into the table
    assert not fallback.exists()
    assert _losses(db) == {"unsaved_at_exit": 25, "database_replaced": 1}
    info = database_info(db)
    assert info["lost_total"] == 26 and info["lost_pending"] == 0  # not counted twice


E2E_FOLDER_REMOVED = textwrap.dedent(
    """
    import os, shutil, sys
    import footprint

    db, calls, cut = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    footprint.configure(db=db, sensor="none", cpu=False, region="FRA", flush_interval_s=0.2)
    for i in range(calls):
        if i == cut:
            footprint.flush()
            shutil.rmtree(os.path.dirname(db))  # rm -rf of the database's folder
        with footprint.query(model="m"):
            pass
    runtime = footprint.tracking.get_runtime()
    footprint.shutdown()
    print(runtime.stats()["records_written"])
    """
)


def test_folder_removed_mid_run_every_call_is_stored_or_counted_end_to_end(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    db = str(folder / "fp.db")
    calls = 4000
    done = subprocess.run(
        [sys.executable, "-c", E2E_FOLDER_REMOVED, db, str(calls), "1000"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    written = int(done.stdout.split()[-1])
    assert written == 1000
    [fallback] = _fallback_files()
    assert str(fallback) in done.stderr

    folder.mkdir()
    Store(db).close()  # the next process to open the database
    info = database_info(db)
    lost_calls = info["losses"].get("unsaved_at_exit", 0) + info["losses"].get("write_failed", 0)
    assert lost_calls == calls - written  # each call stored (in the removed file) or counted
    assert info["losses"]["database_replaced"] == 1
    assert not fallback.exists()


# -- a disk that stays full -----------------------------------------------------------------


@pytest.mark.skipif(not LINUX, reason="/proc/self/fd names the file written")
@pytest.mark.parametrize("reserve", [False, True])
def test_disk_full_counts_are_kept_and_said_once(tmp_path, monkeypatch, caplog, reserve):
    folder = tmp_path / "data"
    folder.mkdir()
    db = str(folder / "fp.db")
    store = _FullStore(Store(db))
    reserve_file = Path(db + ".losses-reserve")
    assert reserve_file.exists()  # the store keeps space for the counts beside the database
    if not reserve:
        reserve_file.unlink()
    writer = Writer(lambda: store, "h", 7, max_buffered=100, db=db)
    full = _FullDisk(folder)
    with monkeypatch.context() as m, caplog.at_level(logging.DEBUG, logger="footprint"):
        full.install(m)
        for batch in range(6):  # 6 flushes, each failing: 300 records, 200 dropped
            writer.submit(make_records(50, seed=batch), [])
            with pytest.raises(WriteFailed, match="disk is full"):
                writer.flush()
        assert writer.abandon() == 100
        writer.close()
        [line] = _disk_full_lines(caplog)  # one line, no traceback, not one per batch
        assert line.startswith(f"footprint: disk full at {db}")
        assert not any(r.exc_info for r in caplog.records)
        side = sidefile.side_path(db)
        assert full.refused
        if reserve:  # written into space allocated beforehand: beside the database
            assert writer.losses_saved_to == str(side)
            assert not reserve_file.exists() and _fallback_files() == []
            lines = side.read_bytes().rstrip(b"\0").decode().splitlines()
        else:  # no room beside the database: the fallback under the runtime directory
            assert not side.exists()  # not left empty
            [fallback] = _fallback_files()
            assert writer.losses_saved_to == str(fallback)
            lines = fallback.read_text().splitlines()
        counted: dict[str, int] = {}
        for line in lines:
            row = json.loads(line)
            counted[row["kind"]] = counted.get(row["kind"], 0) + row["count"]
        assert counted == {"write_failed": 200, "unsaved_at_exit": 100}

        info = database_info(db)  # the disk still full: db info counts them all the same
        assert info["losses"] == counted and info["lost_total"] == 300

    Store(db).close()  # room again: the next open moves them into losses, reserves again
    assert _losses(db) == counted
    assert database_info(db)["lost_total"] == 300 == 6 * 50 - _count_rows(db)
    assert _fallback_files() == [] and not side.exists() and reserve_file.exists()


@pytest.mark.skipif(not LINUX, reason="/proc/self/fd names the file written")
def test_disk_full_while_running_counts_drops_before_exit(tmp_path, monkeypatch):
    """Records dropped while the disk stays full are counted durably at once, not only
    at exit: a process killed later still leaves their count."""
    folder = tmp_path / "data"
    folder.mkdir()
    db = str(folder / "fp.db")
    store = _FullStore(Store(db))
    Path(db + ".losses-reserve").unlink()
    writer = Writer(lambda: store, "h", 7, max_buffered=100, db=db)
    with monkeypatch.context() as m:
        _FullDisk(folder).install(m)
        writer.submit(make_records(150), [])  # 50 dropped at once
        with pytest.raises(WriteFailed):
            writer.flush()
        [fallback] = _fallback_files()  # no exit: the count is there already
        assert [json.loads(li)["count"] for li in fallback.read_text().splitlines()] == [50]
        assert database_info(db)["losses"] == {"write_failed": 50}
    store.full = False
    assert writer.flush() == 100  # the disk has room again: the rest is written
    writer.close()
    assert _losses(db) == {"write_failed": 50} and _fallback_files() == []


E2E_DISK_FULL = textwrap.dedent(
    """
    import errno, os, sqlite3, sys
    import footprint
    from footprint.storage import store as store_module

    db, calls, cut = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    folder = os.path.dirname(db) + os.sep
    full = False
    real_insert, real_write, real_pwrite = store_module.Store._insert_sqlite, os.write, os.pwrite

    def insert(self, *rows):
        if full:
            raise sqlite3.OperationalError("database or disk is full")
        return real_insert(self, *rows)

    def here(fd):
        try:
            return os.readlink(f"/proc/self/fd/{fd}").startswith(folder)
        except OSError:
            return False

    def refuse(fd, offset, size):  # a full disk: writes past a file's end fail
        if full and here(fd) and offset + size > os.fstat(fd).st_size:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def write(fd, data):
        refuse(fd, os.lseek(fd, 0, os.SEEK_CUR), len(data))
        return real_write(fd, data)

    def pwrite(fd, data, offset):
        refuse(fd, offset, len(data))
        return real_pwrite(fd, data, offset)

    store_module.Store._insert_sqlite = insert
    os.write, os.pwrite = write, pwrite
    footprint.configure(db=db, sensor="none", cpu=False, region="FRA", flush_interval_s=0.2)
    for i in range(calls):
        if i == cut:
            footprint.flush()
            os.remove(db + ".losses-reserve")  # no space kept: the disk filled before
            full = True
        with footprint.query(model="m"):
            pass
    runtime = footprint.tracking.get_runtime()
    footprint.shutdown()
    print(runtime.stats()["records_written"])
    """
)


@pytest.mark.skipif(not LINUX, reason="/proc/self/fd names the file written")
def test_disk_full_mid_run_every_call_is_stored_or_counted_end_to_end(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    db = str(folder / "fp.db")
    calls = 4000
    done = subprocess.run(
        [sys.executable, "-c", E2E_DISK_FULL, db, str(calls), "1000"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    written = int(done.stdout.split()[-1])
    assert written == 1000
    said = [line for line in done.stderr.splitlines() if line.startswith("footprint: disk full")]
    assert len(said) == 1, done.stderr
    assert not sidefile.side_path(db).exists()
    [fallback] = _fallback_files()
    assert str(fallback) in done.stderr

    info = database_info(db)  # before any writer opens it again
    assert info["lost_total"] == calls - written == _count_rows(db) * 3
    Store(db).close()
    assert _losses(db) == {"unsaved_at_exit": calls - written}
    assert database_info(db)["lost_total"] == calls - written
    assert not fallback.exists()


# -- read-only -------------------------------------------------------------------------------


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes read-only folders")
def test_read_only_folder_counts_go_to_the_fallback(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    db = str(folder / "fp.db")
    Store(db).close()
    os.remove(db + ".losses-reserve")
    folder.chmod(0o555)
    try:
        writer = Writer(lambda: Store(db), "h", 1, db=db)
        writer.count_loss("span_queue_full", 3)
        writer.abandon()
        [fallback] = _fallback_files()
        assert writer.losses_saved_to == str(fallback)
    finally:
        folder.chmod(0o755)
    Store(db).close()
    assert _losses(db) == {"span_queue_full": 3}
