"""Writing a report: HTML (``html_report``), Markdown with PNG charts (``markdown_report``),
CSV and JSON (``csv_report``), all from the data of ``build_report``.

What the formats share is in ``content`` (cards, wording), ``tables`` and
``factor_tables``, the method in ``methodology``, the charts in ``charts``. No wall-clock
date is written anywhere, so the same data gives the same files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from footprint.reporting.charts import Chart, build_charts
from footprint.reporting.content import TITLE, cell, fmt, lookup, pm
from footprint.reporting.csv_report import render_csv, render_json, write_csv, write_json
from footprint.reporting.html_report import render_html
from footprint.reporting.markdown_report import render_markdown
from footprint.reporting.methodology import methodology

FORMATS = ("html", "md", "csv", "json")
BASENAME = "footprint-report"

__all__ = [
    "BASENAME",
    "FORMATS",
    "TITLE",
    "cell",
    "fmt",
    "lookup",
    "methodology",
    "pm",
    "render_csv",
    "render_html",
    "render_json",
    "render_markdown",
    "write_csv",
    "write_json",
    "write_report",
]


def write_report(
    report: dict[str, Any],
    out_dir: Path,
    formats: list[str],
    version: str,
    progress: Any = None,
) -> list[Path]:
    """Write the report in each format into ``out_dir``; returns the files written."""
    step = progress or (lambda _name: None)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    charts: list[Chart] = []
    if "html" in formats or "md" in formats:
        step("drawing charts")
        charts = build_charts(report)
    if "html" in formats:
        step("writing HTML")
        path = out_dir / f"{BASENAME}.html"
        path.write_text(render_html(report, charts, version), encoding="utf-8")
        written.append(path)
    if "md" in formats:
        step("writing Markdown")
        chart_dir = out_dir / "charts"
        chart_dir.mkdir(exist_ok=True)
        for chart in charts:
            png = chart_dir / f"{chart.name}.png"
            png.write_bytes(chart.png)
            written.append(png)
        path = out_dir / f"{BASENAME}.md"
        path.write_text(render_markdown(report, charts, version), encoding="utf-8")
        written.append(path)
    if "csv" in formats:
        path = out_dir / f"{BASENAME}.csv"
        with open(path, "w", encoding="utf-8", newline="") as handle:
            write_csv(report, handle)
        written.append(path)
    if "json" in formats:
        path = out_dir / f"{BASENAME}.json"
        with open(path, "w", encoding="utf-8") as handle:
            write_json(report, handle)
        written.append(path)
    return written
