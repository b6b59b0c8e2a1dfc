"""``footprint demo``: a simulated week of LLM serving recorded, then reported in every format."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Column, Table

from footprint.cli._errors import InputError
from footprint.cli._output import JsonOption, console, show


def demo(
    db: Annotated[str, typer.Option(help="Database URL or file path.")] = "footprint-demo.db",
    queries: Annotated[int, typer.Option(min=1, max=100_000, help="How many requests.")] = 20_000,
    seed: Annotated[int, typer.Option(help="Seed of the workload and the simulated GPUs.")] = 1,
    concurrency: Annotated[
        int, typer.Option(min=4, max=64, help="Simulated H100s the scheduler may hold (>= 4).")
    ] = 8,
    days: Annotated[int, typer.Option(min=1, max=31, help="Simulated days of traffic.")] = 7,
    out: Annotated[str, typer.Option(help="Folder for the report (all formats).")] = "reports",
    as_json: JsonOption = False,
) -> None:
    """A simulated week of batched LLM serving on simulated H100s, then its report in --out."""
    from footprint import __version__
    from footprint.demo import run_demo
    from footprint.demo.summary import add_report_figures
    from footprint.reporting import ReportError, ReportRequest
    from footprint.reporting.command import run_report
    from footprint.storage.store import StoreError

    if not as_json:
        console.print(
            f"Simulating {days} days: {queries} requests to Llama 3.1 8B and 70B, continuously "
            f"batched on replicas that a scheduler holds and releases, at most {concurrency} "
            "simulated H100s at once…"
        )
    try:
        summary = run_demo(db, queries=queries, seed=seed, concurrency=concurrency, days=days)
        report, written, _ = run_report(
            ReportRequest(db=db),
            ["html", "md", "csv", "json"],
            out,
            __version__,
            show_progress=not as_json,
        )
    except (ValueError, RuntimeError, StoreError, ReportError, OSError) as exc:
        raise InputError(str(exc)) from None
    add_report_figures(summary, report)
    summary["report"] = {
        "dir": out,
        "files": [str(p) for p in written],
        "command": report_command(db),
    }
    show(summary, as_json, lambda s: _print_summary(s, db, out, written))


def report_command(db: str) -> str:
    """The command that reports the demo's database again, by team (its ``team`` tag)."""
    return f"footprint report --db {shlex.quote(db)} --by tag:team"


def _print_summary(summary: dict[str, Any], db: str, out: str, written: Sequence[Path]) -> None:
    """Per model: queries, energy, GPU time and tokens; then the energy balance, the GPU-hours
    and where the report is."""
    names = [str(name) for name in summary["models"]] or [""]  # never cut: the others wrap
    table = Table(
        Column("model", no_wrap=True, min_width=max(map(len, names))),
        *(
            Column(h, overflow="fold")
            for h in ("queries", "errors", "energy (J)", "GPU-s", "out tokens", "J/token")
        ),
        title="footprint demo (simulated GPUs)",
    )
    for name, m in summary["models"].items():
        per_token = m["j_per_output_token"]
        table.add_row(
            name,
            str(m["queries"]),
            str(m["errors"]),
            f"{m['energy_j']:.1f}",
            f"{m['gpu_seconds']:.2f}",
            str(m["output_tokens"]),
            f"{per_token:.3f}" if per_token is not None else "-",
        )
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
            f"(utilisation {gpus['utilization']:.0%}); at most {gpus['peak_held']} of the "
            f"pool's {gpus['pool']} GPUs held at once, {gpus['gpus_measured']} simulated GPUs "
            "measured in all (each replica slot has GPUs of its own)"
        )
    if gpus and gpus.get("usd_per_gpu_hour") is not None:
        per_1m = ", ".join(
            f"{name} ${m['usd_per_1m_output_tokens']['busy']:.2f} "
            f"(${m['usd_per_1m_output_tokens']['held']:.2f} fully loaded)"
            for name, m in summary["models"].items()
            if m.get("usd_per_1m_output_tokens", {}).get("busy") is not None
        )
        what = str(gpus["usd_per_gpu_hour_source"] or "source unknown").partition(": ")[0]
        console.print(
            f"Priced as the report prices it: ${gpus['usd_per_gpu_hour']:.2f}/GPU-hour ({what}); "
            f"$ per 1M output tokens: {per_1m}"
        )
    phases = [
        f"{name} {_j(p['input']['energy_j'])} and {_usd(p['input']['cost_usd'])} per 1M input, "
        f"{_j(p['output']['energy_j'])} and {_usd(p['output']['cost_usd'])} per 1M output"
        for name, m in summary["models"].items()
        if (p := m.get("per_1m_phase_tokens")) and p["queries"]
    ]
    if phases:
        prompts = ", ".join(
            f"{name} {_j(m['model_prefill_j_per_1m_input_tokens'])}"
            for name, m in summary["models"].items()
            if m.get("model_prefill_j_per_1m_input_tokens") is not None
        )
        console.print(
            "Split at the first token (prefill per input token, decode per output token): "
            + "; ".join(phases)
            + " (the report sets them beside hosted API prices): footprint's attribution of "
            "what the simulated GPUs measured. They draw each engine step's energy by the "
            "step cost model of footprint/demo/costs.py, calibrated on ML.ENERGY's "
            "measurements, in which a prompt token takes 2 × parameters FLOP at half the "
            "H100's peak, near its power cap (Splitwise, ISCA 2024): per 1M input tokens "
            f"{prompts}"
        )
    html_files = [str(p) for p in written if p.suffix == ".html"]
    console.print(f"Report: {html_files[0] if html_files else out} (and .md, .csv, .json)")
    console.print(f"Report it again, by team: {report_command(db)}", soft_wrap=True)


def _j(joules: float | None) -> str:
    return "-" if joules is None else f"{joules / 3600:.3g} Wh"


def _usd(usd: float | None) -> str:
    return "-" if usd is None else f"${usd:.3g}"
