"""Settings: defaults < pyproject ``[tool.footprint]`` < ``footprint.toml`` < env < configure().

Every setting is validated when it is set, so a bad value fails at ``configure()`` (or
when the environment is read) with the allowed values, never inside tracked code.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

SENSOR_CHOICES = ("auto", "nvml", "simulated", "none")
DAEMON_FORMS = (
    "auto (a daemon at the default socket if one listens, else in-process), off "
    "(in-process), a Unix socket path (e.g. /run/footprint/daemon.sock) or an "
    "http://host:port URL"
)
MAX_SOCKET_PATH_BYTES = 107  # sun_path is 108 bytes with its NUL
PROVIDERS = ("aws", "azure", "gcp", "on_premise")
OWNERSHIP_CHOICES = ("rented", "owned")
ENV_PREFIX = "FOOTPRINT_"


@dataclass(frozen=True)
class Settings:
    """Everything the tracker needs; see ``configure`` for the meaning of each field."""

    db: str = "footprint.db"
    sensor: str = "auto"
    region: str | None = None
    sampling_period_s: float = 0.05
    flush_interval_s: float = 1.0
    daemon: str = "auto"  # auto | off | a Unix socket path | http://host:port (None: auto)
    cpu: bool = True
    max_pending_spans: int = 100_000
    exit_deadline_s: float = 5.0  # the most exit (or shutdown()) waits for the last write
    db_timeout_s: float = 10.0  # connect and lock timeouts; statement timeout of writes
    max_span_age_s: float = 3600.0  # a call running longer is closed as abandoned
    # How much of each update period the GPUs' energy counter observes, in s (a part-time
    # counter: A100/H100 power is reported to cover ~25 ms of each 100 ms); None: all of
    # it, or what the sensor says. Widens each record's bound by what it cannot see.
    counter_window_s: float | None = None
    # Pricing: where it runs and the user's overrides of the shipped factors.
    detect_cloud: bool = False
    provider: str | None = None  # aws | azure | gcp | on_premise (PUE); default: the zone's
    # rented | owned: who owns the GPUs (what $/GPU-hour means); None: rented in a cloud
    # region (aws:, gcp:, azure:), owned elsewhere.
    ownership: str | None = None
    hourly_intensity_csv: str | None = None
    electricitymaps_token: str | None = None
    price_per_kwh: float | None = None
    currency: str | None = None
    usd_per_gpu_hour: float | None = None
    pue: float | None = None
    market_intensity_g_per_kwh: float | None = None
    embodied_kgco2e: float | None = None
    lifetime_years: float | None = None

    def __post_init__(self) -> None:
        validate_sensor(self.sensor)
        object.__setattr__(self, "daemon", validate_daemon(self.daemon))
        object.__setattr__(self, "ownership", validate_ownership(self.ownership))
        _positive("sampling_period_s", self.sampling_period_s, maximum=10.0)
        _positive("flush_interval_s", self.flush_interval_s, maximum=60.0)
        _positive("exit_deadline_s", self.exit_deadline_s, maximum=600.0)
        _positive("db_timeout_s", self.db_timeout_s, maximum=600.0)
        _positive("max_span_age_s", self.max_span_age_s, maximum=7 * 86400.0)
        if self.counter_window_s is not None:
            _positive("counter_window_s", self.counter_window_s, maximum=10.0)
        if not isinstance(self.max_pending_spans, int) or self.max_pending_spans < 1:
            raise ValueError("max_pending_spans must be a positive integer")
        if not isinstance(self.db, str) or not self.db.strip():
            raise ValueError("db must be a SQLAlchemy URL or a file path")
        self._validate_pricing()

    def _validate_pricing(self) -> None:
        from footprint.pricing import HourlyIntensity, lookup_zone, validate_overrides
        from footprint.pricing.pricer import OVERRIDE_FIELDS

        validate_overrides(**{name: getattr(self, name) for name in OVERRIDE_FIELDS})
        if self.price_per_kwh is not None and self.currency is None:
            raise ValueError("price_per_kwh needs currency (e.g. currency='EUR')")
        if self.provider is not None and self.provider not in PROVIDERS:
            raise ValueError(
                f"provider must be one of {', '.join(PROVIDERS)}, got {self.provider!r}"
            )
        if self.region is not None:
            lookup_zone(self.region)  # UnknownZoneError names the closest known zones
        if self.hourly_intensity_csv is not None:
            HourlyIntensity.from_csv(self.hourly_intensity_csv)  # file/line/column errors


def _positive(name: str, value: object, maximum: float) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or not 0 < value <= maximum:  # type: ignore[arg-type]
        raise ValueError(f"{name} must be a number of seconds in (0, {maximum:g}], got {value!r}")


def validate_sensor(spec: str) -> None:
    """Check a sensor spec: ``auto``, ``nvml``, ``none`` or ``simulated[:k=v,...]``."""
    if not isinstance(spec, str):
        raise ValueError(f"sensor must be a string, one of {', '.join(SENSOR_CHOICES)}")
    name, _, options = spec.partition(":")
    if name not in SENSOR_CHOICES:
        raise ValueError(
            f"unknown sensor {spec!r}; allowed: auto, nvml, none, simulated[:gpus=N,idle_w=W,"
            "busy_w=W,update_period_s=S,noise=F,seed=N]"
        )
    if name == "simulated":
        from footprint.sensors.simulated import SimulatedGpuSpec

        SimulatedGpuSpec.parse(options)
    elif options:
        raise ValueError(f"sensor {name!r} takes no options")


def validate_ownership(value: object) -> str | None:
    """The ``ownership`` setting: ``rented``, ``owned``, or None (``""``, ``auto``: by zone)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"ownership must be one of {', '.join(OWNERSHIP_CHOICES)}; got {value!r}")
    text = value.strip().lower()
    if text in ("", "auto"):
        return None
    if text not in OWNERSHIP_CHOICES:
        raise ValueError(
            f"ownership must be one of {', '.join(OWNERSHIP_CHOICES)} (default: rented in a "
            f"cloud region, owned elsewhere); got {value!r}"
        )
    return text


def validate_daemon(value: object) -> str:
    """The ``daemon`` setting in its normal form: ``auto``, ``off``, a socket path or
    ``http://host:port``. ``None`` (older configurations) and ``""`` mean ``auto``."""
    if value is None:
        return "auto"
    if not isinstance(value, str):
        raise ValueError(f"daemon must be {DAEMON_FORMS}; got {value!r}")
    text = value.strip()
    if text.lower() in ("", "auto"):
        return "auto"
    if text.lower() == "off":
        return "off"
    if "://" in text:
        return _daemon_url(text)
    if "\x00" in text:
        raise ValueError(f"daemon: a socket path cannot contain NUL; allowed: {DAEMON_FORMS}")
    if len(os.fsencode(text)) > MAX_SOCKET_PATH_BYTES:
        raise ValueError(
            f"daemon: socket path {text!r} is longer than {MAX_SOCKET_PATH_BYTES} bytes, "
            "the limit of a Unix socket address"
        )
    return text


def _daemon_url(text: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(text)
    if parts.scheme.lower() != "http":
        raise ValueError(f"daemon: unsupported address {text!r}; allowed: {DAEMON_FORMS}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"daemon: bad port in {text!r}; allowed: {DAEMON_FORMS}") from None
    if not parts.hostname or parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(
            f"daemon: {text!r} must be http://host:port (no path, query or user); "
            f"allowed: {DAEMON_FORMS}"
        )
    if parts.username or parts.password:
        raise ValueError(f"daemon: {text!r} must not carry a user or password")
    host = parts.hostname
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port or 80}"


_FLOAT_FIELDS = {
    "sampling_period_s",
    "flush_interval_s",
    "exit_deadline_s",
    "db_timeout_s",
    "max_span_age_s",
    "counter_window_s",
    "price_per_kwh",
    "usd_per_gpu_hour",
    "pue",
    "market_intensity_g_per_kwh",
    "embodied_kgco2e",
    "lifetime_years",
}
_INT_FIELDS = {"max_pending_spans"}
_BOOL_FIELDS = {"cpu", "detect_cloud"}


def _coerce(name: str, raw: Any) -> Any:
    if not isinstance(raw, str):
        return raw
    try:
        if name in _FLOAT_FIELDS:
            return float(raw)
        if name in _INT_FIELDS:
            return int(raw)
    except ValueError:
        raise ValueError(f"{name}: not a number: {raw!r}") from None
    if name in _BOOL_FIELDS:
        lowered = raw.strip().lower()
        if lowered not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
            raise ValueError(f"{name}: expected true or false, got {raw!r}")
        return lowered in ("1", "true", "yes", "on")
    return raw


def _from_mapping(source: str, mapping: dict[str, Any]) -> dict[str, Any]:
    known = {f.name for f in fields(Settings)}
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        name = key.lower().replace("-", "_")
        if name not in known:
            raise ValueError(
                f"{source}: unknown setting {key!r}; known: {', '.join(sorted(known))}"
            )
        out[name] = _coerce(name, value)
    return out


def load_file_settings(directory: Path | None = None) -> dict[str, Any]:
    """Settings from ``[tool.footprint]`` in pyproject.toml, then footprint.toml."""
    directory = directory or Path.cwd()
    merged: dict[str, Any] = {}
    pyproject = directory / "pyproject.toml"
    if pyproject.is_file():
        table = tomllib.loads(pyproject.read_text()).get("tool", {}).get("footprint", {})
        merged.update(_from_mapping(str(pyproject), table))
    own = directory / "footprint.toml"
    if own.is_file():
        merged.update(_from_mapping(str(own), tomllib.loads(own.read_text())))
    return merged


def load_env_settings(environ: dict[str, str] | None = None) -> dict[str, Any]:
    """``FOOTPRINT_DB``, ``FOOTPRINT_SENSOR``, ``FOOTPRINT_REGION``, ``FOOTPRINT_DAEMON``…"""
    environ = dict(os.environ if environ is None else environ)
    known = {f.name for f in fields(Settings)}
    picked = {}
    for key, value in environ.items():
        if key.startswith(ENV_PREFIX):
            name = key[len(ENV_PREFIX) :].lower()
            if name in known:
                picked[name] = value
    return _from_mapping("environment", picked)


def resolve_settings(
    overrides: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
    directory: Path | None = None,
) -> Settings:
    """Merge every source; later sources win."""
    merged = load_file_settings(directory)
    merged.update(load_env_settings(environ))
    merged.update(_from_mapping("configure()", overrides or {}))
    return replace(Settings(), **merged)
