"""One interval's energy: the part its spans share, the idle rest, and the bound.

An interval is the counter delta between two samples. Its busy part is what remains
after the idle parts get the device's idle power (``IdlePowerEstimator``); its bound sums
what whole-unit readings, the idle estimate's spread, sample times off by the sampler's
uncertainty, busy powers that differ inside it and a part-time counter can hide.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from footprint.attribution.idle import IdleEstimate

# What the counter's whole-unit readings can hide, per sample (NVML and the simulator
# count whole millijoules).
QUANTUM_J = 0.001
# Busy time shorter than this tells no power (J over it can overflow): below any clock
# footprint stamps with.
MIN_POWER_BUSY_S = 1e-9
# An interval busy for all but this share of it (float rounding of its events' times)
# is busy throughout: all its energy is busy energy, whatever the idle power.
BUSY_THROUGHOUT_SLACK = 1e-9


@dataclass(frozen=True)
class EnergyPiece:
    """Energy of one interval (or part of it): ``start_s``..``end_s`` in monotonic s."""

    start_s: float
    end_s: float
    energy_j: float


@dataclass
class Interval:
    """A sampling interval and, once scanned, the busy time and span edges in it."""

    start_s: float
    end_s: float
    energy_j: float
    busy_s: float = 0.0
    edges: int = 0  # span starts and ends inside it
    busy_changes: int = 0  # of those, the ones between two busy stretches (set changes)

    @property
    def power_w(self) -> float:
        return self.energy_j / (self.end_s - self.start_s)

    @property
    def busy_fraction(self) -> float:
        return self.busy_s / (self.end_s - self.start_s)

    @property
    def busy_throughout(self) -> bool:
        """Busy all of it, to float rounding (``BUSY_THROUGHOUT_SLACK``)."""
        return self.busy_s >= (self.end_s - self.start_s) * (1.0 - BUSY_THROUGHOUT_SLACK)


class BusyEnergy:
    """Splits a device's intervals into busy energy and its bound, interval after interval.

    ``oddities`` is the resolver's count of odd input (shared). ``max_power_w``: the most
    the device draws (bounds extrapolated stretches); ``counter_window_s`` of each
    ``counter_period_s``: how much of each period the counter observes (None: all of it).
    """

    def __init__(
        self,
        oddities: dict[str, int],
        max_power_w: float | None,
        counter_period_s: float | None,
        counter_window_s: float | None,
    ) -> None:
        self.oddities = oddities
        self.max_power_w = max_power_w
        self.counter_period_s = counter_period_s
        self.counter_window_s = counter_window_s
        self.timing_uncertainty_s = 0.0  # how far a sample's time may be off (sampler's)
        self.extrapolated_until_s = -math.inf  # intervals up to here were extrapolated
        self.prev: Interval | None = None  # the interval handed out last
        self.last_busy_w: float | None = None  # busy power of the last busy interval

    def split(
        self,
        interval: Interval,
        estimate: IdleEstimate | None,
        neighbour: Interval | None,
    ) -> tuple[float, float]:
        """(busy J, bound J) for the interval: the energy its spans share, and its error."""
        delta_j = interval.energy_j
        duration_s = interval.end_s - interval.start_s
        busy_s = interval.busy_s
        idle_s = duration_s - busy_s
        if delta_j < 0:
            self.oddities["negative_deltas"] += 1
            return 0.0, 0.0  # a counter going backwards: all to idle, nothing invented
        if busy_s <= 0.0:
            return 0.0, 0.0
        if busy_s < MIN_POWER_BUSY_S:
            # Too short to tell a power from: its time share, the whole interval its bound.
            self.oddities["instant_busy_intervals"] += 1
            return delta_j * busy_s / duration_s, delta_j
        if interval.end_s <= self.extrapolated_until_s:  # not measured
            busy_j = delta_j * busy_s / duration_s
            # Anything from no power to the device's maximum over the busy time.
            ceiling_j = (self.max_power_w or 0.0) * busy_s
            return busy_j, max(busy_j, ceiling_j - busy_j)
        quantum_j = 2 * QUANTUM_J
        if interval.busy_throughout:
            busy_w = delta_j / busy_s
            return delta_j, (
                quantum_j
                + self._timing_j(interval, estimate, busy_w)
                + self._mix_j(interval, busy_w)
                + self._unobserved_j(interval, estimate, busy_w)
            )
        time_split_j = delta_j * busy_s / duration_s
        if estimate is None:
            prev = self.prev
            full = [x for x in (prev, neighbour) if x is not None and x.busy_throughout]
            if full:
                busy_w = full[0].power_w
                busy_j = min(delta_j, max(busy_w * busy_s, time_split_j))
                return busy_j, (
                    quantum_j
                    + (delta_j - time_split_j)
                    + self._unobserved_j(interval, None, busy_w)
                )
            self.oddities["unknown_idle_intervals"] += 1
            return time_split_j, delta_j
        busy_j = delta_j - estimate.power_w * idle_s
        if busy_j < time_split_j:
            # Less than idle power on average: the spans get no more than their time share.
            self.oddities["below_idle_intervals"] += 1
            busy_j = time_split_j
        unobserved_j = self._unobserved_j(interval, estimate, busy_j / busy_s)
        bound_j = (
            quantum_j
            + estimate.spread_w * idle_s
            + self._timing_j(interval, estimate, busy_j / busy_s)
            + self._mix_j(interval, busy_j / busy_s)
        )
        # A counter that saw all of the interval holds all of its energy: the busy part
        # cannot be off by more than the delta. One that saw part of it can.
        return busy_j, min(bound_j, delta_j) + unobserved_j

    def _mix_j(self, interval: Interval, busy_w: float) -> float:
        """What one busy power for the whole interval may misplace between its spans.

        Where the set of running spans changes inside an interval, the stretches may
        draw different powers; the change in busy power from the last busy interval
        bounds how different (the power seen around the change).
        """
        if not interval.busy_changes or self.last_busy_w is None:
            return 0.0
        return abs(busy_w - self.last_busy_w) * interval.busy_s

    def _unobserved_j(
        self, interval: Interval, estimate: IdleEstimate | None, busy_w: float
    ) -> float:
        """What a counter that observes only part of each period cannot see.

        It reports the energy of its window scaled to the period: busy time outside the
        window is missed, busy time inside it counted period/window times. For busy time
        ``b`` in an interval ``D`` of which ``W`` is observed, the busy seconds reported
        are anywhere in [b − D·max(0, (b − (D − W))/W), D·min(1, b/W)]; the error is the
        larger distance to ``b``, times the step from idle to busy power.
        """
        window_s, period_s = self.counter_window_s, self.counter_period_s
        if not window_s or not period_s or window_s >= period_s:
            return 0.0
        duration_s = interval.end_s - interval.start_s
        busy_s = interval.busy_s
        if busy_s <= 0.0 or (busy_s >= duration_s and not interval.busy_changes):
            return 0.0
        seen_s = duration_s * window_s / period_s
        over_s = duration_s * min(1.0, busy_s / seen_s) - busy_s
        under_s = busy_s - duration_s * max(0.0, (busy_s - (duration_s - seen_s)) / seen_s)
        idle_w = estimate.power_w if estimate is not None else 0.0
        top_w = max(self.max_power_w or 0.0, busy_w, self.last_busy_w or 0.0)
        return max(over_s, under_s, 0.0) * max(top_w - idle_w, 0.0)

    def _timing_j(self, interval: Interval, estimate: IdleEstimate | None, busy_w: float) -> float:
        """Energy a sample time off by the sampler's uncertainty can move across an edge.

        The busy-over-idle step moves with the edge, and the idle time subtracted from the
        interval is off by as much: stamps off by different amounts at a call's start and
        end (a period still being learned) do not cancel.
        """
        if not interval.edges and interval.busy_s >= interval.end_s - interval.start_s:
            return 0.0
        idle_w = estimate.power_w if estimate is not None else 0.0
        return 2 * self.timing_uncertainty_s * max(busy_w, idle_w, 0.0)

    def handed_out(self, interval: Interval, busy_j: float) -> None:
        """``interval`` was handed out with ``busy_j`` to its spans: the next one's bound
        compares its busy power with this one's."""
        busy_s = interval.busy_s
        self.prev = interval
        if busy_s >= MIN_POWER_BUSY_S and busy_j > 0:
            self.last_busy_w = busy_j / busy_s
