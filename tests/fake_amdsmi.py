"""A fake ``amdsmi`` module (ROCm's AMD SMI Python bindings) for the AMD sensor's tests.

Built from the library's documentation and its Python interface (ROCm/amdsmi
``py-interface/amdsmi_interface.py``, ``amdsmi_exception.py``, README):

- ``amdsmi_get_energy_count(handle)`` returns ``{"energy_accumulator", "counter_resolution",
  "timestamp"}``; ``accumulator x resolution`` is the energy in µJ since the driver loaded
  (README: "energy_accumulator * counter_resolution = total_energy_consumption in
  micro-Joules"). The resolution is 15.3 µJ on every ASIC so far (rocm_smi.cc
  ``kEnergyCounterResolution = 15.3F``; README: "accumulated with a 15.3 uJ resolution"),
  a C ``float``. ROCm 6.2 and older name the accumulator ``power`` (no
  ``energy_accumulator`` key); 6.3 has both; 6.4 dropped ``power`` ("Deprecating in 6.4").
  The timestamp is in ns.
- ``amdsmi_get_power_info`` gives W (``amdsmi.h``: "the power in units of W"); a field the
  ASIC does not report is the string ``"N/A"`` (0xFFFF in the C struct). MI300X reports
  ``current_socket_power`` only, MI210/MI250X ``average_socket_power`` only (Zeus PR #203).
- ``amdsmi_get_power_cap_info`` gives µW.
- Failures raise ``AmdSmiLibraryException(code)`` (``get_error_code()`` is the positive
  ``amdsmi_status_t``, e.g. 2 NOT_SUPPORTED, 34 DRIVER_NOT_LOADED), retries
  ``AmdSmiRetryException``; a handle of the wrong type raises ``AmdSmiParameterException``.
- A dual-GCD MI250X is two processors on one board (same product serial); the driver
  reports the package's power and energy on the first and 0 / N/A on the second
  (ROCm/rocm_smi_lib#160 "N/A (Secondary die)", mlco2/codecarbon#1097, Zeus PR #203).
"""

from __future__ import annotations

import enum
import threading
import types
from collections.abc import Callable
from dataclasses import dataclass, field

RESOLUTION_UJ = 15.3  # float32 in the library: 15.300000190734863
NA = 0xFFFF  # what the C struct holds for a field the ASIC does not report

STATUS_INVAL = 1
STATUS_NOT_SUPPORTED = 2
STATUS_RETRY = 9
STATUS_NO_PERM = 10
STATUS_INIT_ERROR = 18
STATUS_NOT_INIT = 32
STATUS_DRIVER_NOT_LOADED = 34
_INFO = {
    STATUS_INVAL: "AMDSMI_STATUS_INVAL - Invalid parameters",
    STATUS_NOT_SUPPORTED: "AMDSMI_STATUS_NOT_SUPPORTED - Feature not supported",
    STATUS_RETRY: "AMDSMI_STATUS_RETRY - Retry operation",
    STATUS_NO_PERM: "AMDSMI_STATUS_NO_PERM - Permission Denied",
    STATUS_INIT_ERROR: "AMDSMI_STATUS_INIT_ERROR - Initialization error",
    STATUS_NOT_INIT: "AMDSMI_STATUS_NOT_INIT - Device not initialized",
    STATUS_DRIVER_NOT_LOADED: "AMDSMI_STATUS_DRIVER_NOT_LOADED - Driver not loaded",
}


class AmdSmiException(Exception):
    """Base class, as in amdsmi_exception.py."""


class AmdSmiLibraryException(AmdSmiException):
    def __init__(self, err_code: int) -> None:
        err_code = abs(err_code)
        super().__init__(err_code)
        self.err_code = err_code
        self.err_info = _INFO.get(
            err_code, "AMDSMI_STATUS_UNKNOWN_ERROR - An unknown error occurred"
        )

    def __str__(self) -> str:
        return f"Error code:\n\t{self.err_code} | {self.err_info}"

    def get_error_code(self) -> int:
        return self.err_code

    def get_error_info(self) -> str:
        return self.err_info


class AmdSmiRetryException(AmdSmiLibraryException):
    def __init__(self) -> None:
        super().__init__(STATUS_RETRY)


class AmdSmiParameterException(AmdSmiException):
    def __init__(self, received: object, expected: type) -> None:
        super().__init__(None)
        self.err_msg = (
            f"Invalid parameter:\nActual type: {type(received)}\nExpected type: {expected}"
        )

    def __str__(self) -> str:
        return self.err_msg


class AmdSmiInitFlags(enum.IntEnum):
    INIT_ALL_PROCESSORS = 0xFFFFFFFF
    INIT_AMD_CPUS = 1 << 0
    INIT_AMD_GPUS = 1 << 1


class ProcessorHandle:
    """Stands for ``amdsmi_wrapper.amdsmi_processor_handle`` (a ctypes pointer)."""

    def __init__(self, position: int) -> None:
        self.position = position


@dataclass
class FakeAmdGpu:
    """One AMD processor (a GPU, or one GCD of a dual-GCD MI250X)."""

    uuid: str
    market_name: str = "AMD Instinct MI300X"
    asic_serial: int = 0
    board_serial: str = ""
    hip_id: int | None = None  # None: the handle's position
    kfd_node_id: int | None = None
    power_w: float = 300.0  # what the package draws (0 for a second die)
    energy_supported: bool = True
    power_fields: tuple[str, ...] = ("current_socket_power",)
    power_cap_uw: int = 750_000_000
    accumulator: int = 123_456_789  # raw counts since the driver loaded
    silent: bool = False  # a second die: power N/A and a counter that stays at 0
    fail_next_reads: int = 0  # energy reads that raise AmdSmiRetryException
    _remainder_units: float = field(default=0.0, repr=False)

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass at ``power_w``: the accumulator counts whole 15.3 µJ steps."""
        if self.silent:
            return
        units = self.power_w * seconds * 1e6 / RESOLUTION_UJ + self._remainder_units
        whole = int(units)
        self._remainder_units = units - whole
        self.accumulator = (self.accumulator + whole) % (1 << 64)


class _Library:
    """The library's state and functions; ``make_fake_amdsmi`` puts them on a module."""

    def __init__(
        self,
        gpus: list[FakeAmdGpu],
        version: str,
        driver_loaded: bool,
        now_s: Callable[[], float] | None,
    ) -> None:
        self.gpus = gpus
        self.now_s = now_s
        self._last_s = now_s() if now_s else 0.0
        self._lock = threading.Lock()
        self.version = version
        self.driver_loaded = driver_loaded
        self.initialised = False
        self.shutdowns = 0
        self.time_ns = 1_000_000_000
        self.handles = [ProcessorHandle(i) for i in range(len(gpus))]

    def gpu_of(self, handle: object) -> FakeAmdGpu:
        if not isinstance(handle, ProcessorHandle):
            raise AmdSmiParameterException(handle, ProcessorHandle)
        if not self.initialised:
            raise AmdSmiLibraryException(STATUS_NOT_INIT)
        if self.now_s is not None:  # on a clock: the counters follow it
            with self._lock:
                now_s = self.now_s()
                self.advance(max(0.0, now_s - self._last_s))
                self._last_s = now_s
        return self.gpus[handle.position]

    def amdsmi_init(self, flag: AmdSmiInitFlags = AmdSmiInitFlags.INIT_AMD_GPUS) -> None:
        if not isinstance(flag, AmdSmiInitFlags):
            raise AmdSmiParameterException(flag, AmdSmiInitFlags)
        if not self.driver_loaded:
            raise AmdSmiLibraryException(STATUS_DRIVER_NOT_LOADED)
        self.initialised = True

    def amdsmi_shut_down(self) -> None:
        self.initialised = False
        self.shutdowns += 1

    def amdsmi_get_processor_handles(self) -> list[ProcessorHandle]:
        if not self.initialised:
            raise AmdSmiLibraryException(STATUS_NOT_INIT)
        return list(self.handles)

    def amdsmi_get_gpu_device_uuid(self, handle: object) -> str:
        return self.gpu_of(handle).uuid

    def amdsmi_get_gpu_asic_info(self, handle: object) -> dict:
        gpu = self.gpu_of(handle)
        return {
            "market_name": gpu.market_name or "N/A",
            "vendor_id": "0x1002",
            "vendor_name": "Advanced Micro Devices Inc. [AMD/ATI]",
            "asic_serial": f"0x{gpu.asic_serial:016X}" if gpu.asic_serial else "N/A",
            "target_graphics_version": "gfx942",
        }

    def amdsmi_get_gpu_board_info(self, handle: object) -> dict:
        gpu = self.gpu_of(handle)
        return {
            "model_number": "N/A",
            "product_serial": gpu.board_serial or "N/A",
            "fru_id": "N/A",
            "product_name": gpu.market_name or "N/A",
            "manufacturer_name": "AMD",
        }

    def amdsmi_get_energy_count(self, handle: object) -> dict:
        gpu = self.gpu_of(handle)
        if not gpu.energy_supported:
            raise AmdSmiLibraryException(STATUS_NOT_SUPPORTED)
        if gpu.fail_next_reads:
            gpu.fail_next_reads -= 1
            raise AmdSmiRetryException()
        reading: dict = {"counter_resolution": 15.300000190734863, "timestamp": self.time_ns}
        if self.version in ("6.2", "6.3"):
            reading["power"] = gpu.accumulator
        if self.version != "6.2":
            reading["energy_accumulator"] = gpu.accumulator
        return reading

    def amdsmi_get_power_info(self, handle: object) -> dict:
        gpu = self.gpu_of(handle)
        watts = NA if gpu.silent else round(gpu.power_w)
        raw = {
            key: (watts if key in gpu.power_fields else NA)
            for key in ("current_socket_power", "average_socket_power")
        }
        raw.update({"gfx_voltage": NA, "soc_voltage": NA, "mem_voltage": NA, "power_limit": NA})
        return {key: ("N/A" if value == NA else value) for key, value in raw.items()}

    def amdsmi_get_power_cap_info(self, handle: object) -> dict:
        cap = self.gpu_of(handle).power_cap_uw
        return {"power_cap": cap, "default_power_cap": cap, "dpm_cap": 0}

    def amdsmi_get_gpu_enumeration_info(self, handle: object) -> dict:
        gpu = self.gpu_of(handle)
        hip_id = gpu.hip_id if gpu.hip_id is not None else self.handles.index(handle)  # type: ignore[arg-type]
        return {"drm_render": 128, "drm_card": 0, "hsa_id": hip_id + 1, "hip_id": hip_id}

    def amdsmi_get_gpu_kfd_info(self, handle: object) -> dict:
        gpu = self.gpu_of(handle)
        node = gpu.kfd_node_id
        if node is None:
            node = self.handles.index(handle) + 1  # type: ignore[arg-type]
        return {"kfd_id": 1000 + node, "node_id": node, "current_partition_id": 0}

    def advance(self, seconds: float) -> None:
        """Test hook: time passes for every GPU."""
        self.time_ns += int(seconds * 1e9)
        for gpu in self.gpus:
            gpu.advance(seconds)


_FUNCTIONS = (
    "amdsmi_init",
    "amdsmi_shut_down",
    "amdsmi_get_processor_handles",
    "amdsmi_get_gpu_device_uuid",
    "amdsmi_get_gpu_asic_info",
    "amdsmi_get_gpu_board_info",
    "amdsmi_get_energy_count",
    "amdsmi_get_power_info",
    "amdsmi_get_power_cap_info",
    "amdsmi_get_gpu_kfd_info",
)


def make_fake_amdsmi(
    gpus: list[FakeAmdGpu],
    *,
    version: str = "6.4",
    driver_loaded: bool = True,
    enumeration_info: bool = True,
    now_s: Callable[[], float] | None = None,
) -> types.ModuleType:
    """A module with the parts of amdsmi's API the sensor uses, over ``gpus`` (handle order).

    ``version``: "6.2" (accumulator under ``power``), "6.3" (both keys) or "6.4" (only
    ``energy_accumulator``). ``enumeration_info``: whether ``amdsmi_get_gpu_enumeration_info``
    (ROCm 6.4+, gives ``hip_id``) exists; without it, ``amdsmi_get_gpu_kfd_info`` does.
    ``now_s``: a clock (s) the counters follow at every call; without it, time passes only
    through the test hook ``fake_advance(seconds)``. Other hooks: ``fake_gpus``,
    ``fake_state`` (``shutdowns``).
    """
    library = _Library(gpus, version, driver_loaded, now_s)
    module = types.ModuleType("amdsmi")
    names = [*_FUNCTIONS, *(["amdsmi_get_gpu_enumeration_info"] if enumeration_info else [])]
    for name in names:
        setattr(module, name, getattr(library, name))
    for exported in (
        AmdSmiException,
        AmdSmiLibraryException,
        AmdSmiRetryException,
        AmdSmiParameterException,
        AmdSmiInitFlags,
    ):
        setattr(module, exported.__name__, exported)
    module.fake_state = library  # type: ignore[attr-defined]
    module.fake_gpus = gpus  # type: ignore[attr-defined]
    module.fake_advance = library.advance  # type: ignore[attr-defined]
    return module


def mi300x_host(count: int = 8) -> list[FakeAmdGpu]:
    """An 8 x MI300X node (one OAM each): counters, current_socket_power only."""
    return [
        FakeAmdGpu(
            uuid=f"{0x31000000 + i:08x}-0000-1000-8000-{i:012x}",
            asic_serial=0x78CD0E3E671B4200 + i,
            board_serial=f"69244000{i:04d}",
        )
        for i in range(count)
    ]


def mi250x_card(card: int = 0) -> list[FakeAmdGpu]:
    """One MI250X OAM: two GCDs on one board; the first reports the package."""
    serial = f"6922{card:08d}"
    base = 0x5A50000000000000 + card * 16
    common = {
        "market_name": "AMD Instinct MI250X",
        "board_serial": serial,
        "power_fields": ("average_socket_power",),
        "power_cap_uw": 560_000_000,
    }
    return [
        FakeAmdGpu(
            uuid=f"2{card:07d}-0000-1000-8000-00000000000a",
            asic_serial=base,
            power_w=400.0,
            **common,  # type: ignore[arg-type]
        ),
        FakeAmdGpu(
            uuid=f"2{card:07d}-0000-1000-8000-00000000000b",
            asic_serial=base + 1,
            power_w=0.0,
            silent=True,
            accumulator=0,
            **common,  # type: ignore[arg-type]
        ),
    ]
