"""footprint report: SQL aggregates against Python over the same rows, idle spreading,
currency fallback, groups, what-if, and bad input (exit 2, one line)."""

from __future__ import annotations

import csv
import json
import math
import sqlite3
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
from conftest import postgres_schema
from conftest import rows as all_rows

from footprint.bench.report import build_db
from footprint.cli import main
from footprint.pricing import build_factors, usd_per_unit
from footprint.reporting import (
    ReportError,
    ReportRequest,
    build_report,
    cleanest_zones,
    percentiles,
    units,
)
from footprint.reporting import data as report_data
from footprint.storage import rollups
from footprint.storage.engine import open_engine


@pytest.fixture(scope="module")
def bench_db(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("report") / "bench.db"
    build_db(path, 3000, seed=5)
    return path


def nearest_rank(values: list[float], p: int) -> float:
    ordered = sorted(values)
    return ordered[math.ceil(p / 100 * len(ordered)) - 1]


def report_json(*args: str, capsys) -> dict:
    main(["report", *args, "--format", "json"])
    return json.loads(capsys.readouterr().out)


# --- units -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fn", "value", "text"),
    [
        (units.energy, 0.0042, "4.2 Wh"),
        (units.energy, 1500.0, "1.5 MWh"),
        (units.energy, 2.5e-7, "250 µWh"),
        (units.energy, 0.0, "0 kWh"),
        (units.mass, 1520.0, "1.52 kg"),
        (units.mass, 0.5, "500 mg"),
        (units.mass, 2.5e6, "2.5 t"),
        (units.mass, 999.6, "1 kg"),
        (units.money, 0.000131, "$0.000131"),
        (units.money, 9.677, "$9.68"),
        (units.money, 12345.6, "$12,346"),
        (units.count, 1234567, "1,234,567"),
        (units.number, 244.757, "245"),
        (units.number, 0.0641, "0.0641"),
        (units.percent, -0.892, "-89.2%"),
    ],
)
def test_units_read_well(fn, value, text):
    assert fn(value) == text


# --- aggregates ----------------------------------------------------------------------------


def test_sums_and_percentiles_match_python_over_every_row(bench_db):
    report = build_report(ReportRequest(db=str(bench_db)))
    rows = all_rows(bench_db)
    by_model = defaultdict(list)
    for row in rows:
        by_model[row["model"]].append(row)
    assert report["totals"]["queries"] == len(rows) == 3000
    assert {m["model"] for m in report["models"]} == set(by_model)
    for entry in report["models"]:
        mine = by_model[entry["model"]]
        assert entry["queries"] == len(mine)
        assert entry["errors"] == sum(r["status"] != "ok" for r in mine)
        assert entry["output_tokens"] == sum(r["output_tokens"] or 0 for r in mine)
        energy_j = sum(r["energy_j"] for r in mine)
        assert entry["energy_kwh"] == pytest.approx(energy_j / 3.6e6, rel=1e-12)
        assert entry["co2e_g"] == pytest.approx(sum(r["co2e_g"] for r in mine), rel=1e-12)
        # The bench's GPUs are rented: a query costs its GPU time (the hourly price pays
        # for the electricity, shown beside it and not added).
        assert {r["ownership"] for r in mine} == {"rented"}
        cost = sum(r["compute_cost"] for r in mine)
        assert entry["cost_usd"] == pytest.approx(cost, rel=1e-12)
        energy_cost = sum(r["energy_cost_usd"] for r in mine)
        assert entry["energy_cost_usd"] == pytest.approx(energy_cost, rel=1e-12)
        pq = entry["per_query"]
        assert pq["percentile_sample"] == len(mine)  # below the sample size: exact
        energies = [r["energy_j"] / 3600 for r in mine]
        assert pq["energy_wh"]["p50"] == pytest.approx(nearest_rank(energies, 50), rel=1e-12)
        assert pq["energy_wh"]["p95"] == pytest.approx(nearest_rank(energies, 95), rel=1e-12)
        co2e = [r["co2e_g"] for r in mine]
        assert pq["co2e_g"]["p95"] == pytest.approx(nearest_rank(co2e, 95), rel=1e-12)
        costs = [r["compute_cost"] for r in mine]
        assert pq["cost_usd"]["p50"] == pytest.approx(nearest_rank(costs, 50), rel=1e-12)
        assert pq["energy_wh"]["mean"] == pytest.approx(energy_j / 3600 / len(mine))
        out = entry["output_tokens"]
        assert entry["per_1k_output_tokens"]["co2e_g"] == pytest.approx(
            entry["co2e_g"] * 1000 / out
        )
        # SCI's M: the embodied carbon of the GPU-hours held, not only of the busy ones.
        held = entry["fully_loaded_embodied_co2e_g"]
        assert held == pytest.approx(
            entry["embodied_co2e_g"] * entry["gpu_hours_held"] / entry["gpu_hours_busy"]
        )
        sci = (entry["fully_loaded_co2e_g"] + held) / entry["queries"]
        assert entry["sci"]["per_query_g"] == pytest.approx(sci)
    t = report["totals"]
    assert t["cost_usd"] == pytest.approx(t["compute_cost_usd"])
    assert t["co2e_g"] == pytest.approx(sum(m["co2e_g"] for m in report["models"]))


def test_percentiles_on_a_sample_above_the_threshold(bench_db, monkeypatch):
    monkeypatch.setattr(percentiles, "PERCENTILE_SAMPLE", 150)
    report = build_report(ReportRequest(db=str(bench_db)))
    rows = all_rows(bench_db)
    big = max(report["models"], key=lambda m: m["queries"])
    pq = big["per_query"]
    assert 100 < pq["percentile_sample"] < 300  # about 150 of ~1000
    exact = nearest_rank([r["energy_j"] / 3600 for r in rows if r["model"] == big["model"]], 50)
    assert pq["energy_wh"]["p50"] == pytest.approx(exact, rel=0.2)
    assert any("sample of about 150" in note for note in report["notes"])
    # The mean still uses every query.
    assert pq["energy_wh"]["mean"] == pytest.approx(big["energy_kwh"] * 1000 / big["queries"])


def test_idle_energy_is_spread_by_gpu_seconds_and_conserved(bench_db):
    report = build_report(ReportRequest(db=str(bench_db)))
    (idle_j,) = all_rows(bench_db, "SELECT SUM(idle_energy_j) AS s FROM idle_energy")[0].values()
    t = report["totals"]
    spread = sum(m["idle_energy_kwh"] for m in report["models"])
    assert spread + t["unallocated_idle_energy_kwh"] == pytest.approx(idle_j / 3.6e6, rel=1e-9)
    assert t["idle_energy_kwh"] == pytest.approx(idle_j / 3.6e6, rel=1e-9)
    assert t["unallocated_idle_energy_kwh"] > 0  # GPU 7 of the bench serves no model
    for m in report["models"]:
        assert m["fully_loaded_energy_kwh"] == pytest.approx(m["energy_kwh"] + m["idle_energy_kwh"])
        assert m["fully_loaded_co2e_g"] > m["co2e_g"]


def _tiny_db(path: Path, rows: list[dict], idle: list[tuple[str, str, float]]) -> None:
    open_engine(str(path)).dispose()
    con = sqlite3.connect(path)
    base = {
        "tags": "{}",
        "duration_s": 1.0,
        "status": "ok",
        "energy_source": "counter",
        "cpu_energy_source": "missing",
        "host": "h1",
        "pid": 1,
        "zone": "FRA",
        "intensity_g_per_kwh": 50.0,
        "intensity_source": "static",
        "pue": 1.2,
        "price_per_kwh": 0.2,
        "currency": "EUR",
        "usd_per_gpu_hour": 3.6,
    }
    for row in rows:
        full = {**base, **row}
        full.setdefault("ended_at", full["started_at"])
        cols = ", ".join(full)
        con.execute(
            f"INSERT INTO queries ({cols}) VALUES ({', '.join('?' * len(full))})",
            list(full.values()),
        )
    for device, minute, joules in idle:
        con.execute(
            "INSERT INTO idle_energy (device_uuid, minute, idle_energy_j, measured_energy_j, "
            "host, pid) VALUES (?, ?, ?, ?, 'h1', 1)",
            (device, minute, joules, joules),
        )
    con.commit()
    con.close()


def _q(model, gpus, gpu_s, energy_j, day="2026-03-02", **extra):
    kwh = energy_j / 3.6e6 * 1.2
    return {
        "model": model,
        "started_at": f"{day} 10:00:00.000000",
        "gpus": json.dumps(gpus),
        "gpu_seconds": gpu_s,
        "energy_j": energy_j,
        "output_tokens": 100,
        "input_tokens": 10,
        "co2e_g": kwh * 50.0,
        "energy_cost": kwh * 0.2,
        "energy_cost_usd": None,
        "compute_cost": gpu_s * 0.001,
        **extra,
    }


def test_idle_split_per_gpu_and_model_filter_keeps_the_denominator(tmp_path, capsys):
    db = tmp_path / "tiny.db"
    minute = "2026-03-02 10:00:00.000000"
    queries = [
        _q("a", ["G0"], 1.0, 100.0),
        _q("b", ["G0"], 3.0, 300.0),
        _q("b", ["G0", "G1"], 2.0, 80.0),
    ]
    idle = [
        ("G0", minute, 400.0),
        ("G1", minute, 50.0),
        ("G9", minute, 7.0),
        ("cpu-package-0", minute, 99.0),
    ]
    _tiny_db(db, queries, idle)
    out = report_json("--db", str(db), capsys=capsys)
    models = {m["model"]: m for m in out["models"]}
    # G0: GPU-seconds a=1, b=3+1 -> a gets 400/5, b 400*4/5; G1 only b (1 s) -> all 50 J.
    assert models["a"]["idle_energy_kwh"] * 3.6e6 == pytest.approx(80.0)
    assert models["b"]["idle_energy_kwh"] * 3.6e6 == pytest.approx(320.0 + 50.0)
    assert out["totals"]["unallocated_idle_energy_kwh"] * 3.6e6 == pytest.approx(7.0)  # G9
    # Idle CO2e priced like the queries it is spread over.
    ratio = models["a"]["co2e_g"] / (models["a"]["energy_kwh"] * 3.6e6)
    assert models["a"]["fully_loaded_co2e_g"] == pytest.approx(models["a"]["co2e_g"] + 80 * ratio)
    only_a = report_json("--db", str(db), "--model", "a", capsys=capsys)
    assert only_a["models"][0]["idle_energy_kwh"] == pytest.approx(models["a"]["idle_energy_kwh"])
    assert only_a["totals"]["queries"] == 1
    # EUR prices with no USD figure stored are converted at the shipped rate, and said so.
    rate, _ = usd_per_unit("EUR")
    expected = sum(r["energy_cost"] for r in all_rows(db) if r["model"] == "a") * rate
    assert models["a"]["energy_cost_usd"] == pytest.approx(expected)
    assert any("EUR" in note and "converted" in note for note in out["notes"])


def test_groups_by_day_region_and_host_add_up(bench_db, capsys, tmp_path):
    totals = report_json("--db", str(bench_db), capsys=capsys)["totals"]
    for by, key in (("day", "day"), ("region", "zone"), ("host", "host")):
        out = report_json("--db", str(bench_db), "--by", by, capsys=capsys)
        groups = out["groups"]
        assert out["by"] == by and all(key in g for g in groups)
        assert sum(g["queries"] for g in groups) == totals["queries"]
        assert sum(g["co2e_g"] for g in groups) == pytest.approx(totals["co2e_g"])
    assert len(groups) == 2  # two hosts in the bench data
    main(
        ["report", "--db", str(bench_db), "--by", "day", "--format", "csv", "--out", str(tmp_path)]
    )
    with open(tmp_path / "footprint-report.csv", newline="") as handle:
        *rows, total = list(csv.DictReader(handle))
    assert total["row"] == "total" and total["queries"] == "3000"
    assert len(rows) == 30 and rows[0]["day"] == "2026-01-01"
    assert sum(int(r["queries"]) for r in rows) == 3000


def test_what_if_prices_the_same_energy_in_the_cleanest_zones(bench_db, capsys):
    out = report_json("--db", str(bench_db), "--compare", "aws:ap-southeast-2", capsys=capsys)
    what_if = out["what_if"]
    zones = [z["zone"] for z in what_if["zones"]]
    assert zones[:5] == cleanest_zones() and zones[5] == "aws:ap-southeast-2"
    assert what_if["energy_kwh"] == pytest.approx(out["totals"]["fully_loaded_energy_kwh"])
    for z in what_if["zones"]:  # none is on a grid the bench ran on
        f = build_factors(z["zone"], env={})
        assert z["intensity_basis"] != "as run"
        assert z["co2e_g"] == pytest.approx(what_if["energy_kwh"] * f.pue * f.intensity_g_per_kwh)
    cleanest = what_if["zones"][0]
    assert cleanest["co2e_change"] < -0.9  # Quebec's hydro grid against the bench's mix


def test_json_contract_on_stdout(bench_db):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "footprint.cli",
            "report",
            "--db",
            str(bench_db),
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert set(out["totals"]) >= {"queries", "energy_kwh", "co2e_g", "cost_usd", "idle_energy_kwh"}
    keys = {
        "model",
        "queries",
        "errors",
        "input_tokens",
        "output_tokens",
        "gpu_seconds",
        "energy_kwh",
        "co2e_g",
        "energy_cost_usd",
        "compute_cost_usd",
        "cost_usd",
    }
    assert all(keys <= set(m) for m in out["models"])


# --- bad input -----------------------------------------------------------------------------


def _fails(args: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exited:
        main(["report", *args])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("footprint: error: ") and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--since", "yesterday"], "not a date"),
        (["--until", "2026-13-01"], "not a date"),
        (["--since", "2026-01-10", "--until", "2026-01-05"], "after --until"),
        (["--model", "gpt-9"], "unknown model 'gpt-9'"),
        (["--since", "2030-01-01"], "no queries"),
        (["--format", "pdf"], "--format"),
        (["--by", "week"], "--by"),
        (["--compare", "atlantis-1"], "--compare"),
    ],
)
def test_bad_input_exits_2_with_one_line(bench_db, capsys, args, says):
    err = _fails(["--db", str(bench_db), "--format", "json", *args], capsys)
    assert says in err


def test_missing_database_and_newer_schema_are_refused(tmp_path, bench_db, capsys):
    assert "no database" in _fails(["--db", str(tmp_path / "none.db")], capsys)
    newer = tmp_path / "newer.db"
    newer.write_bytes(bench_db.read_bytes())
    con = sqlite3.connect(newer)
    con.execute("UPDATE footprint_meta SET value = '99' WHERE key = 'schema_version'")
    con.commit()
    con.close()
    assert "newer" in _fails(["--db", str(newer), "--format", "json"], capsys)


def test_allow_empty_gives_an_explicit_empty_report(bench_db, capsys, tmp_path):
    out = report_json(
        "--db", str(bench_db), "--since", "2030-01-01", "--allow-empty", capsys=capsys
    )
    assert out["totals"]["queries"] == 0 and out["models"] == []
    assert any("No queries" in note for note in out["notes"])
    main(
        [
            "report",
            "--db",
            str(bench_db),
            "--since",
            "2030-01-01",
            "--allow-empty",
            "--out",
            str(tmp_path),
        ]
    )
    html = (tmp_path / "footprint-report.html").read_text()
    assert "No queries were recorded in this period." in html


def test_until_date_includes_that_day(bench_db, capsys):
    out = report_json(
        "--db",
        str(bench_db),
        "--since",
        "2026-01-02",
        "--until",
        "2026-01-02",
        "--by",
        "day",
        capsys=capsys,
    )
    assert [g["day"] for g in out["groups"]] == ["2026-01-02"]
    rows = all_rows(
        bench_db, "SELECT COUNT(*) AS n FROM queries WHERE started_at LIKE '2026-01-02%'"
    )
    assert out["totals"]["queries"] == rows[0]["n"]


def test_report_error_is_a_value_error():
    with pytest.raises(ReportError, match="not a date"):
        report_data.parse_when("2026/01/01", option="--since")


@pytest.fixture
def pg_copy(bench_db):
    """The bench rows copied (ids included) into a fresh PostgreSQL schema."""
    from sqlalchemy import insert, select

    from footprint.storage.models import IdleEnergy, QueryRecord

    with postgres_schema("fp_report") as url:
        source = open_engine(str(bench_db))
        target = open_engine(url)
        try:
            for table in (QueryRecord.__table__, IdleEnergy.__table__):
                with source.connect() as conn:
                    rows = [dict(r) for r in conn.execute(select(table)).mappings()]
                with target.begin() as conn:
                    conn.execute(insert(table), rows)
            rollups.rebuild(target)  # rows copied around the store: roll them up as it would
            yield url
        finally:
            source.dispose()
            target.dispose()


def assert_same(a, b, path="totals"):
    assert type(a) is type(b) or {type(a), type(b)} <= {int, float}, path
    if isinstance(a, dict):
        assert set(a) == set(b), path
        for key in a:
            assert_same(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=1e-9), path
    else:
        assert a == b, path


def test_postgresql_gives_the_same_report(bench_db, pg_copy):
    lite = build_report(ReportRequest(db=str(bench_db), by="day"))
    pg = build_report(ReportRequest(db=pg_copy, by="day"))
    assert not any("rollups" in note for note in pg["notes"] + lite["notes"])
    assert_same(pg["totals"], lite["totals"])
    assert [m["model"] for m in pg["models"]] == [m["model"] for m in lite["models"]]
    for a, b in zip(pg["models"], lite["models"]):
        assert a["queries"] == b["queries"]
        assert a["co2e_g"] == pytest.approx(b["co2e_g"], rel=1e-9)
        assert a["per_query"]["energy_wh"] == pytest.approx(b["per_query"]["energy_wh"])
        assert a["per_query"]["cost_usd"] == pytest.approx(b["per_query"]["cost_usd"])
    assert [g["day"] for g in pg["groups"]] == [g["day"] for g in lite["groups"]]
    assert [d["day"] for d in pg["daily"]] == [d["day"] for d in lite["daily"]]
    assert pg["totals"]["idle_energy_kwh"] == pytest.approx(lite["totals"]["idle_energy_kwh"])


def test_postgresql_gives_the_same_chargeback(bench_db, pg_copy):
    lite = build_report(ReportRequest(db=str(bench_db), by="tag:team"))
    pg = build_report(ReportRequest(db=pg_copy, by="tag:team"))
    assert [g["tag:team"] for g in pg["groups"]] == [g["tag:team"] for g in lite["groups"]]
    for a, b in zip(pg["groups"], lite["groups"]):
        assert_same(a, b, f"groups.{a['tag:team']}")
    assert_same(pg["totals"], lite["totals"])


def test_a_gpu_measured_by_two_processes_in_the_same_minute_is_called_out(tmp_path):
    """Two processes measuring one GPU in-process both count its whole energy: the report
    says so instead of adding them up silently."""
    import datetime as dt

    from footprint.bench.ingest import make_records
    from footprint.reporting import ReportRequest, build_report
    from footprint.storage.store import Store

    db = str(tmp_path / "twice.db")
    store = Store(db)
    records = make_records(4, seed=3)
    minute = records[0]["started_at"].replace(second=0, microsecond=0)
    uuid = json.loads(records[0]["gpus"])[0]
    idle = [
        {
            "device_uuid": uuid,
            "minute": minute + dt.timedelta(minutes=m),
            "idle_energy_j": 5.0,
            "measured_energy_j": 50.0,
            "host": "node-1",
            "pid": pid,
        }
        for pid in (101, 202)
        for m in range(3)
    ]
    store.insert(records, idle)
    store.close()
    notes = build_report(ReportRequest(db=db))["notes"]
    assert any("3 GPU-minute(s) on 1 GPU(s)" in n and "up to 2 processes" in n for n in notes)
