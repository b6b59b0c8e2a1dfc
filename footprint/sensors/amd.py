"""AMD Instinct GPU energy through ROCm's AMD SMI library (the ``amdsmi`` Python module).

Per device, the method is chosen once, when the sensor is created:

- ``counter``: ``amdsmi_get_energy_count``: an energy accumulator (uint64) and its
  resolution in µJ (15.3 µJ on every ASIC so far); accumulator x resolution is the energy
  since the driver loaded. ROCm 6.2 and older call the accumulator ``power``. A counter that
  goes down is stitched: across the 64-bit wrap when the forward distance is short, else
  taken as a reset (GPU reset, driver reload) with the series carried on.
- ``power``: where the accumulator is not supported (e.g. a VM guest), socket power in W
  from ``amdsmi_get_power_info`` (``current_socket_power``, else ``average_socket_power``:
  MI300X reports the first only, MI210/MI250X the second), integrated by the trapezoid rule.

A dual-GCD MI250X is two processors on one board; the driver reports the package's power
and energy on the first die and 0 (or N/A) on the second (ROCm/rocm_smi_lib#160). Dies of one
board (same product serial) where exactly one reads energy and the others read 0 are one
measured device: the reporting die, with the others in ``covers_uuids`` (and, when this
process sees them, ``covers_indices``): a call on either die is a call on the package.

Device indices are HIP's, as the process sees them: the physical order is HIP's (amdsmi's
``hip_id`` where the library has ``amdsmi_get_gpu_enumeration_info``, ROCm 6.4+; else
sorted by KFD node id, which is the order HIP enumerates in), ``ROCR_VISIBLE_DEVICES``
selects from it (indices, or ``GPU-<unique id>`` as rocminfo prints it, or amdsmi UUIDs),
then ``HIP_VISIBLE_DEVICES`` (else ``CUDA_VISIBLE_DEVICES``, which HIP honours the same way)
selects from what ROCr left. As with CUDA, the first invalid entry ends a list.

Importing this module imports nothing from ROCm: ``amdsmi`` is imported, and initialised,
only when a sensor is created.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import ModuleType
from typing import Any

from footprint.sensors.base import ENERGY_COUNTER, ENERGY_POWER, DeviceInfo, Sensor, SensorError

VENDOR = "AMD"
# amdsmi_status_t values (amdsmi_wrapper.py) that the reasons name.
STATUS_NO_PERM = 10
STATUS_DRIVER_NOT_LOADED = 34
_COUNTER_MODULUS = 1 << 64
_POWER_FIELDS = ("current_socket_power", "average_socket_power", "socket_power")
_INTEGER_ENTRY = re.compile(r"[0-9]+")
_NOT_AVAILABLE = ("", "N/A")


@dataclass
class _Processor:
    """What discovery learnt of one amdsmi processor handle."""

    handle: Any
    uuid: str
    name: str
    hip_id: int
    asic_serial: int | None
    board_serial: str | None
    first_energy: tuple[int, float] | None  # (raw accumulator, resolution µJ)
    energy_error: str
    power_field: str | None
    power_error: str
    max_power_w: float | None
    first_power_w: float | None = None
    covered: list[_Processor] = field(default_factory=list)
    reporter: _Processor | None = None  # set on a silent die: whose reading holds its energy

    @property
    def silent(self) -> bool:
        """Reads no energy of its own: its accumulator reads 0, or it has none and its power
        reads 0 or N/A (the second die of a dual-GCD MI250X)."""
        if self.first_energy is not None:
            return self.first_energy[0] == 0
        return not self.first_power_w


def _energy_reading(reading: Mapping[str, Any]) -> tuple[int, float]:
    """(raw accumulator, resolution in µJ) from ``amdsmi_get_energy_count``'s dict; the
    accumulator is ``energy_accumulator`` from ROCm 6.3 on and ``power`` before."""
    raw = reading.get("energy_accumulator", reading.get("power"))
    resolution_uj = reading.get("counter_resolution")
    if not isinstance(raw, int) or not isinstance(resolution_uj, (int, float)):
        raise ValueError(f"unexpected energy count {dict(reading)!r}")
    if resolution_uj <= 0:
        raise ValueError(f"counter resolution {resolution_uj!r} µJ is not positive")
    return raw, float(resolution_uj)


class _CounterReader:
    """Cumulative J from the energy accumulator x its resolution (µJ), stitched across wraps
    and resets."""

    method = ENERGY_COUNTER

    def __init__(self, smi: Any, handle: Any, first: tuple[int, float]) -> None:
        self._smi = smi
        self._handle = handle
        self._last_raw = first[0]
        self._energy_j = 0.0

    def read_j(self) -> float:
        raw, resolution_uj = _energy_reading(self._smi.amdsmi_get_energy_count(self._handle))
        forward = (raw - self._last_raw) % _COUNTER_MODULUS
        if raw < self._last_raw and forward > _COUNTER_MODULUS // 2:
            forward = raw  # a reset (GPU reset, driver reload): counting from 0 again
        self._last_raw = raw
        self._energy_j += forward * resolution_uj / 1e6
        return self._energy_j


class _PowerIntegrator:
    """Cumulative J from polled socket power (W), trapezoid between consecutive reads."""

    method = ENERGY_POWER

    def __init__(self, smi: Any, handle: Any, power_field: str, now_s: Callable[[], float]) -> None:
        self._smi = smi
        self._handle = handle
        self._field = power_field
        self._now_s = now_s
        self._last_power_w: float | None = None
        self._last_t_s = 0.0
        self._energy_j = 0.0

    def read_j(self) -> float:
        power_w = self._smi.amdsmi_get_power_info(self._handle)[self._field]
        if not isinstance(power_w, (int, float)):
            raise ValueError(f"{self._field} is {power_w!r}")
        t_s = self._now_s()
        if self._last_power_w is not None and t_s > self._last_t_s:
            self._energy_j += 0.5 * (self._last_power_w + power_w) * (t_s - self._last_t_s)
        self._last_power_w = float(power_w)
        self._last_t_s = t_s
        return self._energy_j


def select_visible(value: str | None, ids: list[list[str]], variable: str) -> list[int]:
    """Positions in ``ids`` selected by one ``*_VISIBLE_DEVICES`` value, in its order.

    ``ids[i]`` are the names of device ``i`` (its UUIDs, any case). ``None`` selects all,
    ``""`` or ``-1`` none. Entries are indices or names; the first invalid one ends the list
    (as in CUDA and HIP). Raises ``ValueError`` for a device named twice.
    """
    if value is None:
        return list(range(len(ids)))
    selected: list[int] = []
    for raw_entry in value.split(","):
        entry = raw_entry.strip()
        if _INTEGER_ENTRY.fullmatch(entry):
            position: int | None = int(entry) if int(entry) < len(ids) else None
        else:
            lowered = entry.lower()
            matches = [i for i, names in enumerate(ids) if lowered and lowered in names]
            position = matches[0] if len(matches) == 1 else None
        if position is None:
            break
        if position in selected:
            raise ValueError(f"{variable}={value!r} names device {entry!r} more than once")
        selected.append(position)
    return selected


def _names(processor: _Processor) -> list[str]:
    """The lower-case names ROCR_VISIBLE_DEVICES may use for a processor."""
    names = [processor.uuid.lower()]
    if processor.asic_serial is not None:
        names.append(f"gpu-{processor.asic_serial:016x}")
    return names


class AmdSensor(Sensor):
    """Cumulative energy in J of the AMD GPUs this process can see, read through amdsmi.

    ``environ`` gives ``ROCR_VISIBLE_DEVICES``, ``HIP_VISIBLE_DEVICES`` and
    ``CUDA_VISIBLE_DEVICES`` (default: the process environment). ``smi`` is the ``amdsmi``
    module (injectable for tests), ``now_s`` the monotonic clock in s for polled power.

    Raises ``SensorError`` when amdsmi cannot be initialised or enumerated and ``ValueError``
    for an unusable visible-devices list. Devices without a usable reading are left out and
    listed in ``skipped`` (UUID -> reason).
    """

    vendor = VENDOR

    def __init__(
        self,
        environ: Mapping[str, str] | None = None,
        *,
        smi: ModuleType | Any = None,
        now_s: Callable[[], float] = time.monotonic,
    ) -> None:
        if smi is None:
            smi = _import_amdsmi()
        self._smi = smi
        self._environ = os.environ if environ is None else environ
        self._now_s = now_s
        self._lock = threading.Lock()
        self._read_errors = 0
        self._closed = False
        self._devices: list[DeviceInfo] = []
        self._readers: list[_CounterReader | _PowerIntegrator] = []
        self.skipped: dict[str, str] = {}
        self.die_indices: dict[str, int] = {}  # UUID -> HIP index, of every die this process sees
        self.processor_count = 0
        self.visible_count = 0
        self.visible_setting = ""
        try:
            smi.amdsmi_init(smi.AmdSmiInitFlags.INIT_AMD_GPUS)
        except smi.AmdSmiException as err:
            raise SensorError(_init_failure_reason(err)) from err
        try:
            self._discover()
        except BaseException:
            self._shutdown()
            raise

    def _discover(self) -> None:
        smi = self._smi
        try:
            handles = list(smi.amdsmi_get_processor_handles())
        except smi.AmdSmiException as err:
            raise SensorError(f"amdsmi could not list the GPUs: {_error_text(err)}") from err
        self.processor_count = len(handles)
        hip_ids = self._hip_ids(handles)
        processors = [self._probe(handle, hip_id) for handle, hip_id in zip(handles, hip_ids)]
        processors.sort(key=lambda p: p.hip_id)
        _group_dies(processors)
        visible = self._visible(processors)
        self.visible_count = len(visible)
        self._build_devices(visible)

    def _hip_ids(self, handles: list[Any]) -> list[int]:
        """HIP's index of each handle (amdsmi orders handles by PCI address, HIP need not)."""
        smi = self._smi
        with contextlib.suppress(
            smi.AmdSmiException, KeyError, TypeError, ValueError, AttributeError
        ):
            ids = [int(smi.amdsmi_get_gpu_enumeration_info(h)["hip_id"]) for h in handles]
            if len(set(ids)) == len(ids):
                return ids
        with contextlib.suppress(
            smi.AmdSmiException, KeyError, TypeError, ValueError, AttributeError
        ):
            nodes = [int(smi.amdsmi_get_gpu_kfd_info(h)["node_id"]) for h in handles]
            if len(set(nodes)) == len(nodes):
                order = sorted(range(len(handles)), key=lambda i: nodes[i])
                return [order.index(i) for i in range(len(handles))]
        return list(range(len(handles)))

    def _probe(self, handle: Any, hip_id: int) -> _Processor:
        """Identity, model and how the energy of one processor can be read."""
        smi = self._smi
        asic = self._call(smi.amdsmi_get_gpu_asic_info, handle) or {}
        board = self._call(smi.amdsmi_get_gpu_board_info, handle) or {}
        uuid = str(self._call(smi.amdsmi_get_gpu_device_uuid, handle) or f"amd-hip-{hip_id}")
        name = next(
            (str(v) for v in (asic.get("market_name"), board.get("product_name")) if _known(v)),
            "AMD GPU",
        )
        first_energy, energy_error = None, ""
        try:
            first_energy = _energy_reading(smi.amdsmi_get_energy_count(handle))
        except (smi.AmdSmiException, ValueError) as err:
            energy_error = f"no energy accumulator ({_error_text(err)})"
        power_field, power_error, first_power_w = None, "", None
        try:
            power = smi.amdsmi_get_power_info(handle)
            power_field = next((k for k in _POWER_FIELDS if isinstance(power.get(k), int)), None)
            if power_field is None:
                power_error = "no socket power reading (N/A)"
            else:
                first_power_w = float(power[power_field])
        except smi.AmdSmiException as err:
            power_error = f"no socket power reading ({_error_text(err)})"
        cap = self._call(smi.amdsmi_get_power_cap_info, handle) or {}
        cap_uw = cap.get("power_cap")
        return _Processor(
            handle=handle,
            uuid=uuid,
            name=name,
            hip_id=hip_id,
            asic_serial=_hex_or_none(asic.get("asic_serial")),
            board_serial=str(board["product_serial"])
            if _known(board.get("product_serial"))
            else None,
            first_energy=first_energy,
            energy_error=energy_error,
            power_field=power_field,
            power_error=power_error,
            max_power_w=cap_uw / 1e6 if isinstance(cap_uw, int) and cap_uw > 0 else None,
            first_power_w=first_power_w,
        )

    def _call(self, function: Callable[[Any], Any], handle: Any) -> Any:
        """``function(handle)``, or None where the library raises."""
        try:
            return function(handle)
        except self._smi.AmdSmiException:
            return None

    def _visible(self, processors: list[_Processor]) -> list[_Processor]:
        """The processors this process sees, in its HIP index order."""
        rocr = self._environ.get("ROCR_VISIBLE_DEVICES")
        after_rocr = [
            processors[i]
            for i in select_visible(rocr, [_names(p) for p in processors], "ROCR_VISIBLE_DEVICES")
        ]
        variable = "HIP_VISIBLE_DEVICES"
        hip = self._environ.get(variable)
        if hip is None:
            variable = "CUDA_VISIBLE_DEVICES"
            hip = self._environ.get(variable)
        settings = [f"ROCR_VISIBLE_DEVICES={rocr!r}"] if rocr is not None else []
        if hip is not None:
            settings.append(f"{variable}={hip!r}")
        self.visible_setting = ", ".join(settings)
        names = [_names(p) for p in after_rocr]
        return [after_rocr[i] for i in select_visible(hip, names, variable)]

    def _build_devices(self, visible: list[_Processor]) -> None:
        """One device per meter: a die that reports, with the silent dies of its board."""
        by_meter: dict[int, int] = {}  # id(meter processor) -> position in self._devices
        for hip_index, processor in enumerate(visible):
            self.die_indices[processor.uuid] = hip_index
            meter = processor.reporter or processor
            position = by_meter.get(id(meter))
            if position is not None:
                info = self._devices[position]
                self._devices[position] = _with_cover(info, hip_index)
                continue
            reader = self._reader(meter)
            if reader is None:
                continue
            by_meter[id(meter)] = len(self._devices)
            self._readers.append(reader)
            self._devices.append(
                DeviceInfo(
                    index=hip_index,
                    uuid=meter.uuid,
                    name=meter.name,
                    kind="gpu",
                    energy_method=reader.method,
                    max_power_w=meter.max_power_w,
                    vendor=VENDOR,
                    covers_uuids=tuple(die.uuid for die in meter.covered),
                )
            )

    def _reader(self, processor: _Processor) -> _CounterReader | _PowerIntegrator | None:
        """The energy reader of a reporting processor, or None (reason in ``skipped``)."""
        if processor.first_energy is not None:
            return _CounterReader(self._smi, processor.handle, processor.first_energy)
        if processor.power_field is not None:
            return _PowerIntegrator(self._smi, processor.handle, processor.power_field, self._now_s)
        self.skipped[processor.uuid] = f"{processor.energy_error} and {processor.power_error}"
        return None

    @property
    def devices(self) -> list[DeviceInfo]:
        return list(self._devices)

    @property
    def read_errors(self) -> int:
        return self._read_errors

    def read_energy_j(self) -> list[float | None]:
        """Cumulative J per device since the sensor was created (power: since first read);
        ``None`` where a read failed (counted in ``read_errors``)."""
        smi = self._smi
        with self._lock:
            if self._closed:
                raise SensorError("amdsmi sensor is closed")
            energies_j: list[float | None] = []
            for reader in self._readers:
                try:
                    energies_j.append(reader.read_j())
                except (smi.AmdSmiException, ValueError, KeyError):
                    self._read_errors += 1
                    energies_j.append(None)
            if energies_j and all(e is None for e in energies_j):
                raise SensorError(f"amdsmi: every GPU read failed ({len(energies_j)} devices)")
            return energies_j

    def close(self) -> None:
        """Shut amdsmi down (once; later calls do nothing)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._shutdown()

    def _shutdown(self) -> None:
        with contextlib.suppress(self._smi.AmdSmiException):
            self._smi.amdsmi_shut_down()


def _with_cover(info: DeviceInfo, hip_index: int) -> DeviceInfo:
    """``info`` also measuring the die this process sees at ``hip_index``."""
    return replace(info, covers_indices=(*info.covers_indices, hip_index))


def _group_dies(processors: list[_Processor]) -> None:
    """Dies of one board where exactly one reads energy: the silent ones are its cover."""
    boards: dict[str, list[_Processor]] = {}
    for processor in processors:
        if processor.board_serial is not None:
            boards.setdefault(processor.board_serial, []).append(processor)
    for dies in boards.values():
        if len(dies) < 2:
            continue
        reporting = [die for die in dies if not die.silent]
        if len(reporting) != 1:
            continue
        for die in dies:
            if die is not reporting[0]:
                die.reporter = reporting[0]
                reporting[0].covered.append(die)


def _known(value: object) -> bool:
    return value is not None and str(value).strip() not in _NOT_AVAILABLE


def _hex_or_none(value: object) -> int | None:
    try:
        return int(str(value), 16) if _known(value) else None
    except ValueError:
        return None


def _error_text(err: BaseException) -> str:
    """One line for an amdsmi exception (its ``__str__`` spans two)."""
    info = getattr(err, "get_error_info", None)
    if callable(info):
        return str(info())
    return " ".join(str(err).split()) or type(err).__name__


def _init_failure_reason(err: BaseException) -> str:
    code = getattr(err, "get_error_code", lambda: None)()
    if code == STATUS_DRIVER_NOT_LOADED:
        return f"amdgpu driver not loaded (no AMD GPU on this machine?): {_error_text(err)}"
    if code == STATUS_NO_PERM:
        return (
            f"amdsmi_init: permission denied ({_error_text(err)}); the user needs access to "
            "/dev/kfd and /dev/dri (the video and render groups)"
        )
    return f"amdsmi_init failed: {_error_text(err)}"


def _import_amdsmi() -> ModuleType:
    """``import amdsmi``, with the text it prints when ROCm's library is missing kept off
    stdout; raises ``ImportError`` with the reason when it cannot be used."""
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured):
            import amdsmi  # type: ignore[import-not-found,unused-ignore]
    except ImportError as err:
        raise ImportError(f"amdsmi is not importable (install footprint[amd]): {err}") from err
    except Exception as err:  # OSError, KeyError: the module found no libamd_smi.so
        said = " ".join(captured.getvalue().split())
        raise ImportError(
            "amdsmi is installed but cannot load ROCm's libamd_smi.so (is ROCm installed? "
            f"set ROCM_PATH): {type(err).__name__}: {err}" + (f" ({said})" if said else "")
        ) from err
    return amdsmi  # type: ignore[no-any-return,unused-ignore]


def open_amd(
    environ: Mapping[str, str] | None = None, *, smi: ModuleType | Any = None
) -> tuple[AmdSensor | None, str]:
    """An AMD sensor if at least one GPU is measurable, else ``(None, reason)``.

    For the ``auto`` sensor mode: never raises for a machine without ROCm, without AMD
    GPUs, or whose visible-devices variables hide them all; the reason is one sentence.
    """
    if smi is None:
        try:
            smi = _import_amdsmi()
        except ImportError as err:
            return None, str(err)
    try:
        sensor = AmdSensor(environ, smi=smi)
    except SensorError as err:
        return None, str(err)
    except ValueError as err:
        return None, f"unusable visible-devices setting: {err}"
    except Exception as err:  # auto mode must never break the host program
        return None, f"amdsmi sensor failed to start: {type(err).__name__}: {err}"
    if sensor.devices:
        return sensor, ""
    sensor.close()
    return None, _no_device_reason(sensor)


def _no_device_reason(sensor: AmdSensor) -> str:
    if sensor.processor_count == 0:
        return "amdsmi found no AMD GPU on this machine"
    if sensor.visible_count == 0:
        return f"{sensor.visible_setting} hides all {sensor.processor_count} AMD GPUs"
    details = "; ".join(f"{name}: {reason}" for name, reason in sensor.skipped.items())
    return f"no AMD GPU with a usable energy reading ({details})"
