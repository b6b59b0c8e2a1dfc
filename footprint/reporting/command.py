"""What ``footprint report`` and ``footprint demo`` do with a report, behind the CLI."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from footprint.reporting.boamps_export import (
    BOAMPS,
    BoampsExport,
    build_boamps,
    render_boamps,
    write_boamps,
)
from footprint.reporting.build import build_report
from footprint.reporting.render import FORMATS, render_json, write_report
from footprint.reporting.request import (
    ReportError,
    ReportRequest,
    check_by,
    parse_when,
    split_names,
)

DEFAULT_OUT = "reports"


# Asked for by name only: ``all`` is the report itself (html, md, csv, json); a BoAmps
# export is a publication of its own (one file per model, dated when it is made).
EXTRA_FORMATS = (BOAMPS,)


def parse_formats(values: list[str] | None) -> list[str]:
    """``--format html --format md,csv`` or ``all`` (not ``boamps``: asked by name);
    order fixed, duplicates dropped."""
    wanted = split_names(values) or ["all"]
    known = FORMATS + EXTRA_FORMATS
    bad = [f for f in wanted if f not in known and f != "all"]
    if bad:
        raise ReportError(
            f"--format must be one of {', '.join(known)} or all, got {', '.join(bad)}"
        )
    if "all" in wanted:
        return list(FORMATS) + [f for f in EXTRA_FORMATS if f in wanted]
    return [f for f in known if f in wanted]


def make_request(
    db: str,
    since: str | None,
    until: str | None,
    models: list[str] | None,
    by: str,
    compare: list[str] | None,
    allow_empty: bool,
) -> ReportRequest:
    """Validate the command line into a request (ReportError: one line, exit 2)."""
    check_by(by)
    start = parse_when(since, option="--since") if since else None
    end = parse_when(until, option="--until", end=True) if until else None
    if start and end and start >= end:
        raise ReportError(f"--since {since} is after --until {until}")
    return ReportRequest(
        db=db,
        since=start,
        until=end,
        models=split_names(models) or None,
        by=by,
        compare=split_names(compare),
        allow_empty=allow_empty,
    )


@contextlib.contextmanager
def progress_bar(enabled: bool) -> Iterator[Any]:
    """A rich progress line on stderr while a report is built (only on a terminal)."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    steps = 9  # build_report's steps, then drawing and writing
    with Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task("opening the database", total=steps)

        def advance(name: str) -> None:
            bar.update(task, description=name, advance=1)

        yield advance


def run_report(
    request: ReportRequest,
    formats: list[str],
    out: str | None,
    version: str,
    show_progress: bool = True,
    boamps: BoampsExport | None = None,
) -> tuple[dict[str, Any], list[Path], str | None]:
    """Build the report; write files, or return the JSON text for stdout.

    With only ``json`` (or only ``boamps``) asked and no ``out``, nothing is written and
    the JSON text is returned for stdout. ``boamps``: the options of a BoAmps export.
    """
    to_stdout = len(formats) == 1 and formats[0] in ("json", BOAMPS) and out is None
    with progress_bar(show_progress and not to_stdout) as advance:
        report = build_report(request, progress=advance)
        # Before any file is written: a BoAmps export with nothing to say is an error.
        reports = None
        if BOAMPS in formats:
            reports = build_boamps(request, report, version, boamps or BoampsExport())
        if to_stdout:
            text = render_json(report) if reports is None else render_boamps(reports)
            return report, [], text
        out_dir = Path(out or DEFAULT_OUT)
        written = write_report(
            report, out_dir, [f for f in formats if f in FORMATS], version, advance
        )
        if reports is not None:
            written += write_boamps(reports, out_dir)
    return report, written, None
