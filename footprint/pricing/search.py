"""Which zones a ``footprint regions QUERY`` means, best first.

A query that is a code matches codes exactly: a zone id or alias (``FRA``, ``USA/CA``,
``aws:eu-west-3``), a country's ISO 3166-1 alpha-2 or alpha-3 code (``FR``, ``DEU``), a
provider (``aws``, ``azure:``, ``gcp:europe-``) or a cloud region id (``us-east-1``,
``francecentral``). Any other query is looked for in names (zone names, cloud region
names and locations, country names) at the start of a word: ``frank`` finds Frankfurt,
``FRA`` does not. A country (by code or full name) brings every zone in it, and a grid
zone brings the cloud regions that map to it. Exact code matches come first, then grid
zones, then cloud regions.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .countries import country_index, normalize
from .grid import grid_factors
from .zones import KIND_CLOUD, KIND_SUBNATIONAL, PROVIDERS, Zone

ZONE_CODE = "zone code"
COUNTRY = "country"
PROVIDER = "provider"
CLOUD_REGION = "cloud region"
NAME = "name"
GRID_ZONE = "grid zone"


@dataclass(frozen=True)
class Match:
    """A zone the query found, and why (one of the reason constants above)."""

    zone: Zone
    reason: str


def search_zones(query: str, zones: list[Zone]) -> list[Match]:
    """The zones ``query`` matches, exact code matches first, then grid zones, then
    cloud regions (catalogue order within each); empty when nothing matches."""
    key = query.strip().casefold()
    if not key:
        return []
    found = _code_matches(key, zones) or _name_matches(normalize(query), zones)
    grids = {z.id for z in zones if z.id in found and z.kind != KIND_CLOUD}
    for zone in zones:
        if zone.kind == KIND_CLOUD and zone.grid_zone in grids:
            found.setdefault(zone.id, GRID_ZONE)
    order = {zone.id: i for i, zone in enumerate(zones)}
    ranked = sorted(
        (z for z in zones if z.id in found), key=lambda z: (_rank(z, found[z.id]), order[z.id])
    )
    return [Match(z, found[z.id]) for z in ranked]


def _rank(zone: Zone, reason: str) -> int:
    if reason == ZONE_CODE:
        return 0
    if zone.kind == KIND_CLOUD:
        return 3
    return 2 if zone.kind == KIND_SUBNATIONAL else 1


def _code_matches(key: str, zones: list[Zone]) -> dict[str, str]:
    """Zone id -> reason for a query that is a code; empty when it is none."""
    found: dict[str, str] = {}
    ids = {z.id.casefold(): z.id for z in zones}
    for factor in grid_factors().values():
        for alias in factor.aliases:
            ids.setdefault(alias.casefold(), factor.zone)
    if key in ids:
        found[ids[key]] = ZONE_CODE
    iso3 = country_index().codes.get(key)
    if iso3:
        _add(found, (z for z in zones if z.country_iso3 == iso3), COUNTRY)
    provider, _, region = key.partition(":")
    if provider in PROVIDERS:
        scoped = (z for z in zones if z.provider == provider)
        if region:
            _add(found, (z for z in scoped if _region(z).startswith(region)), CLOUD_REGION)
        else:
            _add(found, scoped, PROVIDER)
    _add(found, (z for z in zones if _region(z) == key), CLOUD_REGION)
    return found


def _name_matches(words: str, zones: list[Zone]) -> dict[str, str]:
    """Zone id -> reason for a query looked for at word starts in names."""
    found: dict[str, str] = {}
    if not words:
        return found
    countries = country_index()
    iso3 = countries.names.get(words)
    if iso3:
        _add(found, (z for z in zones if z.country_iso3 == iso3), COUNTRY)
    for zone in zones:
        names = [zone.name, zone.location or ""]
        if zone.kind not in (KIND_CLOUD, KIND_SUBNATIONAL):
            names += countries.names_of.get(zone.country_iso3, ())
        if any(f" {normalize(name)}".find(f" {words}") >= 0 for name in names):
            found.setdefault(zone.id, NAME)
    return found


def _region(zone: Zone) -> str:
    return (zone.cloud_region or "").casefold()


def _add(found: dict[str, str], zones: Iterable[Zone], reason: str) -> None:
    for zone in zones:
        found.setdefault(zone.id, reason)
