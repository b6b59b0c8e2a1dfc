"""The call journal: what a process that dies without its exit flush leaves behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from footprint.storage import journal
from footprint.storage.journal import UNSAVED_KIND, CallJournal


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _journal_of_dead_process(db: Path) -> CallJournal:
    j = CallJournal()
    j._pid = _dead_pid()  # as if another process had written it and died
    assert j.open(str(db), "hostx")
    return j


def _moved(db: Path) -> list[dict]:
    rows: list[dict] = []
    journal.move_into(str(db), rows.extend)
    return rows


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(1, 50)), max_size=40))
def test_what_a_dead_process_did_not_settle_is_counted_once(tmp_path_factory, steps):
    db = tmp_path_factory.mktemp("j") / "calls.db"
    j = _journal_of_dead_process(db)
    ended = settled = 0
    for is_end, n in steps:
        if is_end:
            for _ in range(n):
                j.ended()
            ended += n
        else:
            n = min(n, ended - settled)  # the writer settles only what ended
            j.settled(n)
            settled += n
    # The process "dies" here: no close(). Only the host name of this machine is read.
    os.replace(j.path, str(j.path).replace("-hostx-", f"-{journal._host_label(_host())}-"))
    rows = _moved(db)
    assert sum(r["count"] for r in rows) == ended - settled
    assert all(r["kind"] == UNSAVED_KIND for r in rows)
    assert not list(db.parent.glob("calls.db.calls-*"))  # removed once counted
    assert _moved(db) == []  # and never counted twice


def _host() -> str:
    import socket

    return socket.gethostname()


def test_a_live_process_journal_and_another_hosts_are_left_alone(tmp_path):
    db = tmp_path / "calls.db"
    live = CallJournal()
    assert live.open(str(db), _host())  # this process: alive
    live.ended()
    other = _journal_of_dead_process(db)  # "hostx": not this machine
    other.ended()
    assert _moved(db) == []
    assert journal.pending_counts(str(db)) == 0
    assert live.path.exists() and other.path.exists()


def test_a_clean_close_removes_the_file_only_when_everything_settled(tmp_path):
    db = tmp_path / "calls.db"
    j = CallJournal()
    assert j.open(str(db), _host())
    j.ended()
    j.ended()
    j.settled(2)
    assert j.close() and not j.path.exists()
    k = CallJournal()
    assert k.open(str(db), _host())
    k.ended()
    assert not k.close() and k.path.exists()  # kept: the next store counts it


def test_a_planted_symlink_is_never_followed(tmp_path):
    db = tmp_path / "calls.db"
    victim = tmp_path / "victim"
    victim.write_text("precious")
    journal._counter += 1
    target = Path(
        f"{db}{journal.INFIX}{journal._host_label(_host())}-{os.getpid()}-{journal._counter + 1}"
    )
    target.symlink_to(victim)
    assert not CallJournal().open(str(db), _host())
    assert victim.read_text() == "precious"
