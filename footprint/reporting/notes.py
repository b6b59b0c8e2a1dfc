"""The notes of a report: what a reader must know to read its figures right.

Conversions made here, figures that are unknown for some queries (and how to supply the
missing factor), samples, losses, simulated hardware. Each is one paragraph of plain text.
"""

from __future__ import annotations

from typing import Any

from footprint.reporting import percentiles
from footprint.reporting.sums import Fold

JOULES_PER_KWH = 3_600_000.0


def currency_notes(fold: Fold) -> list[str]:
    notes = []
    for currency, rate in sorted(fold.rate_refs.items(), key=lambda kv: kv[0] or ""):
        if currency is not None and rate is not None and currency != "USD":
            notes.append(
                f"{fold.converted[currency]:,} queries priced in {currency} had no USD figure "
                f"stored; their energy cost was converted here at {rate[1]}."
            )
    if fold.unpriced:
        notes.append(
            f"{fold.unpriced:,} queries have an energy cost in a currency with no known "
            "exchange rate; it is left out of the USD totals (add the rate to "
            "regions/exchange_rates.csv)."
        )
    return notes


def unknown_notes(totals: dict[str, Any], fold: Fold) -> list[str]:
    """How many queries lack energy, an electricity price or a GPU-hour price, what that
    leaves unknown, and how to supply the missing factor."""
    n = totals["queries"]
    without = totals["queries_without"]
    notes = []
    if without["energy"]:
        what = f"{without['energy']:,} of {n:,} queries"
        if without["energy"] == n:
            what = "every query"
        notes.append(
            f"No GPU energy for {what} (energy_source=missing: no GPU sensor where they ran): "
            "their energy, CO2e and energy cost are unknown, not 0"
            + (
                "; the figures add up the queries that have them."
                if without["energy"] < n
                else "; those figures are shown as unknown."
            )
        )
    unpriced = int(fold.total["energy_n"] - fold.total["co2e_n"])
    if unpriced > 0:
        notes.append(
            f"No grid intensity for {unpriced:,} of the queries with GPU energy (recorded "
            "with no zone): their CO2e is unknown, not 0. Set `region` (FOOTPRINT_REGION); "
            "queries recorded from then on carry it."
        )
    if without["electricity_price"]:
        notes.append(
            f"No electricity price for {without['electricity_price']:,} of {n:,} queries: "
            "their electricity cost is unknown, not 0. Set `price_per_kwh` and `currency` "
            "(FOOTPRINT_PRICE_PER_KWH, FOOTPRINT_CURRENCY) or add the zone to "
            "regions/electricity_prices.csv; queries recorded from then on carry it."
        )
    if without["gpu_price"]:
        reasons = sorted(
            (r for r in fold.no_gpu_price_reasons if r), key=lambda r: -fold.no_gpu_price_reasons[r]
        )
        why = f" ({'; '.join(reasons[:3])})" if reasons else ""
        notes.append(
            f"No GPU-hour price for {without['gpu_price']:,} of {n:,} queries{why}: their "
            "GPU-time cost is unknown, not 0. Set `usd_per_gpu_hour` "
            "(FOOTPRINT_USD_PER_GPU_HOUR), or add the GPU to regions/gpu_prices.csv (rented) "
            "or regions/gpu_capex.csv (owned); queries recorded from then on carry it."
        )
    return notes


def capacity_notes(totals: dict[str, Any], capacity_known: bool, unallocated_s: float) -> list[str]:
    if not capacity_known:
        if not totals["queries"]:
            return []
        return [
            "No GPU time held was measured in this period (no per-minute idle rows): the GPU-"
            "hours held, utilisation and every fully loaded figure count the queries' busy "
            "time only."
        ]
    if unallocated_s > 0:
        return [
            f"{unallocated_s / 3600:,.3g} GPU-hours were held on GPUs that served no query in "
            "this period: they are in the held total but in no model's figures, and are not "
            "priced (no query gives their $/GPU-hour)."
        ]
    return []


def sample_notes(found: dict[str, dict[str, Any]]) -> list[str]:
    """Which models' percentiles come from a sample (``percentiles.percentiles``), each
    with the size of its sample: the count the CSV and JSON carry (``percentile_sample``)."""
    sampled = [
        f"{name} ({p['sample']:,} of its {p.get('of', p['sample']):,} queries"
        + ("" if len(p["sampled"]) == len(percentiles.METRICS) else f"; {', '.join(p['sampled'])}")
        + ")"
        for name, p in sorted(found.items())
        if p.get("sampled")
    ]
    if not sampled:
        return []
    size = percentiles.PERCENTILE_SAMPLE
    return [
        f"Per-query percentiles of {', '.join(sampled)} are computed on a deterministic "
        f"sample of about {size:,} queries per model (hash of the record id); totals and "
        "means use every query."
    ]


def measurement_notes(fold: Fold, lost_j: float, bounded: int, measured_n: int) -> list[str]:
    notes = []
    if not fold.rows:
        notes.append("No queries were recorded in this period.")
    if lost_j > 0:
        notes.append(
            f"{lost_j / JOULES_PER_KWH:.3g} kWh went to calls that were never stored (still "
            "running when their process ended, or closed as abandoned; counted in `footprint "
            "db info` losses): it is spread with the idle energy in the fully loaded figures."
        )
    if bounded < measured_n:
        notes.append(
            f"{measured_n - bounded:,} of the {measured_n:,} queries with GPU energy carry "
            "no energy uncertainty bound (energy estimated, or recorded before footprint "
            "stored one): "
            + (
                f"the ± figures cover the other {bounded:,} only."
                if bounded
                else "no ± figure is shown."
            )
        )
    on_cpu = fold.by_source.get("cpu", 0) + fold.by_source.get("cpu-estimated", 0)
    if on_cpu:
        notes.append(
            f"{on_cpu:,} queries ran where no GPU was measured (energy_source=cpu): their "
            "energy is their share of the CPU packages' and DRAM's energy (RAPL), attributed "
            "as GPU energy is, and priced the same way; it is shown as their model's energy. "
            "The CPU's idle energy is not in the fully loaded figures."
        )
    simulated = fold.by_source.get("simulated")
    if simulated:
        notes.append(
            f"{simulated:,} queries were measured on simulated GPUs: their figures "
            "illustrate the method and are not measurements of real hardware."
        )
    return notes
