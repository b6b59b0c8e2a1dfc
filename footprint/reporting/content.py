"""What a report shows, whatever its format: the cells, cards and wording shared by the
HTML and Markdown renderers (their tables: ``tables``, ``factor_tables``).

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

TITLE = "AI inference footprint"
UNKNOWN = "–"  # a figure none of whose inputs is known

FORMATTERS = {
    "count": units.count,
    "duration": units.duration,
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


def header_line(report: dict[str, Any]) -> str:
    """The line under the title: period, filters, queries, models and GPUs measured."""
    totals = report["totals"]
    return " · ".join(
        [
            period_filters(report),
            units.counted(totals["queries"], "query", "queries"),
            units.counted(len(report["models"]), "model"),
            units.counted(report["measurement"]["gpus"], "GPU"),
        ]
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
            ],
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
            ],
        },
        {
            "label": "Cost (attributed)",
            "main": ("totals.cost_usd", "money"),
            "subs": [
                ("totals.fully_loaded_cost_usd", "money", "fully loaded"),
                ("totals.compute_cost_usd", "money", "GPU time"),
                ("totals.energy_cost_usd", "money", electricity),
            ],
        },
        {
            "label": "GPU-hours held",
            "main": ("totals.gpu_hours_held", "number"),
            "subs": [
                ("totals.gpu_hours_busy", "number", "busy"),
                ("totals.utilisation", "percent", "utilisation"),
            ],
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
