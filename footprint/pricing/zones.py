"""Where a query runs: zone resolution from config, environment or cloud metadata.

A zone is a grid zone (``"FRA"``, ``"USA/california"``, ``"SWE/SE3"``, ``"CHN/beijing"``)
or a cloud region (``"aws:us-east-1"``, ``"gcp:europe-west1"``, ``"azure:westeurope"``)
mapped to its grid zone by ``regions/cloud_regions.csv``. Nothing is guessed silently:
with no configuration the world average is used, flagged and warned about once.
"""

from __future__ import annotations

import difflib
import functools
import os
import threading
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from . import _data
from ._data import DataFileError, RegionsDir
from .grid import grid_factors, world_average

REGION_ENV = "FOOTPRINT_REGION"
PROVIDERS = ("aws", "azure", "gcp")
DEFAULT_METADATA_URL = "http://169.254.169.254"

KIND_WORLD = "world"
KIND_COUNTRY = "country"
KIND_SUBNATIONAL = "subnational"
KIND_CLOUD = "cloud"


class UnknownZoneError(ValueError):
    """A zone or cloud region we have no data for; the message names the closest ones."""

    def __init__(self, spec: str, suggestions: list[str], hint: str = ""):
        self.spec = spec
        self.suggestions = suggestions
        message = f"unknown zone or cloud region {spec!r}"
        if hint:
            message += f" ({hint})"
        if suggestions:
            message += "; closest known: " + ", ".join(suggestions)
        message += "; `footprint regions` lists them all"
        super().__init__(message)


class DefaultZoneWarning(UserWarning):
    """No region was configured, so the world-average grid intensity is being used."""


@dataclass(frozen=True)
class Zone:
    """A resolved zone: its id, where it is, and the grid zone its intensity comes from."""

    id: str
    name: str
    kind: str  # "world" | "country" | "subnational" | "cloud"
    country_iso3: str
    grid_zone: str
    sub_region: str | None = None
    provider: str | None = None
    cloud_region: str | None = None
    location: str | None = None
    status: str | None = None  # cloud regions: public | restricted | govcloud | china | ...
    is_default: bool = False


@dataclass(frozen=True)
class _Catalog:
    zones: dict[str, Zone]  # canonical id -> zone
    keys: dict[str, str]  # casefolded id or alias -> canonical id


def _catalog(regions_dir: RegionsDir = None) -> _Catalog:
    return _catalog_at(_data.regions_dir(regions_dir))


@functools.cache
def _catalog_at(folder: Path) -> _Catalog:
    zones: dict[str, Zone] = {}
    keys: dict[str, str] = {}
    zones["WORLD"] = Zone("WORLD", "World average", KIND_WORLD, "", "WORLD")
    keys["world"] = "WORLD"
    for factor in grid_factors().values():
        kind = KIND_SUBNATIONAL if factor.sub_region else KIND_COUNTRY
        zone = Zone(
            factor.zone, factor.name, kind, factor.country_iso3, factor.zone, factor.sub_region
        )
        zones[zone.id] = zone
        keys[zone.id.casefold()] = zone.id
    # Aliases never shadow an id (e.g. a country name equal to another zone's id).
    for factor in grid_factors().values():
        aliases = list(factor.aliases)
        if factor.sub_region is None:
            aliases.append(factor.name)  # "France"
        for alias in aliases:
            keys.setdefault(alias.casefold(), factor.zone)
    factors = grid_factors()
    path = folder / "cloud_regions.csv"
    for row in _data.table("cloud_regions.csv", folder):
        provider = row["provider"].casefold()
        iso3 = row["country_iso3"].upper()
        sub = row["sub_region"]
        grid = f"{iso3}/{sub}" if sub else iso3
        if grid not in factors:
            column = "sub_region" if sub else "country_iso3"
            raise DataFileError(path, row["_line"], column, f"no grid factor for zone {grid!r}")
        zone = Zone(
            id=f"{provider}:{row['region']}",
            name=row["name"],
            kind=KIND_CLOUD,
            country_iso3=iso3,
            grid_zone=grid,
            sub_region=sub,
            provider=provider,
            cloud_region=row["region"],
            location=row["location"],
            status=row["status"],
        )
        zones[zone.id] = zone
        keys[zone.id.casefold()] = zone.id
    return _Catalog(zones, keys)


def all_zones(regions_dir: RegionsDir = None) -> list[Zone]:
    """Every zone we know, world average first."""
    return list(_catalog(regions_dir).zones.values())


def _suggest(spec: str, candidates: Mapping[str, str], n: int = 5) -> list[str]:
    """The ``n`` closest canonical ids to ``spec``: names it prefixes first, then by
    difflib similarity of the casefolded names (ties in name order)."""
    key = spec.strip().casefold()
    scored: dict[str, tuple[bool, float]] = {}
    for name, canonical in candidates.items():
        # Cloud ids also match on the bare region name: "us-east-1" finds aws:us-east-1.
        for form in (name, name.split(":", 1)[1]) if ":" in name else (name,):
            score = (form.startswith(key), difflib.SequenceMatcher(None, key, form).ratio())
            scored[canonical] = max(scored.get(canonical, (False, 0.0)), score)
    ranked = sorted(scored, key=lambda c: (not scored[c][0], -scored[c][1], c))
    return ranked[:n]


def lookup_zone(spec: str, regions_dir: RegionsDir = None) -> Zone:
    """The zone for an explicit spec (case-insensitive), or ``UnknownZoneError``; cloud
    regions come from ``regions_dir``'s ``cloud_regions.csv`` (default: the shipped one)."""
    catalog = _catalog(regions_dir)
    key = spec.strip().casefold()
    if key in catalog.keys:
        return catalog.zones[catalog.keys[key]]
    if ":" in key:
        provider = key.split(":", 1)[0]
        if provider not in PROVIDERS:
            raise UnknownZoneError(
                spec, [f"{p}:…" for p in PROVIDERS], hint=f"unknown cloud provider {provider!r}"
            )
        scoped = {k: v for k, v in catalog.keys.items() if k.startswith(provider + ":")}
        raise UnknownZoneError(spec, _suggest(spec, scoped))
    raise UnknownZoneError(spec, _suggest(spec, catalog.keys))


_default_warned = False
_default_lock = threading.Lock()


def default_zone() -> Zone:
    """The flagged world-average zone, warning once per process."""
    global _default_warned
    with _default_lock:
        first = not _default_warned
        _default_warned = True
    if first:
        warnings.warn(
            "footprint: no region configured (set region=... or FOOTPRINT_REGION); "
            f"using the world-average grid intensity ({world_average().g_per_kwh:g} gCO2e/kWh)",
            DefaultZoneWarning,
            stacklevel=3,
        )
    return Zone(
        "WORLD",
        "World average (default: no region configured)",
        KIND_WORLD,
        "",
        "WORLD",
        is_default=True,
    )


def _reset_default_warning() -> None:
    """Let the default-zone warning fire again (tests only)."""
    global _default_warned
    with _default_lock:
        _default_warned = False


def resolve_zone(
    spec: str | None = None,
    *,
    env: Mapping[str, str] = os.environ,
    detect_cloud: bool = False,
    metadata_url: str = DEFAULT_METADATA_URL,
    metadata_timeout_s: float = 0.5,
    regions_dir: RegionsDir = None,
) -> Zone:
    """Resolve where we run: ``spec``, else ``FOOTPRINT_REGION``, else cloud metadata
    (only when ``detect_cloud``), else the flagged world-average default.

    An explicit but unknown spec raises ``UnknownZoneError``; it never falls back.
    """
    for candidate in (spec, env.get(REGION_ENV)):
        if candidate is not None and candidate.strip():
            return lookup_zone(candidate, regions_dir)
    if detect_cloud:
        zone = detect_cloud_zone(
            base_url=metadata_url, timeout_s=metadata_timeout_s, regions_dir=regions_dir
        )
        if zone is not None:
            return zone
    return default_zone()


def _http(url: str, *, method: str = "GET", headers: Mapping[str, str], timeout_s: float) -> str:
    import urllib.request

    request = urllib.request.Request(url, method=method, headers=dict(headers))
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        return response.read().decode("utf-8").strip()


def _aws_region(base: str, timeout_s: float) -> str:
    token = _http(
        f"{base}/latest/api/token",
        method="PUT",
        headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"},
        timeout_s=timeout_s,
    )
    return _http(
        f"{base}/latest/meta-data/placement/region",
        headers={"X-aws-ec2-metadata-token": token},
        timeout_s=timeout_s,
    )


def _gcp_region(base: str, timeout_s: float) -> str:
    zone = _http(
        f"{base}/computeMetadata/v1/instance/zone",
        headers={"Metadata-Flavor": "Google"},
        timeout_s=timeout_s,
    )
    # "projects/123/zones/us-central1-a" -> "us-central1"
    return zone.rsplit("/", 1)[-1].rsplit("-", 1)[0]


def _azure_region(base: str, timeout_s: float) -> str:
    return _http(
        f"{base}/metadata/instance/compute/location?api-version=2021-02-01&format=text",
        headers={"Metadata": "true"},
        timeout_s=timeout_s,
    )


def detect_cloud_zone(
    *, base_url: str = DEFAULT_METADATA_URL, timeout_s: float = 0.5, regions_dir: RegionsDir = None
) -> Zone | None:
    """Ask the instance metadata service (AWS IMDSv2, GCP, Azure) where we run.

    Never called at import or without an explicit request. Each provider gets one short
    request (``timeout_s``); the first that answers with a region we know wins. A region
    we do not know is reported with a warning and ignored, never guessed.
    """
    base = base_url.rstrip("/")
    for provider, ask in (("aws", _aws_region), ("gcp", _gcp_region), ("azure", _azure_region)):
        try:
            region = ask(base, timeout_s)
        except (OSError, ValueError):  # URLError and timeouts are OSErrors
            continue
        if not region:
            continue
        try:
            return lookup_zone(f"{provider}:{region}", regions_dir)
        except UnknownZoneError as exc:
            warnings.warn(f"footprint: cloud metadata says {exc}", stacklevel=2)
            return None
    return None
