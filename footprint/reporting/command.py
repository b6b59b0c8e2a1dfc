"""What ``footprint report`` and ``footprint demo`` do with a report, behind the CLI."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


def parse_formats(values: list[str] | None) -> list[str]:
    """``--format html --format md,csv`` or ``all``; order fixed, duplicates dropped."""
    wanted = split_names(values) or ["all"]
    if "all" in wanted:
        return list(FORMATS)
    bad = [f for f in wanted if f not in FORMATS]
    if bad:
        raise ReportError(
            f"--format must be one of {', '.join(FORMATS)} or all, got {', '.join(bad)}"
        )
    return [f for f in FORMATS if f in wanted]


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
) -> tuple[dict[str, Any], list[Path], str | None]:
    """Build the report; write files, or return the JSON text for stdout.

    With only ``json`` asked and no ``out``, nothing is written and the JSON text is
    returned for stdout.
    """
    to_stdout = formats == ["json"] and out is None
    with progress_bar(show_progress and not to_stdout) as advance:
        report = build_report(request, progress=advance)
        if to_stdout:
            return report, [], render_json(report)
        written = write_report(report, Path(out or DEFAULT_OUT), formats, version, advance)
    return report, written, None
