"""The runtime's device slots: GPUs first, then CPU packages, one resolver each.

Maps the GPU ids a call names (CUDA indices or UUIDs) to slots, and caches what the
records of calls measured on one set of slots share.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from footprint.sensors import ENERGY_MISSING, ENERGY_POWER
from footprint.sensors.base import DeviceInfo
from footprint.sensors.rapl import DRAM_UUID_PREFIX


@dataclass(frozen=True)
class DeviceSet:
    """What the records of calls measured on one set of device slots share."""

    gpu_slots: tuple[int, ...]
    cpu_slots: tuple[int, ...]
    gpus_json: str  # JSON list of the GPUs' UUIDs
    gpu_source: str  # energy_source when fully measured
    # The CPU packages' slots (``cpu_energy_j``), DRAM left out as before it was measured.
    package_slots: tuple[int, ...] = ()
    # No GPU measured in this process: the calls' energy is the CPU's (packages and DRAM).
    on_cpu: bool = False


class DeviceSlots:
    """Slot numbers of the measured devices, and the slots of each call's ``gpus``.

    A call that names unknown GPU ids (or an empty list) is counted in
    ``unknown_gpu_spans`` and warned about once, for every such call.
    """

    def __init__(
        self,
        gpu_devices: list[DeviceInfo],
        cpu_devices: list[DeviceInfo],
        warn_once: Callable[[str, str], None],
    ) -> None:
        self.gpu_devices = gpu_devices
        self.cpu_devices = cpu_devices
        self.by_slot = gpu_devices + cpu_devices
        self._warn_once = warn_once
        self._uuid_to_slot = {d.uuid: slot for slot, d in enumerate(gpu_devices)}
        self._cuda_to_slot = {d.index: slot for slot, d in enumerate(gpu_devices)}
        for slot, device in enumerate(gpu_devices):
            # Dies whose energy this device's counter reads (a dual-die MI250X reports the
            # package on its first die): a call on any of them shares that reading.
            for uuid in device.covers_uuids:
                self._uuid_to_slot.setdefault(uuid, slot)
            for index in device.covers_indices:
                self._cuda_to_slot.setdefault(index, slot)
        n_gpu = len(gpu_devices)
        self.all_gpus = tuple(range(n_gpu))
        self.cpu_slots = tuple(range(n_gpu, n_gpu + len(cpu_devices)))
        self.unknown_gpu_spans = 0
        self._device_sets: dict[tuple[int, ...], DeviceSet] = {}
        self._devices_of: dict[tuple | None, tuple[int, ...]] = {}

    def lookup(self, gpus: tuple | None) -> tuple[tuple[int, ...], list]:
        """GPU slots for a call's ``gpus`` (indices or UUIDs), and the unknown ids."""
        if gpus is None:
            return self.all_gpus, []
        slots, unknown = [], []
        for gpu in gpus:
            slot = (self._uuid_to_slot if isinstance(gpu, str) else self._cuda_to_slot).get(gpu)
            if slot is None:
                unknown.append(gpu)
            else:
                slots.append(slot)
        return tuple(dict.fromkeys(slots)), unknown

    def devices_of(self, gpus: tuple | None) -> tuple[int, ...]:
        """Every slot that measures a call on ``gpus``: its GPUs', then the CPUs'."""
        devices = self._devices_of.get(gpus)
        if devices is None:
            slots, valid = self._gpu_slots(gpus)
            devices = slots + self.cpu_slots
            if valid:  # invalid ids are warned about and counted for every call
                self._devices_of[gpus] = devices
        return devices

    def _gpu_slots(self, gpus: tuple | None) -> tuple[tuple[int, ...], bool]:
        """The GPU slots of a call, and whether its ids were all known (warned if not)."""
        slots, unknown = self.lookup(gpus)
        if (unknown or not slots) and gpus is not None and self.gpu_devices:
            self.unknown_gpu_spans += 1
            known = ", ".join(f"{d.index} ({d.uuid})" for d in self.gpu_devices)
            what = f"unknown GPU ids {unknown!r}" if unknown else "an empty gpus= list"
            self._warn_once(
                "unknown-gpus",
                f"footprint: a call named {what}; its energy is attributed to the GPUs "
                f"found among its ids only (none: no GPU energy). Known GPUs: {known}. "
                "Counted in stats()['unknown_gpu_spans'].",
            )
            return slots, False
        return slots, True

    def device_set(self, devices: tuple[int, ...]) -> DeviceSet:
        """What the records of calls measured on the slots ``devices`` share (cached)."""
        known = self._device_sets.get(devices)
        if known is None:
            n_gpu = len(self.gpu_devices)
            gpu_slots = tuple(s for s in devices if s < n_gpu)
            methods = {self.gpu_devices[s].energy_method for s in gpu_slots}
            source = ENERGY_POWER if ENERGY_POWER in methods else next(iter(methods), None)
            cpu_slots = tuple(s for s in devices if s >= n_gpu)
            known = DeviceSet(
                gpu_slots=gpu_slots,
                cpu_slots=cpu_slots,
                gpus_json=json.dumps([self.gpu_devices[s].uuid for s in gpu_slots]),
                gpu_source=source or ENERGY_MISSING,
                package_slots=tuple(
                    s for s in cpu_slots if not self.by_slot[s].uuid.startswith(DRAM_UUID_PREFIX)
                ),
                on_cpu=n_gpu == 0 and bool(cpu_slots),
            )
            self._device_sets[devices] = known
        return known
