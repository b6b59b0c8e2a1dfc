"""What a report shows, whatever its format: the cards, tables and wording shared by the
HTML and Markdown renderers.

A table is headers and rows of cells; a cell is text, a figure ``(JSON path, kind)`` or a
``Change``. The HTML renders a figure with its JSON path and exact value (``data-key``,
``data-value``), the Markdown as text; both with ``fmt``. A figure that is not known is
``–``, never 0.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from typing import Any

from footprint.reporting import units
from footprint.reporting.figures import TOP_MODELS, shown_models
from footprint.reporting.request import group_key, tag_name

TITLE = "AI inference footprint"
UNKNOWN = "–"  # a figure none of whose inputs is known

FORMATTERS = {
    "count": units.count,
    "energy": units.energy,
    "mass": units.mass,
    "money": units.money,
    "number": units.number,
    "percent": units.percent,
}
# Figures shown as "± x": the summed per-record bounds on attributed energy.
BOUND_KEYS = frozenset({"energy_uncertainty_kwh"})

Figure = tuple[str, str]  # (JSON path, kind)


@dataclass(frozen=True)
class Change:
    """A relative change against the as-run row (−: better)."""

    value: float | None


Cell = str | Figure | Change


@dataclass
class Table:
    """Headers and rows of cells; ``paths``: the JSON path of each row's entry (colours)."""

    headers: list[str]
    rows: list[list[Any]]
    foot: list[Any] | None = None
    paths: list[str] = field(default_factory=list)


def lookup(report: dict[str, Any], key: str) -> Any:
    """The value at a dotted path such as ``models.0.co2e_g`` or ``totals.sci.per_query_g``."""
    value: Any = report
    for part in key.split("."):
        value = value[int(part)] if isinstance(value, list) else value[part]
    return value


def fmt(value: Any, kind: str) -> str:
    """A figure as shown in the report (``pct``: a value already in percent)."""
    if value is None:
        return UNKNOWN
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


def change_text(change: float | None) -> str:
    if change is None:
        return UNKNOWN
    sign = "+" if change > 0 else "−" if change < 0 else ""
    return f"{sign}{units.percent(abs(change))}"


# --- wording -------------------------------------------------------------------------------


def period_text(report: dict[str, Any]) -> str:
    """ "2 Mar 2026 – 8 Mar 2026 (UTC)" from the filters, else from the data.

    An ``until`` at midnight is exclusive: the last day shown is the day before it.
    """
    period = report["period"]
    since = period["since"] or period["first_query"]
    if not since:
        return "no queries"
    start = _dt.datetime.fromisoformat(since)
    if period["until"]:
        end = _dt.datetime.fromisoformat(period["until"])
        last = end.date()
        if end.time() == _dt.time(0) and end.date() > start.date():
            last -= _dt.timedelta(days=1)
    elif period["last_query"]:
        last = _dt.datetime.fromisoformat(period["last_query"]).date()
    else:
        return "no queries"

    def day(when: _dt.date) -> str:
        return f"{when.day} {when:%b %Y}"

    if start.date() == last:
        return f"{day(start.date())} (UTC)"
    return f"{day(start.date())} – {day(last)} (UTC)"


def period_filters(report: dict[str, Any]) -> str:
    parts = [period_text(report)]
    models = report["filters"]["models"]
    if models:
        parts.append("models: " + ", ".join(models))
    return " · ".join(parts)


def others_words(report: dict[str, Any]) -> str:
    """How the per-model tables are cut, when they are (empty when every model is shown)."""
    others = report.get("others")
    if not others:
        return ""
    return (
        f"; the {TOP_MODELS} models with the most CO2e, then the other "
        f"{others['models']:,} added up (the JSON and CSV reports list every model)"
    )


def all_rented(report: dict[str, Any]) -> bool:
    owned = report["totals"].get("queries_by_ownership", {})
    return bool(owned.get("rented")) and not owned.get("owned") and not owned.get("unknown")


def summary_cards(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The headline figures: (label, main figure, supporting figures), each a JSON path."""
    t = report["totals"]
    electricity = "electricity (in the GPU-hour price)" if all_rented(report) else "electricity"
    cards = [
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
                ("totals.fully_loaded_embodied_co2e_g", "mass", "embodied (time held)"),
            ],  # fmt: skip
        },
        {
            "label": "Cost (attributed)",
            "main": ("totals.cost_usd", "money"),
            "subs": [
                ("totals.fully_loaded_cost_usd", "money", "fully loaded"),
                ("totals.compute_cost_usd", "money", "GPU time"),
                ("totals.energy_cost_usd", "money", electricity),
            ],  # fmt: skip
        },
        {
            "label": "GPU-hours held",
            "main": ("totals.gpu_hours_held", "number"),
            "subs": [
                ("totals.gpu_hours_busy", "number", "busy"),
                ("totals.utilisation", "percent", "utilisation"),
            ],  # fmt: skip
        },
        {
            "label": "SCI per 1k output tokens",
            "main": ("totals.sci.per_1k_output_tokens_g", "mass"),
            "subs": [("totals.sci.per_query_g", "mass", "per query")],
        },
    ]
    if t.get("market_co2e_g") is not None:
        cards.append(
            {"label": "CO2e (market-based)", "main": ("totals.market_co2e_g", "mass"), "subs": []}
        )
    return cards


# --- tables ----------------------------------------------------------------------------------

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
        ],  # fmt: skip
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
    return [
        ("Energy and CO2e", energy_lead, _model_table(report, ENERGY_COLUMNS, True)),
        ("Cost and capacity", cost_lead, _model_table(report, COST_COLUMNS, True)),
        (
            "Per query and per 1,000 output tokens",
            "",
            _model_table(report, INTENSITY_COLUMNS, False),
        ),
    ]


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
    gpus = report.get("capacity", {}).get("gpus") or []
    if not gpus:
        return None
    columns = (("gpu_hours_held", "number"), ("gpu_hours_busy", "number"),
               ("utilisation", "percent"), ("idle_energy_kwh", "energy"))  # fmt: skip
    return Table(
        headers=["GPU", "GPU-hours held", "busy", "Utilisation", "Idle energy"],
        rows=[
            [g["gpu"]] + [(f"capacity.gpus.{i}.{key}", kind) for key, kind in columns]
            for i, g in enumerate(gpus)
        ],
        foot=[
            "All GPUs",
            ("totals.gpu_hours_held", "number"),
            ("totals.gpu_hours_busy", "number"),
            ("totals.utilisation", "percent"),
            ("totals.idle_energy_kwh", "energy"),
        ],  # fmt: skip
    )


BASIS_WORDS = {
    "as run": "as run (same grid)",
    "grid": "grid (codecarbon)",
    "provider": "provider's own",
    "static": "static",
    "hourly": "hourly",
    "live": "live",
}


def what_if_table(report: dict[str, Any]) -> Table:
    what_if = report["what_if"]
    as_run = what_if["as_run"]
    basis = as_run.get("intensity_basis")
    rows: list[list[Any]] = [
        [
            f"As run ({', '.join(as_run['zones']) or 'no zone'})",
            ("what_if.as_run.intensity_g_per_kwh", "number"),
            BASIS_WORDS.get(basis or "", basis or UNKNOWN),
            ("what_if.as_run.pue", "number"),
            ("what_if.as_run.co2e_g", "mass"),
            UNKNOWN,
            ("what_if.as_run.energy_cost_usd", "money"),
            UNKNOWN,
        ]
    ]
    for i, z in enumerate(what_if["zones"]):
        name = f"{z['zone']} ({z['name']})" if z["name"] else z["zone"]
        if z["why"] == "compare":
            name += " · named"
        mark = "" if z.get("same_footing", True) else " †"
        rows.append(
            [
                name,
                (f"what_if.zones.{i}.intensity_g_per_kwh", "number"),
                BASIS_WORDS.get(z.get("intensity_basis", ""), UNKNOWN) + mark,
                (f"what_if.zones.{i}.pue", "number"),
                (f"what_if.zones.{i}.co2e_g", "mass"),
                Change(z["co2e_change"]),
                (f"what_if.zones.{i}.energy_cost_usd", "money"),
                Change(z["cost_change"]),
            ]
        )
    return Table(
        headers=[
            "Zone",
            "Grid gCO2e/kWh",
            "Intensity figure",
            "PUE",
            "CO2e",
            "vs as run",
            "Electricity",
            "vs as run",
        ],  # fmt: skip
        rows=rows,
    )


def what_if_words(report: dict[str, Any]) -> list[str]:
    """The lead of the what-if table, and the footnote on intensity figures of other kinds."""
    what_if = report["what_if"]
    words = [
        f"The period's fully loaded GPU energy ({units.energy(what_if['energy_kwh'])}) priced "
        "with the factors of other zones: the five cleanest cloud regions we know (one per "
        "grid) and any named with --compare, each with its provider's PUE and its "
        "electricity price in US dollars. A zone on a grid the work ran on keeps the grid "
        "intensity the work was priced with there (one grid, one figure); other zones take "
        "their static annual figure. The as-run row shows the intensity and PUE the work "
        "was priced with."
    ]
    differs = [z["zone"] for z in what_if["zones"] if not z.get("same_footing", True)]
    if differs:
        basis = BASIS_WORDS.get(what_if["as_run"].get("intensity_basis") or "", "unknown")
        words.append(
            f"† {', '.join(differs)}: a different kind of grid-intensity figure from the "
            f"as-run row ({basis}): a cloud provider's own figure for its region and "
            "codecarbon's figure for a grid can differ by much more than the grids do."
        )
    return words


# --- factors ---------------------------------------------------------------------------------

FACTOR_HEADERS = [
    "Zone", "Grid gCO2e/kWh", "Intensity source", "Market gCO2e/kWh", "PUE",
    "Electricity /kWh", "Ownership", "GPU-hour", "Queries",
]  # fmt: skip
SOURCE_LABELS = (
    ("intensity_ref", "Grid intensity"),
    ("pue_ref", "PUE"),
    ("price_ref", "Electricity price"),
    ("exchange_rate_ref", "Exchange rate"),
    ("embodied_ref", "Embodied carbon"),
)


def factor_rows(report: dict[str, Any]) -> list[list[str]]:
    """The factors table as text cells (HTML and Markdown)."""
    rows = []
    for f in report["factors"]:
        low, high = f["intensity_g_per_kwh_min"], f["intensity_g_per_kwh_max"]
        if low is None:
            intensity = UNKNOWN
        elif high is not None and units.number(high) != units.number(low):
            intensity = f"{units.number(low)}–{units.number(high)}"
        else:
            intensity = units.number(low)
        price = (
            f"{units.number(f['price_per_kwh'])} {f['currency']}"
            if f["price_per_kwh"] is not None
            else UNKNOWN
        )
        market = f["market_intensity_g_per_kwh"]
        rows.append(
            [
                f["zone"] or "(none)",
                intensity,
                f["intensity_source"] or UNKNOWN,
                UNKNOWN if market is None else units.number(market),
                UNKNOWN if f["pue"] is None else units.number(f["pue"]),
                price,
                f.get("ownership") or UNKNOWN,
                UNKNOWN if f["usd_per_gpu_hour"] is None else units.money(f["usd_per_gpu_hour"]),
                units.count(f["queries"]),
            ]
        )
    return rows


def sources(report: dict[str, Any]) -> list[tuple[str, list[tuple[str, str]]]]:
    """(zone, [(label, source)]) for each zone of the factors, then the GPU-hour prices."""
    out = []
    seen: set[str] = set()
    for f in report["factors"]:
        zone = f["zone"] or "(none)"
        if zone in seen:
            continue
        seen.add(zone)
        refs = [(label, f["sources"][k]) for k, label in SOURCE_LABELS if f["sources"].get(k)]
        if f.get("embodied_kgco2e_per_gpu") is not None:
            refs.append(
                (
                    "Embodied carbon per GPU",
                    f"{units.number(f['embodied_kgco2e_per_gpu'])} kgCO2e over "
                    f"{units.number(f['gpu_lifetime_years'])} years",
                )
            )
        out.append((zone, refs))
    prices = []
    for f in report["factors"]:
        ref = f["sources"].get("gpu_price_ref")
        if ref:
            price = UNKNOWN if f["usd_per_gpu_hour"] is None else units.money(f["usd_per_gpu_hour"])
            line = (f"{f.get('ownership') or 'ownership unknown'}, {price}", ref)
            if line not in prices:
                prices.append(line)
    if prices:
        out.append(("GPU-hour prices", prices))
    return out
