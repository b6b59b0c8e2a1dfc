"""CSV injection: any proxy client picks the model name, so a model (or tag, host, error
type) named ``=cmd|' /C calc'!A0`` must not become a formula when a report or an export
is opened in a spreadsheet. Text cells starting with ``= + - @``, tab or carriage return
get a leading ``'`` (OWASP); numbers stay numbers, negative ones included.

Before: the CSV cell was ``=cmd|' /C calc'!A0`` as given.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from footprint.bench.ingest import make_records
from footprint.cli import main
from footprint.reporting.csv_report import render_csv
from footprint.storage.store import Store

DANGEROUS = [
    "=cmd|' /C calc'!A0",
    "+1+cmd|' /C calc'!A0",
    "-2+3+cmd|' /C calc'!A0",
    "@SUM(1+1)*cmd|' /C calc'!A0",
    "\t=1+1",
    "\r=1+1",
]
HARMLESS = ["llama-3-8b", "a=b", "unknown"]


def _db(tmp_path: Path) -> str:
    db = str(tmp_path / "x.db")
    names = DANGEROUS + HARMLESS
    records = make_records(len(names) * 2)
    for k, record in enumerate(records):
        name = names[k % len(names)]
        record["model"] = name
        record["tags"] = json.dumps({"team": name})
        record["host"] = name
        record["error_type"] = name if record["status"] == "error" else None
    store = Store(db)
    store.insert(records)
    store.close()
    return db


def _rows(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV file, but a report's totals row."""
    with open(path, newline="") as handle:
        return [r for r in csv.DictReader(handle) if r.get("row") != "total"]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _check_cells(rows: list[dict[str, str]], text_columns: set[str]) -> None:
    for row in rows:
        for column, cell in row.items():
            assert not cell or cell[0] not in "=+-@\t\r" or _is_number(cell), (column, cell)
            if column in text_columns and cell:
                assert cell.removeprefix("'") in DANGEROUS + HARMLESS, (column, cell)


@pytest.mark.parametrize("by", [None, "tag:team", "host"])
def test_report_csv_escapes_text_cells(tmp_path, by):
    db = _db(tmp_path)
    out = tmp_path / "out"
    main(
        ["report", "--db", db, "--format", "csv", "--out", str(out), *(["--by", by] if by else [])]
    )
    rows = _rows(out / "footprint-report.csv")
    label = {None: "model", "tag:team": "tag:team", "host": "host"}[by]
    if label not in rows[0]:  # the group column's name
        label = next(c for c in rows[0] if c.startswith(("tag", "team")))
    cells = [r[label] for r in rows]
    assert sorted(c.removeprefix("'") for c in cells) == sorted(DANGEROUS + HARMLESS)
    for cell in cells:
        dangerous = cell.removeprefix("'") in DANGEROUS
        assert cell.startswith("'") == dangerous, cell
    _check_cells(rows, {label})
    assert sum(int(r["queries"]) for r in rows) == 2 * len(DANGEROUS + HARMLESS)


def test_export_csv_escapes_text_cells(tmp_path):
    db = _db(tmp_path)
    out = tmp_path / "e.csv"
    main(["db", "export", "--db", db, "--format", "csv", "--out", str(out)])
    rows = _rows(out)
    assert len(rows) == 2 * len(DANGEROUS + HARMLESS)
    assert {r["model"] for r in rows} == {"'" + n for n in DANGEROUS} | set(HARMLESS)
    assert {r["host"] for r in rows} == {r["model"] for r in rows}
    _check_cells(rows, {"model", "host", "error_type"})
    assert all(_is_number(r["energy_j"]) for r in rows)
    # JSON lines are data, not a spreadsheet: left as stored
    main(["db", "export", "--db", db, "--format", "jsonl", "--out", str(tmp_path / "e.jsonl")])
    lines = (tmp_path / "e.jsonl").read_text().splitlines()
    assert {json.loads(line)["model"] for line in lines} == set(DANGEROUS + HARMLESS)


def test_numbers_stay_numbers_negative_ones_included():
    report = {
        "by": None,
        "period": {"since": "2026-03-02T00:00:00+00:00", "until": None, "last_query": "x"},
        "totals": {"queries": 4, "co2e_change": None},
        "models": [
            {
                "model": "=1+1",
                "queries": 3,
                "co2e_change": -0.892,
                "saving": {"usd": -12},
                "note": "-not a number",
                "missing": None,
            },
            {
                "model": "-5",
                "queries": 1,
                "co2e_change": -1e-9,
                "saving": {"usd": 0},
                "note": "ok",
                "missing": None,
            },
        ],
    }
    rows = list(csv.DictReader(io.StringIO(render_csv(report))))
    assert rows[0] == {
        "model": "'=1+1",
        "row": "model",
        "period_start": "2026-03-02T00:00:00+00:00",
        "period_end": "x",
        "currency": "USD",
        "queries": "3",
        "co2e_change": "-0.892",
        "saving.usd": "-12",
        "note": "'-not a number",
        "missing": "",  # not known: an empty cell, never a text in a column of numbers
    }
    assert rows[1]["model"] == "'-5"  # a model name is text, whatever it looks like
    assert rows[1]["co2e_change"] == "-1e-09"
    assert rows[2]["row"] == "total" and rows[2]["model"] == "All models"
    assert rows[2]["queries"] == "4" and rows[2]["co2e_change"] == ""
