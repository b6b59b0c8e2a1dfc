"""The command as a process: a reader that closes the pipe, Ctrl-C, --version.

A closed pipe (``footprint regions | head -1``) ends the command quietly with exit 0;
Ctrl-C exits 130 with one line on stderr, whatever the command was doing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

import footprint
from footprint.cli import main

# The child runs ``python -m footprint.cli`` with Python's own SIGINT handler: a process
# started in the background by a non-interactive shell (as CI may be) inherits SIGINT
# ignored, and Python then leaves it ignored.
CHILD = (
    "import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "runpy.run_module('footprint.cli', run_name='__main__', alter_sys=True)"
)
PIPE_BYTES = 4096  # the pipe is made this small, so the command blocks on a full pipe


def footprint_process(*args: str, stdout: int = subprocess.PIPE) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, *args],
        stdout=stdout,
        stderr=subprocess.PIPE,
        env={**os.environ, "COLUMNS": "100"},
    )


def first_line_then_close(*args: str) -> tuple[bytes, int, str]:
    """Run the command into a small pipe, read one line, close the pipe like ``head -1``.

    Returns the line, the exit code and stderr.
    """
    read_fd, write_fd = os.pipe()
    try:
        import fcntl

        fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    except (ImportError, AttributeError, OSError):  # pragma: no cover - not Linux
        pass
    proc = footprint_process(*args, stdout=write_fd)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as reader:
        first = reader.readline()
    try:
        err = proc.stderr.read().decode()  # type: ignore[union-attr]
        code = proc.wait(timeout=120)
    finally:
        proc.kill()
        proc.stderr.close()  # type: ignore[union-attr]
    return first, code, err


def test_regions_into_a_closed_pipe_ends_quietly_with_0():
    first, code, err = first_line_then_close("regions")
    assert first.strip()  # the table's first line, then the reader went away
    assert (code, err) == (0, "")


def test_db_export_into_a_closed_pipe_ends_quietly_with_0(tmp_path):
    from footprint.bench.ingest import make_records
    from footprint.storage.store import Store

    db = str(tmp_path / "e.db")
    store = Store(db)
    store.insert(make_records(1000))  # about 400 kB of CSV: far more than the pipe holds
    store.close()
    for fmt in ("csv", "jsonl"):
        first, code, err = first_line_then_close("db", "export", "--db", db, "--format", fmt)
        assert first.startswith(b"id," if fmt == "csv" else b"{")
        assert (code, err) == (0, ""), fmt


def test_ctrl_c_during_the_demo_exits_130_with_one_line(tmp_path):
    proc = footprint_process(
        "demo",
        "--db",
        str(tmp_path / "d.db"),
        "--out",
        str(tmp_path / "r"),
        "--queries",
        "100000",
    )
    try:
        first = proc.stdout.readline()  # type: ignore[union-attr]
        assert first.startswith(b"Simulating"), first  # main() is running the command
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert err.decode() == "footprint: interrupted\n"


@pytest.mark.parametrize(
    ("args", "module", "function"),
    [
        (["demo", "--db", "d.db", "--out", "r"], "footprint.demo", "run_demo"),
        (["report", "--db", "r.db"], "footprint.reporting.command", "run_report"),
        (["regions"], "footprint.pricing", "list_zones"),
        (["db", "export", "--db", "e.db"], "footprint.storage.export", "export_text"),
        (["db", "info", "--db", "e.db"], "footprint.storage.store", "database_info"),
    ],
)
def test_ctrl_c_in_any_command_exits_130_with_one_line(args, module, function, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(f"{module}.{function}", interrupted)
    with pytest.raises(SystemExit) as exited:
        main(args)
    assert exited.value.code == 130
    assert capsys.readouterr().err == "footprint: interrupted\n"


def test_abort_exits_130_with_one_line(monkeypatch, capsys):
    import typer

    def aborted(*args, **kwargs):
        raise typer.Abort()

    monkeypatch.setattr("footprint.pricing.list_zones", aborted)
    with pytest.raises(SystemExit) as exited:
        main(["regions"])
    assert exited.value.code == 130
    assert capsys.readouterr().err == "footprint: aborted\n"


def test_version_prints_the_package_version():
    proc = footprint_process("--version")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert out.decode() == f"footprint {footprint.__version__}\n"
    assert out.decode() == "footprint 0.1.0\n"
    assert err == b""


def test_bare_command_prints_help_on_stdout_and_exits_0(capsys):
    main([])
    captured = capsys.readouterr()
    assert captured.out.startswith("Usage: ") and "--version" in captured.out
    assert captured.err == ""
