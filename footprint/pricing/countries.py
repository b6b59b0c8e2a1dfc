"""Country codes and names for searching zones: ISO 3166-1 alpha-2, alpha-3 and names.

Our zones carry the ISO 3166-1 alpha-3 code only (codecarbon's ``global_energy_mix.json``
keys, ``cloud_regions.csv``'s ``country_iso3``). The alpha-2 codes and the ISO names
(``"Russian Federation"`` next to codecarbon's ``"Russia"``) come from pycountry's
``databases/iso3166-1.json`` (Debian iso-codes), a dependency already shipped; only the
countries we have a grid factor for are kept.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass

from .grid import grid_factors


@dataclass(frozen=True)
class CountryIndex:
    """Normalised codes and names -> alpha-3, for the countries we have zones in."""

    codes: dict[str, str]  # "fr", "fra" -> "FRA"
    names: dict[str, str]  # "france", "south korea", "korea republic of" -> alpha-3
    names_of: dict[str, tuple[str, ...]]  # "KOR" -> every normalised name it goes by


def normalize(text: str) -> str:
    """Casefolded, accents dropped, every run of non-alphanumerics one space:
    ``"Côte d'Ivoire"`` -> ``"cote d ivoire"``, ``"us-east-1"`` -> ``"us east 1"``."""
    plain = unicodedata.normalize("NFKD", text)
    plain = "".join(ch for ch in plain if not unicodedata.combining(ch)).casefold()
    return re.sub(r"[^0-9a-z]+", " ", plain).strip()


@functools.cache
def country_index() -> CountryIndex:
    """Every country zone's alpha-2/alpha-3 codes and names, normalised (built once)."""
    codes: dict[str, str] = {}
    names: dict[str, str] = {}
    names_of: dict[str, tuple[str, ...]] = {}
    ours = {f.zone: f.name for f in grid_factors().values() if f.sub_region is None}
    iso = _iso_countries()
    for iso3, name in ours.items():
        alpha2, iso_names = iso.get(iso3, ("", ()))
        codes[iso3.casefold()] = iso3
        if alpha2:
            codes[alpha2.casefold()] = iso3
        spelled = tuple(dict.fromkeys(normalize(n) for n in (name, *iso_names) if n))
        names_of[iso3] = spelled
        for each in spelled:
            names.setdefault(each, iso3)
    return CountryIndex(codes, names, names_of)


def _iso_countries() -> dict[str, tuple[str, tuple[str, ...]]]:
    """alpha-3 -> (alpha-2, its ISO names), from pycountry; empty when it is missing."""
    try:
        import pycountry
    except ImportError:  # pragma: no cover - pycountry ships with footprint
        return {}
    out: dict[str, tuple[str, tuple[str, ...]]] = {}
    for country in pycountry.countries:
        spelled = tuple(
            getattr(country, field, "") or "" for field in ("name", "common_name", "official_name")
        )
        out[country.alpha_3] = (country.alpha_2, spelled)
    return out
