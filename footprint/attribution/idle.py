"""A device's idle power, learned online from the intervals the resolver has handed out.

The resolver gives the idle parts of an interval this power and the busy parts the rest;
how far the estimate may be off is part of every span's bound.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

Point = tuple[float, float, float]  # (busy fraction, average W, duration s) of an interval


@dataclass(frozen=True)
class IdleEstimate:
    """The idle power used for an interval, in W, and how far off it may be, in W."""

    power_w: float
    spread_w: float
    method: str  # "idle-intervals" | "regression"


class IdlePowerEstimator:
    """A device's idle power, learned from the intervals the resolver has seen.

    Intervals with no span at all are direct observations: their median (robust to
    noise) is the estimate, their largest deviation from it the spread. Where traffic
    leaves no interval idle (calls shorter than the counter period with shorter gaps),
    the average power of an interval is ``idle + (busy − idle) × busy fraction``, and a
    least-squares line through recent intervals gives idle power as its intercept.

    A part-time counter (``part_time``) reports an interval at idle power whenever its
    window saw no call, however busy the rest was: that line is then as noisy as the
    window is short (its intercept was 40 W for a 60 W GPU in the bench), while the lowest
    tenth of the partly idle intervals' powers sits on idle power, all alike. That floor
    is used where it exists and agrees with the line better than the line's own spread.
    """

    def __init__(
        self,
        window: int = 256,
        idle_window: int = 64,
        min_idle: int = 3,
        part_time: bool = False,
    ) -> None:
        self.min_idle = min_idle
        self.part_time = part_time
        self._idle_w: deque[float] = deque(maxlen=idle_window)
        self._points: deque[Point] = deque(maxlen=window)
        self._cached: IdleEstimate | None = None
        self._dirty = True

    def observe(self, busy_fraction: float, power_w: float, duration_s: float) -> None:
        """One resolved interval: its busy fraction (0..1), average power and length."""
        if not (math.isfinite(power_w) and duration_s > 0):
            return
        if busy_fraction <= 0.0:
            self._idle_w.append(power_w)
        self._points.append((busy_fraction, power_w, duration_s))
        self._dirty = True

    def estimate(
        self, extra: list[tuple[float, float, float]] | None = None
    ) -> IdleEstimate | None:
        """The current estimate (``extra``: not-yet-resolved intervals to fit with)."""
        if len(self._idle_w) >= self.min_idle:
            if self._dirty:
                self._cached = _median(sorted(self._idle_w), "idle-intervals")
                self._dirty = False
            return self._cached
        if extra:
            idle_w = list(self._idle_w) + [p for f, p, _ in extra if f <= 0.0]
            if len(idle_w) >= self.min_idle:  # idle intervals to come tell it directly
                return _median(sorted(idle_w), "idle-intervals")
            return self._from_busy_intervals(list(self._points) + list(extra))
        if self._dirty:
            self._cached = self._from_busy_intervals(self._points)
            self._dirty = False
        return self._cached

    def _from_busy_intervals(self, points: Iterable[Point]) -> IdleEstimate | None:
        pts = list(points)
        fitted = _fit_intercept(pts)
        if not self.part_time or len(pts) < 8:
            return fitted
        # Only intervals with idle time in them can have shown idle power (in traffic
        # that keeps the GPU busy, the lowest quarter of all intervals is busy power).
        partly_idle = sorted(p for f, p, _ in pts if f < 1.0)
        if len(partly_idle) < 8:
            return fitted
        lowest = partly_idle[: max(2, len(partly_idle) // 10)]
        floor = _median(lowest, "lowest")
        if lowest[-1] - lowest[0] > max(2.0, 0.02 * floor.power_w):
            return fitted  # no floor that many windows read alike: traffic too dense
        if fitted is None:
            return floor
        consistent = floor.power_w <= fitted.power_w + fitted.spread_w
        return floor if consistent and floor.spread_w < fitted.spread_w else fitted


def _median(ordered: list[float], method: str) -> IdleEstimate:
    """The median of sorted powers, its spread the largest deviation from it."""
    median = ordered[len(ordered) // 2]
    return IdleEstimate(median, max(median - ordered[0], ordered[-1] - median), method)


def _fit_intercept(points: Iterable[Point]) -> IdleEstimate | None:
    """Weighted least squares of power on busy fraction; None when ill-conditioned.

    The spread is the largest residual plus twice the intercept's standard error, so a
    fit from few or alike intervals says how little it knows.
    """
    pts = list(points)
    n = len(pts)
    if n < 3:
        return None
    sw = sum(w for _, _, w in pts)
    mean_f = sum(f * w for f, _, w in pts) / sw
    mean_p = sum(p * w for _, p, w in pts) / sw
    var_f = sum(w * (f - mean_f) ** 2 for f, _, w in pts) / sw
    if var_f < 1e-4 or mean_f > 0.95:
        return None  # busy fractions too alike (or all busy) to tell idle from busy
    slope = sum(w * (f - mean_f) * (p - mean_p) for f, p, w in pts) / sw / var_f
    intercept = mean_p - slope * mean_f
    residuals = [p - (intercept + slope * f) for f, p, _ in pts]
    sigma_w = math.sqrt(sum(r * r for r in residuals) / max(n - 2, 1))
    standard_error_w = sigma_w * math.sqrt(1 / n + mean_f**2 / (n * var_f))
    floor_w = min(p for _, p, _ in pts)
    intercept = min(max(intercept, 0.0), floor_w)
    spread = max(abs(r) for r in residuals) + 2 * standard_error_w
    return IdleEstimate(intercept, spread, "regression")
