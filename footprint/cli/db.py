"""``footprint db``: look into the database (info), rebuild its rollups, export its records."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from footprint.cli._database import DB_HELP, reading, settings_db
from footprint.cli._errors import InputError, StdoutClosed
from footprint.cli._output import JsonOption, console, show

db_app = typer.Typer(help="Look into and export the database.", no_args_is_help=True)


@db_app.command("info")
def db_info(
    db: Annotated[str | None, typer.Option(help=DB_HELP)] = None,
    as_json: JsonOption = False,
) -> None:
    """Schema version, rows, size on disk and what was lost (dropped or unsaved)."""
    from footprint.reporting.data import database_name, reading_db
    from footprint.storage.store import database_info, normalize_db_url

    source = settings_db(db)
    with reading(source):
        target = reading_db(source)  # read-only where the file or its folder is
        info = database_info(target)
        if target != source and "db" in info:
            info["db"] = normalize_db_url(source)
    show(info, as_json, _print_info)
    integrity = str(info.get("integrity", "ok"))
    if integrity.startswith("malformed"):
        raise InputError(f"database {database_name(source)} is {integrity}")


def _print_info(info: dict[str, object]) -> None:
    from footprint.cli.info import settings_source

    for key, value in info.items():
        console.print(f"{key:>16}: {value}")
    console.print(f"{'settings':>16}: {settings_source()}", markup=False)


@db_app.command("rebuild-rollups")
def db_rebuild_rollups(db: Annotated[str | None, typer.Option(help=DB_HELP)] = None) -> None:
    """Recompute the hourly rollups reports read (after editing queries by hand)."""
    from footprint.storage.rollups import rebuild
    from footprint.storage.store import StoreError, open_engine

    try:
        engine = open_engine(settings_db(db), create=False)
    except StoreError as exc:
        raise InputError(str(exc)) from None
    try:
        count = rebuild(engine)
    finally:
        engine.dispose()
    console.print(f"{count} rollup rows rebuilt")


@db_app.command("export")
def db_export(
    fmt: Annotated[str, typer.Option("--format", help="csv | jsonl | parquet")] = "csv",
    db: Annotated[str | None, typer.Option(help=DB_HELP)] = None,
    out: Annotated[str | None, typer.Option(help="Output file (default: stdout).")] = None,
) -> None:
    """Every query record, streamed in constant memory."""
    from footprint.storage.export import FORMATS
    from footprint.storage.store import StoreError

    if fmt not in FORMATS:
        raise InputError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt == "parquet" and out is None:
        raise InputError("parquet export needs --out FILE")
    from footprint.reporting.data import reading_db

    source = settings_db(db)
    try:
        with reading(source):
            count = _export(reading_db(source), fmt, out)  # read-only where it must be
    except (StoreError, OSError) as exc:  # StoreError: parquet export without pyarrow
        raise InputError(str(exc)) from None
    if out is not None:
        sys.stderr.write(f"{count} records written to {out}\n")


def _export(target: str, fmt: str, out: str | None) -> int:
    """Write every record of ``target`` to ``out`` (stdout if None); how many."""
    from footprint.storage.export import export_parquet, export_text

    if fmt == "parquet":
        return export_parquet(target, out)  # type: ignore[arg-type]
    if out is None:
        try:
            return export_text(target, fmt, sys.stdout)
        except BrokenPipeError:
            raise StdoutClosed() from None
    with open(out, "w", newline="", encoding="utf-8") as handle:
        return export_text(target, fmt, handle)
