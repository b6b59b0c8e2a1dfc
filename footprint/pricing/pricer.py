"""Applying factors to records: the step between attribution and storage.

One ``Pricer`` per runtime: the zone is resolved once, factors are built once per UTC
hour (hourly or live intensity can change with the hour) and each record gets its
CO2e, costs and the factors used, so a report can show and re-apply them.
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Mapping
from typing import Any

from .factors import Factors, build_factors, price_query
from .intensity import ElectricityMapsClient, HourlyIntensity, IntensitySource
from .overrides import PRICING_OVERRIDES, PricingOverrides
from .zones import Zone, resolve_zone

# The settings a Pricer reads: a change of any of them needs a new Pricer.
PRICER_SETTINGS = (
    "region",
    "detect_cloud",
    "provider",
    "hourly_intensity_csv",
    "electricitymaps_token",
    "electricitymaps_url",
    "regions_dir",
    *PRICING_OVERRIDES,
)


class Pricer:
    """Prices records of one host: zone, intensity source, overrides and GPU model."""

    def __init__(
        self,
        settings: Any,
        gpu_model: str | None,
        env: Mapping[str, str] = os.environ,
    ) -> None:
        """``settings``: a ``footprint.config.Settings`` (its ``PRICER_SETTINGS``); ``env``:
        where ``FOOTPRINT_REGION`` is read when ``settings.region`` is None. The hourly file
        is read here, once."""
        self.regions_dir = settings.regions_dir
        self.zone: Zone = resolve_zone(
            settings.region,
            env=env,
            detect_cloud=settings.detect_cloud,
            regions_dir=self.regions_dir,
        )
        self.intensity = intensity_source(settings)
        self.gpu_model = gpu_model
        self.provider = settings.provider
        self.overrides = PricingOverrides.of(settings)
        self.env = env
        self._by_hour: dict[_dt.datetime, Factors] = {}

    def factors_at(self, when: _dt.datetime) -> Factors:
        """The factors that apply at ``when`` (UTC), built once per hour."""
        hour = when.replace(minute=0, second=0, microsecond=0)
        factors = self._by_hour.get(hour)
        if factors is None:
            if len(self._by_hour) > 48:
                self._by_hour.clear()
            factors = build_factors(
                self.zone,
                provider=self.provider,
                gpu_model=self.gpu_model,
                at=hour,
                intensity=self.intensity,
                env=self.env,
                regions_dir=self.regions_dir,
                **self.overrides.as_dict(),
            )
            self._by_hour[hour] = factors
        return factors

    def apply(self, record: dict[str, Any]) -> None:
        """Fill the pricing columns of a record in place (the contract of each is in
        ``footprint.storage.models.QueryRecord``)."""
        factors = self.factors_at(record["started_at"])
        record.update(
            zone=factors.zone,
            intensity_g_per_kwh=factors.intensity_g_per_kwh,
            intensity_source=factors.intensity_source,
            market_intensity_g_per_kwh=factors.market_intensity_g_per_kwh,
            pue=factors.pue,
            price_per_kwh=factors.price_per_kwh,
            currency=factors.currency,
            usd_per_gpu_hour=factors.usd_per_gpu_hour,
            gpu_price_source=factors.gpu_price_ref,
            ownership=factors.ownership,
        )
        energy_j = record.get("energy_j")
        if energy_j is None:
            return
        priced = price_query(energy_j, record.get("gpu_seconds") or 0.0, factors)
        record.update(
            co2e_g=priced["co2e_g"],
            market_co2e_g=priced["market_co2e_g"],
            embodied_co2e_g=priced["embodied_co2e_g"],
            energy_cost=priced["energy_cost"],
            energy_cost_usd=priced.get("energy_cost_usd"),
            compute_cost=priced["compute_cost_usd"],
        )


def intensity_source(settings: Any) -> IntensitySource | None:
    """The hourly file (read now) and the live API that ``settings`` name; None when they
    name neither (static factors only)."""
    hourly = (
        HourlyIntensity.from_csv(settings.hourly_intensity_csv, settings.regions_dir)
        if settings.hourly_intensity_csv
        else None
    )
    live = (
        ElectricityMapsClient(
            settings.electricitymaps_token,
            base_url=settings.electricitymaps_url or ElectricityMapsClient.DEFAULT_BASE_URL,
        )
        if settings.electricitymaps_token
        else None
    )
    return IntensitySource(hourly=hourly, live=live) if hourly or live else None
