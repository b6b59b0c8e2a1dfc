"""``footprint report``: per-model energy, CO2e and cost over a period, in the formats asked."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from footprint.cli._database import DB_HELP, reading, settings_db
from footprint.cli._errors import InputError
from footprint.cli._output import console, write


def report(
    db: Annotated[str | None, typer.Option(help=DB_HELP)] = None,
    since: Annotated[
        str | None, typer.Option(help="From this UTC date or time (YYYY-MM-DD).")
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="Up to this UTC date (included) or time (excluded).")
    ] = None,
    model: Annotated[
        list[str] | None, typer.Option("--model", help="Only these models (repeat or a,b).")
    ] = None,
    by: Annotated[
        str,
        typer.Option(
            help="Rows of the CSV and group table: model|day|region|host|tag:NAME "
            "(tag:team: chargeback by the team tag)."
        ),
    ] = "model",
    fmt: Annotated[
        list[str] | None,
        typer.Option(
            "--format",
            help="html|md|csv|json|all, or boamps: a Boavizta BoAmps JSON report per model "
            "(not in all; repeat or a,b).",
        ),
    ] = None,
    out: Annotated[str | None, typer.Option(help="Output folder (default: reports/).")] = None,
    compare: Annotated[
        list[str] | None, typer.Option("--compare", help="Also price the energy in these zones.")
    ] = None,
    allow_empty: Annotated[
        bool, typer.Option("--allow-empty", help="Write an explicit report of no queries.")
    ] = False,
    publisher: Annotated[
        str | None,
        typer.Option(help="--format boamps: the publishing organisation's name."),
    ] = None,
    confidentiality: Annotated[
        str | None,
        typer.Option(
            help="--format boamps: public|internal|confidential|secret (names a publisher)."
        ),
    ] = None,
) -> None:
    """Per-model energy, CO2e and cost over a period, with charts, the method and the factors."""
    from footprint import __version__
    from footprint.reporting import ReportError
    from footprint.reporting.boamps import make_publisher
    from footprint.reporting.boamps_export import BOAMPS, BoampsExport
    from footprint.reporting.command import make_request, parse_formats, run_report

    try:
        formats = parse_formats(fmt)
        if BOAMPS not in formats and (publisher is not None or confidentiality is not None):
            raise ReportError("--publisher and --confidentiality go with --format boamps")
        boamps = BoampsExport(make_publisher(publisher, confidentiality), _notice)
        source = settings_db(db)
        request = make_request(source, since, until, model, by, compare, allow_empty)
        with reading(source):
            _, written, text = run_report(request, formats, out, __version__, boamps=boamps)
    except (ReportError, OSError) as exc:
        raise InputError(str(exc)) from None
    if text is not None:
        write(text)
        return
    for path in written:
        console.print(f"wrote {path}")


def _notice(line: str) -> None:
    """A line on stderr (what an export left out), apart from the output on stdout."""
    sys.stderr.write(f"footprint: {line}\n")
