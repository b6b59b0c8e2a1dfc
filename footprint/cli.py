"""The ``footprint`` command: a thin layer over the library.

Bad input exits with code 2 and one line on stderr saying why. Ctrl-C exits 130 with one
line on stderr. A reader that closes the pipe early (``footprint regions | head -1``)
ends the command quietly with exit 0.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Column, Table

app = typer.Typer(
    help="What each inference query costs in energy, CO2e and money.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
bench_app = typer.Typer(help="Benchmarks, measured on this machine.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")
db_app = typer.Typer(help="Look into and export the database.", no_args_is_help=True)
app.add_typer(db_app, name="db")

DB_HELP = "Database URL or file path (default: settings, FOOTPRINT_DB)."


class InputError(Exception):
    """Bad input from the command line: exit 2 with this one-line message."""


class StdoutClosed(Exception):
    """The reader of stdout went away (``| head``): end quietly with exit 0.

    Not an ``OSError`` on purpose: click (and typer's copy of it) turns a broken pipe
    into exit 1 before :func:`main` could see it.
    """


class _Console(Console):
    """rich's console, with a closed stdout reported to :func:`main` (rich exits 1)."""

    def on_broken_pipe(self) -> None:
        raise StdoutClosed()


console = _Console()


def _write(text: str) -> None:
    """Write to stdout; a closed pipe ends the command (see :class:`StdoutClosed`)."""
    try:
        sys.stdout.write(text)
    except BrokenPipeError:
        raise StdoutClosed() from None


def _print_json(data: Any) -> None:
    _write(json.dumps(data, indent=2, default=str) + "\n")


def _print_version(value: bool) -> None:
    if value:
        from footprint import __version__

        _write(f"footprint {__version__}\n")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", help="Print the version and exit.", callback=_print_version, is_eager=True
        ),
    ] = False,
) -> None:
    pass


@app.command()
def devices(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout.")] = False,
    sensor: Annotated[
        str | None, typer.Option(help="auto | nvml | simulated[:opts] (default: settings)")
    ] = None,
) -> None:
    """List the GPUs (and CPU packages) found and how each one's energy is measured."""
    from footprint.config import resolve_settings, validate_sensor
    from footprint.sensors import open_cpu_sensor, open_gpu_sensor

    try:
        if sensor is not None:
            validate_sensor(sensor)
        spec = sensor or resolve_settings().sensor
    except ValueError as exc:
        raise InputError(str(exc)) from None
    gpu_sensor, reason = open_gpu_sensor(spec)
    cpu_sensor, cpu_reason = open_cpu_sensor()
    found = [d.__dict__ for d in gpu_sensor.devices]
    cpus = [d.__dict__ for d in cpu_sensor.devices] if cpu_sensor else []
    gpu_sensor.close()
    if cpu_sensor:
        cpu_sensor.close()
    result = {
        "sensor": spec,
        "gpus": found,
        "gpu_note": reason or None,
        "cpus": cpus,
        "cpu_note": cpu_reason or None,
    }
    if as_json:
        _print_json(result)
        return
    if not found:
        console.print(
            f"No GPU found: {reason}. Queries will be recorded with energy_source=missing."
        )
    else:
        table = Table("index", "uuid", "name", "energy method")
        for d in gpu_sensor.devices:
            table.add_row(str(d.index), d.uuid, d.name, d.energy_method)
        console.print(table)
    if cpus:
        console.print(f"CPU energy (RAPL): {', '.join(c['uuid'] for c in cpus)}")
    else:
        console.print(f"CPU energy: not available ({cpu_reason})")


@app.command()
def demo(
    db: Annotated[str, typer.Option(help="Database URL or file path.")] = "footprint-demo.db",
    queries: Annotated[int, typer.Option(min=1, max=100_000, help="How many requests.")] = 20_000,
    seed: Annotated[int, typer.Option(help="Seed of the workload and the simulated GPUs.")] = 1,
    concurrency: Annotated[
        int, typer.Option(min=4, max=64, help="Simulated H100s the scheduler may hold (>= 4).")
    ] = 8,
    days: Annotated[int, typer.Option(min=1, max=31, help="Simulated days of traffic.")] = 7,
    out: Annotated[str, typer.Option(help="Folder for the report (all formats).")] = "reports",
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout.")] = False,
) -> None:
    """A simulated week of batched LLM serving on simulated H100s, then its report in --out."""
    from footprint import __version__
    from footprint.demo import run_demo
    from footprint.reporting import ReportError, ReportRequest
    from footprint.reporting.command import run_report
    from footprint.storage.store import StoreError

    if not as_json:
        console.print(
            f"Simulating {days} days: {queries} requests to Llama 3.1 8B and 70B, continuously "
            f"batched on up to {concurrency} simulated H100s held and released by a scheduler…"
        )
    try:
        summary = run_demo(db, queries=queries, seed=seed, concurrency=concurrency, days=days)
        _, written, _ = run_report(
            ReportRequest(db=db), ["html", "md", "csv", "json"], out, __version__,
            show_progress=not as_json,
        )  # fmt: skip
    except (ValueError, RuntimeError, StoreError, ReportError, OSError) as exc:
        raise InputError(str(exc)) from None
    summary["report"] = {"dir": out, "files": [str(p) for p in written]}
    if as_json:
        _print_json(summary)
        return
    names = [str(name) for name in summary["models"]] or [""]  # never cut: the others wrap
    table = Table(Column("model", no_wrap=True, min_width=max(map(len, names))),
                  *(Column(h, overflow="fold") for h in ("queries", "errors", "energy (J)",
                    "GPU-s", "out tokens", "J/token")),
                  title="footprint demo (simulated GPUs)")  # fmt: skip
    for name, m in summary["models"].items():
        per_token = m["j_per_output_token"]
        table.add_row(name, str(m["queries"]), str(m["errors"]), f"{m['energy_j']:.1f}",
                      f"{m['gpu_seconds']:.2f}", str(m["output_tokens"]),
                      f"{per_token:.3f}" if per_token is not None else "-")  # fmt: skip
    console.print(table)
    console.print(
        f"measured {summary['measured_energy_j']:.1f} J = attributed "
        f"{summary['attributed_energy_j']:.1f} J + idle {summary['idle_energy_j']:.1f} J "
        f"(difference {summary['conservation_error_j']:.2e} J); records in {db}"
    )
    gpus = summary.get("gpus")
    if gpus and gpus.get("utilization") is not None:
        console.print(
            f"GPU-hours held {gpus['held_gpu_hours']:.2f}, busy {gpus['busy_gpu_hours']:.2f} "
            f"(utilisation {gpus['utilization']:.0%})"
        )
    html_files = [str(p) for p in written if p.suffix == ".html"]
    console.print(f"Report: {html_files[0] if html_files else out} (and .md, .csv, .json)")


@app.command()
def regions(
    query: Annotated[str | None, typer.Argument(help="Filter: a zone, provider or place.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout.")] = False,
) -> None:
    """The zones we know (countries, grids, AWS/Azure/GCP regions) with their factors."""
    from footprint.pricing import list_zones, lookup_zone

    zones = list_zones(query)
    if not zones:
        try:
            lookup_zone(query or "")
        except ValueError as exc:
            raise InputError(f"no zone matches {query!r}: {exc}") from None
        raise InputError(f"no zone matches {query!r}")
    if as_json:
        _print_json({"query": query, "count": len(zones), "zones": zones})
        return
    # Zone ids are never cut: the other columns wrap.
    table = Table(
        Column("zone", no_wrap=True, min_width=max(len(z["zone"]) for z in zones)),
        *(Column(h, overflow="fold") for h in ("name", "grid zone", "gCO2e/kWh", "price/kWh")),
        Column("intensity source", overflow="fold"),
    )
    for z in zones:
        price = f"{z['price_per_kwh']:.4f} {z['currency']}" if z["price_per_kwh"] else "-"
        intensity = f"{z['intensity_g_per_kwh']:.0f}"
        row = (z["zone"], z["name"] or "", z["grid_zone"] or "", intensity, price)
        table.add_row(*row, z["intensity_ref"][:60])
    console.print(table)
    console.print(f"{len(zones)} zones")


@app.command()
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
        list[str] | None, typer.Option("--format", help="html|md|csv|json|all (repeat or a,b).")
    ] = None,
    out: Annotated[str | None, typer.Option(help="Output folder (default: reports/).")] = None,
    compare: Annotated[
        list[str] | None, typer.Option("--compare", help="Also price the energy in these zones.")
    ] = None,
    allow_empty: Annotated[
        bool, typer.Option("--allow-empty", help="Write an explicit report of no queries.")
    ] = False,
) -> None:
    """Per-model energy, CO2e and cost over a period, with charts, the method and the factors."""
    from footprint import __version__
    from footprint.reporting import ReportError
    from footprint.reporting.command import make_request, parse_formats, run_report

    try:
        formats = parse_formats(fmt)
        source = _settings_db(db)
        request = make_request(source, since, until, model, by, compare, allow_empty)
        with _reading(source):
            _, written, text = run_report(request, formats, out, __version__)
    except (ReportError, OSError) as exc:
        raise InputError(str(exc)) from None
    if text is not None:
        _write(text)
        return
    for path in written:
        console.print(f"wrote {path}")


@bench_app.command("report")
def bench_report(
    rows: Annotated[
        int | None,
        typer.Option(
            min=100,
            max=20_000_000,
            help="Synthetic query records (default 1,000,000; with --models, 10 per model, "
            "at least 100,000).",
        ),
    ] = None,
    repeats: Annotated[
        int | None,
        typer.Option(min=1, max=10, help="Timed runs per side (default 2; 1 with --models)."),
    ] = None,
    models: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=1_000_000,
            help="Distinct models: time `footprint report` writing every format, and its "
            "peak memory.",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout.")] = False,
) -> None:
    """`footprint report --format json` as a whole command vs hand-written SQL, same file;
    with --models, the whole report in every format over that many models."""
    from footprint.bench.report import run, run_models

    if models is not None:
        result = run_models(models, rows=rows, repeats=repeats or 1)
        if as_json:
            _print_json(result)
            return
        rss = result["peak_rss_mb"]
        console.print(
            f"{result['models']:,} models, {result['rows']:,} records: footprint report, "
            f"every format, {result['report_s']:.2f} s, peak memory "
            f"{'unknown' if rss is None else f'{rss:.0f} MB'} (targets: ≤ "
            f"{result['target_report_s']:.0f} s, ≤ {result['target_peak_rss_mb']:.0f} MB)"
        )
        return
    result = run(rows=rows or 1_000_000, repeats=repeats or 2)
    if as_json:
        _print_json(result)
        return
    console.print(
        f"{result['rows']:,} records: footprint report {result['report_s']:.2f} s, "
        f"hand-written SQL {result['raw_sql_s']:.2f} s: ratio {result['ratio']:.2f}; "
        f"--by tag:team {result['tag_report_s']:.2f} s (targets: ≤ 3 s, ≤ 2, ≤ 3 s)"
    )


def _settings_db(db: str | None) -> str:
    if db is not None:
        return db
    from footprint.config import resolve_settings

    try:
        return resolve_settings().db
    except ValueError as exc:
        raise InputError(str(exc)) from None


@db_app.command("info")
def db_info(
    db: Annotated[str | None, typer.Option(help=DB_HELP)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout.")] = False,
) -> None:
    """Schema version, rows, size on disk and what was lost (dropped or unsaved)."""
    from footprint.reporting.data import database_name, reading_db
    from footprint.storage.store import database_info, normalize_db_url

    source = _settings_db(db)
    with _reading(source):
        target = reading_db(source)  # read-only where the file or its folder is
        info = database_info(target)
        if target != source and "db" in info:
            info["db"] = normalize_db_url(source)
    if as_json:
        _print_json(info)
    else:
        for key, value in info.items():
            console.print(f"{key:>16}: {value}")
    integrity = str(info.get("integrity", "ok"))
    if integrity.startswith("malformed"):
        raise InputError(f"database {database_name(source)} is {integrity}")


@contextlib.contextmanager
def _reading(db: str) -> Iterator[None]:
    """Whatever stops a database from being read becomes one line (exit 2) naming it."""
    import sqlite3

    from sqlalchemy.exc import SQLAlchemyError

    from footprint.reporting.data import ReportError, read_error
    from footprint.storage.store import StoreError

    try:
        yield
    except ReportError as exc:
        raise InputError(str(exc)) from None
    except (StoreError, SQLAlchemyError, sqlite3.Error) as exc:
        raise InputError(read_error(db, exc)) from None


@db_app.command("rebuild-rollups")
def db_rebuild_rollups(db: Annotated[str | None, typer.Option(help=DB_HELP)] = None) -> None:
    """Recompute the hourly rollups reports read (after editing queries by hand)."""
    from footprint.storage.rollups import rebuild
    from footprint.storage.store import StoreError, open_engine

    try:
        engine = open_engine(_settings_db(db), create=False)
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
    from footprint.storage.export import FORMATS, export_parquet, export_text
    from footprint.storage.store import StoreError

    if fmt not in FORMATS:
        raise InputError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt == "parquet" and out is None:
        raise InputError("parquet export needs --out FILE")
    from footprint.reporting.data import reading_db

    source = _settings_db(db)
    try:
        with _reading(source):
            target = reading_db(source)  # read-only where the file or its folder is
            if fmt == "parquet":
                count = export_parquet(target, out)  # type: ignore[arg-type]
            elif out is None:
                try:
                    count = export_text(target, fmt, sys.stdout)
                except BrokenPipeError:
                    raise StdoutClosed() from None
            else:
                with open(out, "w", newline="", encoding="utf-8") as handle:
                    count = export_text(target, fmt, handle)
    except (StoreError, OSError) as exc:  # StoreError: parquet export without pyarrow
        raise InputError(str(exc)) from None
    if out is not None:
        sys.stderr.write(f"{count} records written to {out}\n")


@bench_app.command("ingest")
def bench_ingest(
    rows: Annotated[
        int, typer.Option(min=1000, max=10_000_000, help="Records per side.")
    ] = 200_000,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout.")] = False,
) -> None:
    """Records/s through footprint's writer vs raw sqlite3 executemany, same rows."""
    from footprint.bench.ingest import run

    result = run(rows=rows)
    if as_json:
        _print_json(result)
        return
    console.print(
        f"footprint writer {result['footprint_rows_per_s']:,.0f} rows/s, raw sqlite3 "
        f"executemany {result['raw_sqlite_rows_per_s']:,.0f} rows/s: ratio {result['ratio']:.2f}"
    )


@bench_app.command("overhead")
def bench_overhead(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout.")] = False,
    batches: Annotated[int, typer.Option(min=10, help="Timed batches per side.")] = 300,
) -> None:
    """Per-call cost of @track on a no-op, against the bare call and codecarbon's tasks."""
    from footprint.bench.overhead import run

    result = run(batches=batches)
    if as_json:
        _print_json(result)
        return
    console.print(
        f"@track adds {result['track_us_median']:.2f} µs median "
        f"(p99 {result['track_us_p99']:.2f} µs) per call; codecarbon start_task/stop_task "
        f"{result['codecarbon_task_us_median']:.0f} µs: "
        f"{result['ratio_codecarbon_over_track']:.0f}× more."
    )


@bench_app.command("attribution")
def bench_attribution(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout.")] = False,
    spans: Annotated[int, typer.Option(min=1000, help="Spans per concurrency level.")] = 40_000,
) -> None:
    """Resolver cost per span at 100, 1,000 and 4,000 spans running at once on one GPU."""
    from footprint.bench.attribution import run

    result = run(spans=spans)
    if as_json:
        _print_json(result)
        return
    for entry in result["runs"]:
        console.print(
            f"{entry['concurrent']:>5} at once: {entry['us_per_span']:.2f} µs per span "
            f"({entry['spans']:,} spans)"
        )
    console.print(f"highest / lowest concurrency: {result['ratio_highest_over_lowest']:.2f}×")


@bench_app.command("pipeline")
def bench_pipeline(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout.")] = False,
    rate: Annotated[int, typer.Option(min=1, max=1_000_000, help="Calls per second.")] = 20_000,
    seconds: Annotated[float, typer.Option(min=0.5, max=600, help="How long.")] = 10.0,
) -> None:
    """Sustained calls/s through track, resolve, price and write in one process."""
    from footprint.bench.pipeline import run

    result = run(rate_per_s=rate, seconds=seconds)
    if as_json:
        _print_json(result)
        return
    console.print(
        f"{result['calls']:,} calls at {result['achieved_rate_per_s']:,.0f}/s: "
        f"{result['written_when_calls_stopped']:,} written when they stopped; exit wrote the "
        f"rest in "
        f"{result['exit_s']:.2f} s; {result['lost']} lost"
    )


@bench_app.command("accuracy")
def bench_accuracy(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout.")] = False,
    scale: Annotated[
        float, typer.Option(min=0.05, max=10.0, help="Scale every scenario's length.")
    ] = 1.0,
    scenario: Annotated[
        list[str] | None,
        typer.Option("--scenario", help="Run only this scenario (repeatable)."),
    ] = None,
    path: Annotated[
        list[str] | None,
        typer.Option(
            "--path", help="Run only this code path (repeatable): simulated, nvml, nvml-part-time."
        ),
    ] = None,
    write: Annotated[
        bool, typer.Option("--write", help="Store the figures that reports quote.")
    ] = False,
) -> None:
    """Attribution error against exact energy, in fixed scenarios, each in fresh processes
    whose first footprint action is the call, on the simulated GPU and on the NVML code
    path (a fake pynvml with an ideal and a part-time counter)."""
    from footprint.bench.accuracy import PATHS, SCENARIOS, run
    from footprint.bench.accuracy import write as write_figures

    known = [s.name for s in SCENARIOS]
    for name in scenario or []:
        if name not in known:
            raise InputError(f"unknown scenario {name!r}; known: {', '.join(known)}")
    for name in path or []:
        if name not in PATHS:
            raise InputError(f"unknown path {name!r}; known: {', '.join(PATHS)}")
    if write and (scenario or path or scale != 1.0):
        raise InputError("--write records the full benchmark: drop --scenario, --path and --scale")
    result = run(
        scale=scale,
        names=scenario or None,
        paths=path or None,
        progress=lambda line: sys.stderr.write(f"{line}\n"),
    )
    if write:
        written = write_figures(result)
        sys.stderr.write(f"figures written to {written}\n")
    if as_json:
        _print_json(result)
        return

    def pct(value: float | None) -> str:
        return "–" if value is None else f"{value:.3f}%"

    for entry in result["scenarios"]:
        per_query = entry["per_query_error_pct"] or {}
        long = entry["long_query_error_pct"]
        console.print(
            f"{entry['name']:<34} {entry['queries']:>5} queries: total "
            f"{pct(entry['total_signed_error_pct'])}; per query p50 {pct(per_query.get('p50'))} "
            f"p95 {pct(per_query.get('p95'))} max {pct(per_query.get('max'))}"
            + (f"; ≥1 s max {long['max']:.3f}%" if long else "")
            + f"; within bound {entry['within_bound_pct']}%"
        )


@bench_app.command("daemon")
def bench_daemon(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout.")] = False,
    rate: Annotated[
        int, typer.Option(min=100, max=1_000_000, help="Spans per second, all senders.")
    ] = 10_000,
    seconds: Annotated[float, typer.Option(min=1, max=600, help="How long they send.")] = 10.0,
    senders: Annotated[int, typer.Option(min=1, max=64, help="Sender processes.")] = 8,
    idle_seconds: Annotated[
        float, typer.Option(min=1, max=600, help="How long the idle CPU is measured.")
    ] = 5.0,
    saturate: Annotated[
        bool, typer.Option(help="Also offer 4x the rate, to see what the daemon takes.")
    ] = True,
    ack: Annotated[
        bool, typer.Option(help="Senders ask for acknowledgements, as the client does.")
    ] = True,
) -> None:
    """Spans/s from sender processes over the Unix socket (and how many were lost), and
    the daemon's CPU use sampling 8 simulated GPUs at 20 Hz with no traffic."""
    from footprint.bench.daemon import run

    result = run(rate_per_s=rate, seconds=seconds, senders=senders, idle_seconds=idle_seconds,
                 saturate=saturate, ack=ack)  # fmt: skip
    if as_json:
        _print_json(result)
        return
    idle = result["idle"]
    for name in ("traffic", "saturation"):
        traffic = result[name]
        if traffic is None:
            continue
        console.print(
            f"{name}: {traffic['senders']} senders, {traffic['spans_sent']:,} spans at "
            f"{traffic['achieved_spans_per_s']:,.0f}/s (offered "
            f"{traffic['target_spans_per_s']:,}/s), {traffic['end_to_end_spans_per_s']:,.0f}/s "
            f"until written; {traffic['stored']:,} stored, {traffic['lost']} lost"
            + (
                ""
                if traffic["acknowledged"] is None
                else f", {traffic['acknowledged']:,} acknowledged"
            )
            + f"; daemon CPU {traffic['daemon_cpu_pct']:.1f}% of a core"
        )
    console.print(
        f"idle, {idle['gpus']} simulated GPUs sampled at {idle['sampling_hz']:g} Hz: daemon CPU "
        f"{idle['daemon_cpu_pct']:.2f}% of a core (target ≤ {idle['target_cpu_pct']:g}%)"
    )


@bench_app.command("soak")
def bench_soak(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout.")] = False,
    minutes: Annotated[
        float, typer.Option(min=0.05, max=600, help="How long each setup runs.")
    ] = 1.0,
    workers: Annotated[int, typer.Option(min=1, max=32, help="Worker processes.")] = 2,
    seed: Annotated[int, typer.Option(help="Seed of the random stop times.")] = 1,
) -> None:
    """Calls made, stored, counted lost and duplicated while workers (and the daemon)
    are stopped with SIGTERM at random times; RSS over time."""
    from footprint.bench.soak import run

    result = run(minutes=minutes, workers=workers, seed=seed)
    if as_json:
        _print_json(result)
        return
    for setup in result["setups"]:
        rss = setup["rss_mib"]
        console.print(
            f"{setup['mode']}: {setup['worker_stops']} worker and {setup['daemon_stops']} daemon "
            f"SIGTERMs; {setup['made']:,} calls made, {setup['stored']:,} stored, "
            f"{setup['counted_lost']:,} counted lost, {setup['duplicated']:,} duplicated, "
            f"{setup['unaccounted']:,} unaccounted; worker RSS max "
            f"{rss['workers']['max'] if rss['workers'] else '-'} MiB"
            + (f", daemon RSS max {rss['daemon']['max']} MiB" if rss["daemon"] else "")
        )


@bench_app.command("proxy")
def bench_proxy(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout.")] = False,
    requests: Annotated[
        int, typer.Option(min=50, max=100_000, help="Sequential requests per side (latency).")
    ] = 1000,
    seconds: Annotated[
        float, typer.Option(min=0.5, max=120, help="Seconds per side at 32 concurrent clients.")
    ] = 5.0,
    concurrency: Annotated[int, typer.Option(min=1, max=512, help="Concurrent clients.")] = 32,
    upstream_latency_ms: Annotated[
        float,
        typer.Option(min=0, max=10_000, help="Time the fake upstream takes per request (ms)."),
    ] = 20.0,
) -> None:
    """A small chat completion against the fake upstream directly and through
    `footprint proxy`, side by side: added latency (median, p99) and requests/s."""
    from footprint.bench.proxy import run

    result = run(requests=requests, seconds=seconds, concurrency=concurrency,
                 upstream_latency_ms=upstream_latency_ms)  # fmt: skip
    if as_json:
        _print_json(result)
        return
    console.print(
        f"latency: direct {result['direct_ms_median']:.3f} ms median "
        f"(p99 {result['direct_ms_p99']:.3f}), through the proxy "
        f"{result['proxy_ms_median']:.3f} ms (p99 {result['proxy_ms_p99']:.3f}): "
        f"{result['added_ms_median']:.3f} ms added (target ≤ 1 ms)"
    )
    console.print(
        f"{result['concurrency']} concurrent clients, upstream taking "
        f"{result['upstream_latency_ms']:g} ms: direct {result['rps_direct']:,.0f} req/s, "
        f"through the proxy {result['rps_proxy']:,.0f} req/s: ratio {result['rps_ratio']:.2f} "
        f"(target ≥ 0.8)"
    )
    console.print(
        f"upstream taking no time: direct {result['rps_direct_zero_latency']:,.0f} req/s, "
        f"through the proxy {result['rps_proxy_zero_latency']:,.0f} req/s: ratio "
        f"{result['rps_ratio_zero_latency']:.2f}; {result['records']:,} records stored for "
        f"{result['requests_through_proxy']:,} requests through the proxy"
    )


@app.command("daemon")
def daemon_command(
    socket_path: Annotated[
        str | None,
        typer.Option(
            "--socket",
            help="Unix socket for the clients (default: $XDG_RUNTIME_DIR/footprint/daemon.sock"
            ", else /run/footprint/daemon.sock).",
        ),
    ] = None,
    http: Annotated[
        str,
        typer.Option(
            help="HOST:PORT for GET /metrics, GET /healthz and POST /v1/spans; port 0 takes a "
            "free one; 'off' for none. Not loopback: needs --token.",
        ),
    ] = "127.0.0.1:9464",
    db: Annotated[str | None, typer.Option(help=DB_HELP)] = None,
    sampling_period: Annotated[
        float | None,
        typer.Option("--sampling-period", help="Seconds between GPU samples (default 0.05)."),
    ] = None,
    sensor: Annotated[
        str | None, typer.Option(help="auto | nvml | simulated[:opts] (default: settings).")
    ] = None,
    region: Annotated[
        str | None, typer.Option(help="Grid zone or cloud region (default: settings).")
    ] = None,
    group: Annotated[
        str | None,
        typer.Option(help="Group that may use the socket (made 0660, its folder 0750)."),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="FOOTPRINT_DAEMON_TOKEN",
            help="Bearer token HTTP clients must send (env FOOTPRINT_DAEMON_TOKEN keeps it "
            "out of ps).",
        ),
    ] = None,
    max_connections: Annotated[
        int,
        typer.Option(
            min=1,
            help="Client connections at most (fewer if the open-files limit leaves room for "
            "fewer); over it a new one gets a one-line error and is closed.",
        ),
    ] = 4096,
    max_connections_per_peer: Annotated[
        int,
        typer.Option(
            min=1,
            help="Client connections at most from one process (one uid where its pid "
            "is not visible).",
        ),
    ] = 256,
    max_http_connections: Annotated[
        int,
        typer.Option(
            min=1,
            help="HTTP connections served at once (a thread each); over it a new one gets "
            "503 and is closed.",
        ),
    ] = 64,
) -> None:
    """The host's sidecar daemon: one sampler for every GPU, spans from every process,
    Prometheus metrics. Runs until SIGTERM or Ctrl-C (SIGHUP re-reads the settings)."""
    from footprint.daemon.server import DaemonConfig, run_daemon

    config = DaemonConfig(
        socket_path=socket_path, http=http, db=db, sampling_period_s=sampling_period,
        sensor=sensor, region=region, group=group, token=token,
        max_connections=max_connections, max_connections_per_peer=max_connections_per_peer,
        max_http_connections=max_http_connections,
    )  # fmt: skip
    code = run_daemon(config)
    if code:
        raise typer.Exit(code)


@app.command("proxy")
def proxy_command(
    upstream: Annotated[
        str, typer.Option(help="The model server's base URL, e.g. http://127.0.0.1:8000.")
    ],
    listen: Annotated[
        str, typer.Option(help="HOST:PORT the clients call; port 0 takes a free one.")
    ] = "127.0.0.1:8001",
    db: Annotated[str | None, typer.Option(help=DB_HELP)] = None,
    gpus: Annotated[
        str | None,
        typer.Option(
            help="GPUs the model server runs on: CUDA indices or UUIDs, a,b (default: all)."
        ),
    ] = None,
    tag: Annotated[
        list[str] | None, typer.Option("--tag", help="KEY=VALUE stored with every record.")
    ] = None,
    timeout: Annotated[
        float, typer.Option(min=0.1, help="Seconds to wait for the upstream's next byte.")
    ] = 600.0,
    grace: Annotated[
        float, typer.Option(min=0, help="Seconds requests in flight get to finish on SIGTERM.")
    ] = 15.0,
) -> None:
    """Measure an OpenAI-compatible model server (vLLM, TGI, SGLang, llama.cpp, Ollama) with
    no code change: forward every request to --upstream, record each inference request."""
    import footprint
    from footprint.proxy import ProxyConfigError, make_config, serve

    def ready(line: str) -> None:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()

    try:
        config = make_config(upstream, listen, gpus, tag, read_timeout_s=timeout, grace_s=grace)
        if db is not None:
            footprint.configure(db=db)
        stopped_by = serve(config, on_ready=ready)
    except (ProxyConfigError, ValueError) as exc:
        raise InputError(str(exc)) from None
    if stopped_by == 2:  # SIGINT: Ctrl-C's exit status and line
        raise typer.Exit(130)


def _complain(code: int, message: str) -> int:
    sys.stderr.write(f"footprint: {message}\n")
    return code


def _stdout_closed() -> NoReturn:
    """The reader went away: exit 0, with stdout pointed at devnull first.

    As the Python docs recommend (signal module, "Note on SIGPIPE"): the interpreter
    flushes stdout once more on the way out, and that flush must not fail again.
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # pragma: no cover - stdout with no fd
        pass
    sys.exit(0)


def _is_click_error(exc: BaseException) -> bool:
    """click's ``ClickException`` (usage errors included), or typer's copy of it.

    typer up to 0.25 raises click's own exceptions; from 0.26 on it carries a copy of click
    whose classes have no public name. Both are recognised by class name, so that nothing
    private is imported.
    """
    return any(cls.__name__ == "ClickException" for cls in type(exc).__mro__)


def _run(argv: list[str] | None) -> int:
    """Run the app; its exit status (the message, if any, already on stderr)."""
    try:
        status = app(args=argv, standalone_mode=False)
    except InputError as exc:
        return _complain(2, f"error: {exc}")
    except typer.Abort:
        return _complain(130, "aborted")
    except typer.Exit as exc:  # pragma: no cover - typer returns the code when not standalone
        return exc.exit_code
    except SystemExit as exc:
        # click turns a broken pipe it sees first into exit 1: still a closed pipe to us.
        if isinstance(exc.__context__, BrokenPipeError):
            raise StdoutClosed() from None
        raise
    except Exception as exc:
        if not _is_click_error(exc):
            raise
        message = exc.format_message()  # type: ignore[attr-defined]
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `footprint`: help, exit 0
            _write(message + "\n")
            return 0
        return _complain(getattr(exc, "exit_code", 2), f"error: {message}")
    if status == 130:  # typer turns KeyboardInterrupt into exit code 130, silently
        return _complain(130, "interrupted")
    return status if isinstance(status, int) else 0


def main(argv: list[str] | None = None) -> None:
    """Entry point: bad input exits 2, Ctrl-C 130 (one line on stderr each); a closed
    stdout ends quietly with 0."""
    try:
        status = _run(argv)
        try:
            sys.stdout.flush()  # now, not in the interpreter's exit, where it can't be caught
        except BrokenPipeError:
            raise StdoutClosed() from None
    except KeyboardInterrupt:
        status = _complain(130, "interrupted")
    except (StdoutClosed, BrokenPipeError):
        _stdout_closed()
    if status:
        sys.exit(status)


if __name__ == "__main__":  # pragma: no cover
    main()
