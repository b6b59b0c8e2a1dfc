"""Per 1M input tokens and per 1M output tokens in reports: Σ prefill energy / Σ input
tokens and Σ decode energy / Σ output tokens over the queries that carry both phase
energies and both token counts, per model and in total, the same from the rollups and from
a scan, on SQLite and PostgreSQL, in JSON, CSV, Markdown and HTML; unknown (–) where no
query carries them; published hosted prices beside the models that have some."""

from __future__ import annotations

import csv
import json

import pytest
from sqlalchemy import text
from test_report_rollups import assert_same

from footprint.bench.ingest import MODELS, make_records
from footprint.cli import main
from footprint.reporting import ReportRequest, build_report
from footprint.reporting.render import fmt
from footprint.storage.engine import open_engine
from footprint.storage.store import Store

SPLIT, HALF, NONE, LLAMA = MODELS[0], MODELS[1], MODELS[2], "llama-3.1-8b"


def phase_records() -> list[dict]:
    """Every record of SPLIT split (a token count missing on some: left out), half of
    HALF's, none of NONE's (and NONE's fourth model renamed to a published one)."""
    records = make_records(240, seed=21)
    for i, r in enumerate(records):
        if r["model"] == MODELS[3]:
            r["model"] = LLAMA
        share = 0.05 + 0.02 * (i % 9)
        r["prefill_energy_j"] = r["energy_j"] * share
        r["decode_energy_j"] = r["energy_j"] - r["prefill_energy_j"]
        if r["model"] == NONE or (r["model"] == HALF and i % 8 < 4):
            r["prefill_energy_j"] = r["decode_energy_j"] = None
        elif r["model"] == SPLIT and i % 10 == 0:
            r["output_tokens"] = None
    return records


def write(url: str, records: list[dict]) -> None:
    store = Store(url)
    try:
        for i in range(0, len(records), 70):
            store.insert(records[i : i + 70])
    finally:
        store.close()


def db_sums(url: str, model: str | None) -> tuple[int, float, float, int, int]:
    """(queries, Σ prefill J, Σ decode J, Σ input, Σ output) of the split queries, by SQL."""
    where = "prefill_energy_j IS NOT NULL AND decode_energy_j IS NOT NULL"
    where += " AND input_tokens IS NOT NULL AND output_tokens IS NOT NULL"
    params = {}
    if model is not None:
        where += " AND model = :model"
        params["model"] = model
    engine = open_engine(url, create=False)
    try:
        with engine.connect() as conn:
            row = conn.execute(
                text(
                    "SELECT count(*), sum(prefill_energy_j), sum(decode_energy_j),"
                    f" sum(input_tokens), sum(output_tokens) FROM queries WHERE {where}"
                ),
                params,
            ).one()
    finally:
        engine.dispose()
    return row[0], row[1] or 0.0, row[2] or 0.0, int(row[3] or 0), int(row[4] or 0)


def test_per_million_input_and_output_tokens_are_the_phase_sums_over_the_tokens(db_url):
    records = phase_records()
    write(db_url, records)
    report = build_report(ReportRequest(db=db_url))
    assert_same(report, build_report(ReportRequest(db=db_url), use_rollups=False))
    entries = {m["model"]: m for m in report["models"]}
    for model, entry in [*entries.items(), (None, report["totals"])]:
        n, prefill_j, decode_j, n_in, n_out = db_sums(db_url, model)
        phase = entry["per_1m_phase_tokens"]
        assert (phase["queries"], phase["input_tokens"], phase["output_tokens"]) == (n, n_in, n_out)
        if n == 0:
            assert model == NONE
            assert phase["input"] == dict.fromkeys(phase["input"])  # every figure unknown
            assert phase["output"] == dict.fromkeys(phase["output"])
            continue
        assert phase["prefill_energy_j"] == pytest.approx(prefill_j, rel=1e-9)
        assert phase["input"]["energy_j"] == pytest.approx(prefill_j / n_in * 1e6, rel=1e-9)
        assert phase["output"]["energy_j"] == pytest.approx(decode_j / n_out * 1e6, rel=1e-9)
        assert phase["input"]["energy_kwh"] == pytest.approx(prefill_j / n_in * 1e6 / 3.6e6)
        # make_records prices every joule alike: CO2e and cost per joule are constants,
        # and the phases' are the same share of them as of the energy.
        co2e_per_j = entry["co2e_g"] / (entry["energy_kwh"] * 3.6e6)
        cost_per_j = entry["cost_usd"] / (entry["energy_kwh"] * 3.6e6)
        for side, joules, tokens in (("input", prefill_j, n_in), ("output", decode_j, n_out)):
            assert phase[side]["co2e_g"] == pytest.approx(joules * co2e_per_j / tokens * 1e6)
            # compute cost is per GPU-second, so its per-joule rate differs by row: the
            # phase cost is bounded by the extreme rates, and sums exactly in total.
            assert phase[side]["cost_usd"] == pytest.approx(
                joules * cost_per_j / tokens * 1e6, rel=0.5
            )
    split_n = report["totals"]["per_1m_phase_tokens"]["queries"]
    assert 0 < split_n < len(records)
    assert any(
        f"({split_n:,} of the {len(records):,} queries in this report)" in p
        for heading, paragraphs in _method(report)
        for p in paragraphs
    )


def _method(report):
    from footprint.reporting.methodology import methodology

    return methodology(report)


def test_the_phase_cost_and_co2e_add_up_to_the_split_queries_share(tmp_path):
    """The cost split in the same proportion as energy, per rollup row: Σ over the phases
    of cost per 1M × tokens / 1M = Σ over the split queries of their cost × their
    phases' share of their energy, exact when every query of a row is split."""
    records = [r for r in phase_records() if r["model"] == SPLIT and r["output_tokens"]]
    db = str(tmp_path / "c.db")
    write(db, records)
    phase = build_report(ReportRequest(db=db))["totals"]["per_1m_phase_tokens"]
    cost = sum(r["compute_cost"] for r in records)  # rented: the cost is the GPU time
    co2e = sum(r["co2e_g"] for r in records)
    got_cost = (
        phase["input"]["cost_usd"] * phase["input_tokens"]
        + phase["output"]["cost_usd"] * phase["output_tokens"]
    ) / 1e6
    got_co2e = (
        phase["input"]["co2e_g"] * phase["input_tokens"]
        + phase["output"]["co2e_g"] * phase["output_tokens"]
    ) / 1e6
    assert got_cost == pytest.approx(cost, rel=1e-9)
    assert got_co2e == pytest.approx(co2e, rel=1e-9)


def test_every_format_shows_the_per_million_figures(tmp_path):
    db = str(tmp_path / "f.db")
    write(db, phase_records())
    out = tmp_path / "out"
    main(["report", "--db", db, "--out", str(out), "--format", "html,md,csv,json"])
    report = json.loads((out / "footprint-report.json").read_text(encoding="utf-8"))
    md = (out / "footprint-report.md").read_text(encoding="utf-8")
    html = (out / "footprint-report.html").read_text(encoding="utf-8")
    with open(out / "footprint-report.csv", newline="", encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    assert "### Per 1M input tokens and per 1M output tokens" in md
    assert "Prefill and decode: per 1M input and output tokens" in md
    by_model = {row["model"]: row for row in table}
    for i, m in enumerate(report["models"]):
        phase = m["per_1m_phase_tokens"]
        row = by_model[m["model"]]
        cells = []
        for side in ("input", "output"):
            for key, kind in (("energy_kwh", "energy"), ("co2e_g", "mass"), ("cost_usd", "money")):
                value = phase[side][key]
                column = f"per_1m_phase_tokens.{side}.{key}"
                assert row[column] == ("" if value is None else repr(value)), column
                cells.append(fmt(value, kind))
                assert f'data-key="models.{i}.{column}"' in html
        line = f"| {m['model']} | {phase['queries']:,} | " + " | ".join(cells) + " |"
        assert line in md.splitlines(), line
        if m["model"] == NONE:
            assert cells == ["–"] * 6
    total = report["totals"]["per_1m_phase_tokens"]
    assert table[-1]["row"] == "total"
    assert float(table[-1]["per_1m_phase_tokens.input.energy_j"]) == pytest.approx(
        total["input"]["energy_j"], rel=1e-15
    )


def test_published_prices_beside_the_models_that_have_some(tmp_path):
    db = str(tmp_path / "r.db")
    write(db, phase_records())
    report = build_report(ReportRequest(db=db))
    refs = report["references"]
    assert [r["model"] for r in refs] == [LLAMA]
    (ref,) = refs
    assert report["models"][ref["index"]]["model"] == LLAMA
    assert (ref["input_usd_per_1m"], ref["output_usd_per_1m"]) == (
        {"low": 0.02, "high": 0.22},
        {"low": 0.03, "high": 0.22},
    )
    assert "47df840a5ab10bbcffb8e5ac01b9899032245d1b" in ref["prices_source"]
    out = tmp_path / "out"
    main(["report", "--db", db, "--out", str(out), "--format", "md"])
    md = (out / "footprint-report.md").read_text(encoding="utf-8")
    phase = report["models"][ref["index"]]["per_1m_phase_tokens"]
    line = next(li for li in md.splitlines() if li.startswith(f"| {LLAMA} | $"))
    assert line.startswith(
        f"| {LLAMA} | {fmt(phase['input']['cost_usd'], 'money')} | $0.02–$0.22 | "
        f"{fmt(phase['output']['cost_usd'], 'money')} | $0.03–$0.22 |"
    )
    assert "### Beside published figures" in md
