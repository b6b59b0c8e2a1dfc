"""The simulated GPUs' options: ``FOOTPRINT_SENSOR=simulated:gpus=2,idle_w=60,...``,
parsed and checked (a bad value raises ValueError saying which and why)."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

WORKLOADS = ("spans", "manual")
_EPS_S = 1e-12  # float slack when comparing window bounds with the period


@dataclass(frozen=True)
class SimulatedGpuSpec:
    """Options of ``FOOTPRINT_SENSOR=simulated:gpus=2,idle_w=60,busy_w=400,seed=7``."""

    gpus: int = 1
    idle_w: float = 60.0
    busy_w: float = 400.0
    update_period_s: float = 0.1
    noise: float = 0.0  # amplitude of per-tick noise as a fraction of idle power
    seed: int = 0
    name: str = "Simulated GPU"
    workload: str = "spans"  # spans: tracked calls load their GPUs; manual: add_load only
    window_s: float | None = None  # part of each period the counter sees; None/0: all of it
    window_offset_s: float | None = None  # window start after the previous tick; None: at end
    # A tick's value becomes readable this long after the tick (the instant it describes):
    # a daemon hears of calls after they start, and loads it registers late would otherwise
    # change ticks already read. The sampler is told (``counter_lag_s``) and stamps back.
    lag_s: float = 0.0

    def __post_init__(self) -> None:
        if self.gpus < 1 or self.gpus > 64:
            raise ValueError(f"simulated sensor: gpus must be 1..64, got {self.gpus}")
        for label, value in (("idle_w", self.idle_w), ("busy_w", self.busy_w)):
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"simulated sensor: {label} must be a finite watt figure >= 0")
        if self.busy_w < self.idle_w:
            raise ValueError("simulated sensor: busy_w must be >= idle_w")
        if not math.isfinite(self.update_period_s) or not 0.001 <= self.update_period_s <= 10:
            raise ValueError("simulated sensor: update_period_s must be in [0.001, 10] seconds")
        if not math.isfinite(self.noise) or not 0 <= self.noise <= 1:
            raise ValueError("simulated sensor: noise must be in [0, 1]")
        if self.workload not in WORKLOADS:
            raise ValueError(
                f"simulated sensor: workload must be one of {', '.join(WORKLOADS)}, "
                f"got {self.workload!r}"
            )
        if not math.isfinite(self.lag_s) or not 0 <= self.lag_s <= 10:
            raise ValueError(
                f"simulated sensor: lag_s must be in [0, 10] seconds, got {self.lag_s}"
            )
        window = self.window_s
        if window is not None and (
            not math.isfinite(window) or not 0 <= window <= self.update_period_s + _EPS_S
        ):
            raise ValueError(
                "simulated sensor: window_s must be in (0, update_period_s] seconds "
                f"(0: the whole period), got {window}"
            )
        offset = self.window_offset_s
        room_s = self.update_period_s - self.observed_window_s
        if offset is not None and (not math.isfinite(offset) or not 0 <= offset <= room_s + _EPS_S):
            raise ValueError(
                "simulated sensor: window_offset_s must be in [0, update_period_s - window_s] "
                f"= [0, {room_s:g}] seconds, got {offset}"
            )

    @property
    def observed_window_s(self) -> float:
        """Length in s of the part of each period the counter observes."""
        return self.window_s if self.window_s else self.update_period_s

    @property
    def observed_offset_s(self) -> float:
        """Start of the observed window, in s after the previous tick."""
        if self.window_offset_s is not None:
            return self.window_offset_s
        return max(0.0, self.update_period_s - self.observed_window_s)

    @property
    def part_time(self) -> bool:
        """Whether the counter sees only part of each period."""
        return self.observed_window_s < self.update_period_s - _EPS_S

    @classmethod
    def parse(cls, options: str) -> SimulatedGpuSpec:
        """Parse ``"gpus=2,idle_w=60"``; unknown keys or bad values raise ValueError."""
        known = {f.name: f.type for f in fields(cls)}
        values: dict[str, object] = {}
        for item in filter(None, (part.strip() for part in options.split(","))):
            key, sep, raw = item.partition("=")
            key = key.strip()
            if not sep or key not in known:
                raise ValueError(
                    f"simulated sensor: unknown option {item!r}; allowed: {', '.join(known)}"
                )
            try:
                if key in ("gpus", "seed"):
                    values[key] = int(raw)
                elif key in ("name", "workload"):
                    values[key] = raw.strip()
                else:
                    values[key] = float(raw)
            except ValueError:
                raise ValueError(f"simulated sensor: bad value for {key}: {raw!r}") from None
        return cls(**values)  # type: ignore[arg-type]
