from __future__ import annotations

import contextlib
import os
import random
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import footprint
from footprint._clock import ManualClock
from footprint.config import Settings
from footprint.runtime.local import Runtime


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch, tmp_path):
    """No FOOTPRINT_* from the outside, no footprint.toml from the checkout; the
    once-per-process "no region configured" warning armed again, so that every test that
    prices without a region says so (warnings are errors), whatever ran before it."""
    import os

    from footprint.pricing.zones import _reset_default_warning

    _reset_default_warning()
    for key in list(os.environ):
        if key.startswith("FOOTPRINT_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    # No daemon of the developer's machine under daemon=auto; presence locks per test.
    runtime_dir = tmp_path / "xdg-runtime"
    runtime_dir.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime_dir))
    yield
    footprint.reset_configuration()


@pytest.fixture
def tracked_db(tmp_path) -> Path:
    """footprint configured on one simulated GPU writing to a fresh SQLite file."""
    db = tmp_path / "fp.db"
    footprint.configure(
        db=str(db), sensor="simulated:gpus=1,idle_w=60,busy_w=400,seed=1", cpu=False, region="FRA"
    )
    return db


def rows(db: Path, sql: str = "SELECT * FROM queries ORDER BY id") -> list[dict]:
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute(sql)]
    finally:
        con.close()


PG_URL = os.environ.get("FOOTPRINT_TEST_POSTGRES_URL")


@contextlib.contextmanager
def postgres_schema(prefix: str = "fp") -> Iterator[str]:
    """A URL of a fresh schema on the test PostgreSQL server, dropped afterwards.

    Skips the test when ``FOOTPRINT_TEST_POSTGRES_URL`` is not set (``.ci/run`` sets it).
    """
    if not PG_URL:
        pytest.skip("FOOTPRINT_TEST_POSTGRES_URL is not set (.ci/run sets it)")
    from sqlalchemy import create_engine, text

    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    try:
        yield f"{PG_URL}{'&' if '?' in PG_URL else '?'}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request, tmp_path) -> Iterator[str]:
    """A fresh database: a SQLite file, then a PostgreSQL schema (skipped without a server)."""
    if request.param == "sqlite":
        yield str(tmp_path / "footprint.db")
        return
    with postgres_schema("fp") as url:
        yield url


class ManualRun:
    """A ``Runtime`` on a ``ManualClock`` behind its own ``Tracker``, driven as its threads
    would drive it: ``advance`` moves the clock, reading the sensors at the sampler's
    cadence (``next_sample_wait_s``, stretched by a seeded 0-10 % jitter as a busy thread
    would be) and stepping the writer's cycle every flush interval. Deterministic: no
    ``time.sleep``, no thread but the one ``close`` runs the exit flush on."""

    def __init__(
        self,
        settings: Settings,
        *,
        seed: int = 0,
        origin_s: float = 1000.0,
        presence_role: str = "process",
    ) -> None:
        self.clock = ManualClock(monotonic_s=origin_s)
        self.runtime = Runtime(settings, self.clock, presence_role=presence_role)
        self.tracker = footprint.Tracker(clock=self.clock)
        self.tracker.install(self.runtime)
        self._rng = random.Random(seed)
        self._flush_interval_s = settings.flush_interval_s
        self.runtime.sample()  # the sampler's first read, as the thread makes it at start
        self._next_sample_s = origin_s + self._sample_wait_s()
        self._next_step_s = origin_s + self._flush_interval_s

    def now_s(self) -> float:
        return self.clock.monotonic_s()

    def _sample_wait_s(self) -> float:
        return self.runtime.next_sample_wait_s() * self._rng.uniform(1.0, 1.1)

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass (a call's work, or a gap between calls)."""
        self.advance_to(self.now_s() + seconds)

    def advance_to(self, t_s: float) -> None:
        """Move the clock to ``t_s``, sampling and stepping at every instant they fall due."""
        clock, runtime = self.clock, self.runtime
        while True:
            due_s = min(self._next_sample_s, self._next_step_s)
            if due_s > t_s:
                break
            clock.advance(max(0.0, due_s - clock.monotonic_s()))
            if due_s == self._next_sample_s:
                runtime.sample()
                self._next_sample_s = clock.monotonic_s() + self._sample_wait_s()
            if due_s == self._next_step_s:
                runtime.step()  # what is complete by now, less the announce margin
                self._next_step_s += self._flush_interval_s
        clock.advance(max(0.0, t_s - clock.monotonic_s()))

    def close(self) -> None:
        """The exit flush (last samples, cycle, write), as ``footprint.shutdown`` makes it."""
        self.tracker.close()
