"""The ``devices`` table (schema version 6): which GPU a UUID is, so that reports show each
GPU's index and model, and BoAmps exports its manufacturer and series."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import text

import footprint
from footprint.cli import main
from footprint.storage.engine import open_engine
from footprint.storage.models import SCHEMA_VERSION
from footprint.storage.store import Store
from footprint.tracking import get_runtime

H100 = "NVIDIA H100 80GB HBM3"


@pytest.fixture
def db(tmp_path) -> Path:
    """Calls of one model on two simulated H100s."""
    path = tmp_path / "fp.db"
    footprint.configure(
        db=str(path),
        sensor=f"simulated:gpus=2,idle_w=60,busy_w=400,seed=3,name={H100}",
        cpu=False,
        region="FRA",
    )
    for i in range(4):
        with footprint.query(model="llama", gpus=[i % 2]) as q:
            get_runtime().gpu_sensor.run(0.1)
            q.set_tokens(10, 20)
    footprint.shutdown()
    return path


def _devices(path: Path) -> list[tuple]:
    con = sqlite3.connect(path)
    try:
        return con.execute(
            "SELECT host, uuid, kind, device_index, name FROM devices ORDER BY device_index"
        ).fetchall()
    finally:
        con.close()


def test_the_runtime_names_the_devices_it_measures(db) -> None:
    rows = _devices(db)
    assert [(kind, index, name) for _, _, kind, index, name in rows] == [
        ("gpu", 0, H100),
        ("gpu", 1, H100),
    ]
    assert all(uuid.startswith("GPU-sim0003-") for _, uuid, *_ in rows)


def test_the_report_shows_each_gpus_index_and_model(db, capsys) -> None:
    main(["report", "--db", str(db), "--format", "json"])
    gpus = json.loads(capsys.readouterr().out)["capacity"]["gpus"]
    assert sorted((g["index"], g["name"]) for g in gpus) == [(0, H100), (1, H100)]
    out = db.parent / "r"
    main(["report", "--db", str(db), "--format", "md", "--out", str(out)])
    markdown = (out / "footprint-report.md").read_text(encoding="utf-8")
    capacity = markdown[markdown.index("GPU capacity") :]
    assert H100 in capacity and "| Model |" in capacity.replace("  ", " ")


def test_a_database_that_names_no_device_shows_uuids_and_dashes(db, capsys) -> None:
    con = sqlite3.connect(db)
    con.execute("DELETE FROM devices")
    con.commit()
    con.close()
    main(["report", "--db", str(db), "--format", "json"])
    gpus = json.loads(capsys.readouterr().out)["capacity"]["gpus"]
    assert gpus and all(g["index"] is None and g["name"] is None for g in gpus)
    assert all(g["gpu"].startswith("GPU-sim") for g in gpus)


def test_boamps_names_the_gpu_model_and_its_maker(db, capsys) -> None:
    main(["report", "--db", str(db), "--format", "boamps"])
    (report,) = json.loads(capsys.readouterr().out)
    assert report["infrastructure"]["components"] == [
        {"componentType": "gpu", "nbComponent": 2, "manufacturer": "nvidia", "series": H100}
    ]


def test_devices_are_upserted_per_host_and_uuid(db_url) -> None:
    store = Store(db_url)
    try:
        device = {"uuid": "GPU-a", "kind": "gpu", "name": "A100", "vendor": "NVIDIA"}
        store.record_devices("h1", [{**device, "device_index": 0, "energy_method": "counter"}])
        store.record_devices("h1", [{**device, "device_index": 3, "energy_method": "power"}])
        store.record_devices("h2", [{**device, "device_index": 1, "energy_method": "counter"}])
        with store.engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT host, device_index, energy_method, "
                    "CASE WHEN first_seen_at <= last_seen_at THEN 1 ELSE 0 END "
                    "FROM devices ORDER BY host"
                )
            ).fetchall()
    finally:
        store.close()
    assert [tuple(r) for r in rows] == [("h1", 3, "power", 1), ("h2", 1, "counter", 1)]


def test_a_version_5_database_gets_the_devices_table(tmp_path) -> None:
    path = tmp_path / "old.db"
    Store(str(path)).close()
    con = sqlite3.connect(path)
    con.execute("DROP TABLE devices")
    con.execute("UPDATE footprint_meta SET value = '5' WHERE key = 'schema_version'")
    con.commit()
    con.close()
    store = Store(str(path))
    try:
        store.record_devices("h", [{"uuid": "GPU-b", "kind": "gpu", "device_index": 0}])
    finally:
        store.close()
    engine = open_engine(str(path), create=False)
    try:
        with engine.connect() as conn:
            version = conn.execute(
                text("SELECT value FROM footprint_meta WHERE key = 'schema_version'")
            ).scalar_one()
            names = conn.execute(text("SELECT uuid, device_index FROM devices")).fetchall()
    finally:
        engine.dispose()
    assert version == str(SCHEMA_VERSION) == "7"  # on through 6 -> 7
    assert [tuple(r) for r in names] == [("GPU-b", 0)]
