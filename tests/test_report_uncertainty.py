"""The per-record energy uncertainty bound in reports: summed per model and in total (null
where no record has one), the same from rollups and from a scan, on SQLite and PostgreSQL,
and shown as "± bound" beside the attributed energy in HTML, Markdown and CSV."""

from __future__ import annotations

import csv
import json

import pytest
from test_report_rollups import assert_same

from footprint.bench.ingest import MODELS, make_records
from footprint.cli import main
from footprint.reporting import ReportRequest, build_report
from footprint.reporting.render import fmt
from footprint.storage.store import Store

FULL, NONE, HALF, SOME_MISSING = MODELS  # how many of each model's records carry a bound


def bounded_records() -> list[dict]:
    records = make_records(200, seed=12)
    for i, r in enumerate(records):
        r["energy_uncertainty_j"] = r["energy_j"] * 0.002 + 0.01 * (i % 5)
        if r["model"] == NONE:
            del r["energy_uncertainty_j"]  # written by a producer older than the bound
        elif r["model"] == HALF and i % 8 < 4:
            r["energy_uncertainty_j"] = None
        elif r["model"] == SOME_MISSING and i % 3 == 0:
            r.update(energy_j=None, energy_source="missing", energy_uncertainty_j=None)
    return records


def write(url: str, records: list[dict]) -> None:
    store = Store(url)
    try:
        for i in range(0, len(records), 70):
            store.insert(records[i : i + 70])
    finally:
        store.close()


def test_bounds_are_summed_per_model_and_in_total(db_url):
    records = bounded_records()
    write(db_url, records)
    report = build_report(ReportRequest(db=db_url))
    assert_same(report, build_report(ReportRequest(db=db_url), use_rollups=False))

    def bound_kwh(rows: list[dict]) -> float:
        return sum(r.get("energy_uncertainty_j") or 0.0 for r in rows) / 3.6e6

    models = {m["model"]: m for m in report["models"]}
    for name in (FULL, HALF, SOME_MISSING):
        mine = [r for r in records if r["model"] == name]
        assert models[name]["energy_uncertainty_kwh"] == pytest.approx(bound_kwh(mine), rel=1e-12)
    assert models[NONE]["energy_uncertainty_kwh"] is None  # no record of it has a bound
    assert report["totals"]["energy_uncertainty_kwh"] == pytest.approx(
        bound_kwh(records), rel=1e-12
    )
    bounded = sum(r.get("energy_uncertainty_j") is not None for r in records)
    measured = sum(r["energy_j"] is not None for r in records)
    assert report["measurement"]["uncertainty_queries"] == bounded
    assert report["measurement"]["measured_queries"] == measured
    note = f"{measured - bounded:,} of the {measured:,} queries with GPU energy carry no"
    assert any(n.startswith(note) and f"other {bounded:,} only" in n for n in report["notes"])
    # The JSON keys sit beside the energy they bound.
    keys = list(report["totals"])
    assert keys[keys.index("energy_kwh") + 1] == "energy_uncertainty_kwh"
    by_day = build_report(ReportRequest(db=db_url, by="day"))
    assert sum(g["energy_uncertainty_kwh"] for g in by_day["groups"]) == pytest.approx(
        bound_kwh(records), rel=1e-12
    )


def test_records_without_bounds_give_null_and_no_plus_minus(tmp_path, capsys):
    db = str(tmp_path / "old.db")
    records = make_records(30, seed=1)
    for r in records:
        r.pop("energy_uncertainty_j", None)
    write(db, records)
    out = tmp_path / "out"
    main(["report", "--db", db, "--out", str(out)])
    report = json.loads((out / "footprint-report.json").read_text(encoding="utf-8"))
    assert report["totals"]["energy_uncertainty_kwh"] is None
    assert all(m["energy_uncertainty_kwh"] is None for m in report["models"])
    assert any("no ± figure is shown" in n for n in report["notes"])
    html = (out / "footprint-report.html").read_text(encoding="utf-8")
    assert 'class="bound"' not in html and "<td>± " not in html
    md = (out / "footprint-report.md").read_text(encoding="utf-8")
    energy = fmt(report["totals"]["energy_kwh"], "energy")
    assert f"| GPU energy (attributed) | {energy} |" in md
    assert "| ± bound |" in md and "| ± –" not in md
    with open(out / "footprint-report.csv", newline="") as handle:
        assert {row["energy_uncertainty_kwh"] for row in csv.DictReader(handle)} == {""}


def test_json_on_stdout_has_the_bounds(tmp_path, capsys):
    db = str(tmp_path / "j.db")
    write(db, bounded_records())
    main(["report", "--db", db, "--format", "json"])
    out = json.loads(capsys.readouterr().out)
    assert out["totals"]["energy_uncertainty_kwh"] > 0
    assert {m["model"]: m["energy_uncertainty_kwh"] is None for m in out["models"]} == {
        FULL: False,
        NONE: True,
        HALF: False,
        SOME_MISSING: False,
    }


def test_html_and_markdown_show_each_bound_beside_its_energy(tmp_path):
    db = str(tmp_path / "h.db")
    write(db, bounded_records())
    out = tmp_path / "out"
    main(["report", "--db", db, "--out", str(out), "--format", "html,md,json"])
    report = json.loads((out / "footprint-report.json").read_text(encoding="utf-8"))
    html = (out / "footprint-report.html").read_text(encoding="utf-8")
    md = (out / "footprint-report.md").read_text(encoding="utf-8")
    t = report["totals"]
    shown = fmt(t["energy_uncertainty_kwh"], "energy")
    assert (
        f'<span class="bound"> ± <span data-key="totals.energy_uncertainty_kwh" '
        f'data-kind="energy" data-value="{t["energy_uncertainty_kwh"]!r}">{shown}</span></span>'
    ) in html
    assert f"| {fmt(t['energy_kwh'], 'energy')} ± {shown} |" in md
    for i, m in enumerate(report["models"]):
        line = next(li for li in md.splitlines() if li.startswith(f"| {m['model']} |"))
        energy = fmt(m["energy_kwh"], "energy")
        if m["energy_uncertainty_kwh"] is None:
            assert f"| {energy} | – |" in line
            assert f'<td><span data-key="models.{i}.energy_uncertainty_kwh"' in html
        else:
            assert f"| {energy} | ± {fmt(m['energy_uncertainty_kwh'], 'energy')} |" in line
            assert f'<td>± <span data-key="models.{i}.energy_uncertainty_kwh"' in html
