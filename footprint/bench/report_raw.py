"""``footprint bench report``'s baseline: the aggregates ``footprint report`` computes,
written by hand as plain SQL and run straight from ``sqlite3`` (no rollups)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

BENCH_TAG = "team"  # the tag the synthetic records carry, and the report groups by
# The hand-written side: the aggregates ``footprint report`` computes, as plain SQL.
RAW_GROUPED = """
SELECT model, substr(started_at, 1, 10) AS day, gpus, zone, currency, intensity_source, pue,
       price_per_kwh, usd_per_gpu_hour, market_intensity_g_per_kwh, energy_source,
       count(*), sum(CASE WHEN status != 'ok' THEN 1 ELSE 0 END),
       coalesce(sum(input_tokens), 0), coalesce(sum(output_tokens), 0),
       coalesce(sum(gpu_seconds), 0.0), coalesce(sum(energy_j), 0.0), count(energy_j),
       coalesce(sum(energy_uncertainty_j), 0.0), count(energy_uncertainty_j),
       coalesce(sum(energy_j * pue), 0.0), coalesce(sum(co2e_g), 0.0),
       coalesce(sum(market_co2e_g), 0.0), count(market_co2e_g),
       coalesce(sum(embodied_co2e_g), 0.0), coalesce(sum(energy_cost_usd), 0.0),
       coalesce(sum(CASE WHEN energy_cost_usd IS NULL AND energy_cost IS NOT NULL
                         THEN energy_cost END), 0.0),
       count(CASE WHEN energy_cost_usd IS NULL AND energy_cost IS NOT NULL THEN 1 END),
       coalesce(sum(compute_cost), 0.0), coalesce(sum(duration_s), 0.0),
       min(intensity_g_per_kwh), max(intensity_g_per_kwh), ownership, gpu_price_source
FROM queries
GROUP BY model, substr(started_at, 1, 10), gpus, zone, currency, intensity_source, pue,
         price_per_kwh, usd_per_gpu_hour, market_intensity_g_per_kwh, energy_source, ownership,
         gpu_price_source
"""
RAW_IDLE = """
SELECT device_uuid, substr(minute, 1, 10), host, sum(idle_energy_j + lost_energy_j),
       sum(measured_energy_j)
FROM idle_energy WHERE device_uuid NOT LIKE 'cpu-%'
GROUP BY device_uuid, substr(minute, 1, 10), host
"""
RAW_PERCENTILES = """
SELECT * FROM (
  SELECT model, count(*) OVER (PARTITION BY model) AS n,
         e, row_number() OVER (PARTITION BY model ORDER BY e) AS re,
         c, row_number() OVER (PARTITION BY model ORDER BY c) AS rc,
         k, row_number() OVER (PARTITION BY model ORDER BY k) AS rk
  FROM (SELECT model, energy_j AS e, co2e_g AS c,
               CASE WHEN ownership = 'rented' THEN 0.0 ELSE coalesce(energy_cost_usd,
                 CASE WHEN currency = 'USD' THEN energy_cost END, 0.0) END
               + coalesce(compute_cost, 0.0) AS k
        FROM queries
        WHERE energy_j IS NOT NULL AND (id * 2654435761) % 1000000 < {limit})
) WHERE re IN ((n * 50 + 99) / 100, (n * 95 + 99) / 100)
     OR rc IN ((n * 50 + 99) / 100, (n * 95 + 99) / 100)
     OR rk IN ((n * 50 + 99) / 100, (n * 95 + 99) / 100)
"""


def raw_sql(path: Path) -> dict[str, Any]:
    """The report's aggregates straight from sqlite3 (same sums, same sampled percentiles)."""
    from footprint.reporting.percentiles import HASH_MODULUS, PERCENTILE_SAMPLE

    con = sqlite3.connect(path)
    try:
        con.execute("PRAGMA temp_store=MEMORY")
        con.execute("PRAGMA cache_size=-262144")
        models = sorted({r[0] for r in con.execute("SELECT DISTINCT model FROM queries")})
        grouped = con.execute(RAW_GROUPED).fetchall()
        first_last = con.execute("SELECT min(started_at), max(started_at) FROM queries").fetchone()
        idle = con.execute(RAW_IDLE).fetchall()
        counts: dict[str, int] = {}
        for row in grouped:
            counts[row[0]] = counts.get(row[0], 0) + row[17]
        limits = {
            m: min(HASH_MODULUS, -(-PERCENTILE_SAMPLE * HASH_MODULUS // n))
            for m, n in counts.items()
            if n
        }
        limit = " ".join(f"WHEN '{m}' THEN {t}" for m, t in sorted(limits.items()))
        percentiles = con.execute(
            RAW_PERCENTILES.format(limit=f"CASE model {limit} ELSE {HASH_MODULUS} END")
        ).fetchall()
    finally:
        con.close()
    return {
        "models": models,
        "groups": len(grouped),
        "queries": sum(r[11] for r in grouped),
        "energy_j": sum(r[16] for r in grouped),
        "co2e_g": sum(r[21] for r in grouped),  # after the two uncertainty columns
        "idle_j": sum(r[3] for r in idle),
        "first_last": first_last,
        "percentile_rows": len(percentiles),
    }


def raw_tag_counts(path: Path) -> dict[str | None, int]:
    """Queries per value of the bench's tag, straight from sqlite3."""
    con = sqlite3.connect(path)
    try:
        rows = con.execute(
            f"SELECT json_extract(tags, '$.{BENCH_TAG}') AS t, count(*) FROM queries GROUP BY t"
        ).fetchall()
    finally:
        con.close()
    return {team: n for team, n in rows}
