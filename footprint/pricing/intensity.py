"""Grid carbon intensity in gCO2e/kWh: static, hourly (user CSV) and live (Electricity Maps).

Static factors come from codecarbon's shipped data, computed the way codecarbon computes
them (``codecarbon.core.emissions``): a country's ``carbon_intensity`` from its global
energy mix (or the fuel-mix weighting when that field is missing), US states from eGRID
lbs/MWh, Canadian provinces from the coal/petroleum/natural-gas share of their mix,
Nordic bidding zones and Chinese provinces from their published factors, GCP regions from
Google's per-region figures. They are loaded once; a lookup is a dict read.
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import _data
from ._data import DataFileError

if TYPE_CHECKING:  # pragma: no cover
    from .zones import Zone

SOURCE_STATIC = "static"
SOURCE_HOURLY = "hourly"
SOURCE_LIVE = "live"

# codecarbon's factors for Canadian provinces (kgCO2/kWh per fuel), from
# codecarbon.core.emissions.Emissions._region_energy_mix_to_emissions_rate.
_CAN_FUEL_KG_PER_KWH = (
    ("coal", 0.995725971),
    ("petroleum", 0.8166885263),
    ("naturalGas", 0.7438415916),
)
# codecarbon.core.units.EmissionsPerKWh.LBS_MWH_TO_KG_KWH
_LBS_PER_MWH_TO_KG_PER_KWH = 0.00045359237
# Nordic bidding zones codecarbon knows, by country (codecarbon.core.emissions).
_NORDIC = {"SWE": ("SE1", "SE2", "SE3", "SE4"), "NOR": ("NO1", "NO2", "NO3", "NO4", "NO5")}
_NORDIC_FI = ("FIN", "FI")
_NORDIC_ISO2 = {"SWE": "SE", "NOR": "NO"}
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


@dataclass(frozen=True)
class Intensity:
    """A grid intensity in gCO2e/kWh and where it came from."""

    g_per_kwh: float
    source: str  # "static" | "hourly" | "live"
    ref: str


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
            f"USA/{state}", f"{state.title()} (USA)", "USA", state, g, usa_ref,
            aliases=(f"USA/{entry['regionCode']}",) if entry.get("regionCode") else (),
        )  # fmt: skip

    can = _data.load_json("private_infra/2023/canada_energy_mix.json")
    can_ref = (
        f"{_cc('private_infra/2023/canada_energy_mix.json')} fuel mix x codecarbon's "
        "coal/petroleum/natural-gas factors"
    )
    for province, entry in can.items():
        out[f"CAN/{province}"] = GridFactor(
            f"CAN/{province}", f"{province.title()} (Canada)", "CAN", province,
            canada_g_per_kwh(entry), can_ref,
        )  # fmt: skip

    nordic = _data.load_json("private_infra/nordic_emissions.json")
    nordic_meta = nordic.get("metadata", {})
    for code, entry in nordic["data"].items():
        iso3 = next((c for c, codes in _NORDIC.items() if code in codes), None)
        if iso3 is None and code == _NORDIC_FI[1]:
            iso3 = _NORDIC_FI[0]
        if iso3 is None:
            continue
        ref = (
            f"{_cc('private_infra/nordic_emissions.json')} ({nordic_meta.get('source', '')}), "
            f"year {entry.get('year', '?')}"
        )
        out[f"{iso3}/{code}"] = GridFactor(
            f"{iso3}/{code}", f"{entry.get('description', code)}", iso3, code,
            float(entry["emission_factor"]), ref,
        )  # fmt: skip

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
            zone, f"{entry.get('description', names[0])} (China)", "CHN", names[0],
            float(entry["emission_factor"]), china_ref,
            aliases=tuple(f"CHN/{name}" for name in names[1:]) + (code,),
        )  # fmt: skip
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


def static_intensity(zone: Zone) -> Intensity:
    """The offline factor for a zone: GCP's own figure, else its grid zone's, else country's."""
    if zone.provider == "gcp" and zone.cloud_region in gcp_factors():
        g, ref = gcp_factors()[zone.cloud_region]
        return Intensity(g, SOURCE_STATIC, ref)
    factors = grid_factors()
    for key in (zone.grid_zone, zone.country_iso3):
        if key in factors:
            return Intensity(factors[key].g_per_kwh, SOURCE_STATIC, factors[key].ref)
    world = world_average()
    return Intensity(world.g_per_kwh, SOURCE_STATIC, world.ref)


def _hour_key(at: _dt.datetime) -> int:
    """Hours since the epoch (UTC) of a timestamp; naive datetimes are taken as UTC."""
    if at.tzinfo is None:
        at = at.replace(tzinfo=_dt.timezone.utc)
    return int(at.timestamp() // 3600)


def _parse_utc_hour(value: str) -> int:
    value = value.strip()
    if not value:
        raise ValueError("must not be empty")
    if value[-1:] in ("Z", "z"):  # Python < 3.11 fromisoformat does not take "Z"
        value = value[:-1] + "+00:00"
    try:
        stamp = _dt.datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an ISO 8601 timestamp") from None
    if stamp.minute or stamp.second or stamp.microsecond:
        raise ValueError(f"{value!r} is not on the hour (values are hourly)")
    return _hour_key(stamp)


class HourlyIntensity:
    """User-supplied hourly intensities, (zone, UTC hour) -> gCO2e/kWh. Immutable."""

    def __init__(self, values: Mapping[tuple[str, int], float], ref: str = "user CSV"):
        self._values = dict(values)
        self.ref = ref

    def __len__(self) -> int:
        return len(self._values)

    @classmethod
    def from_csv(cls, path: str | os.PathLike[str]) -> HourlyIntensity:
        """Load ``timestamp,zone,gco2e_per_kwh`` rows (UTC ISO 8601, on the hour).

        Every row is checked before anything is returned: a bad timestamp, unknown zone,
        bad value or duplicate (zone, hour) raises ``DataFileError`` with file, line and
        column, and no partial table exists.
        """
        from .zones import UnknownZoneError, lookup_zone

        zone_ids: dict[str, str] = {}

        def zone_id(value: str) -> str:
            spec = _data.text(value)
            if spec not in zone_ids:
                try:
                    zone_ids[spec] = lookup_zone(spec).id
                except UnknownZoneError as exc:
                    raise ValueError(str(exc)) from None
            return zone_ids[spec]

        rows = _data.read_table(
            path,
            {
                "timestamp": _parse_utc_hour,
                "zone": zone_id,
                "gco2e_per_kwh": _data.non_negative_float,
            },
        )
        values: dict[tuple[str, int], float] = {}
        for row in rows:
            key = (row["zone"], row["timestamp"])
            if key in values:
                raise DataFileError(path, row["_line"], "timestamp", "duplicate hour for this zone")
            values[key] = row["gco2e_per_kwh"]
        return cls(values, ref=f"hourly values from {os.fspath(path)}")

    def get(self, zone: Zone, at: _dt.datetime) -> float | None:
        """The value for the hour containing ``at``, or None when the file does not cover it."""
        hour = _hour_key(at)
        for key in (zone.id, zone.grid_zone):
            value = self._values.get((key, hour))
            if value is not None:
                return value
        return None


class ElectricityMapsClient:
    """Live grid intensity from the Electricity Maps API, cached per (zone, hour).

    Only built with an explicit token. Any failure (network, HTTP error, bad JSON, no
    mapping for the zone) returns None so callers fall back to the static factor; after a
    failure the zone is not retried for ``cooldown_s`` seconds.
    """

    DEFAULT_BASE_URL = "https://api.electricitymaps.com/v3"
    TOKEN_ENV = "FOOTPRINT_ELECTRICITYMAPS_TOKEN"
    URL_ENV = "FOOTPRINT_ELECTRICITYMAPS_URL"

    def __init__(
        self,
        token: str,
        *,
        base_url: str = DEFAULT_BASE_URL,
        timeout_s: float = 2.0,
        cooldown_s: float = 60.0,
        zone_codes: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        if not token:
            raise ValueError("an Electricity Maps token is required")
        self._token = token
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.cooldown_s = cooldown_s
        self._zone_codes = {k.casefold(): v for k, v in (zone_codes or {}).items()}
        self._clock = clock
        self._cache: dict[tuple[str, int], float] = {}
        self._blocked_until: dict[str, float] = {}
        self._lock = threading.Lock()
        self.requests_made = 0

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> ElectricityMapsClient | None:
        """A client when ``FOOTPRINT_ELECTRICITYMAPS_TOKEN`` is set, else None."""
        token = env.get(cls.TOKEN_ENV)
        if not token:
            return None
        return cls(token, base_url=env.get(cls.URL_ENV) or cls.DEFAULT_BASE_URL)

    def zone_code(self, zone: Zone) -> str | None:
        """The Electricity Maps zone code for one of our zones, when there is one.

        Explicit ``zone_codes`` win; countries map to their ISO 3166 alpha-2 code and
        Nordic bidding zones to ``SE-SE3`` style codes. Other sub-national zones have no
        automatic mapping (US states are not Electricity Maps zones) and stay static.
        """
        for key in (zone.id, zone.grid_zone):
            if key.casefold() in self._zone_codes:
                return self._zone_codes[key.casefold()]
        grid = zone.grid_zone
        if "/" in grid:
            iso3, sub = grid.split("/", 1)
            if iso3 in _NORDIC:
                return f"{_NORDIC_ISO2[iso3]}-{sub}"
            if (iso3, sub) == _NORDIC_FI:
                return "FI"
            return None
        try:
            import pycountry
        except ImportError:  # pragma: no cover - pycountry ships with codecarbon
            return None
        country = pycountry.countries.get(alpha_3=grid)
        return country.alpha_2 if country else None

    def carbon_intensity(self, zone: Zone, at: _dt.datetime | None = None) -> float | None:
        """gCO2e/kWh for the zone at ``at`` (default now), or None on any failure."""
        code = self.zone_code(zone)
        if code is None:
            return None
        now = _dt.datetime.now(_dt.timezone.utc)
        at = now if at is None else at
        hour = _hour_key(at)
        with self._lock:
            if (code, hour) in self._cache:
                return self._cache[(code, hour)]
            if self._blocked_until.get(code, 0.0) > self._clock():
                return None
        import urllib.parse

        if hour >= _hour_key(now):
            url = f"{self.base_url}/carbon-intensity/latest?" + urllib.parse.urlencode(
                {"zone": code}
            )
        else:
            stamp = _dt.datetime.fromtimestamp(hour * 3600, _dt.timezone.utc)
            url = f"{self.base_url}/carbon-intensity/past?" + urllib.parse.urlencode(
                {"zone": code, "datetime": stamp.strftime("%Y-%m-%dT%H:%M:%SZ")}
            )
        value = self._fetch(url)
        with self._lock:
            if value is None:
                self._blocked_until[code] = self._clock() + self.cooldown_s
            else:
                self._cache[(code, hour)] = value
                self._blocked_until.pop(code, None)
        return value

    def _fetch(self, url: str) -> float | None:
        import urllib.request

        request = urllib.request.Request(url, headers={"auth-token": self._token})
        self.requests_made += 1
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                payload = json.loads(response.read().decode("utf-8"))
            value = float(payload["carbonIntensity"])
        except (OSError, ValueError, KeyError, TypeError):  # URLError is an OSError
            return None
        if not math.isfinite(value) or value < 0:
            return None
        return value


class IntensitySource:
    """Chooses the intensity for (zone, time): hourly file, then live API, then static."""

    def __init__(
        self,
        *,
        hourly: HourlyIntensity | None = None,
        live: ElectricityMapsClient | None = None,
    ):
        self.hourly = hourly
        self.live = live

    def lookup(self, zone: Zone, at: _dt.datetime | None = None) -> Intensity:
        """The intensity that applies to ``zone`` at ``at`` (UTC; default now)."""
        when = at or _dt.datetime.now(_dt.timezone.utc)
        if self.hourly is not None:
            value = self.hourly.get(zone, when)
            if value is not None:
                return Intensity(value, SOURCE_HOURLY, self.hourly.ref)
        if self.live is not None:
            value = self.live.carbon_intensity(zone, at)
            if value is not None:
                return Intensity(value, SOURCE_LIVE, f"Electricity Maps API ({self.live.base_url})")
        return static_intensity(zone)
