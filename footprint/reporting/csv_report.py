"""The report as data: CSV (one row per model or group, every figure a column, then a
totals row) and JSON.

In the CSV a figure that is not known is an empty cell (never 0, and no text in a column
of numbers, which a spreadsheet would then read as text); so is a group's value that is
null (the queries without the tag of ``--by tag:NAME``). Every row says what it is
(``row``: model, group or total), the period it covers (``period_start``,
``period_end``: ISO 8601, UTC) and the currency of its ``*_usd`` columns (``currency``).
Text that a spreadsheet would run as a formula (any client names its model) starts with
``'`` (``spreadsheet_text``); numbers stay numbers.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from footprint.reporting.request import group_key
from footprint.storage.export import spreadsheet_text

CURRENCY = "USD"  # every money column of the report (``*_usd``)
TOTAL_LABELS = {"model": "All models", "group": "All"}


def _flatten(entry: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in entry.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def render_csv(report: dict[str, Any]) -> str:
    """One row per group (per model unless --by says otherwise), every figure a column."""
    buffer = io.StringIO()
    write_csv(report, buffer)
    return buffer.getvalue()


def write_csv(report: dict[str, Any], handle: Any) -> None:
    """``render_csv`` written row by row: every model, however many (a data export), then
    the totals (the columns the entries have; percentiles are per model only)."""
    grouped = report.get("groups") is not None
    entries = report["groups"] if grouped else report["models"]
    label = group_key(report["by"]) if grouped else "model"
    kind = "group" if grouped else "model"
    period = report["period"]
    context = {
        "row": kind,
        "period_start": period["since"] or period["first_query"],
        "period_end": period["until"] or period["last_query"],
        "currency": CURRENCY,
    }
    columns: dict[str, None] = dict.fromkeys([label, *context])
    for entry in entries:
        columns.update(dict.fromkeys(_flatten(entry)))
    fields = list(columns)
    writer = csv.DictWriter(handle, fieldnames=fields, lineterminator="\n", extrasaction="ignore")
    # A row with a carriage return in its text: every text cell quoted (with "\n" as line
    # end the default quoting leaves a "\r" bare, and readers would split the row there).
    quoted = csv.DictWriter(
        handle,
        fieldnames=fields,
        lineterminator="\n",
        quoting=csv.QUOTE_NONNUMERIC,
        extrasaction="ignore",
    )
    writer.writerow({k: spreadsheet_text(k) for k in fields})
    totals = {**report["totals"], label: TOTAL_LABELS[kind]}
    for entry, row_kind in [*((e, kind) for e in entries), (totals, "total")]:
        values = {**context, "row": row_kind, **_flatten(entry)}
        row = {k: "" if v is None else spreadsheet_text(v) for k, v in values.items()}
        bare_cr = any(isinstance(v, str) and "\r" in v for v in row.values())
        (quoted if bare_cr else writer).writerow(row)


def render_json(report: dict[str, Any]) -> str:
    """The report as indented JSON text (``json.dumps`` would hold every piece at once)."""
    buffer = io.StringIO()
    write_json(report, buffer)
    return buffer.getvalue()


def write_json(report: dict[str, Any], handle: Any) -> None:
    """``render_json`` written piece by piece: no copy of the whole text in memory."""
    json.dump(report, handle, indent=2, ensure_ascii=False)
    handle.write("\n")
