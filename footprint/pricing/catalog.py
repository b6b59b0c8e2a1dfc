"""The zone catalogue behind ``footprint regions [QUERY] --json``."""

from __future__ import annotations

from typing import Any

from ._data import RegionsDir
from .factors import price_for
from .grid import world_average
from .intensity import static_intensity
from .search import search_zones
from .zones import KIND_WORLD, Zone, all_zones


def list_zones(query: str | None = None, regions_dir: RegionsDir = None) -> list[dict[str, Any]]:
    """Every zone we know with its static intensity, electricity price and sources.

    ``query`` keeps the zones it matches, best first, each with why (``match``): see
    :mod:`footprint.pricing.search`. ``"aws"`` lists AWS regions with their grid zones.
    Cloud regions and prices come from ``regions_dir`` (default: the shipped tables).
    """
    zones = all_zones(regions_dir)
    found: list[tuple[Zone, str | None]] = [(zone, None) for zone in zones]
    if query and query.strip():
        found = [(m.zone, m.reason) for m in search_zones(query, zones)]
    out: list[dict[str, Any]] = []
    for zone, reason in found:
        if zone.kind == KIND_WORLD:
            world = world_average()
            g, ref = world.g_per_kwh, world.ref
        else:
            static = static_intensity(zone)
            g, ref = static.g_per_kwh, static.ref
        price = price_for(zone, regions_dir) if zone.kind != KIND_WORLD else None
        out.append(
            {
                "zone": zone.id,
                "match": reason,
                "kind": zone.kind,
                "name": zone.name,
                "country_iso3": zone.country_iso3 or None,
                "sub_region": zone.sub_region,
                "provider": zone.provider,
                "cloud_region": zone.cloud_region,
                "location": zone.location,
                "status": zone.status,
                "grid_zone": zone.grid_zone,
                "intensity_g_per_kwh": g,
                "intensity_source": "static",
                "intensity_ref": ref,
                "price_per_kwh": price[0] if price else None,
                "currency": price[1] if price else None,
                "price_ref": price[2] if price else None,
            }
        )
    return out
