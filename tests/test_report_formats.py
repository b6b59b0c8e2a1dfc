"""What a new user meets after ``footprint demo``: the report command, the same figures in
every format (latency, time to first token, input tokens, $ per 1M tokens per model), a
CSV a spreadsheet reads as numbers, and an HTML page whose tables fit a wide window."""

from __future__ import annotations

import csv
import json
import math
import re
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest
from test_report_html import check_html

from footprint.cli import main
from footprint.reporting import percentiles
from footprint.reporting.render import fmt, lookup

SERVING = (
    ("input_tokens", "count"),
    ("output_tokens", "count"),
    ("per_query.latency_s.p50", "duration"),
    ("per_query.latency_s.p95", "duration"),
    ("per_query.time_to_first_token_s.p50", "duration"),
    ("per_query.time_to_first_token_s.p95", "duration"),
    ("per_1m_output_tokens.cost_usd", "money"),
    ("per_1m_output_tokens.fully_loaded_cost_usd", "money"),
    ("per_1m_tokens.cost_usd", "money"),
    ("per_1m_tokens.fully_loaded_cost_usd", "money"),
)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """A small ``footprint demo`` (both models), its report in every format, with the
    percentile sample cut to 60 queries per model so that it is used."""
    folder = tmp_path_factory.mktemp("demo")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(percentiles, "PERCENTILE_SAMPLE", 60)
        main(
            [
                "demo",
                "--db",
                str(folder / "footprint-demo.db"),
                "--out",
                str(folder / "reports"),
                "--queries",
                "400",
                "--days",
                "2",
                "--json",
            ]
        )
    return folder


def _report(folder: Path) -> dict:
    return json.loads((folder / "reports" / "footprint-report.json").read_text("utf-8"))


def _csv(folder: Path) -> list[dict[str, str]]:
    with open(folder / "reports" / "footprint-report.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _nearest_rank(values: list[float], p: int) -> float:
    ordered = sorted(values)
    return ordered[math.ceil(p / 100 * len(ordered)) - 1]


def test_latency_and_time_to_first_token_come_from_the_records(demo):
    """Exact percentiles of a model's queries (no sample): those of its records."""
    report = _report(demo)
    con = sqlite3.connect(demo / "footprint-demo.db")
    try:
        for m in report["models"]:
            if m["per_query"]["percentile_sample"] < m["queries"]:
                continue  # sampled: checked against the note below
            rows = con.execute(
                "SELECT duration_s, time_to_first_token_s FROM queries WHERE model = ?",
                (m["model"],),
            ).fetchall()
            latency = [r[0] for r in rows]
            ttft = [r[1] for r in rows if r[1] is not None]
            for p in (50, 95):
                assert m["per_query"]["latency_s"][f"p{p}"] == _nearest_rank(latency, p)
                assert m["per_query"]["time_to_first_token_s"][f"p{p}"] == _nearest_rank(ttft, p)
    finally:
        con.close()
    assert all(m["per_query"]["latency_s"]["p95"] > 0 for m in report["models"])


def test_money_per_million_tokens_is_the_cost_over_the_tokens(demo):
    report = _report(demo)
    for m in [*report["models"], report["totals"]]:
        out, both = m["output_tokens"], m["output_tokens"] + m["input_tokens"]
        assert m["per_1m_output_tokens"]["cost_usd"] == pytest.approx(m["cost_usd"] / out * 1e6)
        assert m["per_1m_output_tokens"]["fully_loaded_cost_usd"] == pytest.approx(
            m["fully_loaded_cost_usd"] / out * 1e6
        )
        assert m["per_1m_tokens"]["cost_usd"] == pytest.approx(m["cost_usd"] / both * 1e6)
        assert m["per_1m_output_tokens"]["cost_usd"] == pytest.approx(
            m["per_1k_output_tokens"]["cost_usd"] * 1000
        )


def test_markdown_html_csv_and_json_carry_the_same_serving_figures(demo):
    report = _report(demo)
    md = (demo / "reports" / "footprint-report.md").read_text("utf-8")
    section = md.split("### Latency, tokens and $ per 1M tokens", 1)[1].split("\n## ", 1)[0]
    checker = check_html(demo / "reports" / "footprint-report.html", report)
    keys = {f["data-key"] for f in checker.figures}
    rows = {r["model"]: r for r in _csv(demo) if r["row"] == "model"}
    for i, m in enumerate(report["models"]):
        line = next(li for li in section.splitlines() if li.startswith(f"| {m['model']} |"))
        cells = [c.strip() for c in line.strip("|").split("|")][1:]
        assert cells == [fmt(lookup(m, key), kind) for key, kind in SERVING]
        assert {f"models.{i}.{key}" for key, _ in SERVING} <= keys  # same value: check_html
        for key, _ in SERVING:
            assert float(rows[m["model"]][key]) == lookup(m, key), key
    assert "Latency p95" in section and "TTFT p50" in section


def test_csv_unknown_is_an_empty_cell_with_totals_period_and_currency(demo):
    report = _report(demo)
    rows = _csv(demo)
    assert not [(r["model"], k) for r in rows for k, v in r.items() if v == "unknown"]
    assert report["totals"]["market_co2e_g"] is None  # the demo has no market factor
    assert {r["market_co2e_g"] for r in rows} == {""}
    *models, total = rows
    assert [r["model"] for r in models] == [m["model"] for m in report["models"]]
    assert {r["row"] for r in models} == {"model"} and total["row"] == "total"
    for key in ("queries", "output_tokens", "co2e_g", "cost_usd", "fully_loaded_cost_usd"):
        assert float(total[key]) == report["totals"][key]
        assert float(total[key]) == pytest.approx(sum(float(r[key]) for r in models))
    period = report["period"]
    for r in rows:
        assert r["period_start"] == period["first_query"]
        assert r["period_end"] == period["last_query"]
        assert r["currency"] == "USD"


def test_the_sample_note_states_the_sample_the_csv_carries(demo):
    report = _report(demo)
    (note,) = [n for n in report["notes"] if n.startswith("Per-query percentiles")]
    for row in _csv(demo):
        if row["row"] == "model":
            sample, queries = int(row["per_query.percentile_sample"]), int(row["queries"])
            assert sample < queries
            assert f"{row['model']} ({sample:,} of its {queries:,} queries)" in note


def test_report_names_the_database_it_looked_for_and_the_demo_one(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FOOTPRINT_DB", raising=False)
    (tmp_path / "footprint-demo.db").write_bytes(b"")  # where footprint demo writes
    with pytest.raises(SystemExit) as exited:
        main(["report"])
    assert exited.value.code == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"no database at {tmp_path / 'footprint.db'}" in err
    assert "--db" in err and "FOOTPRINT_DB" in err
    assert err.rstrip().endswith("footprint report --db footprint-demo.db")
    (tmp_path / "footprint-demo.db").unlink()
    with pytest.raises(SystemExit):
        main(["report"])
    assert "footprint-demo" not in capsys.readouterr().err


def test_demo_ends_with_the_report_command_for_its_database(tmp_path, capsys):
    db = tmp_path / "my demo.db"
    main(["demo", "--db", str(db), "--out", str(tmp_path / "r"), "--queries", "60", "--days", "1"])
    printed = capsys.readouterr().out
    last = printed.strip().splitlines()[-1]
    command = last.split(": ", 1)[1]
    assert command == f"footprint report --db '{db}' --by tag:team"
    # The GPUs it says it measured are those its report counts.
    first = json.loads((tmp_path / "r" / "footprint-report.json").read_text("utf-8"))
    words = " ".join(printed.split())
    assert f", {first['measurement']['gpus']} simulated GPUs measured in all" in words
    out = tmp_path / "again"
    main(["report", "--db", str(db), "--by", "tag:team", "--format", "json", "--out", str(out)])
    report = json.loads((out / "footprint-report.json").read_text("utf-8"))
    assert report["by"] == "tag:team"


def test_one_model_one_gpu_reads_in_the_singular(tmp_path):
    db = tmp_path / "one.db"
    main(["demo", "--db", str(db), "--out", str(tmp_path / "d"), "--queries", "20", "--days", "1"])
    out = tmp_path / "one"
    main(["report", "--db", str(db), "--model", "llama-3.1-8b", "--out", str(out)])
    report = json.loads((out / "footprint-report.json").read_text("utf-8"))
    md = (out / "footprint-report.md").read_text("utf-8")
    html = (out / "footprint-report.html").read_text("utf-8")
    gpus = report["measurement"]["gpus"]
    assert len(report["models"]) == 1
    words = f"1 model · {gpus} GPU{'' if gpus == 1 else 's'}"
    assert words in md.splitlines()[2] and words in html
    assert "1 models" not in md and "1 models" not in html


def _browser() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


# Appended to a copy of the page (the report itself has no script): which panels scroll.
PROBE = (
    "<script>window.addEventListener('load',()=>{const o=[];"
    "document.querySelectorAll('.panel').forEach((p,i)=>{if(p.scrollWidth>p.clientWidth+1)"
    "o.push(i+' '+p.scrollWidth+'>'+p.clientWidth)});const d=document.createElement('pre');"
    "d.id='probe';d.textContent=o.join(';')||'none';document.body.appendChild(d)})</script>"
)


def _overflowing(browser: str, page: Path, width: int, tmp_path: Path) -> str:
    probe = tmp_path / f"probe-{width}.html"
    probe.write_text(page.read_text("utf-8").replace("</body>", PROBE + "</body>"), "utf-8")
    done = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-dev-shm-usage",
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--window-size={width},1200",
            "--dump-dom",
            probe.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    found = re.search(r'<pre id="probe">(.*?)</pre>', done.stdout)
    assert found, done.stdout[-1000:]
    return found.group(1)


@pytest.mark.skipif(
    _browser() is None, reason="no headless browser (Debian's chromium package) installed"
)
def test_no_table_of_the_demo_report_scrolls_in_a_wide_window(demo, tmp_path):
    page = demo / "reports" / "footprint-report.html"
    browser = _browser()
    assert browser is not None
    assert _overflowing(browser, page, 1600, tmp_path) == "none"
    assert _overflowing(browser, page, 1180, tmp_path) == "none"


def test_html_prose_has_no_markdown_and_gpus_show_host_and_models(demo):
    report = _report(demo)
    html = (demo / "reports" / "footprint-report.html").read_text("utf-8")
    assert "`" not in html  # code spans are <code>, as the Markdown shows them
    assert "<code>footprint bench accuracy</code>" in html or not report["measurement"]["accuracy"]
    section = html.split('<section id="capacity">', 1)[1].split("</section>", 1)[0]
    for gpu in report["capacity"]["gpus"]:
        assert gpu["hosts"] == ["demo-hgx-node"]
        assert gpu["models"] and set(gpu["models"]) <= {m["model"] for m in report["models"]}
        assert gpu["index"] is not None and gpu["name"] == "NVIDIA H100 80GB HBM3"
        row = section.split(f"<td>{gpu['gpu']}</td>", 1)[1].split("</tr>", 1)[0]
        assert f"<td>{', '.join(gpu['models'])}</td>" in row
        before = section.split(f"<td>{gpu['gpu']}</td>", 1)[0].rsplit("<tr>", 1)[1]
        assert before == f"<td>{gpu['index']}</td><td>demo-hgx-node</td><td>{gpu['name']}</td>"
