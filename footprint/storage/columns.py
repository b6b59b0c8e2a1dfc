"""Column groups of the ``queries`` table, importable without SQLAlchemy."""

PRICING_COLUMNS = (
    "zone",
    "intensity_g_per_kwh",
    "intensity_source",
    "market_intensity_g_per_kwh",
    "pue",
    "price_per_kwh",
    "currency",
    "usd_per_gpu_hour",
    "co2e_g",
    "market_co2e_g",
    "embodied_co2e_g",
    "energy_cost",
    "energy_cost_usd",
    "compute_cost",
    "ownership",
    "gpu_price_source",
)
