"""Grid carbon intensity in gCO2e/kWh for a zone and hour: static, hourly, live.

Static values come from ``grid``'s tables (codecarbon's data; GCP regions from Google's
own figures), hourly ones from a user's CSV, live ones from the Electricity Maps API;
``IntensitySource`` picks the first that has a value: hourly, then live, then static.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from . import _data
from ._data import DataFileError
from .grid import NORDIC_FI, NORDIC_ZONES, gcp_factors, grid_factors, world_average
from .zones import UnknownZoneError, Zone, lookup_zone

SOURCE_STATIC = "static"
SOURCE_HOURLY = "hourly"
SOURCE_LIVE = "live"
# Electricity Maps spells a Nordic bidding zone with the ISO 3166 alpha-2 code: SE-SE3.
_NORDIC_ISO2 = {"SWE": "SE", "NOR": "NO"}


@dataclass(frozen=True)
class Intensity:
    """A grid intensity in gCO2e/kWh and where it came from."""

    g_per_kwh: float
    source: str  # "static" | "hourly" | "live"
    ref: str


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
    def from_csv(
        cls, path: str | os.PathLike[str], regions_dir: _data.RegionsDir = None
    ) -> HourlyIntensity:
        """Load ``timestamp,zone,gco2e_per_kwh`` rows (UTC ISO 8601, on the hour); zones
        are looked up with ``regions_dir``'s cloud regions (default: the shipped ones).

        Every row is checked before anything is returned: a bad timestamp, unknown zone,
        bad value or duplicate (zone, hour) raises ``DataFileError`` with file, line and
        column, and no partial table exists.
        """
        zone_ids: dict[str, str] = {}

        def zone_id(value: str) -> str:
            spec = _data.text(value)
            if spec not in zone_ids:
                try:
                    zone_ids[spec] = lookup_zone(spec, regions_dir).id
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

    Only built with an explicit token (the ``electricitymaps_token`` setting), against
    ``base_url`` (the ``electricitymaps_url`` setting). Any failure (network, HTTP error,
    bad JSON, no mapping for the zone) returns None so callers fall back to the static
    factor; after a failure the zone is not retried for ``cooldown_s`` seconds.
    """

    DEFAULT_BASE_URL = "https://api.electricitymaps.com/v3"

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
            if iso3 in NORDIC_ZONES:
                return f"{_NORDIC_ISO2[iso3]}-{sub}"
            if (iso3, sub) == NORDIC_FI:
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
