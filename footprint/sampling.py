"""Background sampling of cumulative energy into bounded per-device timelines.

A timeline sample ``(t_s, energy_j)`` means "``energy_j`` had been spent by monotonic
time ``t_s``". Hardware counters only change every few tens of milliseconds, so the time
a changed value is first seen is later than the instant it describes; for counters whose
update period is known, ``TickEstimator`` locks onto the counter's phase and stamps each
value with its tick instead of the poll time. Unchanged readings carry no information
and are not stored.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections import deque
from dataclasses import dataclass

from footprint._clock import SYSTEM_CLOCK, Clock
from footprint._forksafe import no_fork
from footprint.sensors.base import ENERGY_COUNTER, ENERGY_SIMULATED, Sensor, SensorError

log = logging.getLogger("footprint")

Sample = tuple[float, float]  # (monotonic time in s, cumulative energy in J)

FIRST_TICK_POLL_S = 0.002  # poll period while a counter's period and phase are acquired
# Fast polls go on until a counter has changed this many times (its period, when the
# sensor does not say it, is learned from them), and at most this long after the start.
ACQUIRE_CHANGES = 12
ACQUIRE_MAX_S = 3.0
# A learned period keeps being pinned: fast polls around one predicted tick this often.
PIN_EVERY_S = 1.0
PIN_LEAD_S = 0.004  # they start this long before the tick and end this long after it
NARROW_WINDOW_S = 0.004  # a change window this narrow pins its tick
# Waiting for a counter whose period is not known yet (NVML's is not published): the
# learner needs a few changes; exit and flush wait at most this long for them.
UNKNOWN_PERIOD_WAIT_S = 0.6


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
        narrow = [m for m, w in self._warmup if _is_narrow(w, rough_s)]
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


def _is_narrow(width_s: float, period_s: float) -> bool:
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
        if _is_narrow(hi_s - lo_s, self.period_s):
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


@dataclass
class _DeviceState:
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


class Sampler:
    """Reads a sensor every ``period_s`` on a daemon thread into bounded timelines.

    ``drain()`` hands the new samples to the resolver. When a timeline is full the oldest
    samples are dropped and counted in ``dropped_samples``; failed reads are counted in
    ``failed_reads`` and never raised.
    """

    def __init__(
        self,
        sensor: Sensor,
        period_s: float = 0.05,
        clock: Clock = SYSTEM_CLOCK,
        capacity: int = 72_000,
    ) -> None:
        self.sensor = sensor
        self.period_s = period_s
        self.clock = clock
        self.capacity = capacity
        self.devices = sensor.devices
        self._timelines: list[deque[Sample]] = [deque() for _ in self.devices]
        update_period_s = sensor.counter_update_period_s
        self._states = []
        for device in self.devices:
            state = _DeviceState()
            if device.energy_method in (ENERGY_COUNTER, ENERGY_SIMULATED):
                if update_period_s:
                    state.estimator = TickEstimator(update_period_s)
                else:
                    state.learner = PeriodLearner(period_s)
                    state.unplaced = []
            self._states.append(state)
        self._started_s: float | None = None
        self._lag_s = sensor.counter_lag_s
        self.dropped_samples = 0
        self.failed_reads = 0
        self.polls = 0
        self.read_latency_s_total = 0.0
        self._lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._stop = threading.Event()
        self._poke = threading.Event()  # wakes the thread: stop, or a fresh sample wanted
        self._fresh = threading.Condition()  # guards _fresh_target_s; notified per poll
        self._fresh_target_s: float | None = None
        self._thread: threading.Thread | None = None
        self._jitter = random.Random(0x5EED)

    # -- lifecycle -----------------------------------------------------------------
    def start(self) -> None:
        """Take a first sample now, then keep sampling on a daemon thread."""
        self._started_s = self.clock.monotonic_s()
        self.sample_once()
        self._thread = threading.Thread(target=self._run, name="footprint-sampler", daemon=True)
        self._thread.start()

    def stop(self, final_sample: bool = True, settle_after_s: float | None = None) -> None:
        """Stop the thread and (``final_sample``) take a sample that describes the present:
        it waits for the counter's next tick, which nothing needs when no span is open.

        ``settle_after_s`` (the end of the last span): wait for the ticks up to two counter
        periods after it (at most that long from now), so the last spans' intervals have
        idle neighbours to learn idle power from, even in a process that just started.
        """
        self._stop.set()
        self._poke.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if final_sample:
            target_s = None
            if settle_after_s is not None:
                tick_s = self._max_tick_s()
                now_s = self.clock.monotonic_s()
                target_s = max(now_s, min(settle_after_s + 2 * tick_s, now_s + 2 * tick_s))
            self.sample_fresh(target_s=target_s)
        self.settle_timing()

    def _run(self) -> None:
        while not self._stop.is_set():
            fresh_wanted = self._fresh_target_s is not None
            wait_s = self.next_wait_s()
            self._poke.wait(min(wait_s, 0.02) if fresh_wanted else wait_s)
            self._poke.clear()
            if self._stop.is_set():
                break
            self.sample_once()
            if self._fresh_target_s is not None:
                with self._fresh:
                    target_s = self._fresh_target_s
                    if target_s is not None and self.latest_time_s() >= target_s:
                        self._fresh_target_s = None
                    self._fresh.notify_all()
        with self._fresh:  # nobody waits for a thread that has stopped
            self._fresh_target_s = None
            self._fresh.notify_all()

    def next_wait_s(self) -> float:
        """How long to wait before the next poll.

        While a ticking counter's timing is being acquired (its first changes, and its
        period when the sensor does not give it), polls are fast (2 ms), so the instant
        each value describes is pinned to a few ms from the first call of a process on:
        the first calls are measured like the others. Afterwards a little jitter keeps
        polls from aliasing with the counter's own period.
        """
        if self._acquiring():
            return min(self.period_s, FIRST_TICK_POLL_S)
        regular_s = self.period_s * self._jitter.uniform(0.9, 1.1)
        return min(regular_s, self._pin_wait_s(regular_s))

    def _pin_wait_s(self, regular_s: float) -> float:
        """Keep learned periods pinned: around one predicted tick every ``PIN_EVERY_S``,
        poll every 2 ms from ``PIN_LEAD_S`` before it until the change is seen (or
        ``PIN_LEAD_S`` plus the stamps' uncertainty after it)."""
        now_s = self.clock.monotonic_s() - self._lag_s  # on the stamps' time line
        wait_s = math.inf
        for state in self._states:
            fit = state.estimator
            if not isinstance(fit, TickFit):
                continue
            if state.pin_until_s is not None:
                if now_s < state.pin_until_s:
                    if now_s >= state.pin_from_s:
                        return FIRST_TICK_POLL_S
                    wait_s = min(wait_s, state.pin_from_s - now_s)
                    continue
                state.pin_until_s = None  # missed it: try another tick
            if now_s - fit.last_narrow_s < PIN_EVERY_S:
                continue
            tick_s = fit.next_tick_s(now_s + PIN_LEAD_S)
            if tick_s is None or tick_s - PIN_LEAD_S - now_s > regular_s:
                continue
            state.pin_from_s = tick_s - PIN_LEAD_S
            state.pin_until_s = tick_s + PIN_LEAD_S + fit.uncertainty_s
            wait_s = min(wait_s, max(0.0, state.pin_from_s - now_s))
        return wait_s

    def wait_acquired(self, timeout_s: float) -> bool:
        """Wait (bounded) until every ticking counter has been seen to change, so its
        phase is pinned by a narrow window; True if so. The runtime opens its slower
        parts after this: their imports would otherwise stall the first polls."""
        deadline_s = time.monotonic() + timeout_s
        while any(
            s.changes == 0 and (s.estimator is not None or s.unplaced is not None)
            for s in self._states
        ):
            if time.monotonic() >= deadline_s or self._stop.is_set():
                return False
            time.sleep(FIRST_TICK_POLL_S)
        return True

    def _acquiring(self) -> bool:
        started_s = self._started_s
        if started_s is not None and self.clock.monotonic_s() - started_s > ACQUIRE_MAX_S:
            return any(s.estimator is not None and s.changes == 0 for s in self._states)
        for state in self._states:
            if state.estimator is not None and state.changes == 0:
                return True
            learner = state.learner
            if state.unplaced is not None and learner is not None and not learner.gave_up:
                return True
            fit = state.estimator
            if isinstance(fit, TickFit) and fit.narrow_windows < ACQUIRE_CHANGES:
                return True
        return False

    # -- sampling ------------------------------------------------------------------
    def sample_once(self) -> None:
        """Read every device once and append the changed values.

        One read at a time: ``flush()`` on a user's thread and the sampler thread would
        otherwise interleave reads, and a sensor that tracks wrap-arounds (RAPL) would
        take the older of two values for a wrap.
        """
        with self._read_lock:
            self._sample_once()

    def _sample_once(self) -> None:
        before_s = self.clock.monotonic_s()
        try:
            with no_fork("sensor"):  # NVML's locks must not be copied mid-read into a child
                energies_j = self.sensor.read_energy_j()
        except SensorError as exc:
            self.failed_reads += 1
            if self.failed_reads == 1:
                log.warning("footprint: energy read failed (%s); will keep trying", exc)
            return
        except Exception as exc:  # a sensor bug must not kill the sampler
            self.failed_reads += 1
            if self.failed_reads == 1:
                log.warning("footprint: unexpected sensor error %r", exc)
            return
        poll_s = self.clock.monotonic_s()
        self.polls += 1
        self.read_latency_s_total += poll_s - before_s
        # The read happened somewhere in [before_s, poll_s]: a change seen now happened
        # after the previous read began and before this one ended (a thread stalled
        # between a read and its clock call must not make the window miss the tick).
        poll_s -= self._lag_s  # the instant the value read now describes at the latest
        read_from_s = before_s - self._lag_s
        with self._lock:
            for index, energy_j in enumerate(energies_j):
                if energy_j is None:
                    continue
                self._record(index, poll_s, energy_j, read_from_s)

    def sample_fresh(self, max_wait_s: float | None = None, target_s: float | None = None) -> None:
        """Sample until every counter has a sample at or after ``target_s`` (default:
        now), waiting at most ``max_wait_s`` (default: until then plus three periods).

        Used at flush and exit so spans that just ended get a sample after their end.
        While the sampler thread runs, it takes the samples (it polls fast until then)
        and this waits for them: one reader per sensor.
        """
        now_s = self.clock.monotonic_s()
        target_s = now_s if target_s is None else target_s
        wait_s = max_wait_s
        if wait_s is None:
            wait_s = max(0.0, target_s - now_s) + 3 * self._max_tick_s() + self._lag_s
        thread = self._thread
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            with self._fresh:
                if self._fresh_target_s is None or self._fresh_target_s < target_s:
                    self._fresh_target_s = target_s
                self._poke.set()
                self._fresh.wait_for(
                    lambda: self.latest_time_s() >= target_s or self._fresh_target_s is None,
                    timeout=wait_s,
                )
                if self._fresh_target_s == target_s:  # timed out: stop polling fast
                    self._fresh_target_s = None
            return
        deadline_s = target_s + wait_s
        while True:
            self.sample_once()
            if self.latest_time_s() >= target_s or self.clock.monotonic_s() >= deadline_s:
                return
            self.clock.sleep(min(self.next_wait_s(), 0.02))

    def _max_tick_s(self) -> float:
        """The longest a counter takes to change (a third of the wait while a counter's
        period is still being learned)."""
        periods_s = [self.sensor.counter_update_period_s or 0.0, self.period_s]
        for state in self._states:
            if state.estimator is not None:
                periods_s.append(state.estimator.period_s)
            elif state.learner is not None and not state.learner.gave_up:
                periods_s.append(UNKNOWN_PERIOD_WAIT_S / 3)
        return max(periods_s)

    def _record(
        self, index: int, poll_s: float, energy_j: float, read_from_s: float | None = None
    ) -> None:
        """A value read by ``poll_s`` (in a read begun at ``read_from_s``, default the same)."""
        state = self._states[index]
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
        self, index: int, state: _DeviceState, poll_s: float, energy_j: float, read_from_s: float
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

    def _place_unplaced(self, index: int, state: _DeviceState, period_s: float | None) -> None:
        """Stamp the values kept while learning: at their ticks once ``period_s`` is known,
        else at their polls (the learner gave up)."""
        unplaced = state.unplaced or []
        state.unplaced = None
        poll_s = state.last_poll_s
        if period_s is not None:
            fit = state.estimator = TickFit(period_s)
            state.learner = None  # the fit refines the period from here on
            for lo_s, hi_s, _ in unplaced:  # the line first, then the stamps on it
                if _is_narrow(hi_s - lo_s, period_s):
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

    def settle_timing(self) -> None:
        """Stamp what is still kept for a counter whose period is not learned yet (a process
        ending within a few ticks of its start): with the median gap between the changes
        seen as the period when there are two or more, else at the polls."""
        with self._lock:
            for index, state in enumerate(self._states):
                if not state.unplaced:
                    continue
                mids = [(lo_s + hi_s) / 2 for lo_s, hi_s, _ in state.unplaced]
                gaps = sorted(b - a for a, b in zip(mids, mids[1:]))
                period_s = gaps[len(gaps) // 2] if gaps else None
                self._place_unplaced(index, state, period_s)

    def _place_first_value(
        self, index: int, state: _DeviceState, poll_s: float, tick_s: float
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

    def changes_seen(self) -> list[int]:
        """Per device, the counter changes sampled so far (footprint's books of a device
        start at its first sample)."""
        with self._lock:
            return [state.changes for state in self._states]

    def latest_sample_times_s(self) -> list[float | None]:
        """Per device, the time of its latest sample (None: none yet)."""
        with self._lock:
            return [state.last_sample_s for state in self._states]

    def timing_uncertainty_s(self) -> list[float]:
        """How far each device's latest sample time may be from the instant it describes.

        The tick estimator's phase half-width where a counter ticks; half a poll period
        (plus the read latency) where values are stamped at the poll.
        """
        polls = max(self.polls, 1)
        latency_s = self.read_latency_s_total / polls
        return [
            s.estimator.uncertainty_s if s.estimator else self.period_s / 2 + latency_s
            for s in self._states
        ]

    def counter_periods_s(self) -> list[float | None]:
        """The counter update period used per device (given or learned; None: not yet)."""
        return [s.estimator.period_s if s.estimator else None for s in self._states]

    def drain(self) -> list[list[Sample]]:
        """Samples appended since the last drain, per device."""
        with self._lock:
            out = [list(timeline) for timeline in self._timelines]
            for timeline in self._timelines:
                timeline.clear()
        return out

    def latest_time_s(self) -> float:
        """Time of the oldest 'latest sample' among devices (-inf when none sampled)."""
        with self._lock:
            latest = [state.last_sample_s for state in self._states]
        if not latest or any(t is None for t in latest):
            return float("-inf") if latest else self.clock.monotonic_s()
        return min(t for t in latest if t is not None)
