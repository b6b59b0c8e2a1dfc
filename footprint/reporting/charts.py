"""Charts of a report, drawn with matplotlib (object API, no pyplot state, Agg/SVG only).

Each chart comes out as SVG text (inlined in the HTML: no network, crisp at any zoom) and
as PNG bytes (beside the Markdown). Output is reproducible: one font (DejaVu Sans, shipped
with matplotlib, drawn as paths), fixed SVG id salt, no creation date in the metadata.
Each SVG names itself for screen readers (``role="img"``, a ``<title>``). A figure that is
not known (None) is not drawn; a chart with nothing known to draw is left out.
"""

from __future__ import annotations

import html
import io
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from footprint.reporting.figures import shown_models

if TYPE_CHECKING:
    from matplotlib.typing import RcKeyType

PALETTE = (
    "#0f766e",
    "#2563eb",
    "#7c3aed",
    "#db2777",
    "#0891b2",
    "#65a30d",
    "#9f1239",
    "#4338ca",
    "#c2410c",
    "#1e3a8a",
    "#86198f",
    "#854d0e",
)
OTHERS_COLOR = "#78716c"  # the "all others (K models)" row and series
IDLE_COLOR = "#cbd5e1"
INK = "#1e293b"
MUTED = "#64748b"
GRID = "#e2e8f0"

_ENERGY_SCALES = ((1e3, "MWh"), (1.0, "kWh"), (1e-3, "Wh"), (1e-6, "mWh"))
_MASS_SCALES = ((1e6, "t"), (1e3, "kg"), (1.0, "g"), (1e-3, "mg"))
_MONEY_SCALES = ((1.0, "$"),)


@dataclass
class Chart:
    """One chart: its file stem, a title and alt text, and the rendered SVG and PNG."""

    name: str
    title: str
    alt: str
    svg: str
    png: bytes


def _scale(max_value: float, scales: tuple[tuple[float, str], ...]) -> tuple[float, str]:
    for factor, unit in scales:
        if max_value >= factor:
            return factor, unit
    return scales[-1]


def _style() -> dict[RcKeyType, Any]:
    return {
        "font.family": "DejaVu Sans",
        "font.size": 9.5,
        "axes.edgecolor": GRID,
        "axes.labelcolor": MUTED,
        "axes.titlesize": 11,
        "axes.titleweight": "bold",
        "axes.titlecolor": INK,
        "axes.titlelocation": "left",
        "axes.titlepad": 10,
        "xtick.color": MUTED,
        "ytick.color": MUTED,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.grid": True,
        "axes.axisbelow": True,
        "grid.color": GRID,
        "grid.linewidth": 0.8,
        "legend.frameon": False,
        "legend.fontsize": 9,
        "svg.fonttype": "path",
        "svg.hashsalt": "footprint-report",
        "path.simplify": True,
    }


def _render(fig: Any, name: str, alt: str) -> tuple[str, bytes]:
    svg_buffer = io.StringIO()
    fig.savefig(svg_buffer, format="svg", metadata={"Date": None}, bbox_inches="tight")
    png_buffer = io.BytesIO()
    fig.savefig(png_buffer, format="png", dpi=144, bbox_inches="tight", metadata={})
    svg = svg_buffer.getvalue()
    svg = svg[svg.index("<svg") :]  # drop the XML prolog and DOCTYPE for inlining
    # Unique ids per chart, so several charts can share one HTML page.
    svg = svg.replace('id="', f'id="{name}-').replace("url(#", f"url(#{name}-")
    svg = svg.replace('xlink:href="#', f'xlink:href="#{name}-')
    # Named for screen readers: the first child of an SVG's <title> is its accessible name.
    head, sep, rest = svg.partition(">")
    title = html.escape(alt, quote=True)
    svg = (
        f'{head} role="img" aria-labelledby="{name}-title"{sep}\n'
        f' <title id="{name}-title">{title}</title>{rest}'
    )
    return svg, png_buffer.getvalue()


def build_charts(report: dict[str, Any]) -> list[Chart]:
    """Every chart of the report (none for an empty report)."""
    import matplotlib
    from matplotlib.figure import Figure

    if not report["models"]:
        return []
    charts = []
    with matplotlib.rc_context(_style()):
        for builder in (_daily_chart, _models_chart, _what_if_chart):
            made = builder(report, Figure)
            if made is not None:
                fig, name, title, alt = made
                svg, png = _render(fig, name, alt)
                charts.append(Chart(name=name, title=title, alt=alt, svg=svg, png=png))
    return charts


def model_colors(report: dict[str, Any]) -> dict[str, str]:
    """The colour of each row of ``shown_models`` (by JSON path): the palette in order, the
    "all others" row grey."""
    return {
        path: OTHERS_COLOR if path == "others" else PALETTE[i % len(PALETTE)]
        for i, (path, _, _) in enumerate(shown_models(report))
    }


def _daily_series(report: dict[str, Any], figure: str) -> list[tuple[str, str, list[float]]]:
    """(name, colour, value per day) of each row of ``shown_models``: the models shown, and
    the others added up per day."""
    colors = model_colors(report)
    daily = report["daily"]
    series = []
    named: set[str] = set()
    for path, _, name in shown_models(report):
        if path == "others":
            values = [
                sum(f[figure] or 0.0 for m, f in d["models"].items() if m not in named)
                for d in daily
            ]
        else:
            named.add(name)
            values = [(d["models"].get(name) or {}).get(figure) or 0.0 for d in daily]
        series.append((name, colors[path], values))
    return series


def _known(entries: Any, figure: str) -> bool:
    """Whether any entry has ``figure`` known (a chart of nothing known is left out)."""
    return any(e.get(figure) is not None for e in entries)


def _daily_chart(report: dict[str, Any], Figure: Any) -> Any:
    daily = report["daily"]
    if not any(_known(d["models"].values(), "energy_kwh") for d in daily):
        return None
    days = [d["day"] for d in daily]
    labels = [_day_label(d) for d in days]
    x = list(range(len(days)))
    fig = Figure(figsize=(10, 3.9))
    ax_e, ax_c = fig.subplots(1, 2)
    fig.subplots_adjust(wspace=0.28)
    energy = _daily_series(report, "energy_kwh")
    top_energy = max(
        sum(values[i] for _, _, values in energy) + (d["idle_energy_kwh"] or 0.0)
        for i, d in enumerate(daily)
    )
    factor, unit = _scale(top_energy, _ENERGY_SCALES)
    bottom = [0.0] * len(days)
    width = 0.72 if len(days) <= 45 else 0.95
    for name, color, kwh in energy:
        values = [v / factor for v in kwh]
        ax_e.bar(x, values, width, bottom=bottom, color=color, label=name)
        bottom = [b + v for b, v in zip(bottom, values)]
    idle = [(d["idle_energy_kwh"] or 0.0) / factor for d in daily]
    if any(idle):
        ax_e.bar(x, idle, width, bottom=bottom, color=IDLE_COLOR, label="idle (not attributed)")
    ax_e.set_title("GPU energy per day")
    ax_e.set_ylabel(unit)
    mass = _daily_series(report, "co2e_g")
    top_mass = max(sum(values[i] for _, _, values in mass) for i in range(len(daily)))
    mfactor, munit = _scale(top_mass, _MASS_SCALES)
    bottom = [0.0] * len(days)
    for name, color, grams in mass:
        values = [v / mfactor for v in grams]
        ax_c.bar(x, values, width, bottom=bottom, color=color, label=name)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax_c.set_title("CO2e per day (attributed, location-based)")
    ax_c.set_ylabel(f"{munit} CO2e")
    if not any(_known(d["models"].values(), "co2e_g") for d in daily):
        ax_c.text(
            0.5,
            0.5,
            "not known (no grid intensity)",
            transform=ax_c.transAxes,
            ha="center",
            va="center",
            color=MUTED,
        )
    step = max(1, -(-len(days) // 8))  # at most 8 day labels: they are two lines wide
    for ax in (ax_e, ax_c):
        ax.set_xticks(x[::step], labels[::step])
        ax.grid(axis="x", visible=False)
        ax.margins(x=0.01)
    handles, names = ax_e.get_legend_handles_labels()
    if len(names) <= 5:
        fig.legend(handles, names, loc="lower center", ncol=len(names), bbox_to_anchor=(0.5, -0.1))
    else:  # several rows: below the day labels
        fig.legend(handles, names, loc="upper center", ncol=4, bbox_to_anchor=(0.5, 0.0))
    alt = "Stacked bars per day of GPU energy and of CO2e, one colour per model"
    return fig, "daily", "Energy and CO2e per day", alt


def _day_label(day: str) -> str:
    import datetime as _dt

    d = _dt.date.fromisoformat(day)
    return f"{d.strftime('%a')}\n{d.day} {d.strftime('%b')}"


def _models_chart(report: dict[str, Any], Figure: Any) -> Any:
    from matplotlib.patches import Patch

    colors = model_colors(report)
    shown = shown_models(report)[::-1]
    if not _known([entry for _, entry, _ in shown], "fully_loaded_co2e_g"):
        return None
    names = [name for _, _, name in shown]
    rows = [
        {k: v or 0.0 for k, v in entry.items() if not isinstance(v, (str, dict))}
        for _, entry, _ in shown
    ]
    bar_colors = [colors[path] for path, _, _ in shown]
    y = list(range(len(rows)))
    height = max(2.6, 0.55 * len(rows) + 1.4)
    fig = Figure(figsize=(10, height))
    ax_c, ax_m = fig.subplots(1, 2)
    fig.subplots_adjust(wspace=0.45)
    top = max(m["fully_loaded_co2e_g"] + m["fully_loaded_embodied_co2e_g"] for m in rows)
    factor, unit = _scale(top, _MASS_SCALES)
    attributed = [m["co2e_g"] / factor for m in rows]
    idle = [(m["fully_loaded_co2e_g"] - m["co2e_g"]) / factor for m in rows]
    embodied = [m["fully_loaded_embodied_co2e_g"] / factor for m in rows]
    ax_c.barh(y, attributed, 0.62, color=bar_colors)
    ax_c.barh(y, idle, 0.62, left=attributed, color=IDLE_COLOR)
    left = [a + i for a, i in zip(attributed, idle)]
    ax_c.barh(y, embodied, 0.62, left=left, color=INK)
    ax_c.set_yticks(y, names)
    ax_c.set_title("CO2e per model")
    ax_c.set_xlabel(f"{unit} CO2e")
    # With an "all others" row (often the longest bar, at the bottom) the legends go
    # below the axes, and the cost panel, in the same row order, names no rows.
    under = -0.55 / (height * fig.subplotpars.top - height * fig.subplotpars.bottom)  # 0.55 in
    below = {"loc": "upper center", "bbox_to_anchor": (0.5, under)} if report.get("others") else {}
    ax_c.legend(
        handles=[
            Patch(color=MUTED, label="attributed (model colour)"),
            Patch(color=IDLE_COLOR, label="idle share"),
            Patch(color=INK, label="embodied (time held)"),
        ],
        **(below or {"loc": "lower right"}),
    )
    top_cost = max(max(m["fully_loaded_cost_usd"], m["cost_usd"]) for m in rows)
    cost = [m["cost_usd"] for m in rows]
    idle_cost = [max(0.0, m["fully_loaded_cost_usd"] - m["cost_usd"]) for m in rows]
    ax_m.barh(y, cost, 0.62, color=bar_colors)
    ax_m.barh(y, idle_cost, 0.62, left=cost, color=IDLE_COLOR)
    ax_m.set_yticks(y, [""] * len(names) if below else names)
    ax_m.set_title("Cost per model")
    ax_m.set_xlabel("US$")
    ax_m.set_xlim(0, top_cost * 1.08 if top_cost else 1)
    ax_m.legend(
        handles=[
            Patch(color=MUTED, label="attributed (model colour)"),
            Patch(color=IDLE_COLOR, label="idle GPU time held"),
        ],
        **(below or {"loc": "lower right"}),
    )
    for ax in (ax_c, ax_m):
        ax.grid(axis="y", visible=False)
    alt = (
        "Horizontal bars per model: CO2e (attributed, idle share, embodied over the time "
        "held) and cost (attributed, idle GPU time held)"
    )
    return fig, "models", "CO2e and cost per model", alt


def _what_if_chart(report: dict[str, Any], Figure: Any) -> Any:
    what_if = report["what_if"]
    zones = what_if["zones"]
    if not zones or not what_if["energy_kwh"]:
        return None
    as_run = what_if["as_run"]
    label = "as run: " + (", ".join(as_run["zones"]) or "no zone")
    entries = [(label, as_run["co2e_g"], True)]
    entries += [
        (f"{z['zone']} ({z['name']})" if z["name"] else z["zone"], z["co2e_g"], False)
        for z in zones
    ]
    entries = [e for e in entries[::-1] if e[1] is not None]
    if not entries or not max(v for _, v, _ in entries):
        return None
    top = max(v for _, v, _ in entries)
    factor, unit = _scale(top, _MASS_SCALES)
    fig = Figure(figsize=(10, max(2.4, 0.42 * len(entries) + 1.0)))
    ax = fig.subplots()
    y = list(range(len(entries)))
    ax.barh(
        y,
        [v / factor for _, v, _ in entries],
        0.6,
        color=[INK if current else PALETTE[0] for _, _, current in entries],
    )
    for yi, (_, v, _) in zip(y, entries):
        ax.text(
            v / factor, yi, f"  {v / factor:,.3g} {unit}", va="center", fontsize=8.5, color=MUTED
        )
    ax.set_yticks(y, [n for n, _, _ in entries])
    ax.set_xlabel(f"{unit} CO2e for the same fully loaded energy")
    ax.set_title("What if the same work had run elsewhere")
    ax.set_xlim(0, top / factor * 1.18)
    ax.grid(axis="y", visible=False)
    alt = "Horizontal bars: CO2e of the period's energy in the zone it ran in and in others"
    return fig, "what-if", "What if elsewhere", alt
