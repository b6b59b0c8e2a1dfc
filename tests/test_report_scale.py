"""Reports at any number of models: the HTML and Markdown tables and the charts show the
first TOP_MODELS models by CO2e and one "all others (K models)" row; the JSON and CSV list
every model; the work and memory of the report do not grow with models it does not show.

Behaviour only: the time and memory of a report over 20,000 models are measured by
``footprint bench report --models 20000`` (a benchmark, not a timed test).
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
from matplotlib.figure import Figure
from test_report_html import check_html

from footprint.bench.report import build_db, synthetic_models
from footprint.cli import main
from footprint.reporting import ReportRequest, build_report, charts
from footprint.reporting import build as report_build
from footprint.reporting.figures import TOP_MODELS, shown_models

SUMMED = (
    "queries",
    "errors",
    "output_tokens",
    "gpu_seconds",
    "energy_kwh",
    "co2e_g",
    "fully_loaded_co2e_g",
    "embodied_co2e_g",
    "cost_usd",
    "idle_energy_kwh",
)


def _db(folder: Path, models: int, rows: int) -> Path:
    path = folder / f"models-{models}.db"
    build_db(path, rows, seed=4, models=models)
    return path


@pytest.fixture(scope="module")
def thirty(tmp_path_factory) -> Path:
    return _db(tmp_path_factory.mktemp("scale"), 30, 900)


@pytest.fixture(scope="module")
def thirty_out(thirty, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("scale-out")
    main(["report", "--db", str(thirty), "--out", str(out)])
    return out


def _json(out: Path) -> dict:
    return json.loads((out / "footprint-report.json").read_text(encoding="utf-8"))


def test_top_named_constant_and_synthetic_models():
    assert TOP_MODELS == 12
    names = [m[0] for m in synthetic_models(30)]
    assert len(set(names)) == 30


def test_json_keeps_every_model_and_adds_the_others_up(thirty):
    report = build_report(ReportRequest(db=str(thirty)))
    models = report["models"]
    assert len(models) == 30 and report["totals"]["models"] == 30
    assert [m["co2e_g"] for m in models] == sorted((m["co2e_g"] for m in models), reverse=True)
    others = report["others"]
    assert others["label"] == "all others (18 models)" and others["models"] == 18
    for key in SUMMED:  # the others are the models after the first 12; all add to the totals
        assert others[key] == pytest.approx(sum(m[key] for m in models[12:]), rel=1e-9), key
        total = sum(m[key] for m in models)
        if key == "idle_energy_kwh":  # and the idle energy of GPUs no query ran on
            total += report["totals"]["unallocated_idle_energy_kwh"]
        assert report["totals"][key] == pytest.approx(total, rel=1e-9, abs=1e-12), key
    assert others["per_query"]["energy_wh"]["mean"] == pytest.approx(
        others["energy_kwh"] * 1000 / others["queries"]
    )
    assert others["per_query"]["energy_wh"]["p95"] is None  # no percentile of a mix of models
    # The daily series name only the models that ran that day, and add up to the totals.
    day_queries = sum(f["queries"] for d in report["daily"] for f in d["models"].values())
    assert day_queries == report["totals"]["queries"]
    assert {name for d in report["daily"] for name in d["models"]} == {m["model"] for m in models}


def test_html_markdown_show_twelve_and_the_others_csv_every_model(thirty_out):
    report = _json(thirty_out)
    html = (thirty_out / "footprint-report.html").read_text(encoding="utf-8")
    check_html(thirty_out / "footprint-report.html", report)  # every figure is the JSON's
    models = re.search(r'<section id="models">(.*?)</section>', html, re.S).group(1)
    tables = re.findall(r"<tbody>(.*?)</tbody>", models, re.S)
    # energy and CO2e, cost and capacity, per query and per 1k tokens, latency and $ per 1M,
    # per 1M input and per 1M output tokens
    assert len(tables) == 5
    for body in tables:
        names = re.findall(r"<tr><td>(?:<span[^>]*></span>)?([^<]*)</td>", body)
        assert names == [m["model"] for m in report["models"][:12]] + ["all others (18 models)"]
    assert 'data-key="others.co2e_g"' in html and 'data-key="models.12.co2e_g"' not in html
    assert "the other 18 added up" in html

    md = (thirty_out / "footprint-report.md").read_text(encoding="utf-8")
    section = md.split("## Per model", 1)[1].split("### Cost and capacity", 1)[0]
    lines = [li for li in section.splitlines() if li.startswith("| ") and "---" not in li]
    rows = [li.split(" | ")[0].removeprefix("| ") for li in lines[1:]]  # after the header
    assert rows == [m["model"] for m in report["models"][:12]] + [
        "all others (18 models)",
        "**All models**",
    ]
    with open(thirty_out / "footprint-report.csv", newline="", encoding="utf-8") as handle:
        listed = [row["model"] for row in csv.DictReader(handle)]
    # a data export: every model, then the totals
    assert listed == [m["model"] for m in report["models"]] + ["All models"]


def test_charts_have_at_most_thirteen_series(thirty):
    report = build_report(ReportRequest(db=str(thirty)))
    fig, *_ = charts._daily_chart(report, Figure)
    energy, mass = fig.axes
    names = [m["model"] for m in report["models"][:12]] + ["all others (18 models)"]
    assert [c.get_label() for c in mass.containers] == names
    assert [c.get_label() for c in energy.containers][:13] == names  # then idle, if any
    assert len(energy.containers) <= 14
    # Each day's stacked bars add up to that day's CO2e of every model.
    for i, day in enumerate(report["daily"]):
        stacked = sum(c.patches[i].get_height() for c in mass.containers)
        whole = sum(f["co2e_g"] for f in day["models"].values())
        assert stacked == pytest.approx(whole / _mass_factor(report), rel=1e-9)
    fig, *_ = charts._models_chart(report, Figure)
    co2e_axis, cost_axis = fig.axes
    assert [t.get_text() for t in co2e_axis.get_yticklabels()] == names[::-1]
    assert len(co2e_axis.containers) == 3 and len(co2e_axis.containers[0]) == 13
    colors = charts.model_colors(report)
    assert colors["others"] == charts.OTHERS_COLOR
    assert len({colors[f"models.{i}"] for i in range(12)}) == 12  # twelve distinct colours


def _mass_factor(report: dict) -> float:
    top = max(sum(f["co2e_g"] for f in d["models"].values()) for d in report["daily"])
    return charts._scale(top, charts._MASS_SCALES)[0]


def test_thirteen_models_are_all_shown(tmp_path):
    report = build_report(ReportRequest(db=str(_db(tmp_path, 13, 300))))
    assert report["others"] is None
    assert [name for _, _, name in shown_models(report)] == [m["model"] for m in report["models"]]


def test_statements_do_not_grow_with_the_models(tmp_path, monkeypatch):
    """Percentiles of thousands of small models come from a few statements, not a few per
    model; and no per-model query plan is asked for."""
    counted: list[str] = []
    opened = report_build.open_report_engine

    def counting(db):
        from sqlalchemy import event

        engine = opened(db)
        event.listen(engine, "before_cursor_execute", lambda *a: counted.append(a[2]))
        return engine

    monkeypatch.setattr(report_build, "open_report_engine", counting)
    statements = {}
    for models in (20, 400):
        counted.clear()
        report = build_report(ReportRequest(db=str(_db(tmp_path, models, 2000))))
        assert len(report["models"]) == models
        assert all(m["per_query"]["energy_wh"]["p50"] is not None for m in report["models"])
        statements[models] = len(counted)
    assert statements[400] == statements[20], statements


def test_percentiles_of_many_small_models_are_exact(tmp_path):
    import sqlite3
    from collections import defaultdict

    db = _db(tmp_path, 40, 1200)
    report = build_report(ReportRequest(db=str(db)))
    con = sqlite3.connect(db)
    energies = defaultdict(list)
    for model, energy in con.execute("SELECT model, energy_j FROM queries"):
        energies[model].append(energy / 3600)
    con.close()
    for entry in report["models"]:
        ordered = sorted(energies[entry["model"]])
        p95 = ordered[-(-95 * len(ordered) // 100) - 1]
        assert entry["per_query"]["energy_wh"]["p95"] == pytest.approx(p95, rel=1e-12)
        assert entry["per_query"]["percentile_sample"] == len(ordered)


def test_bench_report_models_measures_the_whole_command(tmp_path, capsys):
    from footprint.bench.report import run_models

    result = run_models(30, rows=600, folder=tmp_path)
    assert result["same_figures"] and result["json_models"] == 30 and result["csv_rows"] == 30
    assert result["table_rows"] == 13
    assert result["report_s"] > 0
    assert result["peak_rss_mb"] is None or result["peak_rss_mb"] > 10
    assert {"footprint-report.html", "footprint-report.json", "charts/daily.png"} <= set(
        result["files_bytes"]
    )


def test_bench_report_compares_the_same_figures(tmp_path):
    from footprint.bench.report import run

    result = run(rows=2000, repeats=1, folder=tmp_path)
    assert result["same_figures"], result
    # the chargeback run: --by tag:team over the same file, its groups checked
    assert result["tag_same_figures"] and result["tag_groups"] == 4, result
    assert result["tag_report_s"] > 0 and result["target_report_s"] == 3.0
