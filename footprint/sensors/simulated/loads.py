"""Power of the summed loads over time, with the exact energy between any two times.

A load of 1.0 is one full-power job: power is ``idle_w + (busy_w - idle_w) * min(1, load)``.
"""

from __future__ import annotations

import bisect
import math
import threading

MAX_ABS_TIME_S = 2.0**40  # workload API: times beyond this many seconds are refused


def check_load(start_s: float, end_s: float, load: float) -> None:
    """Refuse (ValueError) a load the workload API cannot take."""
    if (
        not -MAX_ABS_TIME_S < start_s < end_s < MAX_ABS_TIME_S
        or not math.isfinite(load)
        or load < 0
    ):
        raise ValueError("add_load needs -2^40 < start_s < end_s < 2^40 and a finite load >= 0")


def check_step(t_s: float, delta: float) -> None:
    """Refuse (ValueError) a load change the workload API cannot take."""
    if not (-MAX_ABS_TIME_S < t_s < MAX_ABS_TIME_S and math.isfinite(delta)):
        raise ValueError("add_step needs a time in (-2^40, 2^40) s and a finite load change")


class LoadModel:
    """Power ``idle_w + (busy_w - idle_w) * min(1, load)`` of the summed loads over time.

    Exact energy between any two times from prefix sums over the load change points.
    Thread-safe: loads may be added from worker threads while another thread reads.
    """

    def __init__(self, idle_w: float, busy_w: float) -> None:
        if not (math.isfinite(idle_w) and math.isfinite(busy_w)) or not 0 <= idle_w <= busy_w:
            raise ValueError("LoadModel needs finite 0 <= idle_w <= busy_w")
        self.idle_w = float(idle_w)
        self.busy_w = float(busy_w)
        self._dynamic_w = self.busy_w - self.idle_w
        # Load change points: sorted times with the load delta at each.
        self._times_s: list[float] = []
        self._deltas: list[float] = []
        # Prefix data, valid up to index self._valid: load after each change point and
        # the dynamic energy integrated from the first change point up to it.
        self._load_after: list[float] = []
        self._dyn_j_at: list[float] = []
        self._valid = 0
        # After ``fold_before``: the first change point holds all those before it; energy
        # before it is no longer known, and a step for a time before it is moved to it.
        self._floor_s = -math.inf
        self._base_j = 0.0  # dynamic energy up to the first change point
        self.clamped_steps = 0
        self._lock = threading.RLock()

    def add_load(self, start_s: float, end_s: float, load: float = 1.0) -> None:
        """Add ``load`` (1.0 = one full-power job) between two monotonic times."""
        check_load(start_s, end_s, load)
        with self._lock:
            self._step(start_s, load)
            self._step(end_s, -load)

    def add_step(self, t_s: float, delta: float) -> None:
        """Change the load by ``delta`` from ``t_s`` on (an open-ended load's start or end)."""
        check_step(t_s, delta)
        with self._lock:
            self._step(t_s, delta)

    @property
    def steps(self) -> int:
        """Number of load change points registered (kept)."""
        return len(self._times_s)

    @property
    def floor_s(self) -> float:
        """The earliest time still known exactly (-inf until ``fold_before``)."""
        return self._floor_s

    def step_time_s(self, index: int) -> float:
        """The time of the ``index``-th change point kept."""
        with self._lock:
            return self._times_s[index]

    def fold_before(self, t_s: float) -> int:
        """Fold the change points before ``t_s`` into the latest of them (memory): power
        and energy at or after it stay exact. Returns the number of points dropped."""
        with self._lock:
            self._refresh()
            last = bisect.bisect_left(self._times_s, t_s) - 1
            if last < 1:
                return 0
            load = self._load_after[last]
            self._base_j = self._dyn_j_at[last]
            for points in (self._times_s, self._deltas, self._load_after, self._dyn_j_at):
                del points[:last]
            self._deltas[0] = load  # from no load before it
            self._floor_s = self._times_s[0]
            self._valid = len(self._times_s)
            return last

    def power_w(self, t_s: float) -> float:
        """Power at ``t_s``, in W."""
        self._sync()
        with self._lock:
            self._refresh()
            i = bisect.bisect_right(self._times_s, t_s) - 1
            load = min(1.0, max(0.0, self._load_after[i])) if i >= 0 else 0.0
        return self.idle_w + self._dynamic_w * load

    def energy_j(self, t0_s: float, t1_s: float) -> float:
        """Exact energy drawn between two monotonic times, in J."""
        self._sync()
        with self._lock:
            dynamic_j = self._dynamic_locked_j(t1_s) - self._dynamic_locked_j(t0_s)
        return self.idle_w * (t1_s - t0_s) + dynamic_j

    def dynamic_energy_j(self, t_s: float) -> float:
        """Dynamic (above idle) energy from the first load change up to ``t_s``, in J."""
        self._sync()
        with self._lock:
            return self._dynamic_locked_j(t_s)

    def change_times_s(self, t0_s: float, t1_s: float = math.inf) -> list[float]:
        """The load change times in ``[t0_s, t1_s)``, sorted."""
        self._sync()
        with self._lock:
            lo = bisect.bisect_left(self._times_s, t0_s)
            hi = bisect.bisect_left(self._times_s, t1_s)
            return self._times_s[lo:hi]

    def _sync(self) -> None:
        """Hook run before each read: a subclass takes steps registered elsewhere here."""

    def _dynamic_locked_j(self, t_s: float) -> float:
        self._refresh()
        i = bisect.bisect_right(self._times_s, t_s) - 1
        if i < 0:
            return self._base_j
        load = min(1.0, max(0.0, self._load_after[i]))
        return self._dyn_j_at[i] + self._dynamic_w * load * (t_s - self._times_s[i])

    def _step(self, t_s: float, delta: float) -> None:
        if t_s < self._floor_s:
            t_s = self._floor_s
            self.clamped_steps += 1
        times = self._times_s
        if not times or t_s >= times[-1]:  # the usual case: time order, O(1)
            i = len(times)
            times.append(t_s)
            self._deltas.append(delta)
        else:
            i = bisect.bisect_right(times, t_s)
            times.insert(i, t_s)
            self._deltas.insert(i, delta)
        self._valid = min(self._valid, i)

    def _refresh(self) -> None:
        n = len(self._times_s)
        if self._valid == n:
            return
        del self._load_after[self._valid :]
        del self._dyn_j_at[self._valid :]
        load = self._load_after[-1] if self._load_after else 0.0
        energy_j = self._dyn_j_at[-1] if self._dyn_j_at else self._base_j
        for i in range(self._valid, n):
            if i > 0:
                dt = self._times_s[i] - self._times_s[i - 1]
                energy_j += self._dynamic_w * min(1.0, max(0.0, load)) * dt
            load += self._deltas[i]
            self._load_after.append(load)
            self._dyn_j_at.append(energy_j)
        self._valid = n
