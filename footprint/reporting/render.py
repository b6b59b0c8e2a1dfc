"""Renderers: one self-contained HTML file, Markdown with PNG charts, CSV and JSON.

Everything shown comes from the report data of ``build_report``; no wall-clock date is
written anywhere, so the same data gives the same files. In the HTML every headline
figure carries ``data-key`` (its path in the JSON report) and ``data-value`` (the exact
number) so a reader, or a test, can check it against the JSON.
"""

from __future__ import annotations

import csv
import datetime as _dt
import html
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from footprint.reporting import units
from footprint.reporting.charts import Chart, build_charts, model_colors
from footprint.reporting.data import PERCENTILE_SAMPLE, TOP_MODELS, shown_models

FORMATS = ("html", "md", "csv", "json")
BASENAME = "footprint-report"
TITLE = "AI inference footprint"

FORMATTERS = {
    "count": units.count,
    "energy": units.energy,
    "mass": units.mass,
    "money": units.money,
    "number": units.number,
    "percent": units.percent,
}


def lookup(report: dict[str, Any], key: str) -> Any:
    """The value at a dotted path such as ``models.0.co2e_g`` or ``totals.sci.per_query_g``."""
    value: Any = report
    for part in key.split("."):
        value = value[int(part)] if isinstance(value, list) else value[part]
    return value


# --- shared wording ----------------------------------------------------------------------


def period_text(report: dict[str, Any]) -> str:
    """ "2 Mar 2026 – 8 Mar 2026 (UTC)" from the filters, else from the data."""
    period = report["period"]
    since = period["since"] or period["first_query"]
    until = period["until"]
    if until:
        end = _dt.datetime.fromisoformat(until)
        if end.time() == _dt.time(0) and (not since or end > _dt.datetime.fromisoformat(since)):
            end -= _dt.timedelta(microseconds=1)  # exclusive midnight: the day before
        until = end.isoformat()
    else:
        until = period["last_query"]
    if not since or not until:
        return "no queries"
    start = _dt.datetime.fromisoformat(since)
    stop = _dt.datetime.fromisoformat(until)

    def day(when: _dt.datetime) -> str:
        return f"{when.day} {when:%b %Y}"

    if start.date() == stop.date():
        return f"{day(start)} (UTC)"
    return f"{day(start)} – {day(stop)} (UTC)"


def summary_cards(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The headline figures: (label, main figure, supporting figures), each a JSON path."""
    t = report["totals"]
    return [
        {
            "label": "Queries",
            "main": ("totals.queries", "count"),
            "subs": [
                ("totals.errors", "count", "errors"),
                ("totals.output_tokens", "count", "output tokens"),
            ],  # fmt: skip
        },
        {
            "label": "GPU energy (attributed)",
            "main": ("totals.energy_kwh", "energy"),
            "bound": ("totals.energy_uncertainty_kwh", "energy"),
            "subs": [("totals.fully_loaded_energy_kwh", "energy", "fully loaded with idle")],
        },
        {
            "label": "CO2e (location-based)",
            "main": ("totals.co2e_g", "mass"),
            "subs": [
                ("totals.fully_loaded_co2e_g", "mass", "fully loaded"),
                ("totals.embodied_co2e_g", "mass", "embodied"),
            ],  # fmt: skip
        },
        {
            "label": "Cost",
            "main": ("totals.cost_usd", "money"),
            "subs": [
                ("totals.compute_cost_usd", "money", "GPU time"),
                ("totals.energy_cost_usd", "money", "electricity"),
            ],  # fmt: skip
        },
        {
            "label": "SCI per 1k output tokens",
            "main": ("totals.sci.per_1k_output_tokens_g", "mass"),
            "subs": [("totals.sci.per_query_g", "mass", "per query")],
        },
    ] + (
        [
            {
                "label": "CO2e (market-based)",
                "main": ("totals.market_co2e_g", "mass"),
                "subs": [],
            }
        ]
        if t.get("market_co2e_g") is not None
        else []
    )


MODEL_COLUMNS = (
    ("queries", "Queries", "count"),
    ("errors", "Errors", "count"),
    ("output_tokens", "Output tokens", "count"),
    ("gpu_seconds", "GPU-hours", "gpu_hours"),
    ("energy_kwh", "Energy (attributed)", "energy"),
    ("energy_uncertainty_kwh", "± bound", "energy"),
    ("fully_loaded_energy_kwh", "Energy (fully loaded)", "energy"),
    ("co2e_g", "CO2e", "mass"),
    ("fully_loaded_co2e_g", "CO2e (fully loaded)", "mass"),
    ("embodied_co2e_g", "Embodied", "mass"),
    ("energy_cost_usd", "Electricity", "money"),
    ("compute_cost_usd", "GPU time", "money"),
    ("cost_usd", "Total cost", "money"),
)

INTENSITY_COLUMNS = (
    ("per_query.energy_wh.mean", "Wh/query mean", "wh"),
    ("per_query.energy_wh.p50", "p50", "wh"),
    ("per_query.energy_wh.p95", "p95", "wh"),
    ("per_query.co2e_g.mean", "gCO2e/query mean", "mass"),
    ("per_query.co2e_g.p95", "p95", "mass"),
    ("per_query.cost_usd.mean", "$/query mean", "money"),
    ("per_query.cost_usd.p95", "p95", "money"),
    ("per_1k_output_tokens.energy_wh", "Wh /1k tok", "wh"),
    ("per_1k_output_tokens.co2e_g", "CO2e /1k tok", "mass"),
    ("per_1k_output_tokens.cost_usd", "$ /1k tok", "money"),
    ("j_per_output_token", "J/token", "number"),
    ("sci.per_query_g", "SCI /query", "mass"),
    ("sci.per_1k_output_tokens_g", "SCI /1k tok", "mass"),
)

GROUP_COLUMNS = (
    ("queries", "Queries", "count"),
    ("output_tokens", "Output tokens", "count"),
    ("energy_kwh", "Energy (attributed)", "energy"),
    ("energy_uncertainty_kwh", "± bound", "energy"),
    ("idle_energy_kwh", "Idle", "energy"),
    ("co2e_g", "CO2e", "mass"),
    ("fully_loaded_co2e_g", "CO2e (fully loaded)", "mass"),
    ("cost_usd", "Total cost", "money"),
)


# Figures shown as "± x": the summed per-record bounds on attributed energy.
BOUND_KEYS = frozenset({"energy_uncertainty_kwh"})


def fmt(value: Any, kind: str) -> str:
    """A figure as shown in the report (``pct``: a value already in percent)."""
    if value is None:
        return "–"
    if kind == "pct":
        return f"{units.sig(value)}%"
    if kind == "wh":
        return units.energy(value / 1000.0)
    if kind == "gpu_hours":
        return units.number(value / 3600.0)
    return FORMATTERS[kind](value)


def pm(key: str, value: Any) -> str:
    """``"± "`` before a bound that is shown (``key``: its JSON path or name), else ``""``."""
    return "± " if value is not None and key.rsplit(".", 1)[-1] in BOUND_KEYS else ""


def cell(report: dict[str, Any], key: str, kind: str) -> str:
    """A figure as text, with its ``±`` when it is a bound (Markdown)."""
    value = lookup(report, key)
    return pm(key, value) + fmt(value, kind)


@dataclass
class Table:
    """A small table inside the methodology: cells are text or (JSON path, kind) figures."""

    headers: list[str]
    rows: list[list[str | tuple[str, str]]]


ACCURACY_HEADERS = [
    "Scenario", "Queries", "Total error", "Per query p50", "p95", "max", "Queries ≥ 1 s",
    "≥ 1 s max", "Within bound",
]  # fmt: skip


def _scenario_cell(scenario: dict[str, Any], path: str, key: str, kind: str) -> Any:
    """A scenario's figure as (JSON path, kind), or "–" where the scenario has none."""
    value: Any = scenario
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return "–" if value is None else (f"{path}.{key}", kind)


def _accuracy_section(report: dict[str, Any]) -> list[str | Table]:
    """What ``footprint bench accuracy`` measured, from ``measurement.accuracy``."""
    from footprint import __version__

    acc = report["measurement"].get("accuracy")
    if acc is None:
        return [
            f"No accuracy benchmark has been recorded for this version of footprint "
            f"({__version__}), so this report quotes no measured accuracy figure "
            "(`footprint bench accuracy --write` records one)."
        ]
    sim = acc["simulator"]
    described = {
        "idle_w": lambda v: f"{units.number(v)} W idle",
        "busy_w": lambda v: f"{units.number(v)} W busy",
        "update_period_s": lambda v: f"energy counter updated every {units.number(v * 1000)} ms",
        "sampling_period_s": lambda v: f"sampled every {units.number(v * 1000)} ms",
    }
    settings = [described[k](v) if k in described else f"{k} = {v}" for k, v in sim.items()]
    scale = acc.get("scale")
    if isinstance(scale, (int, float)) and scale != 1:
        settings.append(f"scenarios run at {units.number(scale)}× their full length")
    base = "measurement.accuracy.scenarios"
    rows: list[list[str | tuple[str, str]]] = []
    for i, sc in enumerate(acc["scenarios"]):
        rows.append(
            [sc["name"]] + [_scenario_cell(sc, f"{base}.{i}", key, kind) for key, kind in (
                ("queries", "count"), ("total_error_pct", "pct"),
                ("per_query_error_pct.p50", "pct"), ("per_query_error_pct.p95", "pct"),
                ("per_query_error_pct.max", "pct"), ("long_queries", "count"),
                ("long_query_error_pct.max", "pct"), ("within_bound_pct", "pct"),
            )]
        )  # fmt: skip
    scenarios = "; ".join(
        f"{sc['name']}: {sc['description']}" if sc.get("description") else sc["name"]
        for sc in acc["scenarios"]
    )
    return [
        f"Accuracy, as measured by `footprint bench accuracy` for footprint {acc['version']} "
        f"(attribution code sha256 {acc['source_digest'][:12]}…) against the exact energy of "
        f"the simulated GPU ({', '.join(settings)}). Errors are absolute, in percent of the "
        "true energy: of each scenario's total, and per query (median, 95th percentile, "
        "maximum; for queries of 1 s or more, their maximum). Within bound: the share of "
        "queries whose error was within their recorded uncertainty bound.",
        Table(ACCURACY_HEADERS, rows),
        f"Scenarios: {scenarios}.",
        f"Not covered by the simulator: {acc['not_covered']}",
    ]


def methodology(report: dict[str, Any]) -> list[tuple[str, list[str | Table]]]:
    """The method, as (heading, paragraphs and tables); the same in HTML and Markdown."""
    sources = report["measurement"]["energy_sources"]
    measured = ", ".join(f"{n:,} {name}" for name, n in sources.items()) or "none"
    bounded = report["measurement"].get("uncertainty_queries", 0)
    with_energy = report["measurement"].get("measured_queries", 0)
    return [
        (
            "What is measured",
            [
                "Each query's GPU energy is measured on the GPUs that served it. A sampler "
                "reads every GPU's cumulative energy counter (NVML "
                "nvmlDeviceGetTotalEnergyConsumption, in millijoules; integrated power "
                "readings on GPUs without the counter) every 50 ms. The energy of each "
                "interval between two readings is split among the queries running on that "
                "GPU during it, in proportion to their overlap with the interval, weighted by "
                "the power estimated for each part of it. The time of an interval when no "
                "query ran is the GPU's idle energy, stored per GPU per minute.",
                "Nothing is lost or counted twice: for every GPU, attributed energy plus idle "
                "energy equals the counter's increase over the period (energy conservation, "
                "checked by property-based tests). Prompts and responses are never stored, "
                "only token counts.",
                f"Queries in this report by how their energy was obtained: {measured}.",
            ],
        ),
        (
            "Attributed and fully loaded energy",
            [
                "Attributed energy is what the GPUs spent while a query ran: its share of "
                "each interval when several queries ran at once (continuous batching). It is "
                "the figure to compare models, prompts and optimisations.",
                "Fully loaded energy adds the idle energy of the same GPUs over the same "
                "period, spread over the queries each GPU served in proportion to their "
                "GPU-seconds (a query that ran on n GPUs counts its GPU-seconds / n on each). "
                "It is what holding the GPUs for this workload cost, the figure for an "
                "inventory. Idle energy of GPUs that served no query in the period is shown "
                "as unallocated in the totals. Idle CO2e and cost are priced with the factors "
                "of the queries they are spread over.",
            ],
        ),
        (
            "From energy to CO2e",
            [
                "Facility energy = GPU energy × PUE (power usage effectiveness) of the data "
                "centre: cloud providers' published fleet PUE, or a configured value. "
                "Location-based CO2e = facility energy × the carbon intensity of the grid "
                "zone where the query ran (gCO2e/kWh): a static annual average from "
                "codecarbon's data, an hourly series given by the user or a live value from "
                "Electricity Maps. The factor and its source are stored with every query.",
                "Market-based CO2e uses a contractual factor (power purchase agreement, "
                "green tariff, residual mix) where one is configured; it is shown only then.",
                "Embodied CO2e is the GPU's manufacturing footprint amortised over its "
                "service life and charged per GPU-second of the queries.",
            ],
        ),
        (
            "Cost",
            [
                "Electricity cost = facility energy × the electricity price of the zone, "
                "in its own currency, converted to US dollars at the annual average exchange "
                "rate. GPU time (compute cost) = GPU-seconds × the price of a GPU-hour for "
                "that GPU model. Total cost adds both. For rented cloud GPUs the hourly price "
                "normally includes electricity: there, GPU time alone is the bill and "
                "electricity is the part of it that scales with energy.",
            ],
        ),
        (
            "Software Carbon Intensity (ISO/IEC 21031:2024)",
            [
                "SCI = ((E × I) + M) per R. E × I is the fully loaded location-based CO2e "
                "(facility energy × grid intensity), M the embodied CO2e of the GPU time, and "
                "R the functional unit: one query, and 1,000 output tokens. The boundary is "
                "the inference GPUs: CPU, host memory, network and storage are not included.",
            ],
        ),
        (
            "Per-query figures",
            [
                "Means divide a model's totals by its queries with measured energy. p50 and "
                "p95 are nearest-rank percentiles (the ⌈p × n⌉-th of the n values in "
                "increasing order) of the per-query figures of the queries with measured "
                "energy (for CO2e, of those with a CO2e figure), failed queries included "
                "(they used the GPUs). They are exact, read in order from an index of the "
                "database or computed from all of a model's queries, except for a model with "
                f"more than {PERCENTILE_SAMPLE:,} such queries where no index serves that "
                "figure in order: there they come from a deterministic sample of "
                f"{PERCENTILE_SAMPLE:,} of its queries (a hash of the record id), as the notes "
                "then say. Per 1k output tokens divides the totals, failed queries included, "
                "by the output tokens of the period.",
            ],
        ),
        (
            "Measurement uncertainty",
            [
                "NVML documents its power readings as accurate to within ±5% of the current "
                "draw; the cumulative energy counter used here integrates the board's power "
                "and is updated about every 100 ms, so short queries are resolved to "
                "fractions of a counter update. footprint estimates each update's instant; "
                "inside each interval between two readings, the stretches where no query ran "
                "get the GPU's idle power (learned from the intervals themselves) and the "
                "busy stretches the rest, shared equally among the queries running at each "
                "instant. Shorter queries are individually less certain, but totals are exact "
                "to the counter, since energy is conserved.",
                "Each record carries energy_uncertainty_j, a bound on the error of its "
                "attributed energy under that rule, built from the counter's timing "
                "uncertainty, the spread of the idle-power estimate, the change in busy power "
                "where the set of running queries changed, and the counter's quantisation, "
                "over the parts of the call that shared a counter interval with idle time or "
                "with other queries starting or ending. The ± figures of this "
                "report are sums of these bounds: conservative, as if every query's error had "
                f"the same sign. {bounded:,} of the {with_energy:,} queries with GPU energy in "
                "this report carry a bound.",
                *_accuracy_section(report),
                "Grid intensity factors, PUE and prices are averages with their own "
                "uncertainty, typically larger than the measurement's: their sources are "
                "listed below.",
            ],
        ),
    ]


def _period_filters(report: dict[str, Any]) -> str:
    parts = [period_text(report)]
    models = report["filters"]["models"]
    if models:
        parts.append("models: " + ", ".join(models))
    return " · ".join(parts)


# --- HTML -----------------------------------------------------------------------------

CSS = """
:root{--ink:#0f172a;--muted:#64748b;--line:#e2e8f0;--soft:#f8fafc;--accent:#0f766e;
--accent-soft:#ccfbf1;--warn:#92400e;--warn-soft:#fef3c7}
*{box-sizing:border-box}
body{margin:0;background:#f1f5f9;color:var(--ink);font:15px/1.55 -apple-system,
BlinkMacSystemFont,"Segoe UI",Roboto,"Helvetica Neue",Arial,"DejaVu Sans",sans-serif}
.page{max-width:1180px;margin:0 auto;padding:0 24px 48px}
header.hero{background:linear-gradient(120deg,#0f766e,#115e59 55%,#134e4a);color:#fff;
padding:36px 0 30px;margin-bottom:28px}
header.hero .page{padding-bottom:0}
.eyebrow{text-transform:uppercase;letter-spacing:.12em;font-size:12px;opacity:.8;margin:0}
h1{font-size:32px;line-height:1.2;margin:6px 0 8px;font-weight:700}
.hero p.meta{margin:0;opacity:.9}
h2{font-size:21px;margin:40px 0 6px}
h3{font-size:16px;margin:22px 0 6px}
p.lead{color:var(--muted);margin:0 0 16px}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(190px,1fr));gap:14px}
.card{background:#fff;border:1px solid var(--line);border-radius:12px;padding:16px 18px;
box-shadow:0 1px 2px rgba(15,23,42,.04)}
.card .label{font-size:12px;text-transform:uppercase;letter-spacing:.06em;color:var(--muted)}
.card .value{font-size:28px;font-weight:700;margin:4px 0 6px;color:var(--accent);
white-space:nowrap}
.card .value .bound{display:block;font-size:14px;font-weight:600;color:var(--muted)}
.card .sub{font-size:13px;color:var(--muted);line-height:1.5}
.card .sub b{color:var(--ink);font-weight:600}
.note{background:var(--warn-soft);color:var(--warn);border-radius:10px;padding:10px 14px;
margin:14px 0;font-size:14px}
.panel{background:#fff;border:1px solid var(--line);border-radius:12px;padding:18px 20px;
margin-top:12px;overflow-x:auto}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{padding:7px 8px;border-bottom:1px solid var(--line);text-align:right;
white-space:nowrap}
th{font-size:11px;color:var(--muted);font-weight:600;text-transform:uppercase;
letter-spacing:.03em;border-bottom:2px solid var(--line);white-space:normal;
vertical-align:bottom;line-height:1.3}
th:first-child,td:first-child{text-align:left}
tbody tr:hover{background:var(--soft)}
tfoot td{font-weight:700;border-top:2px solid var(--line);border-bottom:none}
.swatch{display:inline-block;width:10px;height:10px;border-radius:3px;margin-right:8px;
vertical-align:baseline}
figure{margin:0}
figure svg{width:100%;height:auto;display:block}
figcaption{color:var(--muted);font-size:13px;margin-top:6px}
.better{color:#15803d;font-weight:600}.worse{color:#b91c1c;font-weight:600}
.method h3{color:var(--accent)}
.method p{margin:6px 0 10px;max-width:80ch}
dl.sources{font-size:13px;color:var(--muted);margin:8px 0}
dl.sources dt{font-weight:600;color:var(--ink);margin-top:8px}
dl.sources dd{margin:2px 0 0 0}
footer{color:var(--muted);font-size:13px;margin-top:40px;border-top:1px solid var(--line);
padding-top:14px}
@media print{body{background:#fff}.panel,.card{box-shadow:none}}
"""


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _figure_html(report: dict[str, Any], key: str, kind: str, tag: str = "span") -> str:
    value = lookup(report, key)
    raw = "" if value is None else repr(value)
    return (
        f'<{tag} data-key="{_e(key)}" data-kind="{kind}" data-value="{_e(raw)}">'
        f"{_e(fmt(value, kind))}</{tag}>"
    )


def _figure_cell(report: dict[str, Any], key: str, kind: str) -> str:
    """A figure in a table cell, ``±`` before it (outside its data-key span) for a bound."""
    return _e(pm(key, lookup(report, key))) + _figure_html(report, key, kind)


def _method_html(report: dict[str, Any], item: str | Table) -> str:
    if isinstance(item, str):
        return f"<p>{_e(item)}</p>"
    out = ['<div class="panel"><table><thead><tr>']
    out.append("".join(f"<th>{_e(h)}</th>" for h in item.headers))
    out.append("</tr></thead><tbody>")
    for row in item.rows:
        cells = (_e(c) if isinstance(c, str) else _figure_html(report, *c) for c in row)
        out.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def _others_words(report: dict[str, Any]) -> str:
    """How the per-model tables are cut, when they are (empty when every model is shown)."""
    others = report.get("others")
    if not others:
        return ""
    return (
        f"; the {TOP_MODELS} models with the most CO2e, then the other "
        f"{others['models']:,} added up (the JSON and CSV reports list every model)"
    )


def render_html(report: dict[str, Any], charts: list[Chart], version: str) -> str:
    """The report as one self-contained HTML page (inline CSS, inline SVG charts)."""
    parts: list[str] = []
    add = parts.append
    totals = report["totals"]
    add("<!DOCTYPE html>")
    add('<html lang="en"><head><meta charset="utf-8">')
    add('<meta name="viewport" content="width=device-width, initial-scale=1">')
    add(f"<title>{_e(TITLE)} report · {_e(period_text(report))}</title>")
    add(f'<meta name="generator" content="footprint {_e(version)}">')
    add(f"<style>{CSS}</style></head><body>")
    add('<header class="hero"><div class="page">')
    add('<p class="eyebrow">Sustainability report · AI inference</p>')
    add(f"<h1>{_e(TITLE)}: energy, CO2e and cost per model</h1>")
    gpus = report["measurement"]["gpus"]
    meta = (
        f"{_e(_period_filters(report))} · {units.count(totals['queries'])} queries · "
        f"{len(report['models'])} models · {gpus} GPUs"
    )
    add(f'<p class="meta">{meta}</p>')
    add("</div></header>")
    add('<main class="page">')

    add('<section id="summary"><div class="cards">')
    for card in summary_cards(report):
        key, kind = card["main"]
        add('<div class="card">')
        add(f'<div class="label">{_e(card["label"])}</div>')
        bound = ""
        if card.get("bound") and lookup(report, card["bound"][0]) is not None:
            bound = f'<span class="bound"> ± {_figure_html(report, *card["bound"])}</span>'
        add(f'<div class="value">{_figure_html(report, key, kind)}{bound}</div>')
        if card["subs"]:
            subs = " · ".join(
                f"<b>{_figure_html(report, k, kd)}</b> {_e(label)}" for k, kd, label in card["subs"]
            )
            add(f'<div class="sub">{subs}</div>')
        add("</div>")
    add("</div>")
    for note in report["notes"]:
        add(f'<div class="note">{_e(note)}</div>')
    add("</section>")

    colors = model_colors(report)
    rows = shown_models(report)
    add('<section id="models"><h2>Per model</h2>')
    add(
        f'<p class="lead">Totals over the period, sorted by CO2e{_others_words(report)}. '
        "Energy is GPU energy; CO2e and electricity include the data centre's PUE. ± bound: "
        "the sum of the queries' uncertainty bounds on their attributed energy (see "
        "Measurement uncertainty).</p>"
    )
    add('<div class="panel"><table><thead><tr><th>Model</th>')
    add("".join(f"<th>{_e(label)}</th>" for _, label, _ in MODEL_COLUMNS))
    add("</tr></thead><tbody>")
    for path, _, name in rows:
        swatch = f'<span class="swatch" style="background:{colors[path]}"></span>'
        add(f"<tr><td>{swatch}{_e(name)}</td>")
        add(
            "".join(
                f"<td>{_figure_cell(report, f'{path}.{key}', kind)}</td>"
                for key, _, kind in MODEL_COLUMNS
            )
        )
        add("</tr>")
    add("</tbody><tfoot><tr><td>All models</td>")
    add(
        "".join(
            f"<td>{_figure_cell(report, f'totals.{key}', kind)}</td>"
            for key, _, kind in MODEL_COLUMNS
        )
    )
    add("</tr></tfoot></table></div>")
    add("<h3>Per query and per 1,000 output tokens</h3>")
    add('<div class="panel"><table><thead><tr><th>Model</th>')
    add("".join(f"<th>{_e(label)}</th>" for _, label, _ in INTENSITY_COLUMNS))
    add("</tr></thead><tbody>")
    for path, _, name in rows:
        add(f"<tr><td>{_e(name)}</td>")
        add(
            "".join(
                f"<td>{_figure_html(report, f'{path}.{key}', kind)}</td>"
                for key, _, kind in INTENSITY_COLUMNS
            )
        )
        add("</tr>")
    add("</tbody></table></div></section>")

    if charts:
        add('<section id="charts"><h2>Over time and by model</h2>')
        for chart in charts:
            if chart.name == "what-if":
                continue
            add(f'<div class="panel"><figure role="img" aria-label="{_e(chart.alt)}">')
            add(chart.svg)
            add(f"<figcaption>{_e(chart.alt)}.</figcaption></figure></div>")
        add("</section>")

    if report.get("groups") is not None:
        add(_group_table_html(report))

    add(_what_if_html(report, [c for c in charts if c.name == "what-if"]))

    add('<section id="method" class="method"><h2>Methodology</h2>')
    for heading, paragraphs in methodology(report):
        add(f"<h3>{_e(heading)}</h3>")
        add("".join(_method_html(report, p) for p in paragraphs))
    add("</section>")

    add(_factors_html(report))
    add(
        f"<footer>Generated by footprint {_e(version)} (report schema "
        f"{_e(report['schema'])}). Every figure above is in the JSON report of the same "
        "run; figures are rounded to three significant digits here.</footer>"
    )
    add("</main></body></html>")
    return "\n".join(parts) + "\n"


def _group_table_html(report: dict[str, Any]) -> str:
    by = report["by"]
    key = {"day": "day", "region": "zone", "host": "host"}[by]
    title = {"day": "By day", "region": "By region", "host": "By host"}[by]
    rows = [f'<section id="groups"><h2>{title}</h2><div class="panel"><table><thead><tr>']
    rows.append(f"<th>{_e(key)}</th>")
    rows.append("".join(f"<th>{_e(label)}</th>" for _, label, _ in GROUP_COLUMNS))
    rows.append("</tr></thead><tbody>")
    for i, group in enumerate(report["groups"]):
        rows.append(f"<tr><td>{_e(group[key])}</td>")
        rows.append(
            "".join(
                f"<td>{_figure_cell(report, f'groups.{i}.{col}', kind)}</td>"
                for col, _, kind in GROUP_COLUMNS
            )
        )
        rows.append("</tr>")
    rows.append("</tbody></table></div></section>")
    return "".join(rows)


def _change_html(change: float | None) -> str:
    if change is None:
        return "–"
    cls = "better" if change < 0 else "worse"
    sign = "+" if change > 0 else "−" if change < 0 else ""
    return f'<span class="{cls}">{sign}{units.percent(abs(change))}</span>'


def _what_if_html(report: dict[str, Any], charts: list[Chart]) -> str:
    what_if = report["what_if"]
    as_run = what_if["as_run"]
    out = ['<section id="what-if"><h2>What if elsewhere</h2>']
    out.append(
        f'<p class="lead">The period\'s fully loaded GPU energy '
        f"({_e(units.energy(what_if['energy_kwh']))}) priced with the factors of other "
        "zones: the five cleanest cloud regions we know (one per grid) and any named with "
        "--compare. Static annual grid intensity, the provider's PUE, local electricity "
        "prices in US dollars.</p>"
    )
    for chart in charts:
        out.append(f'<div class="panel"><figure role="img" aria-label="{_e(chart.alt)}">')
        out.append(chart.svg)
        out.append("</figure></div>")
    out.append('<div class="panel"><table><thead><tr><th>Zone</th><th>Grid gCO2e/kWh</th>')
    out.append("<th>PUE</th><th>CO2e</th><th>vs as run</th><th>Electricity</th>")
    out.append("<th>vs as run</th></tr></thead><tbody>")
    out.append(
        f"<tr><td><b>As run</b> ({_e(', '.join(as_run['zones']) or 'no zone')})</td>"
        f"<td>–</td><td>–</td><td>{_figure_html(report, 'what_if.as_run.co2e_g', 'mass')}</td>"
        f"<td>–</td><td>{_figure_html(report, 'what_if.as_run.energy_cost_usd', 'money')}"
        "</td><td>–</td></tr>"
    )
    for i, z in enumerate(what_if["zones"]):
        name = f"{z['zone']} ({z['name']})" if z["name"] else z["zone"]
        why = " · named" if z["why"] == "compare" else ""
        out.append(
            f"<tr><td>{_e(name)}{_e(why)}</td><td>{_e(units.number(z['intensity_g_per_kwh']))}"
            f"</td><td>{_e(units.number(z['pue']))}</td>"
            f"<td>{_figure_html(report, f'what_if.zones.{i}.co2e_g', 'mass')}</td>"
            f"<td>{_change_html(z['co2e_change'])}</td>"
            f"<td>{_figure_html(report, f'what_if.zones.{i}.energy_cost_usd', 'money')}</td>"
            f"<td>{_change_html(z['cost_change'])}</td></tr>"
        )
    out.append("</tbody></table></div></section>")
    return "".join(out)


def factor_rows(report: dict[str, Any]) -> list[list[str]]:
    """The factors table as text cells (HTML and Markdown)."""
    rows = []
    for f in report["factors"]:
        low, high = f["intensity_g_per_kwh_min"], f["intensity_g_per_kwh_max"]
        if low is None:
            intensity = "–"
        elif high is not None and abs(high - low) > 1e-9:
            intensity = f"{units.number(low)}–{units.number(high)}"
        else:
            intensity = units.number(low)
        price = (
            f"{units.number(f['price_per_kwh'])} {f['currency']}"
            if f["price_per_kwh"] is not None
            else "–"
        )
        market = f["market_intensity_g_per_kwh"]
        rows.append(
            [
                f["zone"] or "(none)",
                intensity,
                f["intensity_source"] or "–",
                "–" if market is None else units.number(market),
                "–" if f["pue"] is None else units.number(f["pue"]),
                price,
                "–" if f["usd_per_gpu_hour"] is None else units.money(f["usd_per_gpu_hour"]),
                units.count(f["queries"]),
            ]
        )
    return rows


FACTOR_HEADERS = [
    "Zone", "Grid gCO2e/kWh", "Intensity source", "Market gCO2e/kWh", "PUE",
    "Electricity /kWh", "GPU-hour", "Queries",
]  # fmt: skip
SOURCE_LABELS = (
    ("intensity_ref", "Grid intensity"),
    ("pue_ref", "PUE"),
    ("price_ref", "Electricity price"),
    ("exchange_rate_ref", "Exchange rate"),
    ("embodied_ref", "Embodied carbon"),
)


def _sources(report: dict[str, Any]) -> list[tuple[str, list[tuple[str, str]]]]:
    out = []
    seen: set[str] = set()
    for f in report["factors"]:
        zone = f["zone"] or "(none)"
        if zone in seen:
            continue
        seen.add(zone)
        refs = [(label, f["sources"][k]) for k, label in SOURCE_LABELS if f["sources"].get(k)]
        extra = []
        if f.get("embodied_kgco2e_per_gpu") is not None:
            extra.append(
                (
                    "Embodied carbon per GPU",
                    f"{units.number(f['embodied_kgco2e_per_gpu'])} kgCO2e over "
                    f"{units.number(f['gpu_lifetime_years'])} years",
                )
            )
        out.append((zone, refs + extra))
    return out


def _factors_html(report: dict[str, Any]) -> str:
    out = ['<section id="factors"><h2>Factors used</h2>']
    out.append(
        '<p class="lead">The factors stored with the queries of this period (each query keeps '
        "the factors it was priced with), and where they come from.</p>"
    )
    out.append('<div class="panel"><table><thead><tr>')
    out.append("".join(f"<th>{_e(h)}</th>" for h in FACTOR_HEADERS))
    out.append("</tr></thead><tbody>")
    for row in factor_rows(report):
        out.append("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>")
    out.append("</tbody></table>")
    for zone, refs in _sources(report):
        out.append(f'<h3>{_e(zone)}</h3><dl class="sources">')
        for label, text in refs:
            out.append(f"<dt>{_e(label)}</dt><dd>{_e(text)}</dd>")
        out.append("</dl>")
    out.append("</div></section>")
    return "".join(out)


# --- Markdown ----------------------------------------------------------------------------


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def _md_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(_md_cell(h) for h in headers) + " |"]
    lines.append("| " + " | ".join(["---"] + ["---:"] * (len(headers) - 1)) + " |")
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(report: dict[str, Any], charts: list[Chart], version: str) -> str:
    """The same content as the HTML, as Markdown tables with the charts as PNG files."""
    totals = report["totals"]
    out = [f"# {TITLE}: energy, CO2e and cost per model", ""]
    out.append(
        f"{_period_filters(report)} · {units.count(totals['queries'])} queries · "
        f"{len(report['models'])} models · {report['measurement']['gpus']} GPUs"
    )
    out += ["", "## Summary", ""]
    rows = []
    for card in summary_cards(report):
        key, kind = card["main"]
        subs = "; ".join(f"{fmt(lookup(report, k), kd)} {label}" for k, kd, label in card["subs"])
        value = fmt(lookup(report, key), kind)
        if card.get("bound") and lookup(report, card["bound"][0]) is not None:
            value += " " + cell(report, *card["bound"])
        rows.append([card["label"], value, subs])
    out.append(_md_table(["Figure", "Value", "Details"], rows))
    for note in report["notes"]:
        out += ["", f"> {note}"]
    out += ["", "## Per model", ""]
    shown = shown_models(report)
    if report.get("others"):
        out += [f"Sorted by CO2e{_others_words(report)}.", ""]
    headers = ["Model"] + [label for _, label, _ in MODEL_COLUMNS]
    rows = [[name] + [cell(m, key, kind) for key, _, kind in MODEL_COLUMNS] for _, m, name in shown]
    rows.append(["**All models**"] + [cell(totals, key, kind) for key, _, kind in MODEL_COLUMNS])
    out.append(_md_table(headers, rows))
    out += ["", "### Per query and per 1,000 output tokens", ""]
    headers = ["Model"] + [label for _, label, _ in INTENSITY_COLUMNS]
    rows = [
        [name] + [fmt(lookup(m, key), kind) for key, _, kind in INTENSITY_COLUMNS]
        for _, m, name in shown
    ]
    out.append(_md_table(headers, rows))
    for chart in charts:
        if chart.name != "what-if":
            out += ["", f"![{chart.alt}](charts/{chart.name}.png)"]
    if report.get("groups") is not None:
        key = {"day": "day", "region": "zone", "host": "host"}[report["by"]]
        out += ["", f"## By {report['by']}", ""]
        rows = [
            [str(g[key])] + [cell(g, col, kind) for col, _, kind in GROUP_COLUMNS]
            for g in report["groups"]
        ]
        out.append(_md_table([key] + [label for _, label, _ in GROUP_COLUMNS], rows))
    what_if = report["what_if"]
    out += ["", "## What if elsewhere", ""]
    out.append(
        f"The period's fully loaded GPU energy ({units.energy(what_if['energy_kwh'])}) priced "
        "with the factors of other zones: the five cleanest cloud regions we know (one per "
        "grid) and any named with `--compare`."
    )
    for chart in charts:
        if chart.name == "what-if":
            out += ["", f"![{chart.alt}](charts/{chart.name}.png)"]
    as_run = what_if["as_run"]
    rows = [
        [
            f"**As run** ({', '.join(as_run['zones']) or 'no zone'})", "–", "–",
            units.mass(as_run["co2e_g"]), "–", units.money(as_run["energy_cost_usd"]), "–",
        ]
    ]  # fmt: skip
    for z in what_if["zones"]:
        rows.append(
            [
                f"{z['zone']} ({z['name']})" if z["name"] else z["zone"],
                units.number(z["intensity_g_per_kwh"]),
                units.number(z["pue"]),
                units.mass(z["co2e_g"]),
                _change_text(z["co2e_change"]),
                units.money(z["energy_cost_usd"]),
                _change_text(z["cost_change"]),
            ]
        )
    out += [""]
    out.append(
        _md_table(
            ["Zone", "Grid gCO2e/kWh", "PUE", "CO2e", "vs as run", "Electricity", "vs as run"],
            rows,
        )
    )
    out += ["", "## Methodology"]
    for heading, paragraphs in methodology(report):
        out += ["", f"### {heading}"]
        for p in paragraphs:
            if isinstance(p, str):
                out += ["", p]
                continue
            rows = [
                [c if isinstance(c, str) else fmt(lookup(report, c[0]), c[1]) for c in row]
                for row in p.rows
            ]
            out += ["", _md_table(p.headers, rows)]
    out += ["", "## Factors used", ""]
    out.append(_md_table(FACTOR_HEADERS, factor_rows(report)))
    for zone, refs in _sources(report):
        out += ["", f"Sources for {zone}:", ""]
        out += [f"- {label}: {text}" for label, text in refs]
    out += [
        "",
        "---",
        "",
        f"Generated by footprint {version} (report schema {report['schema']}). Figures are "
        "rounded to three significant digits; the JSON report has them in full.",
    ]
    return "\n".join(out) + "\n"


def _change_text(change: float | None) -> str:
    if change is None:
        return "–"
    sign = "+" if change > 0 else "−" if change < 0 else ""
    return f"{sign}{units.percent(abs(change))}"


# --- CSV and JSON ------------------------------------------------------------------------


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
    """``render_csv`` written row by row: every model, however many (a data export)."""
    entries = report["groups"] if report.get("groups") is not None else report["models"]
    columns: dict[str, None] = {}
    for entry in entries:
        columns.update(dict.fromkeys(_flatten(entry)))
    writer = csv.DictWriter(handle, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for entry in entries:
        writer.writerow({k: "" if v is None else v for k, v in _flatten(entry).items()})


def render_json(report: dict[str, Any]) -> str:
    """The report as indented JSON text (``json.dumps`` would hold every piece at once)."""
    buffer = io.StringIO()
    write_json(report, buffer)
    return buffer.getvalue()


def write_json(report: dict[str, Any], handle: Any) -> None:
    """``render_json`` written piece by piece: no copy of the whole text in memory."""
    json.dump(report, handle, indent=2, ensure_ascii=False)
    handle.write("\n")


# --- files -------------------------------------------------------------------------------


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
