"""What the period's fully loaded GPU energy would have emitted and cost in other zones.

Every row prices the same energy (the fully loaded GPU energy of the period) with a zone's
PUE, electricity price and grid intensity. Grid intensities come in kinds: codecarbon's
figure for the grid zone (a country or sub-national grid), a cloud provider's own figure
for its region (Google's, for GCP regions), or an hourly or live series. Two kinds for the
same grid can differ a lot (France: codecarbon's national 56 g/kWh, Google's 34 for
Paris), so comparing across kinds would show a move within one grid as a cut in CO2e.
Hence:

- a zone on a grid the work ran on is priced with the intensity the work was priced with
  there (``"basis": "as run"``): only the PUE and the price differ;
- any other zone with its static figure, of the kind it has (``"grid"`` or
  ``"provider"``); ``same_footing`` says whether that is the kind of the as-run row, and
  the table marks the rows where it is not.

The as-run row shows the intensity and PUE it was priced with (CO2e over facility energy,
facility over GPU energy, of the queries with a CO2e figure).
"""

from __future__ import annotations

from typing import Any

JOULES_PER_KWH = 3_600_000.0
CLEANEST_COUNT = 5


def cleanest_zones(count: int = CLEANEST_COUNT) -> list[str]:
    """The public cloud regions with the lowest static grid intensity, one per grid zone."""
    from footprint.pricing import list_zones

    zones = [
        z for z in list_zones() if z["kind"] == "cloud" and z.get("status") in (None, "public")
    ]
    zones.sort(key=lambda z: (z["intensity_g_per_kwh"], z["zone"]))
    picked: list[str] = []
    grids: set[str] = set()
    for z in zones:
        grid = z.get("grid_zone") or z["zone"]
        if grid not in grids:
            grids.add(grid)
            picked.append(z["zone"])
        if len(picked) == count:
            break
    return picked


def resolve_compare(names: list[str]) -> list[str]:
    """Zone ids of ``--compare`` (``ReportError`` for one we do not know)."""
    from footprint.pricing import lookup_zone
    from footprint.reporting.request import ReportError

    out = []
    for name in names:
        try:
            out.append(lookup_zone(name).id)
        except ValueError as exc:
            raise ReportError(f"--compare {name!r}: {exc}") from None
    return out


def static_basis(zone: Any) -> tuple[str, str]:
    """The kind of a zone's static intensity, ``grid`` (codecarbon's figure for its grid
    zone or country) or ``provider`` (its cloud provider's own figure), and in words."""
    from footprint.pricing.grid import gcp_factors

    if zone.provider == "gcp" and zone.cloud_region in gcp_factors():
        return "provider", f"Google's figure for {zone.cloud_region}"
    return "grid", f"codecarbon's figure for the {zone.grid_zone} grid"


def _run_kind(zone_id: str, sources: set[str]) -> tuple[str, str | None]:
    """(kind of intensity the work was priced with in a zone, its grid zone)."""
    from footprint.pricing import lookup_zone

    try:
        zone = lookup_zone(zone_id)
    except ValueError:
        return "unknown", None
    if sources and sources != {"static"}:
        return "/".join(sorted(sources)), zone.grid_zone
    return static_basis(zone)[0], zone.grid_zone


def what_if(
    totals: dict[str, Any],
    zones: dict[str, list[float]],
    sources: dict[str, set[str]],
    compare: list[str],
) -> dict[str, Any]:
    """The same fully loaded GPU energy priced with other zones' factors.

    ``zones``: per zone run, [GPU J, facility J of the queries with CO2e, CO2e g, CO2e n]
    (``Fold.zones``); ``sources``: per zone run, the intensity sources seen (static,
    hourly, live).
    """
    from footprint.pricing import build_factors, lookup_zone

    basis_kwh = totals["fully_loaded_energy_kwh"]
    as_run_co2e = totals["fully_loaded_co2e_g"]
    as_run_cost = totals["fully_loaded_energy_cost_usd"]
    zones_run = sorted(zones)
    runs = {z: _run_kind(z, sources.get(z, set())) for z in zones_run}
    kinds = sorted({kind for kind, _ in runs.values()})
    by_grid: dict[str, list[float]] = {}
    for zone_id, (_, grid) in runs.items():
        if grid is None:
            continue
        into = by_grid.setdefault(grid, [0.0, 0.0, 0.0])
        zone_gpu_j, zone_facility_j, zone_co2e_g, zone_co2e_n = zones[zone_id]
        if zone_co2e_n:
            into[0] += zone_gpu_j
            into[1] += zone_facility_j
            into[2] += zone_co2e_g
    grid_intensity = {g: v[2] / (v[1] / JOULES_PER_KWH) for g, v in by_grid.items() if v[1] > 0}
    gpu_j = sum(v[0] for v in by_grid.values())
    facility_j = sum(v[1] for v in by_grid.values())
    co2e_g = sum(v[2] for v in by_grid.values())

    candidates = [("cleanest", z) for z in cleanest_zones()]
    candidates += [("compare", z) for z in compare]
    rows = []
    seen: set[str] = set()
    for reason, zone_id in candidates:
        if zone_id in seen:
            continue
        seen.add(zone_id)
        zone = lookup_zone(zone_id)
        f = build_factors(zone, env={})
        usd_kwh = f.usd_per_kwh
        if usd_kwh is None and f.currency == "USD":
            usd_kwh = f.price_per_kwh
        if zone.grid_zone in grid_intensity:
            intensity = grid_intensity[zone.grid_zone]
            basis = "as run"
            ref = f"as run on the {zone.grid_zone} grid (same grid)"
            same = True
        else:
            intensity = f.intensity_g_per_kwh
            basis, ref = static_basis(zone)
            same = kinds == [basis]
        co2e = None if basis_kwh is None else basis_kwh * f.pue * intensity
        cost = None if basis_kwh is None or usd_kwh is None else basis_kwh * f.pue * usd_kwh
        rows.append(
            {
                "zone": zone.id,
                "name": zone.name,
                "why": reason,
                "grid_zone": zone.grid_zone,
                "intensity_g_per_kwh": intensity,
                "intensity_basis": basis,
                "intensity_ref": ref,
                "same_footing": same,
                "pue": f.pue,
                "usd_per_kwh": usd_kwh,
                "co2e_g": co2e,
                "energy_cost_usd": cost,
                "co2e_change": _change(co2e, as_run_co2e),
                "cost_change": _change(cost, as_run_cost),
            }
        )
    return {
        "basis": "fully loaded GPU energy of the period, priced with each zone's PUE and "
        "electricity price, and the grid intensity the work was priced with where it ran on "
        "the same grid, else the zone's static grid intensity",
        "energy_kwh": basis_kwh,
        "as_run": {
            "zones": zones_run,
            "co2e_g": as_run_co2e,
            "energy_cost_usd": as_run_cost,
            "intensity_g_per_kwh": co2e_g / (facility_j / JOULES_PER_KWH) if facility_j else None,
            "pue": facility_j / gpu_j if gpu_j else None,
            "intensity_basis": kinds[0] if len(kinds) == 1 else ", ".join(kinds) or None,
        },
        "zones": rows,
    }


def _change(value: float | None, base: float | None) -> float | None:
    if value is None or not base:
        return None
    return (value - base) / base
