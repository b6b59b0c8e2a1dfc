"""Pricing: where a query ran, and what its joules cost in CO2e and money.

Zones (countries, sub-national grids, AWS/Azure/GCP regions), grid intensity from
codecarbon's data (static), a user's hourly CSV or Electricity Maps (live), PUE,
electricity prices, GPU-hour prices (rented) and purchase prices (owned) and embodied
carbon from ``regions/*.csv``.
"""

from ._data import DataFileError
from .catalog import list_zones
from .factors import (
    Factors,
    bills_energy,
    build_factors,
    default_ownership,
    embodied_for,
    gpu_capex_for,
    gpu_hour_price,
    gpu_price_for,
    price_for,
    price_query,
    pue_for,
    usd_per_unit,
)
from .grid import GridFactor, grid_factors
from .intensity import (
    ElectricityMapsClient,
    HourlyIntensity,
    Intensity,
    IntensitySource,
    static_intensity,
)
from .overrides import OWNED, OWNERSHIPS, PRICING_OVERRIDES, RENTED, PricingOverrides
from .zones import (
    DefaultZoneWarning,
    UnknownZoneError,
    Zone,
    all_zones,
    detect_cloud_zone,
    lookup_zone,
    resolve_zone,
)


def clear_caches() -> None:
    """Forget every loaded table and index (for tests that swap the data folder)."""
    from . import _data, factors, grid, zones

    _data.clear_caches()
    factors.clear_caches()
    grid.grid_factors.cache_clear()
    grid.gcp_factors.cache_clear()
    zones._catalog_at.cache_clear()


__all__ = [
    "DataFileError",
    "DefaultZoneWarning",
    "ElectricityMapsClient",
    "Factors",
    "GridFactor",
    "HourlyIntensity",
    "Intensity",
    "IntensitySource",
    "OWNED",
    "OWNERSHIPS",
    "PRICING_OVERRIDES",
    "PricingOverrides",
    "RENTED",
    "UnknownZoneError",
    "Zone",
    "all_zones",
    "build_factors",
    "clear_caches",
    "bills_energy",
    "default_ownership",
    "detect_cloud_zone",
    "embodied_for",
    "gpu_capex_for",
    "gpu_hour_price",
    "gpu_price_for",
    "grid_factors",
    "list_zones",
    "lookup_zone",
    "price_for",
    "price_query",
    "pue_for",
    "resolve_zone",
    "static_intensity",
    "usd_per_unit",
]
