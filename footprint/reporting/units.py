"""Numbers that read well: an SI prefix picked so the figure has 1 to 3 digits before the point.

``energy(0.0042)`` (kWh in) -> ``"4.2 Wh"``; ``mass(1520.0)`` (grams in) -> ``"1.52 kg"``;
``money(0.000131)`` -> ``"$0.000131"``. Three significant digits, trailing zeros dropped
(``4.2 Wh``, not ``4.20 Wh``); money of a dollar or more shows cents.
"""

from __future__ import annotations

import math

_ENERGY_UNITS = ((1e3, "MWh"), (1.0, "kWh"), (1e-3, "Wh"), (1e-6, "mWh"), (1e-9, "µWh"))
_MASS_UNITS = ((1e6, "t"), (1e3, "kg"), (1.0, "g"), (1e-3, "mg"), (1e-6, "µg"))


def sig(value: float, digits: int = 3) -> str:
    """``value`` with ``digits`` significant digits, thousands separated, no exponent."""
    if value == 0 or not math.isfinite(value):
        return "0" if value == 0 else str(value)
    magnitude = math.floor(math.log10(abs(value)))
    decimals = max(0, digits - 1 - magnitude)
    rounded = round(value, decimals)
    # Rounding can carry into a new digit (999.6 -> 1000): recompute the decimals.
    if rounded != 0 and math.floor(math.log10(abs(rounded))) > magnitude:
        decimals = max(0, decimals - 1)
    text = f"{rounded:,.{decimals}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def _scaled(value: float, units: tuple[tuple[float, str], ...]) -> str:
    if value is None:
        return "–"
    if value == 0:
        return f"0 {units[1][1]}"
    for factor, unit in units:
        if abs(value) >= factor * 0.9995:
            return f"{sig(value / factor)} {unit}"
    factor, unit = units[-1]
    return f"{sig(value / factor)} {unit}"


def energy(kwh: float | None) -> str:
    """An energy given in kWh, as µWh, mWh, Wh, kWh or MWh."""
    return "–" if kwh is None else _scaled(kwh, _ENERGY_UNITS)


def mass(grams: float | None) -> str:
    """A mass of CO2e given in grams, as µg, mg, g, kg or t."""
    return "–" if grams is None else _scaled(grams, _MASS_UNITS)


def money(usd: float | None) -> str:
    """US dollars: cents shown from $1, three significant digits below."""
    if usd is None:
        return "–"
    if usd == 0:
        return "$0"
    if abs(usd) >= 1000:
        return f"${usd:,.0f}"
    if abs(usd) >= 1:
        return f"${usd:,.2f}"
    return f"${sig(usd)}"


def count(value: int | float | None) -> str:
    """An integer with thousands separators."""
    return "–" if value is None else f"{int(round(value)):,}"


def counted(value: int, singular: str, plural: str | None = None) -> str:
    """``1 model``, ``2 models``, ``1,204 queries``: a count with its noun agreeing."""
    noun = singular if value == 1 else plural or f"{singular}s"
    return f"{value:,} {noun}"


def number(value: float | None, digits: int = 3) -> str:
    """A plain number with ``digits`` significant digits."""
    return "–" if value is None else sig(value, digits)


def percent(fraction: float | None) -> str:
    """0.4213 -> ``"42.1%"``; signs shown for changes by the caller."""
    return "–" if fraction is None else f"{sig(fraction * 100)}%"


def duration(seconds: float | None) -> str:
    """Seconds as ms, s, min or h."""
    if seconds is None:
        return "–"
    if seconds >= 3600:
        return f"{sig(seconds / 3600)} h"
    if seconds >= 60:
        return f"{sig(seconds / 60)} min"
    if 0 < seconds < 0.9995:
        return f"{sig(seconds * 1000)} ms"
    return f"{sig(seconds)} s"
