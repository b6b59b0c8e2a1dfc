"""NVIDIA GPU energy through NVML (the ``pynvml`` module of ``nvidia-ml-py``).

Per device, the method is chosen once, when the sensor is created:

- ``counter``: ``nvmlDeviceGetTotalEnergyConsumption``, a cumulative counter in mJ
  (Volta and later). A counter that goes down (driver reload, GPU reset) is stitched so the
  series stays monotonic.
- ``power``: where the counter raises ``NVMLError_NotSupported`` (or the driver lacks the
  function), ``nvmlDeviceGetPowerUsage`` in mW, sampled at every read and integrated by
  the trapezoid rule into cumulative J.

MIG: a GPU with MIG mode on is measured as its MIG devices (``MIG-…`` UUIDs), since
calls run on those. NVML has no energy counter or power reading per MIG device, only per
physical GPU, so each MIG device is a virtual device whose cumulative energy is its
parent's times a static share: its compute-instance slices over those of every MIG device
on that GPU (``mig_shares``). The parent is read once per sample for all its slices, so
the slices' energies always add up to the parent's (and a daemon measuring them all counts
the GPU once); idle energy is split in the same proportion.

Devices are named by UUID (``GPU-…``, ``MIG-…``). ``CUDA_VISIBLE_DEVICES`` is mapped to NVML indices
the way CUDA does it (``parse_cuda_visible_devices``); integer entries are taken as NVML
indices, which match CUDA's order under ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` and on machines
whose GPUs are all the same model (CUDA's default "fastest first" order differs otherwise).

Importing this module imports nothing from NVML: ``pynvml`` is imported, and NVML
initialised, only when a sensor is created.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from footprint.sensors.base import (
    ENERGY_COUNTER,
    ENERGY_POWER,
    DeviceInfo,
    Sensor,
    SensorError,
)

_INTEGER_ENTRY = re.compile(r"[0-9]+")


def parse_cuda_visible_devices(value: str | None, uuids: list[str]) -> list[int]:
    """Map a ``CUDA_VISIBLE_DEVICES`` value to NVML indices, in CUDA index order.

    ``uuids`` are the NVML device UUIDs in NVML index order. ``None`` selects every device;
    an empty value or ``-1`` selects none. Entries are comma-separated, whitespace around
    them is ignored, and each is an integer NVML index or a ``GPU-…`` UUID or unique UUID
    prefix. As in CUDA, the first invalid entry (not a number, out of range, unknown or
    ambiguous UUID) ends the list: it and everything after it are ignored.

    Raises ``ValueError`` for a device named twice (CUDA then sees no device at all) and
    for ``MIG-…`` entries: this function knows only whole GPUs (``select_visible`` maps
    MIG devices to their parents).
    """
    if value is None:
        return list(range(len(uuids)))
    selected: list[int] = []
    for raw_entry in value.split(","):
        entry = raw_entry.strip()
        if entry.startswith("MIG-"):
            raise ValueError(
                f"CUDA_VISIBLE_DEVICES entry {entry!r} is a MIG device, and no GPU here has "
                "MIG devices"
            )
        index = _resolve_entry(entry, uuids)
        if index is None:
            break
        if index in selected:
            raise ValueError(
                f"CUDA_VISIBLE_DEVICES={value!r} names GPU {uuids[index]} more than once"
            )
        selected.append(index)
    return selected


def _resolve_entry(entry: str, uuids: list[str]) -> int | None:
    """NVML index named by one ``CUDA_VISIBLE_DEVICES`` entry, or None if it is invalid."""
    if _INTEGER_ENTRY.fullmatch(entry):
        index = int(entry)
        return index if index < len(uuids) else None
    if entry.startswith("GPU-"):
        matches = [i for i, uuid in enumerate(uuids) if uuid.startswith(entry)]
        return matches[0] if len(matches) == 1 else None
    return None


@dataclass(frozen=True)
class MigDevice:
    """One MIG device of a GPU with MIG mode on, as NVML describes it."""

    uuid: str
    handle: Any
    name: str
    profile: str
    gpu_slices: int
    compute_slices: int


def mig_shares(migs: list[MigDevice]) -> list[float]:
    """Each MIG device's share of its GPU's energy: its compute-instance slices over the
    sum of every MIG device's on that GPU (equal shares where NVML gives no slice counts).

    Over the devices that exist rather than the GPU's total: energy drawn while part of
    the GPU is unallocated has no other owner, and the shares add up to 1, so the slices
    account for all of the counter (the same as slices/total when every slice is used).
    """
    total = sum(m.compute_slices for m in migs)
    if total <= 0 or any(m.compute_slices <= 0 for m in migs):
        return [1.0 / len(migs)] * len(migs)
    return [m.compute_slices / total for m in migs]


def select_visible(
    value: str | None, uuids: list[str], migs: list[list[MigDevice]]
) -> list[tuple[int, int | None]]:
    """Map a ``CUDA_VISIBLE_DEVICES`` value to (NVML index, MIG position or None), in CUDA
    index order; ``migs[i]``: the MIG devices of NVML GPU ``i`` (empty: MIG off).

    A GPU with MIG devices stands for them all, in their order (unset variable, integer
    index or ``GPU-…`` UUID); a ``MIG-…`` entry (full UUID or unique prefix) selects one.
    Otherwise as ``parse_cuda_visible_devices``: the first invalid entry ends the list, a
    device named twice raises ``ValueError``.
    """
    if value is None or not any(migs):
        return [
            (index, position)
            for index in parse_cuda_visible_devices(value, uuids)
            for position in _slices_of(migs, index)
        ]
    selected: list[tuple[int, int | None]] = []
    for raw_entry in value.split(","):
        entry = raw_entry.strip()
        picked: list[tuple[int, int | None]]
        if entry.startswith("MIG-"):
            found: list[tuple[int, int | None]] = [
                (index, position)
                for index, devices in enumerate(migs)
                for position, mig in enumerate(devices)
                if mig.uuid.startswith(entry)
            ]
            picked = found if len(found) == 1 else []
        else:
            index = _resolve_entry(entry, uuids)
            picked = [] if index is None else [(index, p) for p in _slices_of(migs, index)]
        if not picked:
            break
        for device in picked:
            if device in selected:
                raise ValueError(f"CUDA_VISIBLE_DEVICES={value!r} names a device more than once")
            selected.append(device)
    return selected


def _slices_of(migs: list[list[MigDevice]], index: int) -> list[int | None]:
    """The MIG positions of NVML GPU ``index``, or ``[None]`` (the whole GPU)."""
    devices = migs[index] if index < len(migs) else []
    return list(range(len(devices))) if devices else [None]


class _CounterReader:
    """Cumulative J from the NVML total energy counter (mJ), stitched across resets."""

    method = ENERGY_COUNTER

    def __init__(self, nvml: Any, handle: Any, first_raw_mj: int) -> None:
        self._nvml = nvml
        self._handle = handle
        self._origin_mj = first_raw_mj
        self._last_raw_mj = first_raw_mj
        self._reset_offset_mj = 0

    def read_j(self) -> float:
        raw_mj = int(self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle))
        if raw_mj < self._last_raw_mj:
            self._reset_offset_mj += self._last_raw_mj
        self._last_raw_mj = raw_mj
        return (raw_mj + self._reset_offset_mj - self._origin_mj) / 1000.0


class _PowerIntegrator:
    """Cumulative J from polled power (mW), trapezoid between consecutive good samples."""

    method = ENERGY_POWER

    def __init__(self, nvml: Any, handle: Any, now_s: Callable[[], float]) -> None:
        self._nvml = nvml
        self._handle = handle
        self._now_s = now_s
        self._last_power_w: float | None = None
        self._last_t_s = 0.0
        self._energy_j = 0.0

    def read_j(self) -> float:
        power_w = int(self._nvml.nvmlDeviceGetPowerUsage(self._handle)) / 1000.0
        t_s = self._now_s()
        if self._last_power_w is not None and t_s > self._last_t_s:
            self._energy_j += 0.5 * (self._last_power_w + power_w) * (t_s - self._last_t_s)
        self._last_power_w = power_w
        self._last_t_s = t_s
        return self._energy_j


class NvmlSensor(Sensor):
    """Cumulative energy in J of the NVIDIA GPUs this process can see, read through NVML.

    ``visible_devices`` is a ``CUDA_VISIBLE_DEVICES`` value (default: the environment's;
    unset means every GPU). ``nvml`` is the ``pynvml`` module (injectable for tests),
    ``now_s`` the monotonic clock in s used to integrate polled power.

    Raises ``SensorError`` when NVML cannot be initialised or enumerated and ``ValueError``
    for an unusable ``CUDA_VISIBLE_DEVICES``. Devices without a usable energy reading are
    left out and listed in ``skipped`` (UUID or ``nvml-index-N`` -> reason).
    """

    def __init__(
        self,
        visible_devices: str | None = None,
        *,
        nvml: ModuleType | Any = None,
        now_s: Callable[[], float] = time.monotonic,
    ) -> None:
        if nvml is None:
            import pynvml

            nvml = pynvml
        if visible_devices is None:
            visible_devices = os.environ.get("CUDA_VISIBLE_DEVICES")
        self._nvml = nvml
        self._now_s = now_s
        self._lock = threading.Lock()
        self._read_errors = 0
        self._closed = False
        self._devices: list[DeviceInfo] = []
        # One reader per physical GPU measured; each device reads one of them, times its
        # share (1.0 for a whole GPU, less for a MIG device).
        self._readers: list[_CounterReader | _PowerIntegrator] = []
        self._lost: list[bool] = []
        self._reader_of: list[int] = []
        self._share_of: list[float] = []
        self.visible_devices = visible_devices
        self.skipped: dict[str, str] = {}
        self.nvml_device_count = 0
        self.visible_device_count = 0
        self.driver_version: str | None = None
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as err:
            raise SensorError(_init_failure_reason(nvml, err)) from err
        try:
            self._discover(visible_devices)
        except BaseException:
            self._shutdown()
            raise

    def _discover(self, visible_devices: str | None) -> None:
        nvml = self._nvml
        try:
            self.driver_version = _text(nvml.nvmlSystemGetDriverVersion())
        except nvml.NVMLError:
            self.driver_version = None
        try:
            self.nvml_device_count = int(nvml.nvmlDeviceGetCount())
        except nvml.NVMLError as err:
            raise SensorError(f"NVML could not count the GPUs: {err}") from err
        handles: list[Any] = []
        uuids: list[str] = []
        for nvml_index in range(self.nvml_device_count):
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(nvml_index)
                uuid = _text(nvml.nvmlDeviceGetUUID(handle))
            except nvml.NVMLError as err:
                handle, uuid = None, ""
                self.skipped[f"nvml-index-{nvml_index}"] = f"NVML could not open it: {err}"
            handles.append(handle)
            uuids.append(uuid)
        migs = [self._mig_devices(handle) if handle is not None else [] for handle in handles]
        selected = select_visible(visible_devices, uuids, migs)
        self.visible_device_count = len(selected)
        reader_at: dict[int, int | None] = {}  # NVML index -> position in _readers
        for cuda_index, (nvml_index, mig_position) in enumerate(selected):
            handle, uuid = handles[nvml_index], uuids[nvml_index]
            if handle is None:
                continue
            if nvml_index not in reader_at:
                reader = self._probe(handle, uuid)
                reader_at[nvml_index] = None if reader is None else len(self._readers)
                if reader is not None:
                    self._readers.append(reader)
                    self._lost.append(False)
            position = reader_at[nvml_index]
            if position is None:
                continue
            method = self._readers[position].method
            device = DeviceInfo(
                index=cuda_index,
                uuid=uuid,
                name=self._name(handle),
                kind="gpu",
                energy_method=method,
                max_power_w=self._power_limit_w(handle),
            )
            share = 1.0
            if mig_position is not None:
                devices = migs[nvml_index]
                share = mig_shares(devices)[mig_position]
                device = _mig_info(device, devices[mig_position], share)
            self._reader_of.append(position)
            self._share_of.append(share)
            self._devices.append(device)

    def _mig_devices(self, handle: Any) -> list[MigDevice]:
        """The MIG devices of a GPU with MIG mode on; [] for any other (or on old bindings)."""
        nvml = self._nvml
        try:
            current_mode = nvml.nvmlDeviceGetMigMode(handle)[0]
            count = int(nvml.nvmlDeviceGetMaxMigDeviceCount(handle))
        except (nvml.NVMLError, AttributeError):
            return []
        if current_mode != getattr(nvml, "NVML_DEVICE_MIG_ENABLE", 1):
            return []
        devices = []
        for position in range(count):
            try:
                mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, position)
            except nvml.NVMLError:  # NOT_FOUND: no MIG device at this index
                continue
            try:
                uuid = _text(nvml.nvmlDeviceGetUUID(mig))
                attributes = nvml.nvmlDeviceGetAttributes(mig)
            except nvml.NVMLError as err:
                self.skipped[f"mig-index-{position}"] = f"NVML could not describe it: {err}"
                continue
            name = self._name(mig)
            gpu_slices = int(attributes.gpuInstanceSliceCount)
            compute_slices = int(attributes.computeInstanceSliceCount)
            profile = name.partition(" MIG ")[2] or _profile(
                gpu_slices, compute_slices, int(attributes.memorySizeMB)
            )
            devices.append(MigDevice(uuid, mig, name, profile, gpu_slices, compute_slices))
        return devices

    def _probe(self, handle: Any, uuid: str) -> _CounterReader | _PowerIntegrator | None:
        """The energy reader for one device, or None (reason put in ``skipped``)."""
        nvml = self._nvml
        try:
            first_raw_mj = int(nvml.nvmlDeviceGetTotalEnergyConsumption(handle))
        except (nvml.NVMLError_NotSupported, nvml.NVMLError_FunctionNotFound) as err:
            counter_error = err
        except nvml.NVMLError as err:
            self.skipped[uuid] = f"energy counter read failed: {err}"
            return None
        else:
            return _CounterReader(nvml, handle, first_raw_mj)
        try:
            nvml.nvmlDeviceGetPowerUsage(handle)
        except nvml.NVMLError as err:
            self.skipped[uuid] = f"no energy counter ({counter_error}) and no power reading ({err})"
            return None
        return _PowerIntegrator(nvml, handle, self._now_s)

    def _power_limit_w(self, handle: Any) -> float | None:
        """The enforced power limit in W (mW in NVML), the most the GPU draws for long;
        None where the driver does not say."""
        try:
            limit_mw = int(self._nvml.nvmlDeviceGetEnforcedPowerLimit(handle))
        except (self._nvml.NVMLError, AttributeError):
            return None
        return limit_mw / 1000.0 if limit_mw > 0 else None

    def _name(self, handle: Any) -> str:
        try:
            return _text(self._nvml.nvmlDeviceGetName(handle))
        except self._nvml.NVMLError:
            return "NVIDIA GPU"

    @property
    def devices(self) -> list[DeviceInfo]:
        return list(self._devices)

    @property
    def read_errors(self) -> int:
        return self._read_errors

    @property
    def lost_devices(self) -> list[str]:
        """UUIDs of devices that reported ``GPU is lost``; they are no longer read."""
        return [
            info.uuid
            for info, position in zip(self._devices, self._reader_of, strict=True)
            if self._lost[position]
        ]

    def read_energy_j(self) -> list[float | None]:
        """Cumulative J per device since the sensor was created (power: since first read).

        A failed device read gives ``None`` and counts in ``read_errors``; a device that
        reported ``GPU is lost`` gives ``None`` from then on without being queried.
        """
        nvml = self._nvml
        with self._lock:
            if self._closed:
                raise SensorError("NVML sensor is closed")
            physical_j: list[float | None] = []  # each GPU read once, for all its slices
            for position, reader in enumerate(self._readers):
                energy_j: float | None = None
                if not self._lost[position]:
                    try:
                        energy_j = reader.read_j()
                    except nvml.NVMLError_GpuIsLost:
                        self._lost[position] = True
                    except nvml.NVMLError:
                        pass
                physical_j.append(energy_j)
            energies_j: list[float | None] = []
            for position, share in zip(self._reader_of, self._share_of, strict=True):
                energy_j = physical_j[position]
                if energy_j is None:
                    self._read_errors += 1
                energies_j.append(
                    energy_j if energy_j is None or share == 1.0 else energy_j * share
                )
            if energies_j and all(e is None for e in energies_j):
                raise SensorError(f"NVML: every GPU read failed ({len(energies_j)} devices)")
            return energies_j

    def close(self) -> None:
        """Shut NVML down (once; later calls do nothing)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._shutdown()

    def _shutdown(self) -> None:
        with contextlib.suppress(self._nvml.NVMLError):
            self._nvml.nvmlShutdown()


def _mig_info(device: DeviceInfo, mig: MigDevice, share: float) -> DeviceInfo:
    """A MIG device's ``DeviceInfo`` from its parent's: its own UUID and name, the
    parent's method, a share of the parent's power limit."""
    limit_w = device.max_power_w
    return DeviceInfo(
        index=device.index,
        uuid=mig.uuid,
        name=mig.name,
        kind="gpu",
        energy_method=device.energy_method,
        max_power_w=None if limit_w is None else limit_w * share,
        parent_uuid=device.uuid,
        profile=mig.profile,
        share=share,
    )


def _profile(gpu_slices: int, compute_slices: int, memory_mb: int) -> str:
    """A MIG profile name (``3g.40gb``, ``1c.3g.40gb``) from NVML's attributes."""
    gpu_instance = f"{gpu_slices}g.{max(1, round(memory_mb / 1024))}gb"
    if compute_slices in (0, gpu_slices):
        return gpu_instance
    return f"{compute_slices}c.{gpu_instance}"


def _text(value: str | bytes) -> str:
    """NVML strings are ``str`` in nvidia-ml-py 12+, ``bytes`` in older bindings."""
    return value.decode() if isinstance(value, bytes) else str(value)


def _init_failure_reason(nvml: Any, err: Exception) -> str:
    if isinstance(err, nvml.NVMLError_LibraryNotFound):
        return f"NVML library not found (no NVIDIA driver on this machine?): {err}"
    if isinstance(err, nvml.NVMLError_DriverNotLoaded):
        return f"NVIDIA driver not loaded: {err}"
    return f"nvmlInit failed: {err}"


def open_nvml(
    visible_devices: str | None = None, *, nvml: ModuleType | Any = None
) -> tuple[NvmlSensor | None, str]:
    """An NVML sensor if at least one GPU is measurable, else ``(None, reason)``.

    For the ``auto`` sensor mode: never raises for a machine without NVML, without GPUs,
    or whose ``CUDA_VISIBLE_DEVICES`` hides them all; the reason is one sentence.
    """
    if nvml is None:
        try:
            import pynvml

            nvml = pynvml
        except ImportError as err:
            return None, f"pynvml is not importable (install nvidia-ml-py): {err}"
    try:
        sensor = NvmlSensor(visible_devices, nvml=nvml)
    except SensorError as err:
        return None, str(err)
    except ValueError as err:
        return None, f"unusable CUDA_VISIBLE_DEVICES: {err}"
    except Exception as err:  # auto mode must never break the host program
        return None, f"NVML sensor failed to start: {type(err).__name__}: {err}"
    if sensor.devices:
        return sensor, ""
    sensor.close()
    return None, _no_device_reason(sensor)


def _no_device_reason(sensor: NvmlSensor) -> str:
    if sensor.nvml_device_count == 0:
        return "NVML found no GPU on this machine"
    if sensor.visible_device_count == 0:
        return (
            f"CUDA_VISIBLE_DEVICES={sensor.visible_devices!r} hides all "
            f"{sensor.nvml_device_count} GPUs"
        )
    details = "; ".join(f"{name}: {reason}" for name, reason in sensor.skipped.items())
    return f"no GPU with a usable energy reading ({details})"
