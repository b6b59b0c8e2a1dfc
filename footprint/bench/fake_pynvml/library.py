"""The fake ``pynvml`` library itself: ``make_fake_pynvml`` builds a module whose functions
are those of a ``FakeNvmlState`` (GPUs, clock, init refcount, call log), with the codes
and exceptions of ``errors``."""

from __future__ import annotations

import types
from collections.abc import Sequence

from footprint.bench.fake_pynvml import errors
from footprint.bench.fake_pynvml.errors import (
    ERROR_STRINGS,
    NVML_ERROR_INVALID_ARGUMENT,
    NVML_ERROR_NOT_FOUND,
    NVML_ERROR_NOT_SUPPORTED,
    NVML_ERROR_UNINITIALIZED,
    NVMLError,
    nvmlExceptionClass,
)
from footprint.bench.fake_pynvml.gpu import FakeClock, FakeGpu, SystemClock
from footprint.bench.fake_pynvml.mig import FakeMigAttributes, FakeMigSlice

NVML_DEVICE_MIG_DISABLE = 0
NVML_DEVICE_MIG_ENABLE = 1


class _Handle:
    """An opaque device handle, like ``c_nvmlDevice_t``: a GPU's, or one of its MIG
    devices' (``_mig`` set)."""

    __slots__ = ("_gpu", "_mig", "_owner")

    def __init__(self, gpu: FakeGpu, owner: FakeNvmlState, mig: FakeMigSlice | None = None) -> None:
        self._gpu = gpu
        self._owner = owner
        self._mig = mig

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

    def _handle(self, handle: object) -> _Handle:
        self._require_init()
        if not isinstance(handle, _Handle) or handle._owner is not self:
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        return handle

    def _gpu(self, handle: object) -> FakeGpu:
        """The GPU of a whole-GPU handle; a MIG device's handle has no energy, power or
        power limit of its own (``NVML_ERROR_NOT_SUPPORTED``)."""
        checked = self._handle(handle)
        if checked._mig is not None:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return checked._gpu

    def _parent(self, handle: object) -> FakeGpu:
        """The GPU of a whole-GPU handle for the MIG queries made on it."""
        checked = self._handle(handle)
        if checked._mig is not None:
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        return checked._gpu

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
        return ERROR_STRINGS.get(code, "Unknown Error")

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
            for mig in gpu.mig_slices if gpu.mig_mode == NVML_DEVICE_MIG_ENABLE else []:
                if mig.uuid == text:
                    gpu._check_alive("nvmlDeviceGetHandleByUUID")
                    return _Handle(gpu, self, mig)
        raise NVMLError(NVML_ERROR_NOT_FOUND)

    def nvmlDeviceGetUUID(self, handle: object) -> str:
        checked = self._handle(handle)
        checked._gpu._check_alive("nvmlDeviceGetUUID")
        return checked._mig.uuid if checked._mig else checked._gpu.uuid

    def nvmlDeviceGetName(self, handle: object) -> str:
        checked = self._handle(handle)
        checked._gpu._check_alive("nvmlDeviceGetName")
        name = checked._gpu.name
        return f"{name} MIG {checked._mig.profile}" if checked._mig else name

    # --- MIG (nvidia-ml-py 11.450+) -------------------------------------------------------

    def nvmlDeviceGetMigMode(self, handle: object) -> list[int]:
        gpu = self._parent(handle)
        gpu._check_alive("nvmlDeviceGetMigMode")
        if gpu.mig_mode is None:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return [gpu.mig_mode, gpu.mig_mode]

    def nvmlDeviceGetMaxMigDeviceCount(self, handle: object) -> int:
        gpu = self._parent(handle)
        gpu._check_alive("nvmlDeviceGetMaxMigDeviceCount")
        if gpu.mig_mode is None:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return gpu.max_mig_devices

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: object, index: int) -> _Handle:
        gpu = self._parent(handle)
        gpu._check_alive("nvmlDeviceGetMigDeviceHandleByIndex")
        if gpu.mig_mode is None:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        if not 0 <= index < gpu.max_mig_devices:
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        if gpu.mig_mode != NVML_DEVICE_MIG_ENABLE or index >= len(gpu.mig_slices):
            raise NVMLError(NVML_ERROR_NOT_FOUND)
        return _Handle(gpu, self, gpu.mig_slices[index])

    def nvmlDeviceGetDeviceHandleFromMigDeviceHandle(self, handle: object) -> _Handle:
        checked = self._handle(handle)
        if checked._mig is None:
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        return _Handle(checked._gpu, self)

    def nvmlDeviceIsMigDeviceHandle(self, handle: object) -> int:
        return int(self._handle(handle)._mig is not None)

    def nvmlDeviceGetAttributes(self, handle: object) -> FakeMigAttributes:
        checked = self._handle(handle)
        checked._gpu._check_alive("nvmlDeviceGetAttributes")
        return FakeMigAttributes(checked._mig, multiprocessors=108, memory_mb=81920)

    def nvmlDeviceGetGpuInstanceId(self, handle: object) -> int:
        checked = self._handle(handle)
        if checked._mig is None:
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        return checked._mig.gpu_instance_id

    def nvmlDeviceGetComputeInstanceId(self, handle: object) -> int:
        checked = self._handle(handle)
        if checked._mig is None:
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        return checked._mig.compute_instance_id

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
    "nvmlDeviceGetMigMode",
    "nvmlDeviceGetMaxMigDeviceCount",
    "nvmlDeviceGetMigDeviceHandleByIndex",
    "nvmlDeviceGetDeviceHandleFromMigDeviceHandle",
    "nvmlDeviceIsMigDeviceHandle",
    "nvmlDeviceGetAttributes",
    "nvmlDeviceGetGpuInstanceId",
    "nvmlDeviceGetComputeInstanceId",
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
    for name in dir(errors):
        if name.startswith(("NVML_", "NVMLError")):
            setattr(module, name, getattr(errors, name))
    setattr(module, "nvmlExceptionClass", nvmlExceptionClass)  # noqa: B010 (a module built here)
    setattr(module, "NVML_DEVICE_MIG_DISABLE", NVML_DEVICE_MIG_DISABLE)  # noqa: B010
    setattr(module, "NVML_DEVICE_MIG_ENABLE", NVML_DEVICE_MIG_ENABLE)  # noqa: B010
    for name in _FUNCTIONS:
        setattr(module, name, getattr(state, name))
    setattr(module, "fake_state", state)  # noqa: B010
    setattr(module, "fake_clock", state.clock)  # noqa: B010
    return module
