"""Loading the shipped factor tables: ``regions/*.csv`` and codecarbon's data files.

Everything here is read once, lazily, with the stdlib ``csv``/``json`` modules (no pandas:
this module sits under the pricing path). A malformed file raises ``DataFileError`` naming
the file, line and column; a table is either returned whole or not at all.
"""

from __future__ import annotations

import csv
import datetime as _dt
import functools
import importlib.util
import json
import math
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeAlias

# A folder of ``regions/*.csv`` tables (the ``regions_dir`` setting); None: the shipped one.
RegionsDir: TypeAlias = "str | os.PathLike[str] | None"

# Years a sourced figure may carry; anything outside is a typo, not data.
MIN_YEAR = 1990
MAX_YEAR = _dt.date.today().year + 1


class DataFileError(ValueError):
    """A data file has a bad row: says which file, line (1-based) and column."""

    def __init__(self, path: str | os.PathLike[str], line: int, column: str, message: str):
        self.path = str(path)
        self.line = line
        self.column = column
        super().__init__(f"{self.path}, line {line}, column {column!r}: {message}")


def regions_dir(folder: RegionsDir = None) -> Path:
    """The folder holding our ``*.csv`` tables.

    ``folder`` (the ``regions_dir`` setting, ``FOOTPRINT_REGIONS_DIR``) wins; then
    ``footprint/_regions`` (where the wheel puts the repository's ``regions/``); then
    ``regions/`` at the source-tree root.
    """
    return Path(folder) if folder else _shipped_regions_dir()


@functools.cache
def _shipped_regions_dir() -> Path:
    here = Path(__file__).resolve().parent.parent  # footprint/
    for candidate in (here / "_regions", here.parent / "regions"):
        if (candidate / "cloud_regions.csv").is_file():
            return candidate
    raise FileNotFoundError(
        "footprint's region tables (regions/*.csv) are not installed; "
        "set regions_dir (FOOTPRINT_REGIONS_DIR) to the folder that holds them"
    )


def codecarbon_data_dir() -> Path:
    """codecarbon's ``data/`` folder, found without importing codecarbon (import is slow)."""
    spec = importlib.util.find_spec("codecarbon")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("codecarbon is not installed; its grid data is required")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


@functools.cache
def codecarbon_version() -> str:
    """The installed codecarbon version string, for source citations."""
    try:
        from importlib.metadata import version

        return version("codecarbon")
    except Exception:  # pragma: no cover - metadata missing in odd installs
        return "unknown"


@functools.cache
def load_json(relative: str) -> Any:
    """One of codecarbon's JSON data files, parsed once."""
    path = codecarbon_data_dir() / relative
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


# --- typed cell parsers: each raises ValueError with a short reason -------------------


def text(value: str) -> str:
    """A non-empty string, stripped."""
    value = value.strip()
    if not value:
        raise ValueError("must not be empty")
    return value


def optional_text(value: str) -> str | None:
    """A string, or None when the cell is empty."""
    value = value.strip()
    return value or None


def non_negative_float(value: str) -> float:
    """A finite number >= 0."""
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a number") from None
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{value!r} must be a finite number >= 0")
    return number


def positive_float(value: str) -> float:
    """A finite number > 0 (a rate or factor that may not be zero)."""
    number = non_negative_float(value)
    if number == 0:
        raise ValueError(f"{value!r} must be > 0")
    return number


def currency_code(value: str) -> str:
    """A 3-letter upper-case ISO 4217 code such as ``EUR``."""
    value = value.strip()
    if len(value) != 3 or not value.isascii() or not value.isalpha() or not value.isupper():
        raise ValueError(f"{value!r} is not a 3-letter ISO 4217 currency code")
    return value


def optional_non_negative_float(value: str) -> float | None:
    """A finite number >= 0, or None when empty."""
    return non_negative_float(value) if value.strip() else None


def positive_int(value: str) -> int:
    """An integer > 0."""
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an integer") from None
    if number <= 0:
        raise ValueError(f"{value!r} must be > 0")
    return number


def optional_positive_int(value: str) -> int | None:
    """An integer > 0, or None when empty."""
    return positive_int(value) if value.strip() else None


GPU_TOKEN_SPLIT = re.compile(r"[^0-9a-z]+")


def gpu_tokens(name: str) -> frozenset[str]:
    """The whole tokens of a GPU name, case-folded: ``"NVIDIA A100-SXM4-80GB"`` gives
    ``{"nvidia", "a100", "sxm4", "80gb"}``. Tokens are split at anything that is not a
    letter or digit, so ``"GH200"`` is one token and never contains ``"H200"``."""
    return frozenset(t for t in GPU_TOKEN_SPLIT.split(name.casefold()) if t)


class GpuMatch(tuple):
    """A parsed ``match`` cell: (required tokens, excluded tokens, the cell's text).

    The cell is whole tokens separated by spaces, each one required in the GPU name, or
    prefixed with ``!`` to be absent from it: ``"A100 SXM4 40GB"`` matches
    ``"NVIDIA A100-SXM4-40GB"`` only; ``"H200 !NVL"`` matches ``"NVIDIA H200"`` but not
    ``"NVIDIA H200 NVL"`` (a different card) nor ``"NVIDIA GH200 480GB"``.
    """

    __slots__ = ()

    def __new__(cls, required: frozenset[str], excluded: frozenset[str], text: str) -> GpuMatch:
        return super().__new__(cls, (required, excluded, text))

    @property
    def required(self) -> frozenset[str]:
        return self[0]

    @property
    def excluded(self) -> frozenset[str]:
        return self[1]

    @property
    def text(self) -> str:
        return self[2]

    def matches(self, tokens: frozenset[str]) -> bool:
        """Whether a GPU name's ``gpu_tokens`` satisfy this spec."""
        return self.required <= tokens and not (self.excluded & tokens)

    def __str__(self) -> str:
        return self.text


def gpu_match(value: str) -> GpuMatch:
    """A ``match`` cell: whole tokens (letters and digits) to require, ``!token`` to exclude."""
    text_value = value.strip()
    required: set[str] = set()
    excluded: set[str] = set()
    for word in text_value.split():
        negate = word.startswith("!")
        token = word[1:] if negate else word
        if not token or GPU_TOKEN_SPLIT.search(token.casefold()):
            raise ValueError(
                f"{word!r} is not a whole token (letters and digits only, optionally "
                "prefixed with '!')"
            )
        (excluded if negate else required).add(token.casefold())
    if not required:
        raise ValueError("needs at least one required token, e.g. 'H100 80GB HBM3'")
    return GpuMatch(frozenset(required), frozenset(excluded), text_value)


CLOUD_PROVIDERS = ("aws", "azure", "gcp")


def cloud_provider(value: str) -> str:
    """A cloud provider a GPU can be rented from: ``aws``, ``azure`` or ``gcp``."""
    value = value.strip().casefold()
    if value not in CLOUD_PROVIDERS:
        raise ValueError(f"{value!r} is not one of {', '.join(CLOUD_PROVIDERS)}")
    return value


def year(value: str) -> int:
    """A plausible publication / data year."""
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a year") from None
    if not MIN_YEAR <= number <= MAX_YEAR:
        raise ValueError(f"{number} is not a plausible year ({MIN_YEAR}..{MAX_YEAR})")
    return number


Parser = Callable[[str], Any]


def read_table(
    path: str | os.PathLike[str], columns: Mapping[str, Parser]
) -> tuple[dict[str, Any], ...]:
    """Read a CSV with a header into typed row dicts; all-or-nothing.

    ``columns`` maps each required column to its parser; extra columns are kept as text.
    Any missing column, short row or unparsable cell raises ``DataFileError``.
    """
    with open(path, encoding="utf-8-sig", newline="") as fh:
        reader = csv.reader(fh)
        try:
            header = [name.strip() for name in next(reader)]
        except StopIteration:
            raise DataFileError(path, 1, "", "file is empty (a header row is required)") from None
        missing = [name for name in columns if name not in header]
        if missing:
            raise DataFileError(path, 1, missing[0], "required column is missing from the header")
        out: list[dict[str, Any]] = []
        for line_no, raw in enumerate(reader, start=2):
            if not raw or all(not cell.strip() for cell in raw):
                continue  # blank lines are allowed
            if len(raw) != len(header):
                column = header[len(raw)] if len(raw) < len(header) else "(extra)"
                raise DataFileError(
                    path, line_no, column, f"expected {len(header)} fields, got {len(raw)}"
                )
            row: dict[str, Any] = dict(zip(header, raw, strict=True))
            for name, parse in columns.items():
                try:
                    row[name] = parse(row[name])
                except ValueError as exc:
                    raise DataFileError(path, line_no, name, str(exc)) from None
            row["_line"] = line_no
            out.append(row)
    return tuple(out)


# --- the shipped tables ---------------------------------------------------------------

CLOUD_REGION_COLUMNS: dict[str, Parser] = {
    "provider": text,
    "region": text,
    "name": text,
    "country_iso3": text,
    "sub_region": optional_text,
    "location": text,
    "status": text,
    "source": text,
    "year": year,
}
PRICE_COLUMNS: dict[str, Parser] = {
    "zone": text,
    "price_per_kwh": non_negative_float,
    "currency": currency_code,
    "sector": text,
    "period": text,
    "year": year,
    "source": text,
}
PUE_COLUMNS: dict[str, Parser] = {
    "provider": text,
    "pue": non_negative_float,
    "scope": text,
    "year": year,
    "source": text,
}
GPU_PRICE_COLUMNS: dict[str, Parser] = {
    "gpu_model": text,
    "match": gpu_match,
    "usd_per_gpu_hour": non_negative_float,
    "provider": cloud_provider,
    "offer": text,
    "region": text,
    "gpus_per_instance": optional_positive_int,
    "instance_usd_per_hour": optional_non_negative_float,
    "year": year,
    "source": text,
}
# What an owned GPU costs to buy, amortised per GPU-hour by ``factors.gpu_capex_for``.
GPU_CAPEX_COLUMNS: dict[str, Parser] = {
    "gpu_model": text,
    "match": gpu_match,
    "purchase_usd": positive_float,
    "lifetime_years": positive_float,
    "basis": text,  # what the purchase price is (GPU alone, or a system's per-GPU share)
    "year": year,
    "source": text,  # where purchase_usd comes from
    "lifetime_source": text,  # where lifetime_years comes from
}
EMBODIED_COLUMNS: dict[str, Parser] = {
    "item": text,
    "kgco2e": non_negative_float,
    "lifetime_years": non_negative_float,
    "scope": text,
    "year": year,
    "source": text,
}

EXCHANGE_RATE_COLUMNS: dict[str, Parser] = {
    "currency": currency_code,
    "usd_per_unit": positive_float,
    "year": year,
    "source": text,
}

TABLES: dict[str, dict[str, Parser]] = {
    "cloud_regions.csv": CLOUD_REGION_COLUMNS,
    "electricity_prices.csv": PRICE_COLUMNS,
    "pue.csv": PUE_COLUMNS,
    "gpu_prices.csv": GPU_PRICE_COLUMNS,
    "gpu_capex.csv": GPU_CAPEX_COLUMNS,
    "embodied.csv": EMBODIED_COLUMNS,
    "exchange_rates.csv": EXCHANGE_RATE_COLUMNS,
}


def table(name: str, folder: RegionsDir = None) -> tuple[dict[str, Any], ...]:
    """One ``regions/<name>`` table from ``folder`` (default: the shipped one), validated
    and cached per folder."""
    return _table_at(regions_dir(folder), name)


@functools.cache
def _table_at(folder: Path, name: str) -> tuple[dict[str, Any], ...]:
    return read_table(folder / name, TABLES[name])


def unique_exchange_rates(
    rows: tuple[dict[str, Any], ...], path: str | os.PathLike[str] = "exchange_rates.csv"
) -> dict[tuple[str, int], dict[str, Any]]:
    """Index ``exchange_rates.csv`` rows by (currency, year); a repeated pair is an error."""
    out: dict[tuple[str, int], dict[str, Any]] = {}
    for row in rows:
        key = (row["currency"], row["year"])
        if key in out:
            first = out[key]["_line"]
            message = f"{key[0]} {key[1]} is already on line {first}"
            raise DataFileError(path, row["_line"], "year", message)
        out[key] = row
    return out


def clear_caches() -> None:
    """Forget every loaded table (tests that edit a regions folder use it)."""
    _shipped_regions_dir.cache_clear()
    _table_at.cache_clear()
    load_json.cache_clear()
