"""The BoAmps export of a report: build every model's BoAmps report, print or write them.

On stdout the reports are one JSON array; in a folder each is a file of its own,
``footprint-boamps-<reportId>.json`` (what BoAmps tools validate: one report per file;
the id is stable for the same data, so a re-export overwrites its file).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from footprint.reporting.boamps import Publisher, boamps_reports, export_time
from footprint.reporting.boamps_context import read_contexts
from footprint.reporting.request import ReportError, ReportRequest, period_words

BOAMPS = "boamps"
FILE_PREFIX = "footprint-boamps-"


@dataclass(frozen=True)
class BoampsExport:
    """What a BoAmps export is asked with: the publisher (None: no publisher), where to
    say which models get no report, the environment (``SOURCE_DATE_EPOCH``)."""

    publisher: Publisher | None = None
    notice: Callable[[str], None] | None = None
    env: Mapping[str, str] | None = None


def build_boamps(
    request: ReportRequest, report: dict[str, Any], version: str, options: BoampsExport
) -> list[dict[str, Any]]:
    """Every model's BoAmps report; ``ReportError`` when no model has one (unless an
    empty report was asked for with ``--allow-empty``)."""
    contexts = read_contexts(request)
    reports, skipped = boamps_reports(
        report, contexts, version, export_time(options.env), options.publisher
    )
    for line in skipped:
        if options.notice is not None:
            options.notice(line)
    if not reports and not request.allow_empty:
        raise ReportError(
            f"--format boamps: no model has measured energy in {period_words(request)} "
            "(BoAmps requires powerConsumption)"
        )
    return reports


def render_boamps(reports: list[dict[str, Any]]) -> str:
    """The reports as one indented JSON array."""
    buffer = io.StringIO()
    json.dump(reports, buffer, indent=2, ensure_ascii=False)
    buffer.write("\n")
    return buffer.getvalue()


def write_boamps(reports: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """One file per report in ``out_dir``; returns the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for report in reports:
        path = out_dir / f"{FILE_PREFIX}{report['header']['reportId']}.json"
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=2, ensure_ascii=False)
            handle.write("\n")
        written.append(path)
    return written
