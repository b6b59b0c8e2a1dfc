"""A plain script that ends by a signal: its calls are stored, or counted (issue 19).

SIGTERM with its default action: footprint's handler runs the exit flush (the calls that
just ended wait for the counters' next tick) before the default action ends the process.
SIGKILL runs nothing: the call journal beside the database still says how many calls
ended unstored, and the next process that opens the database counts them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from footprint.storage.journal import UNSAVED_KIND
from footprint.storage.store import Store

SCRIPT = """
import sys, time, footprint
for _ in range(int(sys.argv[1])):
    with footprint.query(model="m"):
        time.sleep(0.0005)
print("done", flush=True)
time.sleep(60)
"""


def _start(tmp_path: Path, calls: int) -> subprocess.Popen:
    env = dict(
        os.environ,
        FOOTPRINT_DB=str(tmp_path / "calls.db"),
        FOOTPRINT_SENSOR="simulated",
        FOOTPRINT_DAEMON="off",
        FOOTPRINT_REGION="FRA",
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(calls)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout.readline() == b"done\n"
    return proc


def _info(tmp_path: Path) -> dict:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "footprint",
            "db",
            "info",
            "--db",
            str(tmp_path / "calls.db"),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(out.stdout)


def test_sigterm_default_action_stores_every_call(tmp_path: Path) -> None:
    with _start(tmp_path, 1000) as proc:  # its pipes closed on the way out
        sent_s = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        waited_s = time.monotonic() - sent_s
        assert proc.returncode == -signal.SIGTERM  # the default action still ends it
        info = _info(tmp_path)
        assert info["queries_rows"] == 1000, (info, proc.stderr.read().decode()[-2000:])
    assert info["lost_total"] == 0
    assert waited_s < 10  # bounded by the flush deadline (2 s) plus start-up of the check
    assert not list(tmp_path.glob("calls.db.calls-*"))  # a clean end leaves no journal


def test_sigkill_leaves_a_count_of_what_was_not_stored(tmp_path: Path) -> None:
    with _start(tmp_path, 3000) as proc:  # its pipes closed on the way out
        proc.kill()
    assert list(tmp_path.glob("calls.db.calls-*"))  # the journal outlives the process
    Store(str(tmp_path / "calls.db")).close()  # the next writer (made now if none was)
    info = _info(tmp_path)
    died = info["losses"].get(UNSAVED_KIND, 0)
    assert info["queries_rows"] + died == 3000, info
    assert died > 0  # killed right after its calls: the last ones were still unwritten
    assert not list(tmp_path.glob("calls.db.calls-*"))  # counted once, then removed


def test_sigkill_on_postgresql_leaves_a_count_too(tmp_path: Path, monkeypatch) -> None:
    """Before: a server database had no journal, so these calls went without a count."""
    from conftest import postgres_schema

    with postgres_schema("sig") as url:
        env = dict(
            os.environ,
            FOOTPRINT_DB=url,
            FOOTPRINT_SENSOR="simulated",
            FOOTPRINT_DAEMON="off",
            FOOTPRINT_REGION="FRA",
            XDG_RUNTIME_DIR=str(tmp_path),
        )
        with subprocess.Popen(
            [sys.executable, "-c", SCRIPT, "3000"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        ) as proc:
            assert proc.stdout.readline() == b"done\n"
            proc.kill()
            proc.wait(30)
            journals = list((tmp_path / "footprint" / "calls").glob("postgresql-*.calls-*"))
            assert journals, proc.stderr.read().decode()[-2000:]  # it outlives the process
        mode = journals[0].stat().st_mode & 0o777
        assert mode == 0o600
        out = subprocess.run(
            [sys.executable, "-m", "footprint", "db", "info", "--db", url, "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            check=True,
        )
        info = json.loads(out.stdout)
        died = info["losses"].get(UNSAVED_KIND, 0)
        assert info["queries_rows"] + died == 3000, info
        assert died > 0
        monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
        Store(url).close()  # the next writer claims the journal: counted once, removed
        assert not list((tmp_path / "footprint" / "calls").glob("postgresql-*.calls-*"))
        out = subprocess.run(
            [sys.executable, "-m", "footprint", "db", "info", "--db", url, "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            check=True,
        )
        again = json.loads(out.stdout)
        assert again["losses"].get(UNSAVED_KIND, 0) == died
        assert again["queries_rows"] == info["queries_rows"]
