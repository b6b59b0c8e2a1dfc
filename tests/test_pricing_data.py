"""The shipped regions/*.csv tables: every row sourced and dated, and the loader strict."""

from __future__ import annotations

import csv
import datetime as dt
from pathlib import Path

import pytest

from footprint.pricing import _data
from footprint.pricing._data import DataFileError, read_table

REGIONS = Path(__file__).resolve().parent.parent / "regions"
TABLES = sorted(REGIONS.glob("*.csv"))


def test_all_expected_tables_ship():
    assert {p.name for p in TABLES} >= set(_data.TABLES)


@pytest.mark.parametrize("path", TABLES, ids=lambda p: p.name)
def test_every_row_has_a_source_and_a_plausible_year(path):
    with open(path, encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows, f"{path.name} is empty"
    this_year = dt.date.today().year
    for line, row in enumerate(rows, start=2):
        assert (row.get("source") or "").strip(), f"{path.name}:{line} has no source"
        year = int(row["year"])
        assert 2000 <= year <= this_year + 1, f"{path.name}:{line} has year {year}"


@pytest.mark.parametrize("name", sorted(_data.TABLES))
def test_shipped_tables_pass_the_loader(name):
    rows = _data.table(name)
    assert rows and all(row["source"] for row in rows)


def test_cloud_region_coverage():
    rows = _data.table("cloud_regions.csv")
    by_provider: dict[str, set[str]] = {}
    for row in rows:
        by_provider.setdefault(row["provider"], set()).add(row["region"])
    assert len(by_provider["aws"]) >= 34
    assert len(by_provider["azure"]) >= 50
    assert len(by_provider["gcp"]) >= 40
    assert {
        "us-east-1",
        "eu-west-1",
        "ap-southeast-7",
        "us-gov-west-1",
        "cn-north-1",
    } <= by_provider["aws"]
    assert {"westeurope", "eastus", "swedencentral"} <= by_provider["azure"]
    assert {"europe-west1", "me-central1", "us-central1"} <= by_provider["gcp"]
    # no duplicated (provider, region)
    assert len(rows) == sum(len(v) for v in by_provider.values())


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "table.csv"
    path.write_text(text, encoding="utf-8")
    return path


COLUMNS = {"zone": _data.text, "price_per_kwh": _data.non_negative_float, "year": _data.year}


def test_read_table_parses_types(tmp_path):
    path = _write(tmp_path, "zone,price_per_kwh,year,source\nFRA,0.1785,2024,Eurostat\n\n")
    (row,) = read_table(path, COLUMNS)
    assert row["price_per_kwh"] == pytest.approx(0.1785)
    assert row["year"] == 2024 and row["source"] == "Eurostat" and row["_line"] == 2


@pytest.mark.parametrize(
    ("body", "line", "column"),
    [
        ("zone,price_per_kwh,year\nFRA,abc,2024\n", 2, "price_per_kwh"),
        ("zone,price_per_kwh,year\nFRA,0.1,2024\nDEU,-1,2024\n", 3, "price_per_kwh"),
        ("zone,price_per_kwh,year\nFRA,nan,2024\n", 2, "price_per_kwh"),
        ("zone,price_per_kwh,year\nFRA,0.1,1850\n", 2, "year"),
        ("zone,price_per_kwh,year\n ,0.1,2024\n", 2, "zone"),
        ("zone,price_per_kwh,year\nFRA,0.1\n", 2, "year"),
        ("zone,year\nFRA,2024\n", 1, "price_per_kwh"),
    ],
)
def test_read_table_errors_name_file_line_and_column(tmp_path, body, line, column):
    path = _write(tmp_path, body)
    with pytest.raises(DataFileError) as info:
        read_table(path, COLUMNS)
    err = info.value
    assert (err.path, err.line, err.column) == (str(path), line, column)
    assert str(path) in str(err) and f"line {line}" in str(err) and repr(column) in str(err)


def test_gpu_capex_ships_with_a_source_for_price_and_lifetime():
    """Purchase prices of owned GPUs: each row says what the price is (``basis``), where it
    and its lifetime come from, and which year; the sourced-and-dated test above covers it
    as a regions/*.csv table too."""
    assert "gpu_capex.csv" in _data.TABLES and REGIONS / "gpu_capex.csv" in TABLES
    rows = _data.table("gpu_capex.csv")
    assert rows
    for row in rows:
        assert row["purchase_usd"] > 0 and 0 < row["lifetime_years"] <= 10, row["_line"]
        for column in ("basis", "source", "lifetime_source"):
            assert row[column].strip(), (row["_line"], column)
        assert "http" in row["source"] and "http" in row["lifetime_source"], row["_line"]


@pytest.mark.parametrize("name", ["gpu_prices.csv", "gpu_capex.csv"])
def test_gpu_rows_are_unambiguous(name):
    """No two rows (of one provider) with the same whole-token match: the most specific
    match wins, and two equally specific identical rows would leave it to file order."""
    seen: dict[tuple, int] = {}
    for row in _data.table(name):
        spec = row["match"]
        key = (row.get("provider"), spec.required, spec.excluded)
        assert key not in seen, f"{name}:{row['_line']} repeats line {seen.get(key)}"
        seen[key] = row["_line"]


def test_gpu_price_sources_stay_short_enough_for_a_rollup_key():
    """``gpu_price_source`` is stored on each record and is a rollup key column, so the
    text built from a row stays bounded."""
    from footprint.pricing import gpu_capex_for, gpu_price_for

    for row in _data.table("gpu_prices.csv"):
        found = gpu_price_for(row["gpu_model"], row["provider"])
        assert found is not None and found[0] == row["usd_per_gpu_hour"], row["_line"]
        assert len(found[1]) <= 800, (row["_line"], len(found[1]))
    for row in _data.table("gpu_capex.csv"):
        found = gpu_capex_for(row["gpu_model"])
        assert found is not None, row["_line"]
        assert len(found[1]) <= 800, (row["_line"], len(found[1]))
