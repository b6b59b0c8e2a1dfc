"""Settings: defaults < pyproject ``[tool.footprint]`` < ``footprint.toml`` < env < configure().

``Settings`` is plain values, checked when made without touching a file, so
``dataclasses.replace`` is cheap and never fails on the file system. What needs files is
done where they are used: ``resolve_settings`` finds the settings files and checks the
region against the zone catalogue; the pricer reads the hourly intensity CSV when it starts.
A bad value fails at ``configure()`` (or when the environment is read) with the allowed
values, never inside tracked code.

The settings files are found like ruff's and pytest's: from the working directory up, the
first folder with a ``footprint.toml`` or a ``pyproject.toml`` with a ``[tool.footprint]``
table is used (both files when it has both) and no folder above it is read.
``Settings.config_files`` records which.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

SENSOR_CHOICES = ("auto", "nvml", "amd", "simulated", "none")
# How a GPU's busy energy is shared among the calls running on it (see
# footprint.attribution.resolver.RULES, which must agree).
ATTRIBUTION_CHOICES = ("auto", "tokens", "equal")
DAEMON_FORMS = (
    "auto (a daemon at the default socket if one listens, else in-process), off "
    "(in-process), a Unix socket path (e.g. /run/footprint/daemon.sock) or an "
    "http://host:port URL"
)
MAX_SOCKET_PATH_BYTES = 107  # sun_path is 108 bytes with its NUL
PROVIDERS = ("aws", "azure", "gcp", "on_premise")
OWNERSHIP_CHOICES = ("rented", "owned")
ENV_PREFIX = "FOOTPRINT_"
PYPROJECT = "pyproject.toml"
SETTINGS_FILE = "footprint.toml"
# Seconds settings: the largest value each may take (all must be > 0).
_SECONDS_MAXIMA = {
    "sampling_period_s": 10.0,
    "flush_interval_s": 60.0,
    "exit_deadline_s": 600.0,
    "db_timeout_s": 600.0,
    "max_span_age_s": 7 * 86400.0,
    "counter_window_s": 10.0,
}


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
    # How each instant's busy GPU energy is shared among the calls running: "tokens" by
    # their token work (weights learned from the counter), "equal" equally, "auto" by
    # tokens once calls with token counts are seen, equally before.
    attribution: str = "auto"  # the token rule from the first call with token counts
    # Pricing: where it runs and the user's overrides of the shipped factors
    # (footprint.pricing.PRICING_OVERRIDES names them).
    detect_cloud: bool = False
    provider: str | None = None  # aws | azure | gcp | on_premise (PUE); default: the zone's
    # rented | owned: who owns the GPUs (what $/GPU-hour means); None: rented in a cloud
    # region (aws:, gcp:, azure:), owned elsewhere.
    ownership: str | None = None
    hourly_intensity_csv: str | None = None  # read by the pricer when it starts
    electricitymaps_token: str | None = None
    # The bearer token sent to a daemon over HTTP (FOOTPRINT_DAEMON_TOKEN), else the one in
    # this file (FOOTPRINT_DAEMON_TOKEN_FILE), else, for a loopback daemon, the file it
    # writes beside the default socket.
    daemon_token: str | None = None
    daemon_token_file: str | None = None
    electricitymaps_url: str | None = None  # None: the public API
    regions_dir: str | None = None  # the regions/*.csv tables; None: the shipped ones
    price_per_kwh: float | None = None
    currency: str | None = None
    usd_per_gpu_hour: float | None = None
    pue: float | None = None
    market_intensity_g_per_kwh: float | None = None
    embodied_kgco2e: float | None = None
    lifetime_years: float | None = None
    # Recorded, not a setting: the files the settings came from (see the module's
    # docstring); empty when none was found.
    config_files: tuple[str, ...] = field(default=(), metadata={"settable": False})

    def __post_init__(self) -> None:
        validate_sensor(self.sensor)
        if self.attribution not in ATTRIBUTION_CHOICES:
            raise ValueError(
                f"attribution must be one of {', '.join(ATTRIBUTION_CHOICES)}, "
                f"got {self.attribution!r}"
            )
        object.__setattr__(self, "daemon", validate_daemon(self.daemon))
        object.__setattr__(self, "ownership", validate_ownership(self.ownership))
        for name, maximum in _SECONDS_MAXIMA.items():
            value = getattr(self, name)
            if value is None and name == "counter_window_s":
                continue  # None: the sensor's own window
            _positive(name, value, maximum)
        if not isinstance(self.max_pending_spans, int) or self.max_pending_spans < 1:
            raise ValueError("max_pending_spans must be a positive integer")
        if not isinstance(self.db, str) or not self.db.strip():
            raise ValueError("db must be a SQLAlchemy URL or a file path")
        self._validate_pricing()

    def _validate_pricing(self) -> None:
        from footprint.pricing.overrides import PricingOverrides

        PricingOverrides.of(self)
        if self.price_per_kwh is not None and self.currency is None:
            raise ValueError("price_per_kwh needs currency (e.g. currency='EUR')")
        if self.provider is not None and self.provider not in PROVIDERS:
            raise ValueError(
                f"provider must be one of {', '.join(PROVIDERS)}, got {self.provider!r}"
            )
        for name in ("hourly_intensity_csv", "regions_dir"):
            _path_or_none(name, getattr(self, name))
        validate_url("electricitymaps_url", self.electricitymaps_url)

    @property
    def config_source(self) -> str:
        """Where the file settings came from, in words (for ``footprint devices`` and
        ``footprint db info``)."""
        if not self.config_files:
            return "none found: defaults and FOOTPRINT_* variables only"
        return ", ".join(self.config_files)


def settable_names() -> tuple[str, ...]:
    """The settings a file, ``FOOTPRINT_*`` or ``configure()`` may set."""
    return tuple(f.name for f in fields(Settings) if f.metadata.get("settable", True))


def _positive(name: str, value: object, maximum: float) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or not 0 < value <= maximum
    ):
        raise ValueError(f"{name} must be a number of seconds in (0, {maximum:g}], got {value!r}")


def _path_or_none(name: str, value: object) -> None:
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise ValueError(f"{name} must be a path, got {value!r}")


def validate_url(name: str, value: object) -> None:
    """``ValueError`` unless ``value`` is None or an ``http://`` or ``https://`` URL."""
    if value is None:
        return
    from urllib.parse import urlsplit

    parts = urlsplit(value) if isinstance(value, str) else None
    if parts is None or parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{name} must be an http:// or https:// URL, got {value!r}")


def validate_sensor(spec: str) -> None:
    """Check a sensor spec: ``auto``, ``nvml``, ``amd``, ``none`` or ``simulated[:k=v,...]``."""
    if not isinstance(spec, str):
        raise ValueError(f"sensor must be a string, one of {', '.join(SENSOR_CHOICES)}")
    name, _, options = spec.partition(":")
    if name not in SENSOR_CHOICES:
        raise ValueError(
            f"unknown sensor {spec!r}; allowed: auto, nvml, amd, none, simulated[:gpus=N,idle_w=W,"
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


_TYPES = {f.name: f.type for f in fields(Settings)}  # annotations as text (__future__)


def _field_kind(name: str) -> str:
    """``float``, ``int``, ``bool``, ``str``…: a field's type without ``| None``."""
    return str(_TYPES[name]).split("|")[0].strip()


def _coerce(name: str, raw: Any) -> Any:
    if not isinstance(raw, str):
        return raw
    kind = _field_kind(name)
    try:
        if kind == "float":
            return float(raw)
        if kind == "int":
            return int(raw)
    except ValueError:
        raise ValueError(f"{name}: not a number: {raw!r}") from None
    if kind == "bool":
        lowered = raw.strip().lower()
        if lowered not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
            raise ValueError(f"{name}: expected true or false, got {raw!r}")
        return lowered in ("1", "true", "yes", "on")
    return raw


def _from_mapping(source: str, mapping: dict[str, Any]) -> dict[str, Any]:
    known = settable_names()
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        name = key.lower().replace("-", "_")
        if name not in known:
            raise ValueError(
                f"{source}: unknown setting {key!r}; known: {', '.join(sorted(known))}"
            )
        out[name] = _coerce(name, value)
    return out


@dataclass(frozen=True)
class SettingsFile:
    """A file settings are read from, and its footprint table."""

    path: Path
    table: dict[str, Any]  # footprint.toml whole, or pyproject.toml's [tool.footprint]


def find_settings_files(directory: Path | None = None) -> tuple[SettingsFile, ...]:
    """The settings files that apply in ``directory`` (default: the working directory):
    those of the first folder from there up that has any (see the module's docstring),
    pyproject.toml first; () when no folder has one."""
    start = Path.cwd() if directory is None else Path(directory).absolute()
    for folder in (start, *start.parents):
        found = _settings_files_in(folder)
        if found:
            return found
    return ()


def _settings_files_in(folder: Path) -> tuple[SettingsFile, ...]:
    found = []
    pyproject = folder / PYPROJECT
    if pyproject.is_file():
        tool = tomllib.loads(pyproject.read_text()).get("tool", {})
        if "footprint" in tool:
            found.append(SettingsFile(pyproject, tool["footprint"]))
    own = folder / SETTINGS_FILE
    if own.is_file():
        found.append(SettingsFile(own, tomllib.loads(own.read_text())))
    return tuple(found)


def _read_files(files: tuple[SettingsFile, ...]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for found in files:
        merged.update(_from_mapping(str(found.path), found.table))
    return merged


def load_file_settings(directory: Path | None = None) -> dict[str, Any]:
    """Settings from ``[tool.footprint]`` in pyproject.toml, then footprint.toml, of the
    folder ``find_settings_files`` picks."""
    return _read_files(find_settings_files(directory))


def load_env_settings(environ: dict[str, str] | None = None) -> dict[str, Any]:
    """``FOOTPRINT_DB``, ``FOOTPRINT_SENSOR``, ``FOOTPRINT_REGION``, ``FOOTPRINT_DAEMON``…"""
    environ = dict(os.environ if environ is None else environ)
    known = settable_names()
    picked = {}
    for key, value in environ.items():
        if key.startswith(ENV_PREFIX):
            name = key[len(ENV_PREFIX) :].lower()
            if name in known:
                picked[name] = value
    return _from_mapping("environment", picked)


def check_region(settings: Settings) -> None:
    """``UnknownZoneError`` (a ``ValueError`` naming the closest zones) for a region that
    is not in the zone catalogue of ``settings.regions_dir``."""
    if settings.region is not None:
        from footprint.pricing.zones import lookup_zone

        lookup_zone(settings.region, settings.regions_dir)


def resolve_settings(
    overrides: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
    directory: Path | None = None,
) -> Settings:
    """Merge every source, later sources winning, and check the region."""
    files = find_settings_files(directory)
    merged = _read_files(files)
    merged.update(load_env_settings(environ))
    merged.update(_from_mapping("configure()", overrides or {}))
    settings = Settings(**merged, config_files=tuple(str(f.path) for f in files))
    check_region(settings)
    return settings


def check_files(settings: Settings) -> None:
    """Read the files ``settings`` name once, to refuse a bad one where the settings are
    given (``configure()``, ``Tracker(...)``, the daemon's start): ``ValueError`` naming
    the file and line. The pricer reads them again when a runtime starts."""
    if settings.hourly_intensity_csv:
        from footprint.pricing.intensity import HourlyIntensity

        HourlyIntensity.from_csv(settings.hourly_intensity_csv, settings.regions_dir)
