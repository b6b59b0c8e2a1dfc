"""``footprint.Tracker``: a tracker the user owns, beside the module-level default one.

Before (issue 20): one process-global runtime, no object to hold, scope or close; two
databases in one process could not both be written, and the hot path wrote straight
into the runtime's fields (``inflight``, ``ended``, ``ids``), so anything standing in for
a runtime had to copy them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

import footprint
from footprint.config import Settings
from footprint.runtime.discovery import Target
from footprint.runtime.remote import DaemonClient
from footprint.runtime.spans import CORE_STATS, FootprintWarning
from footprint.tracking import SettingsOverrides, Tracker

QUIET = {"sensor": "none", "cpu": False, "daemon": "off", "region": "FRA"}


def rows(db: Path) -> list[tuple]:
    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT model, pid FROM queries ORDER BY id").fetchall()
    finally:
        con.close()


def test_two_trackers_with_two_databases_record_side_by_side(tmp_path):
    a_db, b_db = tmp_path / "a.db", tmp_path / "b.db"
    a = Tracker(db=str(a_db), **QUIET)
    b = Tracker(db=str(b_db), **QUIET)

    @a.track(model="model-a")
    def call_a() -> int:
        return 1

    @b.track(model="model-b")
    async def call_b() -> int:
        return 2

    import asyncio

    for _ in range(5):
        assert call_a() == 1
        assert asyncio.run(call_b()) == 2
        with b.query(model="model-b-block") as q:
            q.set_tokens(input=3, output=4)
    a.close()
    b.close()
    assert rows(a_db) == [("model-a", os.getpid())] * 5
    b_models = sorted(model for model, _ in rows(b_db))
    assert b_models == ["model-b"] * 5 + ["model-b-block"] * 5
    assert a.stats() == {} and b.stats() == {}  # closed: no runtime left


def test_a_tracker_as_a_context_manager_writes_at_exit_then_tracks_nothing(tmp_path):
    db = tmp_path / "ctx.db"
    with Tracker(db=str(db), **QUIET) as tracker:

        @tracker.track(model="m")
        def call(x: int) -> int:
            return x * 2

        assert call(2) == 4
        assert tracker.stats()["records_written"] == 0  # not flushed yet
    assert rows(db) == [("m", os.getpid())]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert call(3) == 6  # still runs, untracked
        assert call(4) == 8
    assert [str(w.message) for w in caught if w.category is FootprintWarning] == [
        "footprint: this Tracker is closed; calls run untracked"
    ]
    assert rows(db) == [("m", os.getpid())]


def test_bad_settings_are_refused_when_the_tracker_is_made():
    with pytest.raises(ValueError, match="sensor"):
        Tracker(sensor="not-a-sensor")


def test_the_keywords_are_the_settings_fields():
    settable = {f.name for f in dataclasses.fields(Settings) if f.metadata.get("settable", True)}
    assert set(SettingsOverrides.__annotations__) == settable


class MemorySink:
    """Only the declared span contract: no ``inflight``, ``ended`` or ``ids`` to write."""

    __slots__ = ("calls", "clock_s")

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.clock_s = 100.0

    def now(self) -> float:
        self.clock_s += 0.5
        return self.clock_s

    def begin(self, gpus):
        self.calls.append(("begin", gpus))
        return len(self.calls), self.now()

    def end(
        self,
        span_id,
        start_s,
        model,
        tags,
        status,
        error_type,
        tokens_in,
        tokens_out,
        ttft_s,
        gpus,
        trace=None,  # the caller's trace context (none current in these tests)
    ):
        assert trace is None
        self.calls.append(
            (
                "end",
                span_id,
                model,
                tags,
                status,
                error_type,
                tokens_in,
                tokens_out,
                ttft_s is not None,
                gpus,
            )
        )
        return self.now()

    def warn_once(self, key, message) -> None: ...

    def start(self) -> None: ...

    def flush(self) -> int:
        return 0

    def stats(self) -> dict[str, int]:
        return {}

    def request_flush(self) -> None: ...

    def flush_before_exit(self, deadline_s: float) -> bool:
        return True

    def shutdown(self) -> None: ...


def test_the_hot_path_uses_only_the_declared_contract():
    tracker = Tracker()
    sink = MemorySink()
    tracker.install(sink)  # type: ignore[arg-type]

    @tracker.track(model="gen", gpus=[1], team="a")
    def stream():
        yield "x"
        yield "y"

    @tracker.track(model="fails")
    def boom():
        raise KeyError("no")

    assert list(stream()) == ["x", "y"]
    with pytest.raises(KeyError):
        boom()
    with tracker.query(model="block") as q:
        q.first_token()
        q.set_tokens(input=1, output=2)
    tracker.close()
    assert sink.calls == [
        ("begin", (1,)),
        ("end", 1, "gen", {"team": "a"}, "ok", None, None, None, True, (1,)),
        ("begin", None),
        ("end", 3, "fails", {}, "error", "KeyError", None, None, False, None),
        ("begin", None),
        ("end", 5, "block", {}, "ok", None, 1, 2, True, None),
    ]


def test_stats_have_the_same_core_in_both_modes(tmp_path):
    tracker = Tracker(db=str(tmp_path / "s.db"), **QUIET)
    with tracker.query(model="m"):
        pass
    tracker.flush()
    local = tracker.stats()
    tracker.close()
    settings = dataclasses.replace(Settings(), daemon=str(tmp_path / "none.sock"))
    client = DaemonClient(settings, target=Target("unix", str(tmp_path / "none.sock")))
    remote = client.stats()
    for name in CORE_STATS:
        assert name in local, name
        assert name in remote, name
    assert local["records_written"] == 1 and remote["records_written"] == 0
    assert all(isinstance(value, int) for value in {**local, **remote}.values())


FORKING = textwrap.dedent("""
    import json, os, sys
    from footprint import Tracker

    quiet = dict(sensor="none", cpu=False, daemon="off", region="FRA")
    a = Tracker(db=sys.argv[1], **quiet)
    b = Tracker(db=sys.argv[2], **quiet)
    for t, name in ((a, "a"), (b, "b")):
        with t.query(model=name + "-parent"):
            pass
    child = os.fork()
    if child == 0:
        for t, name in ((a, "a"), (b, "b")):
            with t.query(model=name + "-child"):
                pass
        sys.exit(0)  # the exit hook writes both trackers' records
    os.waitpid(child, 0)
    print(json.dumps(child))
""")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_forked_child_records_into_every_tracker_under_its_own_pid(tmp_path):
    a_db, b_db = tmp_path / "a.db", tmp_path / "b.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOOTPRINT_")}
    out = subprocess.run(
        [sys.executable, "-c", FORKING, str(a_db), str(b_db)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    child = json.loads(out.stdout)
    for db, name in ((a_db, "a"), (b_db, "b")):
        found = dict((model, pid) for model, pid in rows(db))
        assert found[f"{name}-child"] == child, found
        assert found[f"{name}-parent"] != child, found
        assert len(rows(db)) == 2


STARTUP = textwrap.dedent("""
    import json, sys
    from footprint import sampling
    from footprint.runtime import local

    events = []
    sample_once, open_pricer = sampling.Sampler.sample_once, local.Runtime._open_pricer

    def observed_sample(self):
        if "sample" not in events:  # the first read of a sensor: was the store imported?
            events.append("sample")
            events.append("sqlalchemy" if "sqlalchemy" in sys.modules else "no sqlalchemy")
        return sample_once(self)

    def observed_pricer(self):
        events.append("pricer")
        return open_pricer(self)

    sampling.Sampler.sample_once = observed_sample
    local.Runtime._open_pricer = observed_pricer
    import footprint
    footprint.configure(db=sys.argv[1], sensor="simulated:gpus=1", cpu=False, daemon="off",
                        region="FRA")
    with footprint.query(model="first"):
        pass
    footprint.shutdown()
    print(json.dumps(events))
""")


def test_a_fresh_process_samples_before_it_opens_pricing_and_the_store(tmp_path):
    """The start-up order is a contract: the first call of a process is measured from a
    sample taken as it runs, so the sensors are read before SQLAlchemy and the pricer are
    even imported (they open behind the sampler, on the writer thread)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOOTPRINT_")}
    out = subprocess.run(
        [sys.executable, "-c", STARTUP, str(tmp_path / "f.db")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout) == ["sample", "no sqlalchemy", "pricer"]


def test_the_module_functions_use_the_default_tracker(tmp_path):
    from footprint.tracking import default_tracker

    footprint.configure(db=str(tmp_path / "d.db"), **QUIET)
    try:
        with footprint.query(model="default"):
            pass
        assert default_tracker().runtime is not None
        assert footprint.flush() == 1
        assert rows(tmp_path / "d.db") == [("default", os.getpid())]
    finally:
        footprint.reset_configuration()
