"""The user's overrides of the shipped pricing factors: the one list of their names.

``Settings``, ``Factors``, ``build_factors`` and the daemon's reload all take these names
from ``PRICING_OVERRIDES``, so an override is added in one place. Checking them is pure:
a bad value raises ``ValueError`` saying which, before anything is priced.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, fields
from typing import Any

RENTED = "rented"
OWNED = "owned"
OWNERSHIPS = (RENTED, OWNED)
_CURRENCY = re.compile(r"^[A-Z]{3}$")


def check_number(name: str, value: float | None, *, minimum: float = 0.0) -> None:
    """``ValueError`` unless ``value`` is None or a finite number >= ``minimum``."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if math.isnan(value) or math.isinf(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if value < minimum:
        bound = "PUE must be >= 1" if name == "pue" else f"{name} must be >= {minimum:g}"
        raise ValueError(f"{bound}, got {value!r}")


@dataclass(frozen=True)
class PricingOverrides:
    """What the user sets instead of the shipped data; None keeps the shipped value."""

    # In the order ``Factors.overrides`` names them (the order they are applied in).
    pue: float | None = None
    price_per_kwh: float | None = None  # in ``currency``, which it needs
    currency: str | None = None  # ISO 4217
    ownership: str | None = None  # rented | owned; None: by zone
    usd_per_gpu_hour: float | None = None
    embodied_kgco2e: float | None = None  # per GPU
    lifetime_years: float | None = None
    market_intensity_g_per_kwh: float | None = None  # contractual (market-based) factor

    def __post_init__(self) -> None:
        if self.ownership is not None and self.ownership not in OWNERSHIPS:
            raise ValueError(
                f"ownership must be one of {', '.join(OWNERSHIPS)}, got {self.ownership!r}"
            )
        check_number("price_per_kwh", self.price_per_kwh)
        check_number("usd_per_gpu_hour", self.usd_per_gpu_hour)
        check_number("pue", self.pue, minimum=1.0)
        check_number("market_intensity_g_per_kwh", self.market_intensity_g_per_kwh)
        check_number("embodied_kgco2e", self.embodied_kgco2e)
        check_number("lifetime_years", self.lifetime_years)
        if self.lifetime_years is not None and self.lifetime_years == 0:
            raise ValueError("lifetime_years must be > 0")
        if self.currency is not None and not _CURRENCY.match(self.currency):
            raise ValueError(
                f"currency must be a 3-letter ISO 4217 code like 'EUR', got {self.currency!r}"
            )

    @classmethod
    def of(cls, source: object) -> PricingOverrides:
        """The overrides carried by an object with these attributes (``Settings``,
        ``Factors``), checked."""
        return cls(**{name: getattr(source, name) for name in PRICING_OVERRIDES})

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


PRICING_OVERRIDES: tuple[str, ...] = tuple(f.name for f in fields(PricingOverrides))
