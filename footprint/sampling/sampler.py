"""The sampler: a daemon thread that reads a sensor into per-device timelines.

It polls every ``period_s`` (jittered, so polls do not alias with a counter's period),
fast while a ticking counter's timing is acquired and, once a period is learned, around
one predicted tick each ``PIN_EVERY_S``; ``sample_fresh`` waits for a sample after a
given instant (flush, exit). What a value read means, and where it is stamped, is the
timelines' work (``footprint.sampling.timeline``).
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time

from footprint._clock import SYSTEM_CLOCK, Clock
from footprint._forksafe import no_fork
from footprint.sampling.ticks import TickFit
from footprint.sampling.timeline import Sample, Timelines
from footprint.sensors.base import Sensor, SensorError

log = logging.getLogger("footprint")

FIRST_TICK_POLL_S = 0.002  # poll period while a counter's period and phase are acquired
# Fast polls go on until a counter has changed this many times (its period, when the
# sensor does not say it, is learned from them), and at most this long after the start.
ACQUIRE_CHANGES = 12
ACQUIRE_MAX_S = 3.0
# A learned period keeps being pinned: fast polls around one predicted tick this often.
PIN_EVERY_S = 1.0
PIN_LEAD_S = 0.004  # they start this long before the tick and end this long after it
# Waiting for a counter whose period is not known yet (NVML's is not published): the
# learner needs a few changes; exit and flush wait at most this long for them.
UNKNOWN_PERIOD_WAIT_S = 0.6


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
        self._timelines = Timelines(
            self.devices, sensor.counter_update_period_s, period_s, capacity
        )
        self._states = self._timelines.states  # read by the polling cadence
        self._started_s: float | None = None
        self._lag_s = sensor.counter_lag_s
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

    @property
    def dropped_samples(self) -> int:
        """Samples dropped because a timeline was full."""
        return self._timelines.dropped_samples

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
                self._timelines.record(index, poll_s, energy_j, read_from_s)

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

    def settle_timing(self) -> None:
        """Stamp what is still kept for a counter whose period is not learned yet (a process
        ending within a few ticks of its start): with the median gap between the changes
        seen as the period when there are two or more, else at the polls."""
        with self._lock:
            self._timelines.settle()

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
            return self._timelines.drain()

    def latest_time_s(self) -> float:
        """Time of the oldest 'latest sample' among devices (-inf when none sampled)."""
        with self._lock:
            latest = [state.last_sample_s for state in self._states]
        if not latest or any(t is None for t in latest):
            return float("-inf") if latest else self.clock.monotonic_s()
        return min(t for t in latest if t is not None)
