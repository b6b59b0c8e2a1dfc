"""Static grid intensity tables in gCO2e/kWh, from codecarbon's shipped data.

Computed the way codecarbon computes them (``codecarbon.core.emissions``): a country's
``carbon_intensity`` from its global energy mix (or the fuel-mix weighting when that field
is missing), US states from eGRID lbs/MWh, Canadian provinces from the coal/petroleum/
natural-gas share of their mix, Nordic bidding zones and Chinese provinces from their
published factors, GCP regions from Google's per-region figures. Loaded once; a lookup is
a dict read. Nothing here knows zones: ``zones`` builds its catalogue on these tables.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass

from . import _data

# codecarbon's factors for Canadian provinces (kgCO2/kWh per fuel), from
# codecarbon.core.emissions.Emissions._region_energy_mix_to_emissions_rate.
_CAN_FUEL_KG_PER_KWH = (
    ("coal", 0.995725971),
    ("petroleum", 0.8166885263),
    ("naturalGas", 0.7438415916),
)
# codecarbon.core.units.EmissionsPerKWh.LBS_MWH_TO_KG_KWH
_LBS_PER_MWH_TO_KG_PER_KWH = 0.00045359237
# Nordic bidding zones codecarbon knows, by country (codecarbon.core.emissions);
# Finland is one zone.
NORDIC_ZONES = {"SWE": ("SE1", "SE2", "SE3", "SE4"), "NOR": ("NO1", "NO2", "NO3", "NO4", "NO5")}
NORDIC_FI = ("FIN", "FI")
# codecarbon's GCP table spells one region wrongly; map its key to the real name.
_GCP_REGION_FIXES = {"me-cenrtal1": "me-central1"}


@dataclass(frozen=True)
class GridFactor:
    """A static grid intensity for one grid zone (country or sub-national)."""

    zone: str  # "FRA", "USA/california", "SWE/SE3"
    name: str
    country_iso3: str
    sub_region: str | None
    g_per_kwh: float
    ref: str  # where the figure comes from
    aliases: tuple[str, ...] = ()  # other specs that name this zone ("USA/CA", "CN-BJ")


def _cc(path: str) -> str:
    return f"codecarbon {_data.codecarbon_version()} data/{path}"


def country_g_per_kwh(energy_mix: Mapping[str, object], per_source: Mapping[str, object]) -> float:
    """A country's gCO2e/kWh from its global-energy-mix entry, as codecarbon computes it.

    The ``carbon_intensity`` field when present; otherwise each ``<fuel>_TWh`` share times
    the fuel's factor, falling back to the world average when the shares do not add up.
    """
    direct = energy_mix.get("carbon_intensity")
    if direct is not None:
        return float(direct)  # type: ignore[arg-type]
    total = energy_mix["total_TWh"]
    weighted = 0.0
    covered = 0
    for key, twh in energy_mix.items():
        if "_TWh" in key:
            factor = per_source.get(key[: -len("_TWh")])
            if factor is not None:
                weighted += (twh / total) * factor  # type: ignore[operator]
                covered += twh  # type: ignore[operator]
    if covered != total:
        return float(per_source["world_average"])  # type: ignore[arg-type]
    return weighted


def canada_g_per_kwh(mix: Mapping[str, float]) -> float:
    """A Canadian province's gCO2e/kWh: fossil shares of its mix times codecarbon's factors."""
    kg = sum([mix[fuel] / mix["total"] * factor for fuel, factor in _CAN_FUEL_KG_PER_KWH])
    return kg * 1000.0


def world_average() -> GridFactor:
    """codecarbon's world-average intensity, used for the flagged default zone."""
    per_source = _data.load_json("private_infra/carbon_intensity_per_source.json")
    return GridFactor(
        zone="WORLD",
        name="World average",
        country_iso3="",
        sub_region=None,
        g_per_kwh=float(per_source["world_average"]),
        ref=(
            f"{_cc('private_infra/carbon_intensity_per_source.json')} world_average "
            f"({per_source.get('world_average_source', 'IEA')})"
        ),
    )


@functools.cache
def grid_factors() -> dict[str, GridFactor]:
    """Every grid zone codecarbon has a static factor for, by zone id."""
    out: dict[str, GridFactor] = {}
    per_source = _data.load_json("private_infra/carbon_intensity_per_source.json")
    mix = _data.load_json("private_infra/global_energy_mix.json")
    mix_ref = _cc("private_infra/global_energy_mix.json")
    for iso3, entry in mix.items():
        out[iso3] = GridFactor(
            zone=iso3,
            name=str(entry.get("country_name", iso3)),
            country_iso3=iso3,
            sub_region=None,
            g_per_kwh=country_g_per_kwh(entry, per_source),
            ref=f"{mix_ref} carbon_intensity, year {entry.get('year', '?')}",
        )

    usa = _data.load_json("private_infra/2023/usa_emissions.json")
    usa_src = usa.get("_source", {})
    usa_ref = (
        f"{_cc('private_infra/2023/usa_emissions.json')} "
        f"({usa_src.get('name', 'EPA eGRID')}, {usa_src.get('year', '')}), lbs/MWh converted"
    )
    for state, entry in usa.items():
        if state.startswith("_") or state == "usa":
            continue
        g = entry["emissions"] * _LBS_PER_MWH_TO_KG_PER_KWH * 1000.0
        out[f"USA/{state}"] = GridFactor(
            f"USA/{state}",
            f"{state.title()} (USA)",
            "USA",
            state,
            g,
            usa_ref,
            aliases=(f"USA/{entry['regionCode']}",) if entry.get("regionCode") else (),
        )

    can = _data.load_json("private_infra/2023/canada_energy_mix.json")
    can_ref = (
        f"{_cc('private_infra/2023/canada_energy_mix.json')} fuel mix x codecarbon's "
        "coal/petroleum/natural-gas factors"
    )
    for province, entry in can.items():
        out[f"CAN/{province}"] = GridFactor(
            f"CAN/{province}",
            f"{province.title()} (Canada)",
            "CAN",
            province,
            canada_g_per_kwh(entry),
            can_ref,
        )

    nordic = _data.load_json("private_infra/nordic_emissions.json")
    nordic_meta = nordic.get("metadata", {})
    for code, entry in nordic["data"].items():
        iso3 = next((c for c, codes in NORDIC_ZONES.items() if code in codes), None)
        if iso3 is None and code == NORDIC_FI[1]:
            iso3 = NORDIC_FI[0]
        if iso3 is None:
            continue
        ref = (
            f"{_cc('private_infra/nordic_emissions.json')} ({nordic_meta.get('source', '')}), "
            f"year {entry.get('year', '?')}"
        )
        out[f"{iso3}/{code}"] = GridFactor(
            f"{iso3}/{code}",
            f"{entry.get('description', code)}",
            iso3,
            code,
            float(entry["emission_factor"]),
            ref,
        )

    china = _data.load_json("private_infra/2023/china_provincial_emissions.json")
    china_meta = china.get("metadata", {})
    china_ref = (
        f"{_cc('private_infra/2023/china_provincial_emissions.json')} "
        f"(MEE/NBS provincial factors, year {china_meta.get('year', 2023)}, CO2 only)"
    )
    for code, entry in china["data"].items():
        names = list(entry["names"])
        zone = f"CHN/{names[0]}"
        out[zone] = GridFactor(
            zone,
            f"{entry.get('description', names[0])} (China)",
            "CHN",
            names[0],
            float(entry["emission_factor"]),
            china_ref,
            aliases=tuple(f"CHN/{name}" for name in names[1:]) + (code,),
        )
    return out


@functools.cache
def gcp_factors() -> dict[str, tuple[float, str]]:
    """GCP region -> (gCO2e/kWh, citation), from codecarbon's ``cloud/impact.csv``."""
    path = _data.codecarbon_data_dir() / "cloud" / "impact.csv"
    rows = _data.read_table(
        path, {"provider": _data.text, "region": _data.text, "impact": _data.non_negative_float}
    )
    out: dict[str, tuple[float, str]] = {}
    for row in rows:
        if row["provider"] != "gcp":
            continue
        region = _GCP_REGION_FIXES.get(row["region"], row["region"])
        spelled = "" if region == row["region"] else f", listed there as {row['region']!r}"
        ref = f"{_cc('cloud/impact.csv')} ({row.get('source', 'Google Cloud')}{spelled})"
        out[region] = (row["impact"], ref)
    return out
