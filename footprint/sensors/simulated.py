"""A simulated GPU: the same interface as the NVML sensor, driven by a workload API.

Power model per device: ``idle_w + (busy_w - idle_w) * min(1, load)`` where ``load`` is
the sum of the loads active at that time, plus optional per-tick noise. Loads come from
the tracked calls themselves (``workload=spans``, the default: each call loads the GPUs
it is attributed to with 1.0 for its duration, through ``begin_load``/``end_load``) or
only from the workload API (``workload=manual``: ``add_load``, ``run``). Like real
hardware, the energy counter only changes every ``update_period_s`` (ticks aligned on
multiples of the period in the clock's monotonic time) and reports whole millijoules.

It is deterministic for a given seed, also across processes: ticks are aligned on the
system-wide monotonic clock and the noise of tick ``k`` is a hash of (seed, device, k), so
idle power and noise agree between processes; registered loads are per process.

Like A100/H100 counters (Yang et al., SC'24, "Part-time Power Measurements"), the counter
may only observe part of each period (``window_s``, e.g. 25 ms of 100 ms) and extrapolate
what it saw to the whole period. It never rewrites a value it has published: a load
registered late, for a time at or before a tick already read, is carried into the next
ticks (``late_steps``, ``late_energy_j``), so the counter stays monotonic.

Because it knows the power at every instant, ``true_energy_j(t0, t1)`` is the ground
truth that attribution accuracy is tested against.

Under ``workload=spans`` (a daemon may run for months) memory is bounded: load change
points older than ``HISTORY_S`` (or, past ``MAX_STEPS`` per GPU, all but the last
``MIN_HISTORY_S``) are folded into one (``forgotten_steps``); energy from then on stays
exact, before it is no longer known. A later step for a time before what is kept is
moved to its start (``clamped_steps``). A call's time that is not finite or further than
``MAX_TIME_SKEW_S`` from the sensor's clock is refused (``refused_times``: a start is
ignored, an end taken as now), and an end with no load open is ignored
(``unmatched_ends``): nothing a caller sends can corrupt the counter.
"""

from __future__ import annotations

import bisect
import math
import threading
from dataclasses import dataclass, fields

from footprint._clock import SYSTEM_CLOCK, Clock
from footprint.sensors.base import ENERGY_SIMULATED, DeviceInfo, Sensor

_MASK64 = (1 << 64) - 1
WORKLOADS = ("spans", "manual")
_EPS_S = 1e-12  # float slack when comparing window bounds with the period
MAX_ABS_TIME_S = 2.0**40  # workload API: times beyond this many seconds are refused
# workload=spans: what a GPU keeps and takes (see the module docstring)
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


def _check_load(start_s: float, end_s: float, load: float) -> None:
    if (
        not -MAX_ABS_TIME_S < start_s < end_s < MAX_ABS_TIME_S
        or not math.isfinite(load)
        or load < 0
    ):
        raise ValueError("add_load needs -2^40 < start_s < end_s < 2^40 and a finite load >= 0")


def _check_step(t_s: float, delta: float) -> None:
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
        _check_load(start_s, end_s, load)
        with self._lock:
            self._step(start_s, load)
            self._step(end_s, -load)

    def add_step(self, t_s: float, delta: float) -> None:
        """Change the load by ``delta`` from ``t_s`` on (an open-ended load's start or end)."""
        _check_step(t_s, delta)
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
        _check_load(start_s, end_s, load)
        with self._lock:
            self._add_step_locked(start_s, load)
            self._add_step_locked(end_s, -load)

    def add_step(self, t_s: float, delta: float) -> None:
        """Change the load by ``delta`` from ``t_s`` on (an open-ended load's start or end)."""
        _check_step(t_s, delta)
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
        module docstring)."""
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


class SimulatedSensor(Sensor):
    """Simulated GPUs behind the ``Sensor`` interface; never chosen implicitly."""

    def __init__(self, spec: SimulatedGpuSpec | None = None, clock: Clock = SYSTEM_CLOCK):
        self.spec = spec or SimulatedGpuSpec()
        self.clock = clock
        self.gpus = [SimulatedGpu(i, self.spec) for i in range(self.spec.gpus)]
        self._devices = [
            DeviceInfo(
                index=i,
                uuid=f"GPU-sim{self.spec.seed:04d}-0000-4000-8000-{i:012d}",
                name=self.spec.name,
                kind="gpu",
                energy_method=ENERGY_SIMULATED,
                max_power_w=self.spec.busy_w,
            )
            for i in range(self.spec.gpus)
        ]

    @property
    def devices(self) -> list[DeviceInfo]:
        return self._devices

    @property
    def counter_update_period_s(self) -> float:
        return self.spec.update_period_s

    @property
    def counter_window_s(self) -> float | None:
        return self.spec.observed_window_s if self.spec.part_time else None

    @property
    def counter_lag_s(self) -> float:
        return self.spec.lag_s

    def read_energy_j(self) -> list[float | None]:
        now_s = self.clock.monotonic_s() - self.spec.lag_s
        return [gpu.counter_mj(now_s) / 1000.0 for gpu in self.gpus]

    def begin_load(self, devices: tuple[int, ...], t_s: float) -> None:
        """A tracked call started at ``t_s`` on these devices: load 1.0 each until it ends."""
        now_s = self.clock.monotonic_s()
        for index in devices:
            self.gpus[index].begin_call(t_s, now_s)

    def end_load(self, devices: tuple[int, ...], t_s: float) -> None:
        """The call that ``begin_load`` announced ended at ``t_s``."""
        now_s = self.clock.monotonic_s()
        for index in devices:
            self.gpus[index].end_call(t_s, now_s)

    def oddities(self) -> dict[str, int]:
        """What the GPUs refused, moved or forgot (``workload=spans``), summed."""
        names = ("refused_times", "unmatched_ends", "clamped_steps", "forgotten_steps")
        return {name: sum(getattr(gpu, name) for gpu in self.gpus) for name in names}

    def run(self, seconds: float, load: float = 1.0, devices: list[int] | None = None) -> None:
        """Workload helper: load the devices for ``seconds`` and sleep that long."""
        start_s = self.clock.monotonic_s()
        for index in range(len(self.gpus)) if devices is None else devices:
            self.gpus[index].add_load(start_s, start_s + seconds, load)
        self.clock.sleep(seconds)
