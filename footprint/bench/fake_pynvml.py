"""A fake ``pynvml`` (nvidia-ml-py) module, so the NVML sensor's real code path is tested.

``make_fake_pynvml(gpus)`` returns a module object with the functions, constants and
exception classes the sensor uses, behaving like the library: ``NVMLError(code)`` returns
the per-code subclass (``NVMLError_NotSupported``, ``NVMLError_GpuIsLost``, …, generated
from the ``NVML_ERROR_*`` constants as nvidia-ml-py does), every call before ``nvmlInit``
or after the last ``nvmlShutdown`` raises ``NVMLError_Uninitialized``, init is
reference-counted, handles are opaque, strings are ``str``, energy is an ``int`` in mJ and
power an ``int`` in mW.

Each ``FakeGpu`` runs on the module's ``FakeClock`` (s): its energy counter only changes
every ``counter_update_period_s`` (tick times ``attach time + k × period``) and reports
whole millijoules (truncated), like the hardware.

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
import types
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

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


@dataclass(eq=False)
class FakeGpu:
    """One fake GPU. ``power_w`` is a constant in W (change it with ``set_power_w``) or a
    function of the clock's time in s returning W. ``calls`` counts the NVML device
    functions called on it, by name."""

    uuid: str
    name: str = "NVIDIA A100-SXM4-80GB"
    supports_energy_counter: bool = True
    supports_power: bool = True
    power_w: float | Callable[[float], float] = 60.0
    counter_update_period_s: float = 0.1
    counter_start_mj: int = 0
    integration_step_s: float = 0.001
    calls: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self._clock: FakeClock | None = None
        self._lost = False
        self._failures: list[int] = []

    def attach(self, clock: FakeClock) -> None:
        """Start the GPU's energy on ``clock`` (done by ``make_fake_pynvml``)."""
        self._clock = clock
        self._attach_s = clock.now_s()
        self._t_s = self._attach_s
        self._energy_j = 0.0
        self._tick = 0
        self._counter_origin_j = 0.0
        self._counter_base_mj = self.counter_start_mj
        self._published_mj = self.counter_start_mj

    @property
    def clock(self) -> FakeClock:
        if self._clock is None:
            raise RuntimeError("FakeGpu is not attached to a fake pynvml module")
        return self._clock

    def power_at_w(self, t_s: float) -> float:
        return self.power_w(t_s) if callable(self.power_w) else float(self.power_w)

    def set_power_w(self, power_w: float) -> float:
        """From now on the GPU draws ``power_w`` W; returns that instant on its clock (s)."""
        with _ADVANCE_LOCK:
            self._advance_locked()
            self.power_w = power_w
            return self._t_s

    def true_energy_j(self) -> float:
        """Energy in J drawn since the GPU was attached, up to the clock's now."""
        self._advance()
        return self._energy_j

    def reset_counter(self) -> None:
        """The energy counter restarts from 0 mJ now (driver reload, GPU reset)."""
        self._advance()
        self._counter_origin_j = self._energy_j
        self._counter_base_mj = 0
        self._published_mj = 0

    def fail_next(self, n: int, error_code: int = NVML_ERROR_UNKNOWN) -> None:
        """The next ``n`` energy or power reads that would succeed raise ``error_code``."""
        self._failures.extend([error_code] * n)

    def lose(self) -> None:
        """Every device call raises ``NVMLError_GpuIsLost`` from now on."""
        self._lost = True

    def _check_alive(self, function: str) -> None:
        self.calls[function] += 1
        if self._lost:
            raise NVMLError(NVML_ERROR_GPU_IS_LOST)

    def _check_read(self, supported: bool) -> None:
        if not supported:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        if self._failures:
            raise NVMLError(self._failures.pop(0))

    def read_energy_mj(self) -> int:
        self._check_alive("nvmlDeviceGetTotalEnergyConsumption")
        self._check_read(self.supports_energy_counter)
        self._advance()
        return self._published_mj

    def read_power_mw(self) -> int:
        self._check_alive("nvmlDeviceGetPowerUsage")
        self._check_read(self.supports_power)
        return round(self.power_at_w(self.clock.now_s()) * 1000)

    def _advance(self) -> None:
        # The sampler thread and a test thread may read at once, as with the real library.
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
            delta_mj = math.floor((self._energy_j - self._counter_origin_j) * 1000 + 1e-6)
            self._published_mj = self._counter_base_mj + delta_mj
        self._integrate_to(now_s)

    def _integrate_to(self, t_s: float) -> None:
        dt_s = t_s - self._t_s
        if dt_s <= 0:
            return
        if callable(self.power_w):
            steps = max(1, math.ceil(dt_s / self.integration_step_s))
            h_s = dt_s / steps
            self._energy_j += h_s * sum(
                self.power_w(self._t_s + (k + 0.5) * h_s) for k in range(steps)
            )
        else:
            self._energy_j += float(self.power_w) * dt_s
        self._t_s = t_s


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
        clock: FakeClock,
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
)


def make_fake_pynvml(
    gpus: Sequence[FakeGpu],
    *,
    clock: FakeClock | None = None,
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
