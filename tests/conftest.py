from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

import footprint


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch, tmp_path):
    """No FOOTPRINT_* from the outside, no footprint.toml from the checkout."""
    import os

    for key in list(os.environ):
        if key.startswith("FOOTPRINT_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
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
