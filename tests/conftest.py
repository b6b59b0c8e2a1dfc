from __future__ import annotations

import contextlib
import os
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import footprint


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
