"""Reports read anything readable, and say in one line what they cannot read.

``footprint report``, ``db info`` and ``db export`` open a SQLite file they may not write
(file or folder) read-only: ``mode=ro``, and ``immutable=1`` where even that needs write
access (a WAL database needs its -shm file in the folder). Damaged, foreign, unreadable,
missing and newer files: exit 2 and one line on stderr naming the file and SQLite's words.

The folder the user cannot write is real: as root (tests here run as root, which writes
anywhere) the commands run in a forked child that has become ``nobody``; as any other
user, in a folder made read-only with chmod.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pwd
import random
import shutil
import sqlite3
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from footprint.bench.report import build_db
from footprint.cli import main
from footprint.reporting import ReportError
from footprint.reporting import database as report_data

ROWS = 1500


def run_cli(args: list[str]) -> tuple[int, str, str]:
    """``footprint ARGS`` in this process: exit code, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(args)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return code, out.getvalue(), err.getvalue()


def _nobody() -> tuple[int, int] | None:
    try:
        entry = pwd.getpwnam("nobody")
    except KeyError:
        return None
    return entry.pw_uid, entry.pw_gid


ROOT = os.geteuid() == 0
if ROOT and _nobody() is None:  # pragma: no cover - no unprivileged user to become
    pytest.skip("running as root with no 'nobody' user", allow_module_level=True)


def as_reader(fn: Callable[[], object]) -> object:
    """``fn()`` as a user who cannot write the test folders: ``nobody`` in a forked child
    when we are root, else this process (the folders are chmod'ed read-only)."""
    if not ROOT:
        return fn()
    uid, gid = _nobody()  # type: ignore[misc]
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        status = 0
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            result = json.dumps({"ok": fn()})
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            result = json.dumps({"error": f"{type(exc).__name__}: {exc}"})
            status = 1
        with os.fdopen(write_end, "w") as pipe:
            pipe.write(result)
        os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        answer = json.loads(pipe.read() or '{"error": "no answer"}')
    os.waitpid(pid, 0)
    assert "error" not in answer, answer["error"]
    return answer["ok"]


@contextlib.contextmanager
def read_only_folder() -> Iterator[Path]:
    """A folder the reader can enter and read but not write (under /tmp: pytest's own
    folders are private to root)."""
    folder = Path(tempfile.mkdtemp(prefix="footprint-ro-", dir="/tmp"))
    try:
        yield folder
    finally:
        folder.chmod(0o755)
        shutil.rmtree(folder, ignore_errors=True)


def seal(folder: Path) -> None:
    """Make ``folder`` and its files readable, not writable, by the reader."""
    for path in folder.iterdir():
        path.chmod(0o644)
    folder.chmod(0o755 if ROOT else 0o555)


@pytest.fixture(scope="module")
def source_db(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ro") / "fp.db"
    build_db(path, ROWS, seed=3)  # WAL mode, rollups caught up, no -wal or -shm left
    return path


@pytest.fixture(autouse=True, scope="module")
def warm_imports(source_db, tmp_path_factory):
    """Import what the commands import, before a child that cannot read root's files
    runs them."""
    out = tmp_path_factory.mktemp("warm")
    copy = out / "warm.db"
    shutil.copy(source_db, copy)
    for args in (["report", "--format", "json"], ["db", "info", "--json"], ["db", "export"]):
        assert run_cli([*args, "--db", str(copy)])[0] == 0
    run_cli(["report", "--db", str(copy), "--out", str(out / "r")])


def _place(source: Path, folder: Path, *suffixes: str) -> Path:
    target = folder / source.name
    for suffix in ("", *suffixes):
        shutil.copy(str(source) + suffix, str(target) + suffix)
    return target


# --- a folder the user cannot write ---------------------------------------------------------


def test_report_info_and_export_read_a_wal_database_in_a_read_only_folder(source_db):
    with read_only_folder() as folder:
        db = _place(source_db, folder)
        with contextlib.closing(sqlite3.connect(db)) as con:
            assert con.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert sorted(p.name for p in folder.iterdir()) == ["fp.db"]
        seal(folder)
        url = f"sqlite:///file:{db}?mode=ro&uri=true"  # read-only asked for: also fine now
        report, url_report, info, export = as_reader(
            lambda: [
                run_cli(["report", "--db", str(db), "--format", "json"]),
                run_cli(["report", "--db", url, "--format", "json"]),
                run_cli(["db", "info", "--db", str(db), "--json"]),
                run_cli(["db", "export", "--db", str(db), "--format", "jsonl"]),
            ]
        )
        assert sorted(p.name for p in folder.iterdir()) == ["fp.db"]  # nothing written
    for code, out, err in (report, url_report):
        assert code == 0, err
        assert json.loads(out)["totals"]["queries"] == ROWS
    assert info[0] == 0, info[2]
    found = json.loads(info[1])
    assert found["queries_rows"] == ROWS and found["db"] == f"sqlite:///{db}"
    assert export[0] == 0, export[2]
    assert len(export[1].splitlines()) == ROWS


def test_a_live_writers_log_is_read_not_skipped(source_db):
    """With the writer's -wal and -shm there, ``mode=ro`` reads them: rows committed in
    the log only are in the report (``immutable=1`` would not see them)."""
    with read_only_folder() as folder:
        db = _place(source_db, folder)
        writer = sqlite3.connect(db)
        writer.execute("PRAGMA wal_autocheckpoint=0")
        writer.execute(
            "INSERT INTO queries (model, tags, started_at, ended_at, duration_s, status,"
            " gpus, gpu_seconds, energy_source, cpu_energy_source, host, pid)"
            " SELECT model, tags, started_at, ended_at, duration_s, status, gpus,"
            " gpu_seconds, energy_source, cpu_energy_source, host, pid FROM queries LIMIT 7"
        )
        writer.commit()  # in the log, the writer still open: -wal and -shm stay
        try:
            seal(folder)
            code, out, err = as_reader(
                lambda: run_cli(["report", "--db", str(db), "--format", "json"])
            )
        finally:
            writer.close()
    assert code == 0, err
    report = json.loads(out)
    assert report["totals"]["queries"] == ROWS + 7
    assert any("rollups could not be brought up to date" in n for n in report["notes"])


def test_a_log_that_cannot_be_read_is_one_line_not_stale_figures(source_db, tmp_path):
    """A -wal with changes but no -shm, in a folder the user cannot write: SQLite cannot
    read the log, and ``immutable=1`` would silently leave it out: refused, one line."""
    work = _place(source_db, tmp_path)
    writer = sqlite3.connect(work)
    writer.execute("PRAGMA wal_autocheckpoint=0")
    writer.execute("DELETE FROM queries WHERE id <= 10")
    writer.commit()
    with read_only_folder() as folder:
        db = folder / "fp.db"
        shutil.copy(work, db)
        shutil.copy(str(work) + "-wal", str(db) + "-wal")
        writer.close()
        seal(folder)
        code, out, err = as_reader(lambda: run_cli(["report", "--db", str(db)]))
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith(f"footprint: error: cannot read {db}: ")
    assert "write-ahead log fp.db-wal holds changes" in err


def test_an_older_schema_that_cannot_be_migrated_is_one_line(source_db):
    with read_only_folder() as folder:
        db = _place(source_db, folder)
        con = sqlite3.connect(db)
        con.execute("UPDATE footprint_meta SET value = '2' WHERE key = 'schema_version'")
        con.commit()
        con.close()
        seal(folder)
        results = as_reader(
            lambda: [
                run_cli([*args, "--db", str(db)])
                for args in (["report", "--format", "json"], ["db", "info"], ["db", "export"])
            ]
        )
        assert sorted(p.name for p in folder.iterdir()) == ["fp.db"]
    for code, out, err in results:
        assert code == 2 and out == ""
        assert err.count("\n") == 1, err
        assert err.startswith(f"footprint: error: cannot read {db} without writing it: ")
        assert "schema version 2" in err


def test_an_unreadable_file_is_one_line(source_db):
    with read_only_folder() as folder:
        db = _place(source_db, folder)
        seal(folder)
        db.chmod(0o200 if not ROOT else 0o600)  # root's file, not readable by nobody
        results = as_reader(
            lambda: [
                run_cli([*args, "--db", str(db)])
                for args in (["report", "--format", "json"], ["db", "info"], ["db", "export"])
            ]
        )
    for code, _, err in results:
        assert code == 2
        assert err == f"footprint: error: cannot read {db}: permission denied\n"


def test_read_only_opening_uses_mode_ro_and_falls_back_to_immutable(source_db, monkeypatch):
    """The URIs themselves: ``mode=ro`` where it works, ``immutable=1`` where SQLite says it
    cannot open the file read-only for want of write access."""
    access = report_data.probe_sqlite(str(source_db))
    assert access.uri == f"file:{source_db}?mode=ro" and not access.immutable
    assert access.writable and access.schema_version is not None

    real = report_data._probe_version
    tried: list[str] = []

    def no_shm(path, uri, timeout_s):
        tried.append(uri)
        if "immutable" not in uri:
            error = sqlite3.OperationalError("attempt to write a readonly database")
            error.sqlite_errorcode = 8 | (6 << 8)  # SQLITE_READONLY_DIRECTORY
            raise error
        return real(path, uri, timeout_s)

    monkeypatch.setattr(report_data, "_probe_version", no_shm)
    access = report_data.probe_sqlite(str(source_db))
    assert tried == [f"file:{source_db}?mode=ro", f"file:{source_db}?mode=ro&immutable=1"]
    assert access.immutable and not access.writable
    url = report_data.reading_db(str(source_db))
    assert url == f"sqlite:///file:{source_db}?immutable=1&mode=ro&uri=true"
    engine = report_data.open_report_engine(str(source_db))
    try:
        with engine.connect() as conn, pytest.raises(Exception, match="readonly"):
            conn.exec_driver_sql("DELETE FROM queries")
    finally:
        engine.dispose()


def test_a_file_name_a_url_could_not_carry_is_still_read(tmp_path, source_db):
    folder = tmp_path / "odd #1 ?%"
    folder.mkdir()
    db = _place(source_db, folder)
    access = report_data.probe_sqlite(str(db))
    engine = report_data.read_only_engine(access)
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM queries").scalar() == ROWS
    finally:
        engine.dispose()


# --- what cannot be read: one line, exit 2 --------------------------------------------------


def _corrupt(path: Path) -> None:
    """Garbage over a few pages at a quarter, half and three quarters of the file."""
    con = sqlite3.connect(path)
    page = con.execute("PRAGMA page_size").fetchone()[0]
    pages = con.execute("PRAGMA page_count").fetchone()[0]
    con.close()
    rng = random.Random(7)
    with open(path, "r+b") as handle:
        for at in (pages // 4, pages // 2, 3 * pages // 4):
            handle.seek(at * page)
            handle.write(rng.randbytes(4 * page))


@pytest.mark.parametrize("args", [["report", "--format", "json"], ["db", "export"]])
def test_a_corrupted_database_is_one_line_naming_the_file(source_db, tmp_path, args):
    db = _place(source_db, tmp_path)
    _corrupt(db)
    code, _, err = run_cli([*args, "--db", str(db)])
    assert code == 2
    assert err == f"footprint: error: cannot read {db}: database disk image is malformed\n"


def test_db_info_shows_a_corrupted_database_and_fails_in_one_line(source_db, tmp_path):
    db = _place(source_db, tmp_path)
    _corrupt(db)
    code, out, err = run_cli(["db", "info", "--db", str(db)])
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("footprint: error: ")
    assert str(db) in err and "malformed" in err


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"not a database at all\n" * 200, "file is not a database"),
        (b"SQLite format 3\x00" + bytes(range(256)) * 8, "file is not a database"),
    ],
)
def test_a_file_that_is_not_a_database_is_one_line(tmp_path, content, says):
    db = tmp_path / "fp.db"
    db.write_bytes(content)
    for args in (["report", "--format", "json"], ["db", "info"], ["db", "export"]):
        code, _, err = run_cli([*args, "--db", str(db)])
        assert code == 2, args
        assert err == f"footprint: error: cannot read {db}: {says}\n", args
    assert db.read_bytes() == content  # nothing written


def test_a_sqlite_file_of_something_else_is_one_line(tmp_path):
    db = tmp_path / "other.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE t (x)")
    con.commit()
    con.close()
    for args in (["report", "--format", "json"], ["db", "info"], ["db", "export"]):
        code, _, err = run_cli([*args, "--db", str(db)])
        assert code == 2, args
        assert err == f"footprint: error: cannot read {db}: not a footprint database\n", args


def test_missing_and_newer_databases_are_one_line(source_db, tmp_path):
    missing = tmp_path / "none.db"
    for args in (["report", "--format", "json"], ["db", "info"], ["db", "export"]):
        code, _, err = run_cli([*args, "--db", str(missing)])
        assert code == 2 and err.count("\n") == 1 and f"no database at {missing}" in err
    newer = _place(source_db, tmp_path)
    con = sqlite3.connect(newer)
    con.execute("UPDATE footprint_meta SET value = '99' WHERE key = 'schema_version'")
    con.commit()
    con.close()
    for args in (["report", "--format", "json"], ["db", "info"], ["db", "export"]):
        code, _, err = run_cli([*args, "--db", str(newer)])
        assert code == 2 and err.count("\n") == 1, (args, err)
        assert err.startswith(f"footprint: error: cannot read {newer}: ") or "newer" in err
        assert "schema version 99 is newer" in err, (args, err)


def test_report_error_names_the_file_and_sqlites_words(tmp_path):
    db = tmp_path / "x.db"
    db.write_bytes(b"garbage" * 1000)
    with pytest.raises(ReportError, match=rf"^cannot read {db}: file is not a database$"):
        report_data.open_report_engine(str(db))
