"""Per-device timelines of samples, each counter value stamped at the instant it describes.

A timeline sample ``(t_s, energy_j)`` means "``energy_j`` had been spent by monotonic
time ``t_s``". Unchanged readings carry no information and are not stored; a changed
one is stamped at its tick where the counter ticks (the first value once the first
change pins its tick; every value once a period being learned is known), else at its
poll. Not thread-safe: the ``Sampler`` calls it under its lock.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from footprint.sampling.ticks import PeriodLearner, TickEstimator, TickFit, is_narrow
from footprint.sensors.base import ENERGY_COUNTER, ENERGY_SIMULATED, DeviceInfo

Sample = tuple[float, float]  # (monotonic time in s, cumulative energy in J)


@dataclass
class DeviceState:
    """What the sampler knows of one device's counter: its last reading, how its values
    are stamped (``estimator``, or ``learner`` while its period is learned) and its fast
    polls."""

    last_poll_s: float | None = None
    last_energy_j: float | None = None
    last_sample_s: float | None = None
    estimator: TickEstimator | TickFit | None = None
    learner: PeriodLearner | None = None
    # The first value of a ticking counter describes a tick somewhere in the period
    # before the poll; it waits for the first change, which pins that tick.
    first_poll_s: float | None = None
    first_energy_j: float | None = None
    changes: int = 0
    # While the period is being learned, the changes seen (poll window and value) wait
    # here; once it is known they are stamped at their ticks, the first value included.
    unplaced: list[tuple[float, float, float]] | None = None
    pin_from_s: float = 0.0  # fast polls around a predicted tick, from .. until
    pin_until_s: float | None = None


class Timelines:
    """Bounded per-device timelines fed with the values a sampler reads.

    ``drain()`` hands the new samples over. When a timeline is full the oldest samples
    are dropped and counted in ``dropped_samples``.
    """

    def __init__(
        self,
        devices: list[DeviceInfo],
        update_period_s: float | None,
        poll_period_s: float,
        capacity: int,
    ) -> None:
        """``update_period_s``: the counters' period where the sensor gives it (None: it is
        learned from changes seen by polls every ``poll_period_s``)."""
        self.capacity = capacity
        self._timelines: list[deque[Sample]] = [deque() for _ in devices]
        self.states: list[DeviceState] = []
        for device in devices:
            state = DeviceState()
            if device.energy_method in (ENERGY_COUNTER, ENERGY_SIMULATED):
                if update_period_s:
                    state.estimator = TickEstimator(update_period_s)
                else:
                    state.learner = PeriodLearner(poll_period_s)
                    state.unplaced = []
            self.states.append(state)
        self.dropped_samples = 0

    def record(
        self, index: int, poll_s: float, energy_j: float, read_from_s: float | None = None
    ) -> None:
        """A value read by ``poll_s`` (in a read begun at ``read_from_s``, default the same)."""
        state = self.states[index]
        read_from_s = poll_s if read_from_s is None else read_from_s
        if state.last_energy_j is not None and energy_j == state.last_energy_j:
            state.last_poll_s = read_from_s
            return
        if state.unplaced is not None:
            self._learn(index, state, poll_s, energy_j, read_from_s)
            return
        if state.estimator is None:
            t_s = poll_s
        elif state.last_poll_s is None:
            # First value: its tick is in (poll − period, poll]; placed when it changes.
            state.first_poll_s, state.first_energy_j = poll_s, energy_j
            state.last_poll_s, state.last_energy_j = read_from_s, energy_j
            return
        else:
            t_s = state.estimator.tick_time_s(state.last_poll_s, poll_s)
            state.pin_until_s = None
            if state.first_energy_j is not None:
                self._place_first_value(index, state, poll_s, t_s)
        state.changes += 1
        self._append(index, t_s, energy_j)
        state.last_poll_s = read_from_s
        state.last_energy_j = energy_j
        state.last_sample_s = t_s

    def _learn(
        self, index: int, state: DeviceState, poll_s: float, energy_j: float, read_from_s: float
    ) -> None:
        """A value of a counter whose period is being learned: kept with its poll window
        until the period is known, then every kept value is stamped at its tick (the
        first one one period before the first change, as for a known period)."""
        unplaced = state.unplaced
        assert unplaced is not None and state.learner is not None
        if state.last_poll_s is None:  # the first value: placed with the first change
            state.first_poll_s, state.first_energy_j = poll_s, energy_j
            state.last_poll_s, state.last_energy_j = read_from_s, energy_j
            return
        lo_s = state.last_poll_s
        unplaced.append((lo_s, poll_s, energy_j))
        state.changes += 1
        state.last_poll_s, state.last_energy_j = read_from_s, energy_j
        learned_s = state.learner.observe(lo_s, poll_s)
        if learned_s is None and not state.learner.gave_up:
            if len(unplaced) < 4 * state.learner.min_changes:
                return
            state.learner.gave_up = True  # no period after many changes: stamp at polls
        self._place_unplaced(index, state, learned_s)

    def _place_unplaced(self, index: int, state: DeviceState, period_s: float | None) -> None:
        """Stamp the values kept while learning: at their ticks once ``period_s`` is known,
        else at their polls (the learner gave up)."""
        unplaced = state.unplaced or []
        state.unplaced = None
        poll_s = state.last_poll_s
        if period_s is not None:
            fit = state.estimator = TickFit(period_s)
            state.learner = None  # the fit refines the period from here on
            for lo_s, hi_s, _ in unplaced:  # the line first, then the stamps on it
                if is_narrow(hi_s - lo_s, period_s):
                    fit.observe_narrow(lo_s, hi_s)
            for n, (lo_s, hi_s, value_j) in enumerate(unplaced):
                t_s = fit.stamp(lo_s, hi_s)
                if n == 0:
                    state.last_poll_s = lo_s
                    self._place_first_value(index, state, hi_s, t_s)
                self._append(index, t_s, value_j)
                state.last_sample_s = t_s
        else:
            state.learner = None
            if state.first_energy_j is not None and state.first_poll_s is not None:
                self._append(index, state.first_poll_s, state.first_energy_j)
                state.first_energy_j = None
            for _, hi_s, value_j in unplaced:
                self._append(index, hi_s, value_j)
                state.last_sample_s = hi_s
        state.last_poll_s = poll_s

    def settle(self) -> None:
        """Stamp what is still kept for a counter whose period is not learned yet (a process
        ending within a few ticks of its start): with the median gap between the changes
        seen as the period when there are two or more, else at the polls."""
        for index, state in enumerate(self.states):
            if not state.unplaced:
                continue
            mids = [(lo_s + hi_s) / 2 for lo_s, hi_s, _ in state.unplaced]
            gaps = sorted(b - a for a, b in zip(mids, mids[1:]))
            period_s = gaps[len(gaps) // 2] if gaps else None
            self._place_unplaced(index, state, period_s)

    def _place_first_value(
        self, index: int, state: DeviceState, poll_s: float, tick_s: float
    ) -> None:
        """The first value described the tick one period before the first change seen.

        Every tick changes the value, so none happened between the first poll and the
        last unchanged one; when the window of the change is shorter than a period it
        holds exactly one tick. Otherwise the middle of the first value's range is used.
        """
        period_s = state.estimator.period_s  # type: ignore[union-attr]
        first_poll_s = state.first_poll_s
        assert first_poll_s is not None and state.first_energy_j is not None
        if state.last_poll_s is not None and poll_s - state.last_poll_s <= period_s:
            t_s = min(tick_s - period_s, first_poll_s)
        else:
            t_s = first_poll_s - period_s / 2
        self._append(index, t_s, state.first_energy_j)
        state.first_energy_j = None

    def _append(self, index: int, t_s: float, energy_j: float) -> None:
        timeline = self._timelines[index]
        if timeline and t_s <= timeline[-1][0]:
            t_s = timeline[-1][0] + 1e-9
        if len(timeline) >= self.capacity:
            timeline.popleft()
            self.dropped_samples += 1
        timeline.append((t_s, energy_j))

    def drain(self) -> list[list[Sample]]:
        """Samples appended since the last drain, per device."""
        out = [list(timeline) for timeline in self._timelines]
        for timeline in self._timelines:
            timeline.clear()
        return out
