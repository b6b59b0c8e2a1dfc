"""The GPU validation script's AMD path (``--vendor amd``, through ``amdsmi``) and its MIG
check (NVIDIA GPUs in MIG mode): run on such hardware by ``tests/gpu/validate.py``.

AMD: footprint's ``AmdSensor`` is checked against direct reads of the same
``amdsmi_get_energy_count`` accumulator: idle power, then loads one at a time under
``@footprint.track``, each compared with the accumulator's delta around it less idle power
outside the load, and the whole phase's conservation (Σ attributed + Σ idle against the
direct delta).

MIG: footprint measures each MIG device as a static share of its GPU's counter. The
check reads the parent GPU's counter directly and footprint's series of every MIG device
over ``--mig-seconds`` (loaded on the chosen device when a load is available): the slices'
deltas must add up to the parent's, each in its share.
"""

from __future__ import annotations

import sqlite3
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import footprint
from footprint.sensors.amd import _energy_reading, open_amd
from footprint.sensors.base import Sensor

AMD_MODEL = "validate-amd-serial"
_COUNTER_MODULUS = 1 << 64


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(float(value), digits) + 0.0


# --- MIG ------------------------------------------------------------------------------


def mig_check(
    sensor: Sensor,
    nvml: Any,
    seconds: float,
    sleep: Callable[[float], None],
    load: Callable[[float, int], None] | None = None,
    device_index: int = 0,
) -> dict[str, Any]:
    """Per GPU in MIG mode: its counter's delta read directly, footprint's delta of each of
    its MIG devices over the same ``seconds``, their sum against the parent's, each
    slice's share of the sum against its static share."""
    parents: dict[str, list[int]] = {}
    for position, device in enumerate(sensor.devices):
        if device.parent_uuid is not None:
            parents.setdefault(device.parent_uuid, []).append(position)
    if not parents:
        return {"skipped": "no GPU in MIG mode among the devices measured"}
    handles = {uuid: nvml.nvmlDeviceGetHandleByUUID(uuid) for uuid in parents}

    def direct_j() -> dict[str, float]:
        return {
            uuid: int(nvml.nvmlDeviceGetTotalEnergyConsumption(h)) / 1000.0
            for uuid, h in handles.items()
        }

    first, direct0 = sensor.read_energy_j(), direct_j()
    if load is not None:
        load(seconds, device_index)
    else:
        sleep(seconds)
    last, direct1 = sensor.read_energy_j(), direct_j()
    gpus = []
    for parent, positions in parents.items():
        parent_j = direct1[parent] - direct0[parent]
        slices = []
        for p in positions:
            device, e0, e1 = sensor.devices[p], first[p], last[p]
            delta = None if e0 is None or e1 is None else e1 - e0
            slices.append(
                {
                    "uuid": device.uuid,
                    "cuda_index": device.index,
                    "profile": device.profile,
                    "share": _round(device.share, 6),
                    "delta_j": _round(delta, 4),
                    "share_of_parent_delta": _round(delta / parent_j, 6)
                    if delta is not None and parent_j > 0
                    else None,
                }
            )
        deltas = [s["delta_j"] for s in slices if s["delta_j"] is not None]
        total = sum(deltas) if len(deltas) == len(slices) else None
        gpus.append(
            {
                "parent_uuid": parent,
                "parent_direct_delta_j": _round(parent_j, 4),
                "slices_sum_j": _round(total, 4),
                # footprint reads the parent a moment before the direct read: one
                # counter step apart at most
                "sum_minus_parent_j": _round(None if total is None else total - parent_j, 4),
                "shares_sum": _round(sum(device_share(sensor, p) for p in positions), 9),
                "slices": slices,
            }
        )
    return {"seconds": seconds, "loaded": load is not None, "gpus": gpus}


def device_share(sensor: Sensor, position: int) -> float:
    return sensor.devices[position].share or 0.0


# --- AMD ------------------------------------------------------------------------------


class AmdCounter:
    """Direct reads of one AMD GPU's energy accumulator, in cumulative J."""

    def __init__(self, smi: Any, uuid: str) -> None:
        self.smi = smi
        self.uuid = uuid
        self.handle = _amd_handle(smi, uuid)
        self._last, _ = _energy_reading(smi.amdsmi_get_energy_count(self.handle))
        self._energy_j = 0.0

    def reopen(self) -> None:
        """Initialise amdsmi again (footprint's runtime shut it down on exit) and find the
        GPU's handle anew; the cumulative count goes on."""
        self.smi.amdsmi_init(self.smi.AmdSmiInitFlags.INIT_AMD_GPUS)
        self.handle = _amd_handle(self.smi, self.uuid)

    def read_j(self) -> float:
        raw, resolution_uj = _energy_reading(self.smi.amdsmi_get_energy_count(self.handle))
        self._energy_j += ((raw - self._last) % _COUNTER_MODULUS) * resolution_uj / 1e6
        self._last = raw
        return self._energy_j


def _amd_handle(smi: Any, uuid: str) -> Any:
    for handle in smi.amdsmi_get_processor_handles():
        if str(smi.amdsmi_get_gpu_device_uuid(handle)) == uuid:
            return handle
    raise RuntimeError(f"amdsmi has no processor with UUID {uuid}")


def validate_amd(
    opts: Any,
    smi: Any,
    load: Callable[[float, int], None] | None,
    load_desc: str,
    now: Callable[[], float],
    sleep: Callable[[float], None],
    log: Callable[[str], None],
) -> dict[str, Any]:
    """The AMD report (``{"gpu": False, ...}`` without a measurable AMD GPU)."""
    sensor, reason = open_amd(smi=smi)
    if sensor is None:
        log(f"validate.py: no AMD GPU to validate on ({reason}); nothing to measure")
        return {"gpu": False, "vendor": "amd", "reason": reason}
    try:
        device = next((d for d in sensor.devices if d.index == opts.device), None)
        if device is None:
            raise RuntimeError(
                f"no measurable AMD GPU with HIP index {opts.device}; measurable: "
                + ", ".join(f"{d.index} ({d.uuid})" for d in sensor.devices)
            )
        report: dict[str, Any] = {
            "gpu": True,
            "vendor": "amd",
            "gpu_name": device.name,
            "gpu_uuid": device.uuid,
            "device_index": device.index,
            "energy_method": device.energy_method,
            "covers_uuids": list(device.covers_uuids),
            "footprint_version": footprint.__version__,
            "load": {"available": load is not None, "description": load_desc},
        }
        if device.energy_method != "counter":
            report["reason"] = "no energy accumulator on this GPU: nothing to compare directly"
            return report
        counter = AmdCounter(smi, device.uuid)
        t0, e0 = now(), counter.read_j()
        sleep(opts.idle_seconds)
        report["idle_w"] = _round((counter.read_j() - e0) / max(1e-9, now() - t0), 4)
        log(f"validate.py: AMD {device.name}: idle {report['idle_w']} W")
        if load is None:
            report["serial"] = {"skipped": f"cannot generate GPU load: {load_desc}"}
            return report
        report["serial"] = _amd_serial(
            opts, counter, device.uuid, load, report["idle_w"], now, sleep
        )
        return report
    finally:
        sensor.close()


def _amd_serial(
    opts: Any,
    counter: AmdCounter,
    uuid: str,
    load: Callable[[float, int], None],
    idle_w: float,
    now: Callable[[], float],
    sleep: Callable[[float], None],
) -> dict[str, Any]:
    """Loads one at a time under footprint (sensor=amd) against the direct accumulator."""
    with tempfile.TemporaryDirectory(prefix="fp-validate-amd-") as folder:
        db = Path(folder) / "amd.db"
        footprint.configure(
            db=str(db),
            sensor="amd",
            cpu=False,
            sampling_period_s=opts.sampling_period_s,
            daemon="off",
            detect_cloud=False,
        )
        tracked = footprint.track(model=AMD_MODEL)(load)
        directs = []
        try:
            sleep(opts.gap_seconds)
            phase0 = counter.read_j()
            for _ in range(opts.serial_queries):
                t0, e0 = now(), counter.read_j()
                tracked(opts.seconds_per_load, opts.device)
                t1, e1 = now(), counter.read_j()
                directs.append((e1 - e0) - idle_w * max(0.0, (t1 - t0) - opts.seconds_per_load))
                sleep(opts.gap_seconds)
            footprint.flush()
        finally:
            footprint.shutdown()
            footprint.reset_configuration()
            counter.reopen()
        phase_j = counter.read_j() - phase0
        con = sqlite3.connect(db)
        try:
            attributed = [
                r[0]
                for r in con.execute(
                    "SELECT energy_j FROM queries WHERE model = ? ORDER BY started_at", (AMD_MODEL,)
                )
            ]
            idle_j, measured_j = con.execute(
                "SELECT COALESCE(SUM(idle_energy_j), 0), COALESCE(SUM(measured_energy_j), 0) "
                "FROM idle_energy WHERE device_uuid = ?",
                (uuid,),
            ).fetchone()
        finally:
            con.close()
    queries = [
        {
            "attributed_j": _round(a, 4),
            "direct_j": _round(d, 4),
            "error_pct": _round(100 * (a - d) / d, 3) if a is not None and d > 0 else None,
        }
        for a, d in zip(attributed, directs)
    ]
    total = sum(a for a in attributed if a is not None)
    return {
        "queries": queries,
        "records": len(attributed),
        "attributed_j": _round(total, 4),
        "idle_j": _round(idle_j, 4),
        "measured_j": _round(measured_j, 4),
        "direct_phase_delta_j": _round(phase_j, 4),
        # the phase's direct delta includes the stretches before footprint's first sample
        # and after its last: at most a sampling period of idle each
        "internal_conservation_error_j": _round(total + idle_j - measured_j, 9),
    }
