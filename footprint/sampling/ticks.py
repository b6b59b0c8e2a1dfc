"""When a periodic energy counter ticked, and how far off that estimate may be.

Hardware counters only change every few tens of milliseconds, so a changed value is
seen after the instant it describes. A change seen between polls at ``lo_s`` and ``hi_s``
bounds a tick to ``(lo_s, hi_s]``: ``TickEstimator`` locks onto the phase of a counter
whose period is known, ``PeriodLearner`` learns the period of one whose period is not
(NVML publishes none) and ``TickFit`` stamps its ticks from there. Each says how far its
stamps may be from the real ticks (``uncertainty_s``).
"""

from __future__ import annotations

import math
from collections import deque

NARROW_WINDOW_S = 0.004  # a change window this narrow pins its tick


class TickEstimator:
    """Estimate when a periodic counter ticked from the polls around each change.

    Each change seen between polls at ``lo_s`` and ``hi_s`` bounds a tick to
    ``(lo_s, hi_s]``. Assuming ticks at ``phase + n·period``, intersecting these bounds
    narrows the phase; an empty intersection (drift, jitter) restarts the lock.
    """

    def __init__(self, period_s: float) -> None:
        self.period_s = period_s
        self._low_s: float | None = None  # phase bounds, absolute times near a reference
        self._high_s: float | None = None
        # The largest disagreement seen between a change's window and the locked phase
        # (a counter whose ticks jitter, or a period slightly off): measured, then used
        # as part of the stamps' uncertainty. It decays slowly once ticks agree again.
        self.jitter_s = 0.0

    @property
    def uncertainty_s(self) -> float:
        """How far a stamped tick may be from the real one: the phase interval's
        half-width plus the measured jitter (period/2 before any change)."""
        if self._low_s is None or self._high_s is None:
            return self.period_s / 2
        return (self._high_s - self._low_s) / 2 + self.jitter_s

    def tick_time_s(self, lo_s: float, hi_s: float) -> float:
        """Best estimate in ``(lo_s, hi_s]`` of the tick that happened in that window.

        A window longer than a period may hold several ticks; the value read at ``hi_s``
        is that of the last one, so the estimate is the last tick of the current phase
        at or before ``hi_s`` (such a window says nothing new about the phase).
        """
        period = self.period_s
        if hi_s - lo_s >= period:
            if self._low_s is None or self._high_s is None:
                return max(lo_s, hi_s - period / 2)
            phase_s = (self._low_s + self._high_s) / 2
            last_tick_s = phase_s + math.floor((hi_s - phase_s) / period) * period
            return min(max(last_tick_s, lo_s), hi_s)
        if self._low_s is None or self._high_s is None:
            self._low_s, self._high_s = lo_s, hi_s
        else:
            shift = round(((lo_s + hi_s) / 2 - (self._low_s + self._high_s) / 2) / period)
            low = max(self._low_s, lo_s - shift * period)
            high = min(self._high_s, hi_s - shift * period)
            self.jitter_s *= 0.99
            if low > high:
                self.jitter_s = max(self.jitter_s, low - high)
                low, high = lo_s - shift * period, hi_s - shift * period
            self._low_s, self._high_s = low, high
        shift = round(((lo_s + hi_s) / 2 - (self._low_s + self._high_s) / 2) / period)
        # Re-anchor the phase bounds on this tick, so an error in the period does not
        # accumulate with the distance to the first change.
        self._low_s += shift * period
        self._high_s += shift * period
        estimate = (self._low_s + self._high_s) / 2
        return min(max(estimate, lo_s), hi_s)


class PeriodLearner:
    """Learn how often a counter updates when the sensor does not say (NVML does not).

    From the midpoints of the poll windows in which the value changed: a rough period
    (median gap of the first changes), then a long-baseline figure, first to latest
    midpoint over the number of ticks in between, which keeps improving (its error is
    about one poll window over the tick count). Narrow windows (the sampler polls every
    2 ms at start) give the period from a few changes; windows as wide as the polls need
    ``min_changes``. Only useful when polls are faster than the counter; otherwise poll
    times are good enough and the learner gives up.
    """

    def __init__(
        self, poll_period_s: float, min_changes: int = 40, min_narrow_changes: int = 4
    ) -> None:
        self.poll_period_s = poll_period_s
        self.min_changes = min_changes
        self.min_narrow_changes = min_narrow_changes
        self._warmup: list[tuple[float, float]] = []  # (midpoint, width) of each change
        self.period_s: float | None = None
        self.gave_up = False

    def observe(self, lo_s: float, hi_s: float) -> float | None:
        """Feed a window in which the counter changed; returns the period once known
        (a ``TickFit`` refines it from there)."""
        if self.gave_up or self.period_s is not None:
            return self.period_s
        self._warmup.append(((lo_s + hi_s) / 2, hi_s - lo_s))
        if len(self._warmup) < self.min_narrow_changes:
            return None
        mids = [m for m, _ in self._warmup]
        gaps = sorted(b - a for a, b in zip(mids, mids[1:]))
        rough_s = gaps[len(gaps) // 2]
        widths = sorted(w for _, w in self._warmup)
        if rough_s < 1.5 * min(self.poll_period_s, widths[len(widths) // 2]):
            self.gave_up = True  # the counter changes about every poll: nothing to learn
            return None
        # Windows stretched by a stalled poll (a busy GIL at start-up) say little: the
        # period comes from the narrow ones, ticks between them counted.
        narrow = [m for m, w in self._warmup if is_narrow(w, rough_s)]
        if len(narrow) >= 3:
            chosen = narrow
        elif len(self._warmup) >= self.min_changes:
            chosen = mids
        else:
            return None
        ticks = sum(max(1, round((b - a) / rough_s)) for a, b in zip(chosen, chosen[1:]))
        self._warmup = []
        self.period_s = (chosen[-1] - chosen[0]) / ticks
        return self.period_s


def is_narrow(width_s: float, period_s: float) -> bool:
    """Whether a change window is narrow enough to pin the tick in it."""
    return width_s <= min(NARROW_WINDOW_S, period_s / 8)


class TickFit:
    """Tick instants of a counter whose period is learned (NVML publishes none).

    A least-squares line through the narrow change windows (a few ms: the sampler polls
    fast at start and around a predicted tick every ``PIN_EVERY_S``) gives the period and
    phase, refined as long as the process runs; every change, whatever its window, is
    stamped at the last tick the line puts at or before the poll that saw it. A window
    the line puts no tick in (a counter that jitters or drifts) is measured: that miss is
    part of the stamps' uncertainty.
    """

    def __init__(self, period_s: float, max_points: int = 256) -> None:
        self.period_s = period_s
        self._points: deque[tuple[int, float, float]] = deque(maxlen=max_points)
        self._anchor_s: float | None = None  # the instant of tick 0 on the current line
        self._residual_s = 0.0
        self.jitter_s = 0.0
        self.last_narrow_s = -math.inf

    @property
    def narrow_windows(self) -> int:
        return len(self._points)

    @property
    def uncertainty_s(self) -> float:
        """How far a stamp may be from its tick: the line's largest residual, the narrow
        windows' half-width and the largest miss measured recently."""
        if not self._points:
            return self.period_s / 2
        half_width_s = max(w for _, _, w in self._points)
        return self._residual_s + half_width_s + self.jitter_s

    def observe_narrow(self, lo_s: float, hi_s: float) -> None:
        """A change seen in a window narrow enough to pin its tick: refit the line."""
        mid_s = (lo_s + hi_s) / 2
        if self._anchor_s is None:
            self._anchor_s = mid_s
        index = round((mid_s - self._anchor_s) / self.period_s)
        self._points.append((index, mid_s, (hi_s - lo_s) / 2))
        self.last_narrow_s = hi_s
        self._refit()

    def _refit(self) -> None:
        points = self._points
        ks = [k for k, _, _ in points]
        mean_k = sum(ks) / len(ks)
        mean_t = sum(t for _, t, _ in points) / len(points)
        var_k = sum((k - mean_k) ** 2 for k in ks)
        if var_k > 0:
            self.period_s = sum((k - mean_k) * (t - mean_t) for k, t, _ in points) / var_k
        self._anchor_s = mean_t - mean_k * self.period_s
        self._residual_s = max(abs(t - self._anchor_s - k * self.period_s) for k, t, _ in points)

    def next_tick_s(self, after_s: float) -> float | None:
        """The first tick the line puts after ``after_s`` (None before any narrow window)."""
        if self._anchor_s is None:
            return None
        return self._anchor_s + (math.floor((after_s - self._anchor_s) / self.period_s) + 1) * (
            self.period_s
        )

    def tick_time_s(self, lo_s: float, hi_s: float) -> float:
        """The tick the value read at ``hi_s`` describes (it changed in ``(lo_s, hi_s]``)."""
        if is_narrow(hi_s - lo_s, self.period_s):
            self.observe_narrow(lo_s, hi_s)
        return self.stamp(lo_s, hi_s)

    def stamp(self, lo_s: float, hi_s: float) -> float:
        """``tick_time_s`` without learning from the window."""
        if self._anchor_s is None:
            return max(lo_s, hi_s - self.period_s / 2)
        last_s = self._anchor_s + math.floor((hi_s - self._anchor_s) / self.period_s) * (
            self.period_s
        )
        self.jitter_s *= 0.9  # a miss from an early, rough line fades within seconds
        if last_s <= lo_s and hi_s - lo_s < self.period_s:
            # The line puts no tick in the window: take the window's edge nearest to one
            # (the previous tick, or the next one just after the poll) and measure the miss.
            early_s, late_s = lo_s - last_s, last_s + self.period_s - hi_s
            self.jitter_s = max(self.jitter_s, min(early_s, late_s))
            return hi_s if late_s < early_s else lo_s + (hi_s - lo_s) * 1e-6
        return min(max(last_s, lo_s), hi_s)
