"""One simulated device: its power model, its hardware-like counter (ticks, whole
millijoules, part-time windows, late loads carried forward) and its exact energy."""

from __future__ import annotations

import bisect
import math
import threading

from footprint.sensors.simulated.loads import LoadModel, check_load, check_step
from footprint.sensors.simulated.spec import SimulatedGpuSpec

_MASK64 = (1 << 64) - 1
# workload=spans: what a GPU keeps and takes (see ``footprint.sensors.simulated``)
MAX_TIME_SKEW_S = 6 * 3600.0
HISTORY_S = 3600.0
MIN_HISTORY_S = 30.0  # the counter and late steps (a daemon hears of calls late) need these
MAX_STEPS = 20_000  # about 2 MB of change points per GPU
PRUNE_EVERY = 1024  # calls' steps between two looks at what can be folded


def _unit_hash(seed: int, device: int, tick: int) -> float:
    """Deterministic uniform number in [0, 1) from three integers (splitmix64)."""
    z = (seed * 0x9E3779B97F4A7C15 + device * 0xBF58476D1CE4E5B9 + tick) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    z ^= z >> 31
    return (z >> 11) / float(1 << 53)


class SimulatedGpu:
    """One simulated device: power model, counter and exact energy integral.

    ``late_steps`` counts the load steps registered for a time at or before the latest
    tick already read; ``late_energy_j`` sums what they changed that tick's value by (J),
    carried into the next tick instead of rewriting the published one. ``begin_call`` and
    ``end_call`` (``workload=spans``) also keep memory bounded and refuse absurd times.
    """

    def __init__(self, index: int, spec: SimulatedGpuSpec) -> None:
        self.index = index
        self.spec = spec
        self.loads = LoadModel(spec.idle_w, spec.busy_w)
        self._period_s = spec.update_period_s
        self._window_s = spec.observed_window_s
        self._offset_s = spec.observed_offset_s
        self._part_time = spec.part_time
        self._noise_j = spec.noise * spec.idle_w * spec.update_period_s
        # Part-time counters: per tick holding a load change, what the extrapolated window
        # adds beyond the exact energy of its period, summed in tick order.
        self._fix_ticks: list[int] = []
        self._fix_sums_j: list[float] = []
        self._fix_base_j = 0.0  # the sum of the corrections folded away
        self._fix_stale_tick: int | None = None
        # The latest tick read and its published value: never rewritten.
        self._read_tick: int | None = None
        self._read_mj = 0
        self.late_steps = 0
        self._late_energy_j = 0.0
        # Late steps not summed yet: the counted energy at ``_late_tick`` before them.
        # Summed at the next read (not per step: a burst of late steps, as a restarted
        # daemon's clients resend, would recompute the energy integral once each).
        self._late_tick: int | None = None
        self._late_before_j = 0.0
        # workload=spans: calls' loads open, and what was refused or forgotten
        self._open = 0
        self._since_prune = 0
        self.refused_times = 0
        self.unmatched_ends = 0
        self.forgotten_steps = 0
        self._lock = threading.Lock()

    # -- workload API --------------------------------------------------------------
    def add_load(self, start_s: float, end_s: float, load: float = 1.0) -> None:
        """Add ``load`` (1.0 = one full-power job) between two monotonic times."""
        check_load(start_s, end_s, load)
        with self._lock:
            self._add_step_locked(start_s, load)
            self._add_step_locked(end_s, -load)

    def add_step(self, t_s: float, delta: float) -> None:
        """Change the load by ``delta`` from ``t_s`` on (an open-ended load's start or end)."""
        check_step(t_s, delta)
        with self._lock:
            self._add_step_locked(t_s, delta)

    def begin_call(self, t_s: float, now_s: float) -> None:
        """A tracked call started at ``t_s``: load 1.0 until ``end_call``. Refused (and
        counted) if ``t_s`` is not finite or more than ``MAX_TIME_SKEW_S`` from ``now_s``."""
        with self._lock:
            if not abs(t_s - now_s) <= MAX_TIME_SKEW_S:  # NaN fails too
                self.refused_times += 1
                return
            self._open += 1
            self._add_step_locked(t_s, 1.0)
            self._prune_locked(now_s)

    def end_call(self, t_s: float, now_s: float) -> None:
        """A call that ``begin_call`` took ended at ``t_s`` (an absurd ``t_s``: now)."""
        with self._lock:
            if self._open <= 0:  # its start was refused
                self.unmatched_ends += 1
                return
            if not abs(t_s - now_s) <= MAX_TIME_SKEW_S:
                self.refused_times += 1
                t_s = now_s
            self._open -= 1
            self._add_step_locked(t_s, -1.0)
            self._prune_locked(now_s)

    @property
    def clamped_steps(self) -> int:
        """Steps for a time before what is kept, moved to its start."""
        return self.loads.clamped_steps

    def _prune_locked(self, now_s: float) -> None:
        """Every ``PRUNE_EVERY`` steps, fold what no reader needs any more (see the
        package's docstring)."""
        self._since_prune += 1
        if self._since_prune < PRUNE_EVERY:
            return
        self._since_prune = 0
        loads = self.loads
        cutoff_s = now_s - HISTORY_S
        if loads.steps > MAX_STEPS:
            cutoff_s = max(cutoff_s, loads.step_time_s(loads.steps - MAX_STEPS // 2))
        cutoff_s = min(cutoff_s, now_s - self.spec.lag_s - MIN_HISTORY_S)
        folded = loads.fold_before(cutoff_s)
        if not folded:
            return
        self.forgotten_steps += folded
        if self._part_time:  # corrections of ticks no step can reach any more
            self._refresh_fixes()
            first_tick = math.ceil(loads.floor_s / self._period_s) - 1  # what a step can stale
            keep = bisect.bisect_left(self._fix_ticks, first_tick)
            if keep:
                self._fix_base_j = self._fix_sums_j[keep - 1]
                del self._fix_ticks[:keep]
                del self._fix_sums_j[:keep]

    @property
    def late_energy_j(self) -> float:
        """What late steps changed the ticks already read by, summed (J)."""
        with self._lock:
            self._sum_late()
            return self._late_energy_j

    def _sum_late(self) -> None:
        """Add what the late steps since the last sum changed their read tick by."""
        if self._late_tick is not None:
            self._late_energy_j += self._counted_j(self._late_tick) - self._late_before_j
            self._late_tick = None

    def _add_step_locked(self, t_s: float, delta: float) -> None:
        read_tick = self._read_tick
        late = read_tick is not None and t_s <= read_tick * self._period_s
        if late and self._late_tick != read_tick:
            self._sum_late()
            self._late_before_j = self._counted_j(read_tick)  # type: ignore[arg-type]
            self._late_tick = read_tick
        self.loads.add_step(t_s, delta)
        if self._part_time:
            t_s = max(t_s, self.loads.floor_s)  # as taken
            tick = math.ceil(t_s / self._period_s) - 1  # one early, for float rounding
            stale = self._fix_stale_tick
            self._fix_stale_tick = tick if stale is None else min(stale, tick)
        if late:
            self.late_steps += 1

    def power_w(self, t_s: float) -> float:
        """Power at ``t_s`` without noise, in W."""
        return self.loads.power_w(t_s)

    # -- energy --------------------------------------------------------------------
    def _noise_offset_j(self, tick: int) -> float:
        if self._noise_j == 0.0:
            return 0.0
        return self._noise_j * (_unit_hash(self.spec.seed, self.index, tick) - 0.5)

    def true_energy_j(self, t0_s: float, t1_s: float) -> float:
        """Exact energy spent between two monotonic times, in J (the ground truth)."""
        return self._energy_since_origin_j(t1_s) - self._energy_since_origin_j(t0_s)

    def _energy_since_origin_j(self, t_s: float) -> float:
        period = self.spec.update_period_s
        base = self.spec.idle_w * t_s + self.loads.dynamic_energy_j(t_s)
        if self._noise_j == 0.0:
            return base
        # Noise energy of tick k is spread evenly over ((k-1)·period, k·period].
        tick = math.ceil(t_s / period)
        fraction = (t_s - (tick - 1) * period) / period
        before = self._noise_offset_j(tick - 1)
        return base + before + (self._noise_offset_j(tick) - before) * fraction

    def counter_mj(self, t_s: float) -> int:
        """What the hardware counter reads at ``t_s``: whole mJ at the last tick.

        A tick's value, once read, stays as read; a tick before it reads no more than it.
        """
        tick = math.floor(t_s / self._period_s)
        with self._lock:
            if tick == self._read_tick:
                return self._read_mj
            value_mj = math.floor(self._counted_j(tick) * 1000.0)
            if self._read_tick is None or tick > self._read_tick:
                self._sum_late()
                if self._read_tick is not None:
                    value_mj = max(value_mj, self._read_mj)  # after a late load's end
                self._read_tick, self._read_mj = tick, value_mj
                return value_mj
            return min(value_mj, self._read_mj)

    def _counted_j(self, tick: int) -> float:
        """What the counter has counted up to ``tick`` (exact energy for a whole-period
        counter, plus what part-time windows over- or under-saw). Caller holds the lock."""
        counted_j = self._energy_since_origin_j(tick * self._period_s)
        if not self._part_time:
            return counted_j
        self._refresh_fixes()
        i = bisect.bisect_right(self._fix_ticks, tick)
        return counted_j + (self._fix_sums_j[i - 1] if i else self._fix_base_j)

    def _refresh_fixes(self) -> None:
        """Recompute the part-time corrections of the ticks at or after the stale one.

        Only ticks holding a load change need one: elsewhere power is constant over the
        period (idle and noise are linear in it), so the extrapolated window is exact.
        """
        stale = self._fix_stale_tick
        if stale is None:
            return
        cut = bisect.bisect_left(self._fix_ticks, stale)
        del self._fix_ticks[cut:]
        del self._fix_sums_j[cut:]
        total_j = self._fix_sums_j[-1] if self._fix_sums_j else self._fix_base_j
        period, dynamic = self._period_s, self.loads.dynamic_energy_j
        for t_s in self.loads.change_times_s((stale - 1) * period):
            tick = math.ceil(t_s / period)
            if tick < stale or (self._fix_ticks and tick <= self._fix_ticks[-1]):
                continue
            start_s = (tick - 1) * period
            window_start_s = start_s + self._offset_s
            seen_j = dynamic(window_start_s + self._window_s) - dynamic(window_start_s)
            total_j += seen_j * period / self._window_s - (
                dynamic(tick * period) - dynamic(start_s)
            )
            self._fix_ticks.append(tick)
            self._fix_sums_j.append(total_j)
        self._fix_stale_tick = None
