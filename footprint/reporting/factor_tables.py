"""The report's tables of factors by zone: the what-if (the energy priced in other zones),
the factors the work was priced with, and their sources."""

from __future__ import annotations

from typing import Any

from footprint.reporting import units
from footprint.reporting.content import UNKNOWN, Change, Table

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
        ],
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
    "Zone",
    "Grid gCO2e/kWh",
    "Intensity source",
    "Market gCO2e/kWh",
    "PUE",
    "Electricity /kWh",
    "Ownership",
    "GPU-hour",
    "Queries",
]
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
