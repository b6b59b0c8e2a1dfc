"""The figures of one model, group, day or the totals, from their sums (plain data).

Every figure whose inputs are all unknown is None (null in JSON), never 0; a figure over
some known and some unknown inputs is the sum of the known ones (the notes say how many
queries lack what). See ``footprint.reporting.sums`` for what each count means.

Costs (USD): ``cost_usd`` is the attributed cost, the bill of the GPU time the queries
used: their compute cost, plus their energy cost where the GPU is owned (rented GPUs'
hourly price includes the electricity). ``fully_loaded_cost_usd`` adds the idle time of
the GPUs held (idle GPU-hours at the $/GPU-hour of the queries on them; and, owned, the
idle energy). Capacity: ``gpu_hours_busy`` = Σ GPU-seconds / 3600; ``gpu_hours_held``
= busy + the share of the idle GPU-hours (``footprint.reporting.capacity``);
``utilisation`` = busy / held.
"""

from __future__ import annotations

import datetime as _dt
from typing import Any

JOULES_PER_KWH = 3_600_000.0
# Models shown by name in the tables and charts of the HTML and Markdown reports (the
# first by CO2e); the others are one "all others (K models)" row. The JSON and CSV
# reports list every model.
TOP_MODELS = 12


def kwh(joules: float | None) -> float | None:
    return None if joules is None else joules / JOULES_PER_KWH


def div(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def known(value: float, count: float) -> float | None:
    """``value`` when some query carries it (``count`` > 0 or a non-zero sum), else None."""
    return value if count or value else None


def plus(*parts: float | None) -> float | None:
    """The sum of the known parts; None when none is known."""
    found = [p for p in parts if p is not None]
    return sum(found) if found else None


def figures(
    head: dict[str, Any],
    acc: dict[str, Any],
    pct: dict[str, Any] | None,
    capacity_known: bool = True,
) -> dict[str, Any]:
    """The figures of one model, group or the totals, from its sums.

    ``capacity_known``: whether the GPU time held was measured at all (``idle_energy``
    rows); without, held GPU-hours and utilisation are unknown.
    """
    n = int(acc["queries"])
    out_tokens = int(acc["output_tokens"])
    energy_n = int(acc["energy_n"])
    energy_kwh = kwh(acc["energy_j"]) if energy_n else None
    idle_kwh = kwh(known(acc["idle_j"], energy_n))
    co2e = known(acc["co2e_g"], acc["co2e_n"])
    idle_co2e = known(acc["idle_co2e_g"], acc["co2e_n"])
    fl_co2e = plus(co2e, idle_co2e)
    embodied = known(acc["embodied_co2e_g"], acc["embodied_n"])
    fl_embodied = plus(embodied, acc["idle_embodied_co2e_g"] or None)
    energy_cost = known(acc["energy_cost_usd"], acc["energy_cost_n"])
    fl_energy_cost = plus(energy_cost, known(acc["idle_energy_cost_usd"], acc["energy_cost_n"]))
    compute = known(acc["compute_cost_usd"], acc["compute_n"])
    fl_compute = plus(compute, acc["idle_compute_cost_usd"] or None)
    billed = known(acc["billed_energy_cost_usd"], acc["billed_energy_cost_n"])
    fl_billed = plus(billed, known(acc["idle_billed_energy_cost_usd"], acc["billed_energy_cost_n"]))
    cost = plus(compute, billed)
    fl_cost = plus(fl_compute, fl_billed)
    cost_n = max(acc["compute_n"], acc["billed_energy_cost_n"])
    busy_h = acc["gpu_seconds"] / 3600.0
    held_h = (acc["gpu_seconds"] + acc["idle_gpu_s"]) / 3600.0 if capacity_known else None
    sci = plus(fl_co2e, fl_embodied)
    sci_n = acc["co2e_n"] or n
    out = {
        **head,
        "queries": n,
        "errors": int(acc["errors"]),
        "input_tokens": int(acc["input_tokens"]),
        "output_tokens": out_tokens,
        "gpu_seconds": acc["gpu_seconds"],
        "gpu_hours_busy": busy_h,
        "gpu_hours_held": held_h,
        "utilisation": div(busy_h, held_h),
        "energy_kwh": energy_kwh,
        # Σ of the per-record bounds on |error of energy_j|; None when no record has one.
        "energy_uncertainty_kwh": kwh(acc["energy_uncertainty_j"])
        if acc["uncertainty_n"]
        else None,
        "facility_energy_kwh": kwh(acc["facility_energy_j"]) if energy_n else None,
        "idle_energy_kwh": idle_kwh,
        "fully_loaded_energy_kwh": plus(energy_kwh, idle_kwh),
        "co2e_g": co2e,
        "fully_loaded_co2e_g": fl_co2e,
        "market_co2e_g": acc["market_co2e_g"] if acc["market_n"] else None,
        "embodied_co2e_g": embodied,
        "fully_loaded_embodied_co2e_g": fl_embodied,
        "energy_cost_usd": energy_cost,
        "fully_loaded_energy_cost_usd": fl_energy_cost,
        "compute_cost_usd": compute,
        "fully_loaded_compute_cost_usd": fl_compute,
        "cost_usd": cost,
        "fully_loaded_cost_usd": fl_cost,
        "queries_by_ownership": {
            "rented": int(acc["rented_queries"]),
            "owned": int(acc["owned_queries"]),
            "unknown": n - int(acc["rented_queries"]) - int(acc["owned_queries"]),
        },
        "queries_without": {
            "energy": int(acc["no_energy"]),
            "electricity_price": int(acc["no_electricity_price"]),
            "gpu_price": int(acc["no_gpu_price"]),
        },
        "mean_duration_s": div(acc["duration_s"], n),
        "j_per_output_token": div(acc["energy_j"] if energy_n else None, out_tokens),
        "per_1k_output_tokens": {
            "energy_wh": div(None if energy_kwh is None else energy_kwh * 1e6, out_tokens),
            "co2e_g": div(None if co2e is None else co2e * 1000, out_tokens),
            "cost_usd": div(None if cost is None else cost * 1000, out_tokens),
        },
        # What hosted APIs quote: $ per 1M output tokens, and per 1M tokens of both kinds
        # (input + output), of the attributed and the fully loaded cost.
        "per_1m_output_tokens": per_million(cost, fl_cost, out_tokens),
        "per_1m_tokens": per_million(cost, fl_cost, out_tokens + int(acc["input_tokens"])),
        # by tag: the tag scan sums no phases (absent then)
        **({"per_1m_phase_tokens": per_million_phase(acc)} if "phase_n" in acc else {}),
        "sci": {
            "per_query_g": div(sci, sci_n),
            "per_1k_output_tokens_g": div(None if sci is None else sci * 1000, out_tokens),
        },
    }
    if pct is not None or head.get("model"):
        pct = pct or {}
        out["per_query"] = {
            "energy_wh": {
                "mean": div(None if energy_kwh is None else energy_kwh * 1000, energy_n),
                "p50": wh(pct.get("energy_p50")),
                "p95": wh(pct.get("energy_p95")),
            },
            "co2e_g": {
                "mean": div(co2e, acc["co2e_n"]),
                "p50": pct.get("co2e_p50"),
                "p95": pct.get("co2e_p95"),
            },
            "cost_usd": {
                "mean": div(cost, cost_n),
                "p50": pct.get("cost_p50"),
                "p95": pct.get("cost_p95"),
            },
            "latency_s": {
                "mean": div(acc["duration_s"], n),
                "p50": pct.get("latency_p50"),
                "p95": pct.get("latency_p95"),
            },
            "time_to_first_token_s": {
                "p50": pct.get("ttft_p50"),
                "p95": pct.get("ttft_p95"),
            },
            "percentile_sample": pct.get("sample", 0),
        }
    return out


def per_million(cost: float | None, fl_cost: float | None, tokens: int) -> dict[str, Any]:
    """Attributed and fully loaded cost per 1M ``tokens`` (None without tokens or cost)."""
    return {
        "cost_usd": div(None if cost is None else cost * 1e6, tokens),
        "fully_loaded_cost_usd": div(None if fl_cost is None else fl_cost * 1e6, tokens),
    }


def per_million_phase(acc: dict[str, Any]) -> dict[str, Any]:
    """Per 1M input tokens (the prefill energy: start to first token) and per 1M output
    tokens (the decode energy: first token to end), in J, kWh, gCO2e and $, over the
    queries that carry both phase energies and both token counts (``queries``); the CO2e
    and cost are the phase energy's share of its queries' (see ``sums.phase_sums``)."""
    n = int(acc["phase_n"])
    out: dict[str, Any] = {
        "queries": n,
        "prefill_energy_j": acc["prefill_j"] if n else None,
        "decode_energy_j": acc["decode_j"] if n else None,
        "input_tokens": int(acc["phase_input_tokens"]),
        "output_tokens": int(acc["phase_output_tokens"]),
    }
    for side, energy_key, tokens_key in (
        ("input", "prefill", "phase_input_tokens"),
        ("output", "decode", "phase_output_tokens"),
    ):
        tokens = int(acc[tokens_key]) if n else 0
        energy_j = div(acc[f"{energy_key}_j"] * 1e6, tokens)
        co2e = acc[f"{energy_key}_co2e_g"] if acc["phase_co2e_n"] else None
        cost = acc[f"{energy_key}_cost_usd"] if acc["phase_cost_n"] else None
        out[side] = {
            "energy_j": energy_j,
            "energy_kwh": kwh(energy_j),
            "co2e_g": div(None if co2e is None else co2e * 1e6, tokens),
            "cost_usd": div(None if cost is None else cost * 1e6, tokens),
        }
    return out


def wh(joules: float | None) -> float | None:
    return None if joules is None else joules / 3600.0


def daily(
    days: list[str],
    by_day: dict[str, dict[str, list[float]]],
    idle_by_day: dict[str, float],
    held_by_day: dict[str, float],
    models: list[str],
    capacity_known: bool,
) -> list[dict[str, Any]]:
    """Every day from the first to the last (days with nothing included), with the
    models that had queries that day, in the order of ``models``."""
    if not days:
        return []
    rank = {name: i for i, name in enumerate(models)}
    start = _dt.date.fromisoformat(days[0])
    end = _dt.date.fromisoformat(days[-1])
    out = []
    day = start
    while day <= end:
        key = day.isoformat()
        found = by_day.get(key, {})
        per_model = {}
        for model in sorted(found, key=rank.__getitem__):
            queries, energy_j, energy_n, co2e_g, co2e_n, cost, cost_n, seconds = found[model]
            per_model[model] = {
                "queries": int(queries),
                "energy_kwh": kwh(energy_j) if energy_n else None,
                "co2e_g": known(co2e_g, co2e_n),
                "cost_usd": known(cost, cost_n),
                "gpu_hours_busy": seconds / 3600.0,
            }
        out.append(
            {
                "day": key,
                "idle_energy_kwh": kwh(idle_by_day.get(key, 0.0)),
                "gpu_hours_held": held_by_day.get(key, 0.0) / 3600.0 if capacity_known else None,
                "models": per_model,
            }
        )
        day += _dt.timedelta(days=1)
    return out


def shown_models(report: dict[str, Any]) -> list[tuple[str, dict[str, Any], str]]:
    """The rows of the per-model tables and charts: (JSON path, figures, name).

    Every model when there are at most ``TOP_MODELS + 1``; else the first ``TOP_MODELS``
    by CO2e and one row adding up all the others (``others`` in the report).
    """
    models = report["models"]
    others = report.get("others")
    shown = models[:TOP_MODELS] if others else models
    rows = [(f"models.{i}", m, m["model"]) for i, m in enumerate(shown)]
    if others:
        rows.append(("others", others, others["label"]))
    return rows


def factor_list(sets: dict[tuple, dict[str, Any]]) -> list[dict[str, Any]]:
    """The distinct factor sets the records were priced with, with their sources."""
    from footprint.pricing import build_factors, embodied_for

    out = sorted(sets.values(), key=lambda e: (-e["queries"], *map(_none_first, _key_of(e))))
    refs: dict[str, dict[str, str]] = {}
    for entry in out:
        zone = entry["zone"]
        if zone and zone not in refs:
            try:
                f = build_factors(zone, env={})
                refs[zone] = {
                    "intensity_ref": f.intensity_ref,
                    "pue_ref": f.pue_ref,
                    "price_ref": f.price_ref,
                    "exchange_rate_ref": f.exchange_rate_ref,
                }
            except Exception as exc:  # a zone from a newer data set
                refs[zone] = {"intensity_ref": f"unknown zone here: {exc}"}
        entry["sources"] = dict(refs.get(zone, {})) if zone else {}
        if entry.get("gpu_price_source"):
            entry["sources"]["gpu_price_ref"] = entry["gpu_price_source"]
    embodied = embodied_for("gpu")
    if out and embodied:
        for entry in out:
            entry["embodied_kgco2e_per_gpu"] = embodied[0]
            entry["gpu_lifetime_years"] = embodied[1]
            entry["sources"]["embodied_ref"] = embodied[2]
    return out


def _key_of(entry: dict[str, Any]) -> tuple:
    return (
        entry["zone"],
        entry["intensity_source"],
        entry["pue"],
        entry["price_per_kwh"],
        entry["currency"],
        entry["usd_per_gpu_hour"],
        entry["market_intensity_g_per_kwh"],
        entry.get("ownership"),
        entry.get("gpu_price_source"),
    )


def _none_first(value: Any) -> tuple:
    """A sort key for values that may be None (None first): order by value, not by row."""
    return (0, "") if value is None else (1, value)
