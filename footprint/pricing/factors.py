"""The factors that price a query, and the pure arithmetic that applies them.

``build_factors`` gathers, for one zone and time: grid intensity (gCO2e/kWh), PUE,
electricity price per kWh (in its own currency and, through ``regions/exchange_rates.csv``,
in USD), $/GPU-hour and embodied carbon, each with the text of its source; user overrides
win and are listed in ``Factors.overrides``.

Money depends on who owns the GPU (``ownership``, default by zone: ``rented`` in a cloud
region, ``owned`` elsewhere). ``rented``: $/GPU-hour is the cloud price of that provider
and exact GPU model (``regions/gpu_prices.csv``), which already includes electricity.
``owned``: $/GPU-hour is the GPU's purchase price amortised over its lifetime
(``regions/gpu_capex.csv``), and electricity is a cost of its own. Either way the user's
``usd_per_gpu_hour`` wins, and what is not known is None, never a guess.

``price_query`` turns a query's joules and GPU-seconds into grams and money. Bad settings
(negative or NaN prices, PUE < 1) are rejected when the factors are built, not when a
query is priced.
"""

from __future__ import annotations

import datetime as _dt
import functools
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from . import _data
from ._data import RegionsDir
from .intensity import IntensitySource, static_intensity
from .overrides import OWNED, PRICING_OVERRIDES, RENTED, PricingOverrides, check_number
from .zones import Zone, resolve_zone

JOULES_PER_KWH = 3_600_000.0
SECONDS_PER_HOUR = 3600.0
SECONDS_PER_YEAR = 365.25 * 86400.0
HOURS_PER_YEAR = 8760.0  # amortisation: purchase / (lifetime_years x 8760 h)
ON_PREMISE = "on_premise"
CLOUD_PROVIDERS = _data.CLOUD_PROVIDERS


@dataclass(frozen=True)
class Factors:
    """Everything needed to price a query in one zone, each factor with its source text."""

    zone: str
    intensity_g_per_kwh: float
    intensity_source: str  # "static" | "hourly" | "live"
    intensity_ref: str
    pue: float
    pue_ref: str
    price_per_kwh: float | None = None  # in ``currency``
    currency: str | None = None
    price_ref: str = ""
    usd_per_gpu_hour: float | None = None
    gpu_price_ref: str = ""  # where usd_per_gpu_hour came from, or why it is None
    ownership: str | None = None  # "rented" | "owned" (see the module's docstring)
    embodied_kgco2e: float | None = None  # per GPU
    lifetime_years: float | None = None
    embodied_ref: str = ""
    market_intensity_g_per_kwh: float | None = None  # contractual (market-based) factor
    market_intensity_ref: str = ""
    zone_is_default: bool = False
    overrides: tuple[str, ...] = field(default=())
    usd_per_kwh: float | None = None  # ``price_per_kwh`` converted to USD; None without a rate
    exchange_rate_ref: str = ""

    def __post_init__(self) -> None:
        check_number("intensity_g_per_kwh", self.intensity_g_per_kwh)
        check_number("usd_per_kwh", self.usd_per_kwh)
        PricingOverrides.of(self)  # the same checks as the user's values
        if self.price_per_kwh is not None and self.currency is None:
            raise ValueError("price_per_kwh needs a currency")

    def as_dict(self) -> dict[str, Any]:
        """A plain dict (for records and JSON output)."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


# --- table lookups (dict reads over the cached tables) ----------------------------------


@functools.cache
def _pue_index(folder: Path) -> dict[str, dict[str, Any]]:
    return {row["provider"].casefold(): row for row in _data.table("pue.csv", folder)}


@functools.cache
def _price_index(folder: Path) -> dict[str, dict[str, Any]]:
    return {row["zone"].casefold(): row for row in _data.table("electricity_prices.csv", folder)}


@functools.cache
def _rate_index(folder: Path) -> dict[str, dict[int, dict[str, Any]]]:
    """{currency: {year: row}} from ``exchange_rates.csv``."""
    rows = _data.unique_exchange_rates(
        _data.table("exchange_rates.csv", folder), folder / "exchange_rates.csv"
    )
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for (currency, year), row in rows.items():
        out.setdefault(currency, {})[year] = row
    return out


def clear_caches() -> None:
    """Forget the indexed tables (after ``_data.clear_caches``)."""
    _pue_index.cache_clear()
    _price_index.cache_clear()
    _rate_index.cache_clear()


def pue_for(provider: str | None, regions_dir: RegionsDir = None) -> tuple[float, str]:
    """(PUE, source) for a cloud provider, or the on-premise default."""
    rows = _pue_index(_data.regions_dir(regions_dir))
    row = rows.get((provider or ON_PREMISE).casefold()) or rows[ON_PREMISE]
    return row["pue"], f"{row['scope']} ({row['year']}): {row['source']}"


def _price_row(zone: Zone, regions_dir: RegionsDir) -> dict[str, Any] | None:
    rows = _price_index(_data.regions_dir(regions_dir))
    for key in (zone.id, zone.grid_zone, zone.country_iso3):
        row = rows.get(key.casefold()) if key else None
        if row is not None:
            return row
    return None


def price_for(zone: Zone, regions_dir: RegionsDir = None) -> tuple[float, str, str] | None:
    """(price per kWh, currency, source) for the zone, its grid zone or its country."""
    row = _price_row(zone, regions_dir)
    if row is None:
        return None
    ref = f"{row['zone']}: {row['sector']}, {row['period']}: {row['source']}"
    return row["price_per_kwh"], row["currency"], ref


def usd_per_unit(
    currency: str, year: int | None = None, regions_dir: RegionsDir = None
) -> tuple[float, str] | None:
    """(US dollars per one unit of ``currency``, source) from ``exchange_rates.csv``.

    Rates are annual averages. With ``year``, that year's rate, else the nearest year
    shipped (the later one on a tie), and the source says which year was used; without
    it, the latest year. USD is 1.0. None for a currency with no shipped rate.
    """
    code = currency.strip().upper()
    if code == "USD":
        return 1.0, "USD (no conversion)"
    by_year = _rate_index(_data.regions_dir(regions_dir)).get(code)
    if not by_year:
        return None
    wanted = year
    used = max(by_year) if wanted is None else min(by_year, key=lambda y: (abs(y - wanted), -y))
    row = by_year[used]
    note = "" if year is None or used == year else f" (nearest year to {year})"
    ref = f"{code} {used} annual average{note}: {row['usd_per_unit']:g} USD/{code}: {row['source']}"
    return row["usd_per_unit"], ref


def _best_match(rows: Any, gpu_model: str) -> dict[str, Any] | None:
    """The row whose ``match`` the GPU name satisfies with the most required tokens (the
    most specific), the first in file order on a tie; None when no row matches."""
    tokens = _data.gpu_tokens(gpu_model)
    best: dict[str, Any] | None = None
    for row in rows:
        spec = row["match"]
        if not spec.matches(tokens):
            continue
        if best is None or len(spec.required) > len(best["match"].required):
            best = row
    return best


def gpu_price_for(
    gpu_model: str, provider: str | None = None, regions_dir: RegionsDir = None
) -> tuple[float, str] | None:
    """(on-demand $/GPU-hour, source) to rent this exact GPU model from ``provider``.

    Only that provider's rows apply (an AWS price is never used on GCP, Azure or
    on-premise); ``provider`` None or ``on_premise`` has none. Names match on whole
    tokens (``regions/gpu_prices.csv``'s ``match``): "GH200" is not an "H200", and an
    "A100 80GB PCIe" does not take an "A100 SXM4 40GB" row. The hourly price includes
    the electricity, cooling and hardware of the rented GPU.
    """
    wanted = (provider or "").casefold()
    if wanted not in CLOUD_PROVIDERS:
        return None
    shipped = _data.table("gpu_prices.csv", regions_dir)
    rows = [row for row in shipped if row["provider"] == wanted]
    row = _best_match(rows, gpu_model)
    if row is None:
        return None
    ref = (
        f"{row['gpu_model']}, {row['provider']} {row['offer']} in {row['region']} "
        f"({row['year']}): {row['source']}"
    )
    return row["usd_per_gpu_hour"], ref


def gpu_capex_for(gpu_model: str, regions_dir: RegionsDir = None) -> tuple[float, str] | None:
    """(purchase price amortised per GPU-hour in USD, source) for an owned GPU.

    ``purchase_usd / (lifetime_years x 8760 h)`` from the best whole-token match in
    ``regions/gpu_capex.csv``: straight-line over the lifetime, every hour of the year
    counted. What the price covers is the row's ``basis`` (the GPU alone, or an 8-GPU
    system's price per GPU), which the source text repeats; never network, building or
    staff.
    """
    row = _best_match(_data.table("gpu_capex.csv", regions_dir), gpu_model)
    if row is None:
        return None
    per_hour = row["purchase_usd"] / (row["lifetime_years"] * HOURS_PER_YEAR)
    ref = (
        f"{row['gpu_model']} owned: ${row['purchase_usd']:,.2f} ({row['basis']}) / "
        f"({row['lifetime_years']:g} years x 8760 h) ({row['year']}): {row['source']}; "
        f"lifetime: {row['lifetime_source']}"
    )
    return per_hour, ref


def bills_energy(ownership: str | None) -> bool:
    """Whether a query's energy cost is part of what it costs: not on a rented GPU, whose
    hourly price already pays for its power (``None``, records from before ownership was
    stored: as they were costed then, energy included)."""
    return ownership != RENTED


def record_cost_usd(record: dict[str, Any]) -> float | None:
    """What a record cost in USD, where known: its GPU time, plus its energy unless the GPU
    is rented (its hourly price pays for its power). None when no part of it is known.
    (The daemon's Prometheus metrics and the OpenTelemetry metrics add it up.)"""
    parts = [record.get("compute_cost")]
    if bills_energy(record.get("ownership")):
        parts.append(record.get("energy_cost_usd"))
    known = [part for part in parts if part is not None]
    return sum(known) if known else None


def default_ownership(zone: Zone) -> str:
    """``rented`` for a cloud region (aws:, gcp:, azure:), ``owned`` for any other zone."""
    return RENTED if zone.provider in CLOUD_PROVIDERS else OWNED


def gpu_hour_price(
    gpu_model: str | None, provider: str | None, ownership: str, regions_dir: RegionsDir = None
) -> tuple[float | None, str]:
    """($/GPU-hour or None, its source or why it is unknown) for shipped data only."""
    if not gpu_model:
        return None, "no GPU model given"
    if ownership == OWNED:
        found = gpu_capex_for(gpu_model, regions_dir)
        if found is None:
            return None, f"owned: no purchase price for {gpu_model!r} (set usd_per_gpu_hour)"
        return found
    where = (provider or ON_PREMISE).casefold()
    if where not in CLOUD_PROVIDERS:
        return None, f"rented on {where}: no shipped rental price (set usd_per_gpu_hour)"
    found = gpu_price_for(gpu_model, where, regions_dir)
    if found is None:
        return None, f"rented: no {where} price for {gpu_model!r} (set usd_per_gpu_hour)"
    return found


def embodied_for(
    item: str = "gpu", regions_dir: RegionsDir = None
) -> tuple[float, float, str] | None:
    """(kgCO2e, lifetime in years, source) for an ``embodied.csv`` item."""
    for row in _data.table("embodied.csv", regions_dir):
        if row["item"] == item:
            return row["kgco2e"], row["lifetime_years"], f"{row['scope']}: {row['source']}"
    return None


@dataclass(frozen=True)
class _Price:
    """Electricity price per kWh, its currency, its USD value and their sources."""

    per_kwh: float | None
    currency: str | None
    ref: str
    usd_per_kwh: float | None = None
    exchange_rate_ref: str = ""


def _electricity_price(zone: Zone, user: PricingOverrides, regions_dir: RegionsDir) -> _Price:
    """The user's price (which needs its currency), else the shipped one for the zone,
    with its USD value at the rate of the price's year."""
    year: int | None = None
    if user.price_per_kwh is not None:
        if user.currency is None:
            raise ValueError("a price_per_kwh override needs a currency (e.g. currency='EUR')")
        price = _Price(float(user.price_per_kwh), user.currency, "user override")
    else:
        shipped = price_for(zone, regions_dir)
        if shipped is None:
            price = _Price(None, None, f"no electricity price for {zone.id}")
        else:
            price = _Price(*shipped)
            row = _price_row(zone, regions_dir)
            year = row["year"] if row else None
        if user.currency is not None and user.currency != price.currency:
            raise ValueError(
                f"currency {user.currency!r} given without price_per_kwh; the shipped price "
                f"for {zone.id} is in {price.currency}"
            )
    if price.per_kwh is None or price.currency is None:
        return price
    rate = usd_per_unit(price.currency, year, regions_dir)
    if rate is None:
        return replace(price, exchange_rate_ref=f"no exchange rate for {price.currency}")
    return replace(price, usd_per_kwh=price.per_kwh * rate[0], exchange_rate_ref=rate[1])


def build_factors(
    zone: Zone | str | None = None,
    *,
    provider: str | None = None,
    gpu_model: str | None = None,
    at: _dt.datetime | None = None,
    intensity: IntensitySource | None = None,
    env: Mapping[str, str] = os.environ,
    regions_dir: RegionsDir = None,
    **overrides: Any,
) -> Factors:
    """The factors for ``zone`` (a ``Zone``, a spec, or None to resolve from ``env``).

    ``provider`` selects the PUE and whose rental prices apply (default: the zone's cloud
    provider, else on-premise); ``gpu_model`` (an NVML name) and ``ownership`` (default
    ``default_ownership(zone)``) select $/GPU-hour: the provider's price for that exact
    model when rented, the purchase price amortised per hour when owned. ``overrides``
    (the ``PricingOverrides`` fields, by keyword) win over the shipped data, read from
    ``regions_dir`` (default: the shipped tables), and are named in ``Factors.overrides``.
    Raises ``ValueError`` on bad overrides and ``UnknownZoneError`` on an unknown zone.
    """
    user = PricingOverrides(**overrides)
    if not isinstance(zone, Zone):
        zone = resolve_zone(zone, env=env, regions_dir=regions_dir)
    # A currency without a price only names the shipped price's: it overrides nothing.
    given = {name for name in PRICING_OVERRIDES if getattr(user, name) is not None}
    if user.price_per_kwh is None:
        given.discard("currency")
    overridden = tuple(name for name in PRICING_OVERRIDES if name in given)

    found = intensity.lookup(zone, at) if intensity else static_intensity(zone)
    provider = provider or zone.provider
    if user.pue is None:
        pue_value, pue_ref = pue_for(provider, regions_dir)
    else:
        pue_value, pue_ref = float(user.pue), "user override"
    price = _electricity_price(zone, user, regions_dir)

    ownership = user.ownership or default_ownership(zone)
    gpu_price: float | None
    if user.usd_per_gpu_hour is not None:
        gpu_price, gpu_ref = float(user.usd_per_gpu_hour), f"user override ({ownership})"
    else:
        gpu_price, gpu_ref = gpu_hour_price(gpu_model, provider, ownership, regions_dir)

    shipped_embodied = embodied_for("gpu", regions_dir)
    emb_kg, emb_years, emb_ref = shipped_embodied if shipped_embodied else (None, None, "")
    if user.embodied_kgco2e is not None:
        emb_kg, emb_ref = float(user.embodied_kgco2e), "user override"
    if user.lifetime_years is not None:
        emb_years = float(user.lifetime_years)
    market = user.market_intensity_g_per_kwh

    return Factors(
        zone=zone.id,
        intensity_g_per_kwh=found.g_per_kwh,
        intensity_source=found.source,
        intensity_ref=found.ref,
        pue=pue_value,
        pue_ref=pue_ref,
        price_per_kwh=price.per_kwh,
        currency=price.currency,
        price_ref=price.ref,
        usd_per_gpu_hour=gpu_price,
        gpu_price_ref=gpu_ref,
        ownership=ownership,
        embodied_kgco2e=emb_kg,
        lifetime_years=emb_years,
        embodied_ref=emb_ref,
        market_intensity_g_per_kwh=market,
        market_intensity_ref="" if market is None else "user contractual factor (market-based)",
        zone_is_default=zone.is_default,
        overrides=overridden,
        usd_per_kwh=price.usd_per_kwh,
        exchange_rate_ref=price.exchange_rate_ref,
    )


def price_query(energy_j: float, gpu_seconds: float, factors: Factors) -> dict[str, float | None]:
    """Grams and money for one query from its GPU joules and GPU-seconds. Pure.

    - ``energy_kwh`` = joules / 3.6e6; ``facility_energy_kwh`` = that x PUE
    - ``co2e_g`` = facility kWh x grid gCO2e/kWh (location-based)
    - ``market_co2e_g`` = facility kWh x contractual gCO2e/kWh, when one is set
    - ``embodied_co2e_g`` = embodied kgCO2e x 1000 x gpu_seconds / lifetime seconds
    - ``energy_cost`` = facility kWh x price per kWh, in ``factors.currency``
    - ``energy_cost_usd`` = facility kWh x ``usd_per_kwh`` (the price in USD; a USD price
      needs no rate), None when no exchange rate is known
    - ``compute_cost_usd`` = gpu_seconds x $/GPU-hour / 3600 (rented: includes the
      electricity, so ``energy_cost`` is not added to it; owned: hardware only, and
      ``energy_cost`` is a cost of its own; see ``Factors.ownership``)

    Unknown factors give None for their figure. Negative or non-finite inputs raise.
    """
    for name, value in (("energy_j", energy_j), ("gpu_seconds", gpu_seconds)):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    energy_kwh = energy_j / JOULES_PER_KWH
    facility_kwh = energy_kwh * factors.pue
    market = factors.market_intensity_g_per_kwh
    embodied = None
    if factors.embodied_kgco2e is not None and factors.lifetime_years:
        lifetime_s = factors.lifetime_years * SECONDS_PER_YEAR
        embodied = factors.embodied_kgco2e * 1000.0 * gpu_seconds / lifetime_s
    price = factors.price_per_kwh
    usd_kwh = factors.usd_per_kwh
    if usd_kwh is None and price is not None and factors.currency == "USD":
        usd_kwh = price
    gpu_price = factors.usd_per_gpu_hour
    return {
        "energy_kwh": energy_kwh,
        "facility_energy_kwh": facility_kwh,
        "co2e_g": facility_kwh * factors.intensity_g_per_kwh,
        "market_co2e_g": None if market is None else facility_kwh * market,
        "embodied_co2e_g": embodied,
        "energy_cost": None if price is None else facility_kwh * price,
        "energy_cost_usd": None if usd_kwh is None else facility_kwh * usd_kwh,
        "compute_cost_usd": None
        if gpu_price is None
        else gpu_seconds * gpu_price / SECONDS_PER_HOUR,
    }
