"""The fake ``pynvml``'s GPUs and clocks: ``FakeGpu`` models a GPU's energy counter (ticks,
whole mJ, maybe a part-time window) and power field (maybe averaged) on a ``FakeClock`` or
``SystemClock``."""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from footprint.bench.fake_pynvml.errors import (
    NVML_ERROR_GPU_IS_LOST,
    NVML_ERROR_NOT_SUPPORTED,
    NVML_ERROR_UNKNOWN,
    NVMLError,
)
from footprint.bench.fake_pynvml.mig import FakeMigSlice, mig_energy_model
from footprint.sensors.simulated import LoadModel

_TICK_TOLERANCE_S = 1e-9
_WINDOW_SLACK_S = 1e-12  # float slack when comparing a window's bounds with the period
_INSTANT_S = 1e-6  # the "instantaneous" power of an exact energy model: over 1 µs


class FakeClock:
    """A monotonic clock in s that only moves when told to."""

    def __init__(self, start_s: float = 1000.0) -> None:
        self.t_s = start_s

    def now_s(self) -> float:
        return self.t_s

    def advance(self, dt_s: float) -> None:
        if dt_s < 0:
            raise ValueError("a monotonic clock does not go back")
        self.t_s += dt_s


class SystemClock:
    """Real time (``time.monotonic``, system-wide on Linux) with ``FakeClock``'s interface,
    so a fake module can serve footprint's sampler thread and loads from other processes."""

    def now_s(self) -> float:
        return time.monotonic()

    def advance(self, dt_s: float) -> None:
        raise TypeError("SystemClock follows real time; it cannot be advanced")


@dataclass(eq=False)
class FakeGpu:
    """One fake GPU. ``power_w`` is a constant in W (change it with ``set_power_w``) or a
    function of the clock's time in s returning W. ``calls`` counts the NVML device
    functions called on it, by name.

    Part-time counter (A100/H100, Yang et al. SC'24): at each tick the counter adds the
    energy of a ``counter_window_s`` window of the period ending there, starting
    ``counter_window_offset_s`` after the previous tick (None: the window ends at the tick),
    times period/window. None: the whole period. ``power_average_s``: the power field is
    the average over that many past seconds (older GPUs: ~1 s; 0: instantaneous).
    ``energy_between_j(t0_s, t1_s)``, or ``loads`` (a ``LoadModel``, used for it when no
    function is given), is an exact energy model replacing the integration of ``power_w``;
    with it, a whole-period counter carries a load registered late (for a time already
    read) into its next tick, where a part-time one misses the windows already taken.
    ``power_limit_w``: what ``nvmlDeviceGetEnforcedPowerLimit`` says (None: not supported).
    """

    uuid: str
    name: str = "NVIDIA A100-SXM4-80GB"
    supports_energy_counter: bool = True
    supports_power: bool = True
    power_w: float | Callable[[float], float] = 60.0
    counter_update_period_s: float = 0.1
    counter_start_mj: int = 0
    # The counter's ticks began this long before the GPU was attached (s, < the period):
    # a real GPU's tick phase has nothing to do with when a process starts.
    counter_phase_s: float = 0.0
    integration_step_s: float = 0.001
    calls: Counter[str] = field(default_factory=Counter)
    counter_window_s: float | None = None
    counter_window_offset_s: float | None = None
    power_average_s: float = 0.0
    energy_between_j: Callable[[float, float], float] | None = None
    loads: LoadModel | None = None
    power_limit_w: float | None = None
    # MIG: None for a GPU without MIG (``nvmlDeviceGetMigMode`` not supported), else the
    # mode (0 off, 1 on). With it on, ``mig_slices`` are its MIG devices, each with its own
    # true power; the GPU then draws ``power_w`` (a constant: the board's own draw) plus
    # theirs, exactly, unless an energy model is given.
    mig_mode: int | None = None
    mig_slices: list[FakeMigSlice] = field(default_factory=list)
    max_mig_devices: int = 7

    def __post_init__(self) -> None:
        if self.mig_slices and self.energy_between_j is None and self.loads is None:
            if callable(self.power_w):
                raise ValueError("a MIG GPU's power_w is its board's own draw: a constant")
            self.energy_between_j = mig_energy_model(self.mig_slices, float(self.power_w))
        self._clock: FakeClock | SystemClock | None = None
        self._lost = False
        self._failures: list[int] = []
        period_s = self.counter_update_period_s
        if not (math.isfinite(period_s) and period_s > 0):
            raise ValueError("counter_update_period_s must be a finite time > 0 s")
        window_s = period_s if self.counter_window_s is None else self.counter_window_s
        if not (math.isfinite(window_s) and 0 < window_s <= period_s + _WINDOW_SLACK_S):
            raise ValueError(
                f"counter_window_s must be in (0, counter_update_period_s = {period_s:g}] s, "
                f"got {window_s}"
            )
        room_s = max(0.0, period_s - window_s)
        offset_s = room_s if self.counter_window_offset_s is None else self.counter_window_offset_s
        if not (math.isfinite(offset_s) and 0 <= offset_s <= room_s + _WINDOW_SLACK_S):
            raise ValueError(
                "counter_window_offset_s must be in [0, counter_update_period_s - "
                f"counter_window_s] = [0, {room_s:g}] s, got {offset_s}"
            )
        if not (math.isfinite(self.power_average_s) and self.power_average_s >= 0):
            raise ValueError("power_average_s must be a finite time >= 0 s")
        self._window_s = min(window_s, period_s)
        self._offset_s = min(offset_s, room_s)
        self._part_time = window_s < period_s - _WINDOW_SLACK_S

    def attach(self, clock: FakeClock | SystemClock) -> None:
        """Start the GPU's energy on ``clock`` (done by ``make_fake_pynvml``)."""
        if not 0 <= self.counter_phase_s < self.counter_update_period_s:
            raise ValueError("counter_phase_s must be in [0, counter_update_period_s)")
        self._clock = clock
        self._attach_s = clock.now_s() - self.counter_phase_s
        self._t_s = self._attach_s
        self._energy_j = 0.0
        self._tick = 0
        self._counter_origin_j = 0.0
        self._counter_base_mj = self.counter_start_mj
        self._published_mj = self.counter_start_mj
        self._window_j = 0.0  # energy seen so far in the current period's window
        self._counted_j = 0.0  # what the part-time counter has counted
        constant_w = 0.0 if callable(self.power_w) else float(self.power_w)
        self._power_steps: list[tuple[float, float]] = [(self._attach_s, constant_w)]

    @property
    def clock(self) -> FakeClock | SystemClock:
        if self._clock is None:
            raise RuntimeError("FakeGpu is not attached to a fake pynvml module")
        return self._clock

    @property
    def _energy_model(self) -> Callable[[float, float], float] | None:
        if self.energy_between_j is not None:
            return self.energy_between_j
        return self.loads.energy_j if self.loads is not None else None

    def power_at_w(self, t_s: float) -> float:
        return self.power_w(t_s) if callable(self.power_w) else float(self.power_w)

    def set_power_w(self, power_w: float) -> float:
        """From now on the GPU draws ``power_w`` W; returns that instant on its clock (s)."""
        with _ADVANCE_LOCK:
            self._advance_locked()
            self.power_w = power_w
            if self.power_average_s > 0:
                self._power_steps.append((self._t_s, float(power_w)))
            return self._t_s

    def true_energy_j(self) -> float:
        """Energy in J drawn since the GPU was attached, up to the clock's now (exact)."""
        with _ADVANCE_LOCK:
            self._advance_locked()
            return self._exact_energy_j(self._t_s)

    def true_slice_energy_j(self, position: int) -> float:
        """Energy in J MIG slice ``position`` drew since the GPU was attached (exact)."""
        now_s = self.clock.now_s()
        return self.mig_slices[position].energy_between_j(self._attach_s, now_s)

    def reset_counter(self) -> None:
        """The energy counter restarts from 0 mJ now (driver reload, GPU reset)."""
        with _ADVANCE_LOCK:
            self._advance_locked()
            if self._part_time:
                self._counter_origin_j = self._counted_j
            else:
                self._counter_origin_j = self._exact_energy_j(self._t_s)
            self._counter_base_mj = 0
            self._published_mj = 0

    def fail_next(self, n: int, error_code: int = NVML_ERROR_UNKNOWN) -> None:
        """The next ``n`` energy or power reads that would succeed raise ``error_code``."""
        with _ADVANCE_LOCK:
            self._failures.extend([error_code] * n)

    def lose(self) -> None:
        """Every device call raises ``NVMLError_GpuIsLost`` from now on."""
        self._lost = True

    def _check_alive(self, function: str) -> None:
        with _ADVANCE_LOCK:
            self.calls[function] += 1
        if self._lost:
            raise NVMLError(NVML_ERROR_GPU_IS_LOST)

    def _check_read(self, supported: bool) -> None:
        if not supported:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        if self._failures:
            raise NVMLError(self._failures.pop(0))

    def read_energy_mj(self) -> int:
        # The sampler thread and a user thread may read at once, as with the real library:
        # one lock, and the time taken inside it, keep reads in time order.
        with _ADVANCE_LOCK:
            self._check_alive("nvmlDeviceGetTotalEnergyConsumption")
            self._check_read(self.supports_energy_counter)
            self._advance_locked()
            return self._published_mj

    def read_power_mw(self) -> int:
        with _ADVANCE_LOCK:
            self._check_alive("nvmlDeviceGetPowerUsage")
            self._check_read(self.supports_power)
            return round(self._power_reading_w(self.clock.now_s()) * 1000)

    def read_power_limit_mw(self) -> int:
        self._check_alive("nvmlDeviceGetEnforcedPowerLimit")
        if self.power_limit_w is None:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return round(self.power_limit_w * 1000)

    def _power_reading_w(self, now_s: float) -> float:
        """The power field at ``now_s``: instantaneous, or averaged over ``power_average_s``."""
        span_s = self.power_average_s
        model = self._energy_model
        if model is not None:
            span_s = span_s or _INSTANT_S
            return model(now_s - span_s, now_s) / span_s
        if span_s == 0:
            return self.power_at_w(now_s)
        if callable(self.power_w):
            steps = max(1, math.ceil(span_s / self.integration_step_s))
            h_s = span_s / steps
            start_s = now_s - span_s
            return sum(self.power_w(start_s + (k + 0.5) * h_s) for k in range(steps)) / steps
        return self._constant_average_w(now_s - span_s, now_s)

    def _constant_average_w(self, t0_s: float, t1_s: float) -> float:
        """Average in W over ``[t0_s, t1_s]`` of the powers ``set_power_w`` set."""
        steps = self._power_steps
        while len(steps) > 1 and steps[1][0] <= t0_s:  # the clock only goes forward
            steps.pop(0)
        energy_j = 0.0
        for i, (since_s, watts) in enumerate(steps):
            last = i + 1 == len(steps)
            start_s = t0_s if i == 0 else max(t0_s, since_s)
            end_s = t1_s if last else min(t1_s, steps[i + 1][0])
            watts = float(self.power_w) if last else watts  # type: ignore[arg-type]
            if end_s > start_s:
                energy_j += watts * (end_s - start_s)
        return energy_j / (t1_s - t0_s)

    def _exact_energy_j(self, t_s: float) -> float:
        """Energy since attach up to ``t_s`` (integrated so far, without an exact model)."""
        model = self._energy_model
        return model(self._attach_s, t_s) if model is not None else self._energy_j

    def _advance(self) -> None:
        with _ADVANCE_LOCK:
            self._advance_locked()

    def _advance_locked(self) -> None:
        now_s = self.clock.now_s()
        while True:
            tick_s = self._attach_s + (self._tick + 1) * self.counter_update_period_s
            if tick_s > now_s + _TICK_TOLERANCE_S:
                break
            self._integrate_to(min(tick_s, now_s))
            self._tick += 1
            self._publish(tick_s)
        self._integrate_to(now_s)

    def _publish(self, tick_s: float) -> None:
        """The counter's value at a tick: whole mJ, never below the last one."""
        if self._part_time:
            scale = self.counter_update_period_s / self._window_s
            self._counted_j += self._window_j * scale  # what it saw, for the whole period
            self._window_j = 0.0
            counted_j = self._counted_j
        else:
            # With an exact model, a load registered late is carried into this tick.
            counted_j = self._exact_energy_j(tick_s)
        delta_mj = math.floor((counted_j - self._counter_origin_j) * 1000 + 1e-6)
        self._published_mj = max(self._published_mj, self._counter_base_mj + delta_mj)

    def _integrate_to(self, t_s: float) -> None:
        """Integrate energy up to ``t_s``, within the current period, noting what its
        observed window sees."""
        model = self._energy_model
        while t_s > self._t_s:
            start_s, end_s = self._t_s, t_s
            if self._part_time:
                period_start_s = self._attach_s + self._tick * self.counter_update_period_s
                window_start_s = period_start_s + self._offset_s
                window_end_s = window_start_s + self._window_s
                for bound_s in (window_start_s, window_end_s):
                    if start_s < bound_s < end_s:
                        end_s = bound_s
                        break
                energy_j = self._piece_energy_j(start_s, end_s)
                if window_start_s <= (start_s + end_s) / 2 <= window_end_s:
                    self._window_j += energy_j
                self._energy_j += energy_j
            elif model is None:
                self._energy_j += self._piece_energy_j(start_s, end_s)
            self._t_s = end_s

    def _piece_energy_j(self, t0_s: float, t1_s: float) -> float:
        model = self._energy_model
        if model is not None:
            return model(t0_s, t1_s)
        dt_s = t1_s - t0_s
        if callable(self.power_w):
            steps = max(1, math.ceil(dt_s / self.integration_step_s))
            h_s = dt_s / steps
            return h_s * sum(self.power_w(t0_s + (k + 0.5) * h_s) for k in range(steps))
        return float(self.power_w) * dt_s


_ADVANCE_LOCK = threading.RLock()
