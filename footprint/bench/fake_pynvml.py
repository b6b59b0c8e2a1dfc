"""A fake ``pynvml`` (nvidia-ml-py) module, so the NVML sensor's real code path can be run.

``make_fake_pynvml(gpus)`` returns a module object with the functions, constants and
exception classes the sensor uses, behaving like the library: ``NVMLError(code)`` returns
the per-code subclass (``NVMLError_NotSupported``, ``NVMLError_GpuIsLost``, …, generated
from the ``NVML_ERROR_*`` constants as nvidia-ml-py does), every call before ``nvmlInit``
or after the last ``nvmlShutdown`` raises ``NVMLError_Uninitialized``, init is
reference-counted, handles are opaque, strings are ``str``, energy is an ``int`` in mJ and
power an ``int`` in mW. The tests use it, and ``footprint bench accuracy`` runs footprint's
NVML code path over it (``install_fake_pynvml``).

Each ``FakeGpu`` runs on the module's clock (s; a ``FakeClock``, or ``SystemClock`` for real
time): its energy counter only changes every ``counter_update_period_s`` (tick times
``attach time + k × period``) and reports whole millijoules (truncated), like the hardware.
It may see only part of each period, as A100/H100 counters do (``counter_window_s``), and
its power field may be an average over the last second, as older GPUs' is
(``power_average_s``).

    clock = FakeClock()
    old_gpu = FakeGpu("GPU-bbbb", supports_energy_counter=False, power_w=250.0)
    fake = make_fake_pynvml([FakeGpu("GPU-aaaa"), old_gpu], clock=clock)
    sensor = NvmlSensor(nvml=fake, now_s=clock.now_s)
    clock.advance(0.5)
"""

from __future__ import annotations

import math
import string
import sys
import threading
import time
import types
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields

# SharedLoadLog and ALL_DEVICES are re-exported: a benchmark takes all it needs from here.
from footprint.bench.loads import ALL_DEVICES as ALL_DEVICES
from footprint.bench.loads import LoggedLoadModel
from footprint.bench.loads import SharedLoadLog as SharedLoadLog
from footprint.sensors.simulated import LoadModel

NVML_SUCCESS = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_ALREADY_INITIALIZED = 5
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_INSUFFICIENT_SIZE = 7
NVML_ERROR_INSUFFICIENT_POWER = 8
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_TIMEOUT = 10
NVML_ERROR_IRQ_ISSUE = 11
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_CORRUPTED_INFOROM = 14
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_RESET_REQUIRED = 16
NVML_ERROR_OPERATING_SYSTEM = 17
NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18
NVML_ERROR_IN_USE = 19
NVML_ERROR_MEMORY = 20
NVML_ERROR_NO_DATA = 21
NVML_ERROR_VGPU_ECC_NOT_SUPPORTED = 22
NVML_ERROR_INSUFFICIENT_RESOURCES = 23
NVML_ERROR_FREQ_NOT_SUPPORTED = 24
NVML_ERROR_ARGUMENT_VERSION_MISMATCH = 25
NVML_ERROR_DEPRECATED = 26
NVML_ERROR_NOT_READY = 27
NVML_ERROR_GPU_NOT_FOUND = 28
NVML_ERROR_INVALID_STATE = 29
NVML_ERROR_RESET_TYPE_NOT_SUPPORTED = 30
NVML_ERROR_UNKNOWN = 999

_ERROR_STRINGS = {
    NVML_ERROR_UNINITIALIZED: "Uninitialized",
    NVML_ERROR_INVALID_ARGUMENT: "Invalid Argument",
    NVML_ERROR_NOT_SUPPORTED: "Not Supported",
    NVML_ERROR_NO_PERMISSION: "Insufficient Permissions",
    NVML_ERROR_ALREADY_INITIALIZED: "Already Initialized",
    NVML_ERROR_NOT_FOUND: "Not Found",
    NVML_ERROR_INSUFFICIENT_SIZE: "Insufficient Size",
    NVML_ERROR_INSUFFICIENT_POWER: "Insufficient External Power",
    NVML_ERROR_DRIVER_NOT_LOADED: "Driver Not Loaded",
    NVML_ERROR_TIMEOUT: "Timeout",
    NVML_ERROR_IRQ_ISSUE: "Interrupt Request Issue",
    NVML_ERROR_LIBRARY_NOT_FOUND: "NVML Shared Library Not Found",
    NVML_ERROR_FUNCTION_NOT_FOUND: "Function Not Found",
    NVML_ERROR_CORRUPTED_INFOROM: "Corrupted infoROM",
    NVML_ERROR_GPU_IS_LOST: "GPU is lost",
    NVML_ERROR_RESET_REQUIRED: "GPU requires restart",
    NVML_ERROR_OPERATING_SYSTEM: "The operating system has blocked the request.",
    NVML_ERROR_LIB_RM_VERSION_MISMATCH: "RM has detected an NVML/RM version mismatch.",
    NVML_ERROR_MEMORY: "Insufficient Memory",
    NVML_ERROR_NO_DATA: "No data",
    NVML_ERROR_UNKNOWN: "Unknown Error",
}


class NVMLError(Exception):
    """``NVMLError(code)`` builds the subclass registered for ``code``; ``.value`` is it."""

    _valClassMapping: dict[int, type[NVMLError]] = {}
    value: int

    def __new__(cls, value: int) -> NVMLError:
        if cls is NVMLError:
            cls = NVMLError._valClassMapping.get(value, cls)
        obj = Exception.__new__(cls)
        obj.value = value
        return obj

    def __str__(self) -> str:
        return _ERROR_STRINGS.get(self.value, f"NVML Error with code {self.value}")

    def __eq__(self, other: object) -> bool:
        return self.value == other.value  # type: ignore[attr-defined]

    __hash__ = None  # type: ignore[assignment]


def _make_error_classes() -> None:
    """One ``NVMLError_<CamelCase>`` subclass per ``NVML_ERROR_*`` constant."""
    module = sys.modules[__name__]
    for const_name in [n for n in dir(module) if n.startswith("NVML_ERROR_")]:
        words = const_name.replace("NVML_ERROR_", "")
        class_name = "NVMLError_" + string.capwords(words, "_").replace("_", "")
        code = getattr(module, const_name)

        def make_new(code: int) -> Callable[..., NVMLError]:
            def new(cls: type[NVMLError], *args: object) -> NVMLError:
                return NVMLError.__new__(cls, code)

            return new

        error_class = type(class_name, (NVMLError,), {"__new__": make_new(code)})
        error_class.__module__ = __name__
        setattr(module, class_name, error_class)
        NVMLError._valClassMapping[code] = error_class


_make_error_classes()


def nvmlExceptionClass(code: int) -> type[NVMLError]:
    if code not in NVMLError._valClassMapping:
        raise ValueError(f"nvmlErrorCode {code} is not valid")
    return NVMLError._valClassMapping[code]


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

    def __post_init__(self) -> None:
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


class _Handle:
    """An opaque device handle, like ``c_nvmlDevice_t``."""

    __slots__ = ("_gpu", "_owner")

    def __init__(self, gpu: FakeGpu, owner: FakeNvmlState) -> None:
        self._gpu = gpu
        self._owner = owner

    def __repr__(self) -> str:
        return f"<fake c_nvmlDevice_t at {id(self):#x}>"


class FakeNvmlState:
    """The library's state behind one fake module: GPUs, clock, init refcount, call log."""

    def __init__(
        self,
        gpus: Sequence[FakeGpu],
        clock: FakeClock | SystemClock,
        init_error: int | None,
        driver_version: str,
    ) -> None:
        self.gpus = list(gpus)
        self.clock = clock
        self.init_error = init_error
        self.driver_version = driver_version
        self.init_refcount = 0
        self.init_calls = 0
        self.shutdown_calls = 0
        for gpu in self.gpus:
            gpu.attach(clock)

    def _require_init(self) -> None:
        if self.init_refcount == 0:
            raise NVMLError(NVML_ERROR_UNINITIALIZED)

    def _gpu(self, handle: object) -> FakeGpu:
        self._require_init()
        if not isinstance(handle, _Handle) or handle._owner is not self:
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        return handle._gpu

    def nvmlInitWithFlags(self, flags: int) -> None:
        self.init_calls += 1
        if self.init_error is not None:
            raise NVMLError(self.init_error)
        self.init_refcount += 1

    def nvmlInit(self) -> None:
        self.nvmlInitWithFlags(0)

    def nvmlShutdown(self) -> None:
        self.shutdown_calls += 1
        self._require_init()
        self.init_refcount -= 1

    def nvmlErrorString(self, code: int) -> str:
        return _ERROR_STRINGS.get(code, "Unknown Error")

    def nvmlSystemGetDriverVersion(self) -> str:
        self._require_init()
        return self.driver_version

    def nvmlDeviceGetCount(self) -> int:
        self._require_init()
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> _Handle:
        self._require_init()
        if not 0 <= index < len(self.gpus):
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        gpu = self.gpus[index]
        gpu._check_alive("nvmlDeviceGetHandleByIndex")
        return _Handle(gpu, self)

    def nvmlDeviceGetHandleByUUID(self, uuid: str | bytes) -> _Handle:
        self._require_init()
        text = uuid.decode() if isinstance(uuid, bytes) else uuid
        for gpu in self.gpus:
            if gpu.uuid == text:
                gpu._check_alive("nvmlDeviceGetHandleByUUID")
                return _Handle(gpu, self)
        raise NVMLError(NVML_ERROR_NOT_FOUND)

    def nvmlDeviceGetUUID(self, handle: object) -> str:
        gpu = self._gpu(handle)
        gpu._check_alive("nvmlDeviceGetUUID")
        return gpu.uuid

    def nvmlDeviceGetName(self, handle: object) -> str:
        gpu = self._gpu(handle)
        gpu._check_alive("nvmlDeviceGetName")
        return gpu.name

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: object) -> int:
        return self._gpu(handle).read_energy_mj()

    def nvmlDeviceGetPowerUsage(self, handle: object) -> int:
        return self._gpu(handle).read_power_mw()

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: object) -> int:
        return self._gpu(handle).read_power_limit_mw()


_FUNCTIONS = (
    "nvmlInit",
    "nvmlInitWithFlags",
    "nvmlShutdown",
    "nvmlErrorString",
    "nvmlSystemGetDriverVersion",
    "nvmlDeviceGetCount",
    "nvmlDeviceGetHandleByIndex",
    "nvmlDeviceGetHandleByUUID",
    "nvmlDeviceGetUUID",
    "nvmlDeviceGetName",
    "nvmlDeviceGetTotalEnergyConsumption",
    "nvmlDeviceGetPowerUsage",
    "nvmlDeviceGetEnforcedPowerLimit",
)


def make_fake_pynvml(
    gpus: Sequence[FakeGpu],
    *,
    clock: FakeClock | SystemClock | None = None,
    init_error: int | None = None,
    driver_version: str = "550.54.15",
) -> types.ModuleType:
    """A module object named ``pynvml`` driving ``gpus`` on ``clock`` (a new one if None).

    ``init_error`` (an ``NVML_ERROR_*`` code) makes ``nvmlInit`` raise it, e.g.
    ``NVML_ERROR_LIBRARY_NOT_FOUND`` for a machine without the driver. The module's
    ``fake_state`` (``FakeNvmlState``) and ``fake_clock`` are for the test.
    """
    state = FakeNvmlState(gpus, clock or FakeClock(), init_error, driver_version)
    module = types.ModuleType("pynvml", "Fake nvidia-ml-py for tests.")
    this_module = sys.modules[__name__]
    for name in dir(this_module):
        if name.startswith(("NVML_", "NVMLError")):
            setattr(module, name, getattr(this_module, name))
    module.nvmlExceptionClass = nvmlExceptionClass
    for name in _FUNCTIONS:
        setattr(module, name, getattr(state, name))
    module.fake_state = state
    module.fake_clock = state.clock
    return module


@dataclass(frozen=True)
class FakeInstallSpec:
    """Options of ``install_fake_pynvml`` (``"gpus=4,idle_w=60,counter_window_s=0.025"``)."""

    gpus: int = 1
    idle_w: float = 60.0
    busy_w: float = 400.0
    counter_update_period_s: float = 0.1
    counter_window_s: float | None = None  # None: the counter sees whole periods
    counter_window_offset_s: float | None = None  # None: the window ends at the tick
    power_average_s: float = 0.0  # 0: instantaneous power field
    name: str = "NVIDIA H100 80GB HBM3"
    shared_load_log: str | None = None  # path of a SharedLoadLog other processes feed
    power_limit_w: float | None = None  # enforced power limit; None: busy_w, 0: unsupported
    energy_counter: bool = True  # False: a GPU without the energy counter (power only)
    seed: int = 0  # only changes the UUIDs (``fake_uuids``)
    counter_phase_s: float = 0.0  # the ticks began this long before the module was made

    def __post_init__(self) -> None:
        if not 1 <= self.gpus <= 64:
            raise ValueError(f"fake pynvml: gpus must be 1..64, got {self.gpus}")

    @classmethod
    def parse(cls, spec: str | Mapping[str, object]) -> FakeInstallSpec:
        """From ``"gpus=2,idle_w=60"`` or a mapping; unknown keys or bad values raise
        ValueError."""
        if isinstance(spec, str):
            pairs = [item.partition("=") for item in spec.split(",") if item.strip()]
            given: dict[str, object] = {k.strip(): v.strip() if sep else None
                                        for k, sep, v in pairs}  # fmt: skip
        else:
            given = dict(spec)
        known = [f.name for f in fields(cls)]
        values: dict[str, object] = {}
        for key, value in given.items():
            if key not in known:
                raise ValueError(
                    f"fake pynvml: unknown option {key!r}; allowed: {', '.join(known)}"
                )
            try:
                values[key] = _option_value(key, value)
            except (TypeError, ValueError):
                raise ValueError(f"fake pynvml: bad value for {key}: {value!r}") from None
        return cls(**values)  # type: ignore[arg-type]


def _option_value(key: str, value: object) -> object:
    if value is None or value == "" or (isinstance(value, str) and value.lower() == "none"):
        if key in ("counter_window_s", "counter_window_offset_s", "shared_load_log",
                   "power_limit_w"):  # fmt: skip
            return None
        raise ValueError(key)
    if key in ("name", "shared_load_log"):
        return str(value)
    if key in ("gpus", "seed"):
        return int(value)  # type: ignore[call-overload]
    if key == "energy_counter":
        text = str(value).strip().lower()
        if text not in ("1", "0", "true", "false", "yes", "no"):
            raise ValueError(text)
        return text in ("1", "true", "yes")
    return float(value)  # type: ignore[arg-type]


def fake_uuids(gpus: int, seed: int = 0) -> list[str]:
    """The UUIDs ``install_fake_pynvml`` gives its GPUs, by index."""
    return [f"GPU-{seed & 0xFFFFFFFF:08x}-fa4e-4000-8000-{index:012x}" for index in range(gpus)]


def install_fake_pynvml(spec: str | Mapping[str, object]) -> types.ModuleType:
    """Build a fake ``pynvml`` on real time and install it as ``sys.modules["pynvml"]``, so
    ``import pynvml`` in footprint's ``NvmlSensor`` gets it; returns the module.

    ``spec``: ``FakeInstallSpec`` options, as text or a mapping. The GPUs are
    ``module.fake_state.gpus`` (UUIDs ``fake_uuids(gpus, seed)``), each drawing the power
    of its ``.loads``: a ``LoadModel`` the workload drives, or with ``shared_load_log`` a
    ``LoggedLoadModel`` also fed by the steps other processes append to that file.
    """
    options = FakeInstallSpec.parse(spec)
    limit_w = options.busy_w if options.power_limit_w is None else options.power_limit_w
    gpus = []
    for index, uuid in enumerate(fake_uuids(options.gpus, options.seed)):
        loads: LoadModel
        if options.shared_load_log:
            loads = LoggedLoadModel(options.shared_load_log, options.idle_w, options.busy_w, index)
        else:
            loads = LoadModel(options.idle_w, options.busy_w)
        gpus.append(
            FakeGpu(
                uuid,
                name=options.name,
                supports_energy_counter=options.energy_counter,
                power_w=loads.power_w,
                counter_update_period_s=options.counter_update_period_s,
                counter_window_s=options.counter_window_s,
                counter_window_offset_s=options.counter_window_offset_s,
                counter_phase_s=options.counter_phase_s,
                power_average_s=options.power_average_s,
                loads=loads,
                power_limit_w=limit_w or None,
            )
        )
    module = make_fake_pynvml(gpus, clock=SystemClock())
    sys.modules["pynvml"] = module
    return module
