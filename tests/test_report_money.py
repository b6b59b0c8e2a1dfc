"""Money a finance team can sign (issue 13, reporting): unknown is unknown, never 0;
chargeback by tag; rented and owned costs, attributed and fully loaded with the GPU-hours
held; the what-if table on one footing; charts and CLI tables that name and never cut."""

from __future__ import annotations

import csv
import json
import os
import sqlite3
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
from conftest import rows as all_rows
from sqlalchemy import text
from test_report_rollups import assert_same

from footprint.bench.report import build_db
from footprint.cli import main
from footprint.reporting import ReportRequest, build_report, charts, tags
from footprint.reporting.content import period_text
from footprint.storage.engine import open_engine

REPO = Path(__file__).resolve().parents[1]
MINUTE = "2026-03-02 10:{:02d}:00.000000"


def report_json(*args: str, capsys) -> dict:
    main(["report", *args, "--format", "json"])
    return json.loads(capsys.readouterr().out)


def tiny_db(path: Path, queries: list[dict], idle: list[tuple] = ()) -> Path:
    """Rows written straight into footprint's schema: queries (defaults below) and
    idle_energy rows (device, minute, joules[, pid])."""
    open_engine(str(path)).dispose()
    con = sqlite3.connect(path)
    base = {
        "model": "m",
        "tags": "{}",
        "started_at": "2026-03-02 10:00:00.000000",
        "duration_s": 1.0,
        "status": "ok",
        "gpus": '["G0"]',
        "gpu_seconds": 1.0,
        "energy_j": 100.0,
        "energy_source": "counter",
        "cpu_energy_source": "missing",
        "host": "h1",
        "pid": 1,
        "zone": "FRA",
        "intensity_g_per_kwh": 56.0,
        "intensity_source": "static",
        "pue": 1.2,
        "price_per_kwh": 0.2,
        "currency": "USD",
        "usd_per_gpu_hour": 3.6,
        "ownership": "rented",
        "gpu_price_source": "test price",
        "output_tokens": 100,
        "input_tokens": 10,
    }
    for query in queries:
        row = {**base, **query}
        row.setdefault("ended_at", row["started_at"])
        energy, pue = row["energy_j"], row["pue"]
        if energy is not None and row["zone"] is not None:
            kwh = energy / 3.6e6 * pue
            row.setdefault("co2e_g", kwh * row["intensity_g_per_kwh"])
            row.setdefault("embodied_co2e_g", row["gpu_seconds"] * 7.9e-4)
            if row["price_per_kwh"] is not None:
                row.setdefault("energy_cost", kwh * row["price_per_kwh"])
                row.setdefault("energy_cost_usd", kwh * row["price_per_kwh"])
            if row["usd_per_gpu_hour"] is not None:
                row.setdefault("compute_cost", row["gpu_seconds"] * row["usd_per_gpu_hour"] / 3600)
        cols = ", ".join(row)
        con.execute(
            f"INSERT INTO queries ({cols}) VALUES ({', '.join('?' * len(row))})", list(row.values())
        )
    for device, minute, joules, *pid in idle:
        con.execute(
            "INSERT INTO idle_energy (device_uuid, minute, idle_energy_j, measured_energy_j, "
            "host, pid) VALUES (?, ?, ?, ?, 'h1', ?)",
            (device, minute, joules, joules, pid[0] if pid else 1),
        )
    con.commit()
    con.close()
    return path


# --- unknown is unknown ------------------------------------------------------------------


def _missing(n: int) -> list[dict]:
    """Queries where no GPU was measured: no energy, so nothing priced from it."""
    return [
        {
            "started_at": f"2026-03-0{2 + i % 2} 10:00:00.000000",
            "energy_j": None,
            "energy_source": "missing",
            "gpus": "[]",
            "gpu_seconds": 0.0,
        }
        for i in range(n)
    ]


def test_a_database_without_energy_reports_unknown_not_zero(tmp_path, capsys):
    db = tiny_db(tmp_path / "none.db", _missing(6))
    out = report_json("--db", str(db), "--by", "day", capsys=capsys)
    t = out["totals"]
    assert t["queries"] == 6
    for key in (
        "energy_kwh",
        "fully_loaded_energy_kwh",
        "co2e_g",
        "fully_loaded_co2e_g",
        "embodied_co2e_g",
        "energy_cost_usd",
        "compute_cost_usd",
        "cost_usd",
        "fully_loaded_cost_usd",
        "j_per_output_token",
    ):
        assert t[key] is None, key
    assert t["sci"] == {"per_query_g": None, "per_1k_output_tokens_g": None}
    assert set(t["per_1k_output_tokens"].values()) == {None}
    assert t["queries_without"]["energy"] == 6
    (model,) = out["models"]
    assert model["energy_kwh"] is None and model["cost_usd"] is None
    assert model["per_query"]["energy_wh"]["mean"] is None
    assert all(g["energy_kwh"] is None and g["co2e_g"] is None for g in out["groups"])
    for day in out["daily"]:
        assert all(
            f["energy_kwh"] is None and f["cost_usd"] is None for f in day["models"].values()
        )
    assert any("No GPU energy for every query" in n for n in out["notes"])

    folder = tmp_path / "out"
    main(["report", "--db", str(db), "--out", str(folder)])
    html = (folder / "footprint-report.html").read_text(encoding="utf-8")
    assert ">0 kWh<" not in html and ">$0<" not in html and ">0 g<" not in html
    assert (
        'data-key="totals.energy_kwh" data-kind="energy" data-value="" title="unknown">–<' in html
    )
    md = (folder / "footprint-report.md").read_text(encoding="utf-8")
    assert "| GPU energy (attributed) | – |" in md and "| Cost (attributed) | – |" in md
    with open(folder / "footprint-report.csv", newline="", encoding="utf-8") as handle:
        row, total = list(csv.DictReader(handle))
    assert row["energy_kwh"] == row["co2e_g"] == row["cost_usd"] == ""  # unknown: no number
    assert total["energy_kwh"] == total["co2e_g"] == total["cost_usd"] == ""
    assert not (folder / "charts" / "daily.png").exists()  # nothing known to draw


def test_missing_prices_are_unknown_and_the_notes_say_how_to_supply_them(tmp_path, capsys):
    reason = "rented: no aws price for 'Simulated GPU' (set usd_per_gpu_hour)"
    db = tiny_db(
        tmp_path / "unpriced.db",
        [
            {
                "price_per_kwh": None,
                "currency": None,
                "usd_per_gpu_hour": None,
                "gpu_price_source": reason,
            }
        ]
        * 4,
    )
    out = report_json("--db", str(db), capsys=capsys)
    t = out["totals"]
    assert t["co2e_g"] == pytest.approx(4 * 100 / 3.6e6 * 1.2 * 56)  # CO2e is known
    for key in (
        "energy_cost_usd",
        "fully_loaded_energy_cost_usd",
        "compute_cost_usd",
        "cost_usd",
        "fully_loaded_cost_usd",
    ):
        assert t[key] is None, key
    assert t["per_1k_output_tokens"]["cost_usd"] is None
    pq = out["models"][0]["per_query"]["cost_usd"]
    assert pq == {"mean": None, "p50": None, "p95": None}
    assert t["queries_without"] == {"energy": 0, "electricity_price": 4, "gpu_price": 4}
    electricity = next(n for n in out["notes"] if n.startswith("No electricity price"))
    assert "4 of 4 queries" in electricity
    assert "price_per_kwh" in electricity and "currency" in electricity
    assert "regions/electricity_prices.csv" in electricity
    gpu = next(n for n in out["notes"] if n.startswith("No GPU-hour price"))
    assert "usd_per_gpu_hour" in gpu and "regions/gpu_prices.csv" in gpu and reason in gpu


def test_a_mix_of_known_and_unknown_adds_the_known_parts(tmp_path, capsys):
    queries = [
        {"model": "a"},
        {"model": "a"},
        {"model": "a", "usd_per_gpu_hour": None},
        {"model": "b", "usd_per_gpu_hour": None},
    ]
    out = report_json("--db", str(tiny_db(tmp_path / "mix.db", queries)), capsys=capsys)
    models = {m["model"]: m for m in out["models"]}
    assert models["a"]["compute_cost_usd"] == pytest.approx(2 * 3.6 / 3600)
    assert models["b"]["compute_cost_usd"] is None and models["b"]["cost_usd"] is None
    assert out["totals"]["compute_cost_usd"] == pytest.approx(2 * 3.6 / 3600)
    assert out["totals"]["queries_without"]["gpu_price"] == 2
    assert any(n.startswith("No GPU-hour price for 2 of 4 queries") for n in out["notes"])


# --- chargeback by tag -------------------------------------------------------------------


@pytest.fixture(scope="module")
def bench_db(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("money") / "bench.db"
    build_db(path, 3000, seed=5)
    return path


def _by_team(rows: list[dict]) -> dict:
    out: dict = defaultdict(list)
    for row in rows:
        out[json.loads(row["tags"]).get("team")].append(row)
    return out


def test_chargeback_by_tag_adds_up_to_the_totals(bench_db, capsys):
    out = report_json("--db", str(bench_db), "--by", "tag:team", capsys=capsys)
    assert out["by"] == out["filters"]["by"] == "tag:team"
    groups = out["groups"]
    assert [g["tag:team"] for g in groups] == [None, "ads", "assistant", "search"]
    teams = _by_team(all_rows(bench_db))
    for g in groups:
        mine = teams[g["tag:team"]]
        assert g["queries"] == len(mine)
        assert g["energy_kwh"] == pytest.approx(sum(r["energy_j"] for r in mine) / 3.6e6)
        assert g["co2e_g"] == pytest.approx(sum(r["co2e_g"] for r in mine), rel=1e-9)
        assert g["cost_usd"] == pytest.approx(sum(r["compute_cost"] for r in mine), rel=1e-9)
        assert g["gpu_hours_busy"] == pytest.approx(sum(r["gpu_seconds"] for r in mine) / 3600)
    t = out["totals"]
    for key in (
        "queries",
        "output_tokens",
        "energy_kwh",
        "idle_energy_kwh",
        "co2e_g",
        "fully_loaded_co2e_g",
        "fully_loaded_embodied_co2e_g",
        "energy_cost_usd",
        "cost_usd",
        "fully_loaded_cost_usd",
        "gpu_hours_busy",
    ):
        whole = t[key] - (t["unallocated_idle_energy_kwh"] if key == "idle_energy_kwh" else 0)
        assert sum(g[key] for g in groups) == pytest.approx(whole, rel=1e-9), key
    held = t["gpu_hours_held"] - t["unallocated_gpu_hours_held"]
    assert sum(g["gpu_hours_held"] for g in groups) == pytest.approx(held, rel=1e-9)
    # The same figures as the models': a team that is one model's whole traffic would match.
    by_model = report_json(
        "--db", str(bench_db), "--by", "tag:team", "--model", "bge-m3", capsys=capsys
    )
    assert sum(g["queries"] for g in by_model["groups"]) == by_model["models"][0]["queries"]
    assert sum(g["fully_loaded_cost_usd"] for g in by_model["groups"]) == pytest.approx(
        by_model["models"][0]["fully_loaded_cost_usd"], rel=1e-9
    )


def test_chargeback_slices_give_the_scan_of_every_query(bench_db, monkeypatch):
    request = ReportRequest(db=str(bench_db), by="tag:env")
    whole = build_report(request)["groups"]
    monkeypatch.setattr(tags, "PARALLEL_ROWS", 10)
    monkeypatch.setattr(tags, "MAX_WORKERS", 3)
    monkeypatch.setattr(tags.os, "cpu_count", lambda: 3)
    sliced = build_report(request)["groups"]
    assert [g["tag:env"] for g in sliced] == [g["tag:env"] for g in whole] == ["prod", "staging"]
    assert_same(sliced, whole)


def test_chargeback_in_html_markdown_and_csv(bench_db, tmp_path):
    folder = tmp_path / "out"
    main(["report", "--db", str(bench_db), "--by", "tag:team", "--out", str(folder)])
    html = (folder / "footprint-report.html").read_text(encoding="utf-8")
    assert "<h2>By team (tag)</h2>" in html and "<td>(no team)</td>" in html
    assert 'data-key="groups.0.fully_loaded_cost_usd"' in html
    assert "Chargeback by tag" in html
    md = (folder / "footprint-report.md").read_text(encoding="utf-8")
    assert "## By team (tag)" in md and "| (no team) |" in md
    with open(folder / "footprint-report.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["tag:team"] for r in rows] == ["", "ads", "assistant", "search", "All"]
    assert [r["row"] for r in rows] == ["group"] * 4 + ["total"]


def test_tag_values_are_text_and_queries_without_the_tag_are_one_group(db_url, capsys):
    from footprint.bench.ingest import make_records
    from footprint.storage.store import Store

    records = make_records(7, seed=4)
    given = (
        {"team": True},
        {"team": 42},
        {"team": "a b"},
        {"other": 1},
        {},
        {"team": None},
        {"team": "a b"},
    )
    for record, tag in zip(records, given):
        record["tags"] = json.dumps(tag)
    store = Store(db_url)
    store.insert(records)
    store.close()
    report = build_report(ReportRequest(db=db_url, by="tag:team"))
    counts = {g["tag:team"]: g["queries"] for g in report["groups"]}
    assert counts == {None: 3, "42": 1, "a b": 2, "true": 1}
    # Tags that are not JSON, written around the store: counted as without the tag (on
    # PostgreSQL the fast scan fails on them and the report scans again around them).
    engine = open_engine(db_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE queries SET tags = '{not json' WHERE tags = '{}'"))
    engine.dispose()
    report = build_report(ReportRequest(db=db_url, by="tag:team"))
    assert {g["tag:team"]: g["queries"] for g in report["groups"]} == counts
    assert report["totals"]["queries"] == 7


@pytest.mark.parametrize("name", ["", "te'am", "a.b", "1x", "a b", "x" * 65])
def test_a_tag_name_that_is_not_an_identifier_exits_2(bench_db, capsys, name):
    with pytest.raises(SystemExit) as exited:
        main(["report", "--db", str(bench_db), "--format", "json", "--by", f"tag:{name}"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("footprint: error: --by tag:NAME") and err.count("\n") == 1


# --- cost model and capacity ---------------------------------------------------------------


def test_rented_costs_gpu_time_owned_adds_electricity(tmp_path, capsys):
    queries = [
        {"ownership": "rented", "compute_cost": 1.0, "energy_cost_usd": 0.5},
        {"ownership": "owned", "compute_cost": 2.0, "energy_cost_usd": 0.25},
        {"ownership": None, "compute_cost": 4.0, "energy_cost_usd": 0.125},  # recorded before
    ]
    out = report_json("--db", str(tiny_db(tmp_path / "own.db", queries)), capsys=capsys)
    t = out["totals"]
    assert t["cost_usd"] == pytest.approx(1.0 + 2.25 + 4.125)
    assert t["energy_cost_usd"] == pytest.approx(0.875)  # shown, rented's not added
    assert t["compute_cost_usd"] == pytest.approx(7.0)
    assert t["queries_by_ownership"] == {"rented": 1, "owned": 1, "unknown": 1}
    pq = out["models"][0]["per_query"]["cost_usd"]
    assert (pq["p50"], pq["p95"]) == (pytest.approx(2.25), pytest.approx(4.125))


def _capacity_db(path: Path) -> Path:
    """G0 held 60 minutes (one of them measured by two processes), busy 0.3 h: model a
    360 GPU-seconds, b 720; G9 held 30 minutes and served no query."""
    idle = [("G0", MINUTE.format(m), 50.0) for m in range(60)]
    idle += [("G0", MINUTE.format(5), 50.0, 2)]  # a second process, same minute
    idle += [("G9", MINUTE.format(m), 20.0) for m in range(30)]
    queries = [
        {"model": "a", "gpu_seconds": 360.0, "energy_j": 36_000.0},
        {"model": "b", "gpu_seconds": 720.0, "energy_j": 72_000.0},
    ]
    return tiny_db(path, queries, idle)


def test_gpu_hours_held_against_busy_and_the_idle_time_charged(tmp_path, capsys):
    db = _capacity_db(tmp_path / "held.db")
    out = report_json("--db", str(db), capsys=capsys)
    t = out["totals"]
    assert t["gpu_hours_busy"] == pytest.approx(0.3)
    assert t["gpu_hours_held"] == pytest.approx(1.5)  # G0 1 h (minutes counted once) + G9
    assert t["unallocated_gpu_hours_held"] == pytest.approx(0.5)
    assert t["utilisation"] == pytest.approx(0.2)
    models = {m["model"]: m for m in out["models"]}
    a, b = models["a"], models["b"]
    assert a["gpu_hours_held"] == pytest.approx(0.1 + 0.7 / 3)  # its GPU-seconds' share
    assert b["gpu_hours_held"] == pytest.approx(0.2 + 0.7 * 2 / 3)
    assert a["utilisation"] == pytest.approx(0.1 / (0.1 + 0.7 / 3))
    # Idle GPU-hours at the $/GPU-hour of the GPU's queries, spread by GPU-seconds.
    assert a["cost_usd"] == pytest.approx(0.36)
    assert a["fully_loaded_compute_cost_usd"] == pytest.approx(0.36 + 0.7 / 3 * 3.6)
    assert a["fully_loaded_cost_usd"] == a["fully_loaded_compute_cost_usd"]  # rented
    assert t["fully_loaded_cost_usd"] == pytest.approx(1.08 + 0.7 * 3.6)  # G9: no price
    # SCI's M over the time held: the embodied carbon of the held GPU-hours.
    held_m = a["embodied_co2e_g"] * a["gpu_hours_held"] / a["gpu_hours_busy"]
    assert a["fully_loaded_embodied_co2e_g"] == pytest.approx(held_m)
    assert a["sci"]["per_query_g"] == pytest.approx(a["fully_loaded_co2e_g"] + held_m)
    gpus = {g["gpu"]: g for g in out["capacity"]["gpus"]}
    assert gpus["G0"]["gpu_hours_held"] == pytest.approx(1.0)
    assert gpus["G9"]["utilisation"] == 0.0
    assert any("0.5 GPU-hours were held on GPUs that served no query" in n for n in out["notes"])
    # A day holds what was held that day; --model keeps a's share only.
    (day,) = report_json("--db", str(db), "--by", "day", capsys=capsys)["groups"]
    assert day["gpu_hours_held"] == pytest.approx(1.5)
    assert day["fully_loaded_cost_usd"] == pytest.approx(1.08 + 0.7 * 3.6)
    only_a = report_json("--db", str(db), "--model", "a", capsys=capsys)["totals"]
    assert only_a["gpu_hours_held"] == pytest.approx(a["gpu_hours_held"])


def test_owned_gpus_charge_the_idle_electricity_too(tmp_path, capsys):
    idle = [("G0", MINUTE.format(m), 60.0) for m in range(10)]
    queries = [{"ownership": "owned", "gpu_seconds": 60.0, "energy_j": 6000.0}]
    out = report_json("--db", str(tiny_db(tmp_path / "o.db", queries, idle)), capsys=capsys)
    t = out["totals"]
    idle_electricity = t["fully_loaded_energy_cost_usd"] - t["energy_cost_usd"]
    assert idle_electricity == pytest.approx(600.0 / 3.6e6 * 1.2 * 0.2)
    idle_gpu_time = t["fully_loaded_compute_cost_usd"] - t["compute_cost_usd"]
    assert idle_gpu_time == pytest.approx(9 / 60 * 3.6)
    assert t["fully_loaded_cost_usd"] == pytest.approx(
        t["cost_usd"] + idle_electricity + idle_gpu_time
    )


def test_without_per_minute_rows_the_time_held_is_unknown(tmp_path, capsys):
    out = report_json("--db", str(tiny_db(tmp_path / "n.db", [{}])), capsys=capsys)
    assert out["totals"]["gpu_hours_held"] is None and out["totals"]["utilisation"] is None
    assert out["totals"]["gpu_hours_busy"] == pytest.approx(1 / 3600)
    assert any("No GPU time held was measured" in n for n in out["notes"])


# --- what-if on one footing ----------------------------------------------------------------


def test_what_if_prices_a_zone_on_the_same_grid_with_the_as_run_intensity(tmp_path, capsys):
    from footprint.pricing import build_factors

    db = tiny_db(tmp_path / "fra.db", [{}, {}])
    out = report_json(
        "--db",
        str(db),
        "--compare",
        "gcp:europe-west9",
        "--compare",
        "gcp:europe-west1",
        capsys=capsys,
    )
    what_if = out["what_if"]
    as_run = what_if["as_run"]
    assert as_run["intensity_g_per_kwh"] == pytest.approx(56.0)
    assert as_run["pue"] == pytest.approx(1.2)
    assert as_run["intensity_basis"] == "grid"
    zones = {z["zone"]: z for z in what_if["zones"]}
    paris = zones["gcp:europe-west9"]  # Paris is on the French grid
    assert paris["intensity_basis"] == "as run" and paris["same_footing"]
    assert paris["intensity_g_per_kwh"] == pytest.approx(56.0)
    pue = build_factors("gcp:europe-west9", env={}).pue
    assert paris["co2e_change"] == pytest.approx(pue / 1.2 - 1)  # only the PUE differs
    belgium = zones["gcp:europe-west1"]  # Google's own figure for its region
    assert belgium["intensity_basis"] == "provider" and not belgium["same_footing"]
    folder = tmp_path / "out"
    main(
        [
            "report",
            "--db",
            str(db),
            "--out",
            str(folder),
            "--format",
            "md",
            "--compare",
            "gcp:europe-west1",
        ]
    )
    md = (folder / "footprint-report.md").read_text(encoding="utf-8")
    assert "| As run (FRA) | 56 | grid (codecarbon) | 1.2 |" in md
    assert "provider's own †" in md and "† " in md.split("## What if elsewhere", 1)[1]


# --- charts, period, CLI tables, modules ---------------------------------------------------


def test_svg_charts_name_themselves_for_screen_readers(bench_db):
    report = build_report(ReportRequest(db=str(bench_db)))
    made = charts.build_charts(report)
    assert [c.name for c in made] == ["daily", "models", "what-if"]
    for chart in made:
        head = chart.svg.split(">", 1)[0]
        assert f'role="img" aria-labelledby="{chart.name}-title"' in head
        assert f'<title id="{chart.name}-title">' in chart.svg


def test_period_text_ends_on_the_day_before_an_exclusive_midnight():
    report = {
        "period": {
            "since": "2026-03-02T00:00:00+00:00",
            "until": "2026-03-09T00:00:00+00:00",
            "first_query": None,
            "last_query": None,
        }
    }
    assert period_text(report) == "2 Mar 2026 – 8 Mar 2026 (UTC)"
    report["period"]["until"] = "2026-03-09T06:00:00+00:00"
    assert period_text(report) == "2 Mar 2026 – 9 Mar 2026 (UTC)"


def test_cli_tables_never_cut_zone_ids():
    env = {**os.environ, "COLUMNS": "50"}
    done = subprocess.run(
        [sys.executable, "-m", "footprint.cli", "regions", "azure:"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    for zone in ("azure:southeastasia", "azure:germanywestcentral", "azure:westeurope"):
        assert zone in done.stdout


def test_reporting_is_split_by_job():
    folder = REPO / "footprint" / "reporting"
    sizes = {p.name: len(p.read_text(encoding="utf-8").splitlines()) for p in folder.glob("*.py")}
    assert {
        "request.py",
        "database.py",
        "grouped.py",
        "sums.py",
        "capacity.py",
        "tags.py",
        "percentiles.py",
        "whatif.py",
        "notes.py",
        "html_report.py",
        "markdown_report.py",
        "csv_report.py",
    } <= set(sizes)
    assert max(sizes.values()) < 600, sizes


def test_gpu_hours_held_are_the_seconds_measured_not_whole_minutes(tmp_path, capsys):
    """A GPU held for 20 s of a minute holds 20 s, not 60; two processes measuring it in
    the same minute held it once (the longer of the two)."""
    db = tiny_db(tmp_path / "seconds.db", [{"gpu_seconds": 10.0}])
    con = sqlite3.connect(db)
    rows = [
        ("G0", MINUTE.format(0), 20.0, 1),
        ("G0", MINUTE.format(1), 45.0, 1),
        ("G0", MINUTE.format(1), 30.0, 2),
    ]
    con.executemany(
        "INSERT INTO idle_energy (device_uuid, minute, idle_energy_j, measured_energy_j, "
        "measured_s, host, pid) VALUES (?, ?, 1.0, 1.0, ?, 'h1', ?)",
        rows,
    )
    con.commit()
    con.close()
    held_h = report_json("--db", str(db), capsys=capsys)["totals"]["gpu_hours_held"]
    assert held_h == pytest.approx((20.0 + 45.0) / 3600)


def test_chargeback_adds_up_when_the_intensity_changes_within_an_hour(tmp_path, capsys):
    """Hourly intensities: two queries of one model in one hour at 100 and 500 g/kWh, of
    different teams and energies, and idle time spread over them. The teams' fully loaded
    CO2e adds up to the total's."""
    queries = [
        {
            "tags": '{"team": "a"}',
            "intensity_g_per_kwh": 100.0,
            "intensity_source": "hourly",
            "energy_j": 900.0,
            "gpu_seconds": 1.0,
        },
        {
            "tags": '{"team": "b"}',
            "intensity_g_per_kwh": 500.0,
            "intensity_source": "hourly",
            "energy_j": 100.0,
            "gpu_seconds": 3.0,
            "started_at": "2026-03-02 10:30:00.000000",
        },
    ]
    idle = [("G0", MINUTE.format(m), 5_000.0) for m in range(10)]
    db = tiny_db(tmp_path / "hourly.db", queries, idle)
    out = report_json("--db", str(db), "--by", "tag:team", capsys=capsys)
    t, groups = out["totals"], out["groups"]
    assert [g["tag:team"] for g in groups] == ["a", "b"]
    for key in (
        "co2e_g",
        "fully_loaded_co2e_g",
        "fully_loaded_energy_kwh",
        "cost_usd",
        "fully_loaded_cost_usd",
    ):
        assert sum(g[key] for g in groups) == pytest.approx(t[key], rel=1e-9), key
    # b ran 3 of the 4 busy GPU-seconds at 5x the intensity: most of the idle CO2e is b's
    idle_b = groups[1]["fully_loaded_co2e_g"] - groups[1]["co2e_g"]
    idle_a = groups[0]["fully_loaded_co2e_g"] - groups[0]["co2e_g"]
    assert idle_b == pytest.approx(15 * idle_a, rel=1e-9)
