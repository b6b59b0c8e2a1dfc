"""The report's tables of figures: per model (energy, cost, intensity), per ``--by`` group,
per GPU (capacity). Cells are JSON paths, rendered by the HTML and Markdown reports."""

from __future__ import annotations

from typing import Any

from footprint.reporting import units
from footprint.reporting.content import Table
from footprint.reporting.figures import TOP_MODELS, shown_models
from footprint.reporting.request import group_key, tag_name


def others_words(report: dict[str, Any]) -> str:
    """How the per-model tables are cut, when they are (empty when every model is shown)."""
    others = report.get("others")
    if not others:
        return ""
    return (
        f"; the {TOP_MODELS} models with the most CO2e, then the other "
        f"{others['models']:,} added up (the JSON and CSV reports list every model)"
    )


ENERGY_COLUMNS = (
    ("queries", "Queries", "count"),
    ("errors", "Errors", "count"),
    ("output_tokens", "Output tokens", "count"),
    ("energy_kwh", "Energy (attributed)", "energy"),
    ("energy_uncertainty_kwh", "± bound", "energy"),
    ("idle_energy_kwh", "Idle share", "energy"),
    ("fully_loaded_energy_kwh", "Energy (fully loaded)", "energy"),
    ("co2e_g", "CO2e", "mass"),
    ("fully_loaded_co2e_g", "CO2e (fully loaded)", "mass"),
    ("fully_loaded_embodied_co2e_g", "Embodied (time held)", "mass"),
)
COST_COLUMNS = (
    ("gpu_hours_busy", "GPU-hours busy", "number"),
    ("gpu_hours_held", "GPU-hours held", "number"),
    ("utilisation", "Utilisation", "percent"),
    ("energy_cost_usd", "Electricity", "money"),
    ("compute_cost_usd", "GPU time", "money"),
    ("cost_usd", "Cost (attributed)", "money"),
    ("fully_loaded_compute_cost_usd", "GPU time (fully loaded)", "money"),
    ("fully_loaded_cost_usd", "Cost (fully loaded)", "money"),
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
SERVING_COLUMNS = (
    ("input_tokens", "Input tokens", "count"),
    ("output_tokens", "Output tokens", "count"),
    ("per_query.latency_s.p50", "Latency p50", "duration"),
    ("per_query.latency_s.p95", "Latency p95", "duration"),
    ("per_query.time_to_first_token_s.p50", "TTFT p50", "duration"),
    ("per_query.time_to_first_token_s.p95", "TTFT p95", "duration"),
    ("per_1m_output_tokens.cost_usd", "$ /1M output tok", "money"),
    ("per_1m_output_tokens.fully_loaded_cost_usd", "$ /1M output tok (fully loaded)", "money"),
    ("per_1m_tokens.cost_usd", "$ /1M tok (in + out)", "money"),
    ("per_1m_tokens.fully_loaded_cost_usd", "$ /1M tok (in + out, fully loaded)", "money"),
)
PHASE_COLUMNS = (
    ("per_1m_phase_tokens.queries", "Queries split", "count"),
    ("per_1m_phase_tokens.input.energy_kwh", "Energy /1M input tok", "energy"),
    ("per_1m_phase_tokens.input.co2e_g", "CO2e /1M input tok", "mass"),
    ("per_1m_phase_tokens.input.cost_usd", "$ /1M input tok", "money"),
    ("per_1m_phase_tokens.output.energy_kwh", "Energy /1M output tok", "energy"),
    ("per_1m_phase_tokens.output.co2e_g", "CO2e /1M output tok", "mass"),
    ("per_1m_phase_tokens.output.cost_usd", "$ /1M output tok", "money"),
)
GROUP_COLUMNS = (
    ("queries", "Queries", "count"),
    ("output_tokens", "Output tokens", "count"),
    ("energy_kwh", "Energy (attributed)", "energy"),
    ("energy_uncertainty_kwh", "± bound", "energy"),
    ("idle_energy_kwh", "Idle", "energy"),
    ("co2e_g", "CO2e", "mass"),
    ("fully_loaded_co2e_g", "CO2e (fully loaded)", "mass"),
    ("gpu_hours_busy", "GPU-hours busy", "number"),
    ("gpu_hours_held", "GPU-hours held", "number"),
    ("cost_usd", "Cost (attributed)", "money"),
    ("fully_loaded_cost_usd", "Cost (fully loaded)", "money"),
)


def _model_table(report: dict[str, Any], columns: tuple, totals: bool) -> Table:
    rows = shown_models(report)
    table = Table(
        headers=["Model"] + [label for _, label, _ in columns],
        rows=[
            [name] + [(f"{path}.{key}", kind) for key, _, kind in columns] for path, _, name in rows
        ],
        paths=[path for path, _, _ in rows],
    )
    if totals:
        table.foot = ["All models"] + [(f"totals.{key}", kind) for key, _, kind in columns]
    return table


def model_tables(report: dict[str, Any]) -> list[tuple[str, str, Table]]:
    """(title, lead, table) of the per-model section."""
    energy_lead = (
        f"Totals over the period, sorted by CO2e{others_words(report)}. Energy is GPU "
        "energy; CO2e includes the data centre's PUE. ± bound: the sum of the queries' "
        "uncertainty bounds on their attributed energy (see Measurement uncertainty). Idle "
        "share: the idle energy of the GPUs held, spread over their queries. Embodied: the "
        "GPUs' manufacturing footprint over the time they were held. – : not known."
    )
    cost_lead = (
        "Attributed: the GPU time the queries used. Fully loaded: with the idle time of "
        "the GPUs held, at the $/GPU-hour of their queries. Rented GPUs cost their GPU time "
        "(the hourly price includes electricity, shown beside it, not added); owned ones "
        "their GPU time (hardware amortised per hour) plus electricity. See Cost."
    )
    serving_lead = (
        "Latency: from a query's start to its end; TTFT: time to first token (of the "
        "queries that recorded one); nearest-rank percentiles, failed queries included. "
        "$ per 1M tokens: the cost (attributed, or fully loaded with the idle GPU time "
        "held) divided by the output tokens, or by the input and output tokens together, "
        "as hosted APIs quote their prices."
    )
    return [
        ("Energy and CO2e", energy_lead, _model_table(report, ENERGY_COLUMNS, True)),
        ("Cost and capacity", cost_lead, _model_table(report, COST_COLUMNS, True)),
        (
            "Per query and per 1,000 output tokens",
            "",
            _model_table(report, INTENSITY_COLUMNS, False),
        ),
        ("Latency, tokens and $ per 1M tokens", serving_lead, _serving_table(report)),
        (
            "Per 1M input tokens and per 1M output tokens",
            PHASE_LEAD,
            _model_table(report, PHASE_COLUMNS, True),
        ),
        *reference_tables(report),
    ]


def _range(low: float, high: float, show: Any) -> str:
    return f"{show(low)}–{show(high)}"


def reference_tables(report: dict[str, Any]) -> list[tuple[str, str, Table]]:
    """The models' per-1M-token figures beside published ones (``references``), when the
    report has models with published figures."""
    found = report.get("references") or []
    if not found:
        return []
    rows = []
    for ref in found:
        path = f"models.{ref['index']}.per_1m_phase_tokens"
        j_low, j_high = ref["output_energy_j_per_1m"]["low"], ref["output_energy_j_per_1m"]["high"]
        rows.append(
            [
                ref["model"],
                (f"{path}.input.cost_usd", "money"),
                _range(
                    ref["input_usd_per_1m"]["low"], ref["input_usd_per_1m"]["high"], units.money
                ),
                (f"{path}.output.cost_usd", "money"),
                _range(
                    ref["output_usd_per_1m"]["low"], ref["output_usd_per_1m"]["high"], units.money
                ),
                (f"{path}.output.energy_kwh", "energy"),
                _range(j_low / 3.6e6, j_high / 3.6e6, units.energy),
            ]
        )
    table = Table(
        headers=[
            "Model",
            "$ /1M input tok",
            "hosted APIs",
            "$ /1M output tok",
            "hosted APIs",
            "Energy /1M output tok",
            "ML.ENERGY",
        ],
        rows=rows,
    )
    first = found[0]
    lead = (
        "This report's cost and energy per 1M input and per 1M output tokens (above) beside "
        "published figures for the same models: the range of hosted API list prices "
        f"({first['prices_source']}), and the range of GPU energy per output token measured "
        f"over batch sizes ({first['energy_source']}), which counts a whole request's "
        "energy (prefill included) per output token where the decode column here counts "
        "the decode alone. A hosted price is a provider's list price, margins included: a "
        "comparison, not a check."
    )
    return [("Beside published figures", lead, table)]


PHASE_LEAD = (
    "The way providers price: each query's energy split at its first token, the prefill "
    "(start to first token) charged to its input tokens and the decode (first token to "
    "end) to its output tokens, then summed per model and divided by the tokens. Only the "
    "queries that carry both the split and both token counts count here (Queries split; "
    "a query needs a time to first token and token counts); their CO2e and cost are split "
    "in the same proportion as their energy. – : no such query. See Prefill and decode."
)


def _serving_table(report: dict[str, Any]) -> Table:
    """Per model, with a totals row of what the totals have (not the percentiles)."""
    table = _model_table(report, SERVING_COLUMNS, False)
    table.foot = ["All models"] + [
        "" if key.startswith("per_query.") else (f"totals.{key}", kind)
        for key, _, kind in SERVING_COLUMNS
    ]
    return table


def group_title(report: dict[str, Any]) -> tuple[str, str]:
    """(section title, first column's header) of the --by table."""
    by = report["by"]
    name = tag_name(by)
    if name is not None:
        return f"By {name} (tag)", name
    titles = {"day": "By day", "region": "By region", "host": "By host"}
    return titles[by], group_key(by)


def group_label(report: dict[str, Any], value: Any) -> str:
    """A group's value as shown: ``(no NAME)`` for the queries without the tag."""
    name = tag_name(report["by"])
    if value is None:
        return f"(no {name})" if name is not None else "(none)"
    return str(value)


def group_table(report: dict[str, Any]) -> Table:
    key = group_key(report["by"])
    _, header = group_title(report)
    return Table(
        headers=[header] + [label for _, label, _ in GROUP_COLUMNS],
        rows=[
            [group_label(report, g[key])]
            + [(f"groups.{i}.{col}", kind) for col, _, kind in GROUP_COLUMNS]
            for i, g in enumerate(report["groups"])
        ],
        foot=["All"] + [(f"totals.{col}", kind) for col, _, kind in GROUP_COLUMNS],
    )


def capacity_table(report: dict[str, Any]) -> Table | None:
    """Per GPU: its index and model (where the database names it), host and UUID, the
    models that ran on it, then its GPU-hours held and busy, utilisation and idle energy."""
    gpus = report.get("capacity", {}).get("gpus") or []
    if not gpus:
        return None
    columns = (
        ("gpu_hours_held", "number"),
        ("gpu_hours_busy", "number"),
        ("utilisation", "percent"),
        ("idle_energy_kwh", "energy"),
    )
    return Table(
        headers=[
            "GPU",
            "Host",
            "Model",
            "UUID",
            "Models served",
            "GPU-hours held",
            "busy",
            "Utilisation",
            "Idle energy",
        ],
        rows=[
            [
                "–" if g.get("index") is None else str(g["index"]),
                ", ".join(g.get("hosts") or ()) or "–",
                g.get("name") or "–",
                g["gpu"],
                ", ".join(g.get("models") or ()) or "–",
            ]
            + [(f"capacity.gpus.{i}.{key}", kind) for key, kind in columns]
            for i, g in enumerate(gpus)
        ],
        foot=[
            "All GPUs",
            "",
            "",
            "",
            "",
            ("totals.gpu_hours_held", "number"),
            ("totals.gpu_hours_busy", "number"),
            ("totals.utilisation", "percent"),
            ("totals.idle_energy_kwh", "energy"),
        ],
    )
