"""What ``footprint devices`` lists: every device found, how its energy is read, and for
those that cannot be measured (or only in part), what is missing and why.

Every GPU library the sensor spec allows is opened (``auto``: NVML and amdsmi both, so a
host shows all it has), then the CPU packages through RAPL. Nothing is sampled.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from footprint.sensors import (
    ENERGY_MISSING,
    ENERGY_POWER,
    DeviceInfo,
    NullSensor,
    Sensor,
    open_cpu_sensor,
    open_gpu_backends,
    open_gpu_sensor,
)
from footprint.sensors.rapl import DRAM_UUID_PREFIX, RAPL_FIX, is_permission_problem

CPUINFO = Path("/proc/cpuinfo")


def survey(spec: str, cpuinfo: Path = CPUINFO) -> dict[str, Any]:
    """The devices found for a validated sensor ``spec``, as ``footprint devices`` shows them.

    ``gpus``/``gpu_note``: what the runtime measures with ``spec`` (and why nothing);
    ``devices``: one row per device found by any library ``spec`` allows, with ``vendor``,
    ``model``, ``energy_method`` (counter | power | simulated | missing), ``missing``
    (what is not measured and why; None when nothing is) and, for an NVIDIA MIG device,
    ``parent`` (its GPU's UUID), ``profile`` and ``share`` (of the GPU's energy);
    ``libraries``: why each library found nothing.
    """
    name = spec.partition(":")[0]
    rows: list[dict[str, Any]] = []
    libraries: dict[str, str | None] = {}
    opened: list[tuple[str, Sensor | None, str]] = []
    if name in ("auto", "nvml", "amd"):
        opened = open_gpu_backends(name)
        chosen, reason, chosen_vendor = _chosen(name, opened)
        for vendor, sensor, why in opened:
            libraries["nvml" if vendor == "NVIDIA" else "amdsmi"] = why or None
            if sensor is not None:
                rows += _gpu_rows(sensor, vendor)
    else:
        chosen, reason = open_gpu_sensor(spec)
        chosen_vendor = "simulated" if name == "simulated" else None
        rows += _gpu_rows(chosen, chosen_vendor)
    gpus = [_as_dict(d, chosen_vendor) for d in chosen.devices]
    for sensor in {id(s): s for s in [chosen, *(s for _, s, _ in opened if s)]}.values():
        sensor.close()
    cpu_sensor, cpu_reason = open_cpu_sensor()
    cpus = [_as_dict(d, None) for d in cpu_sensor.devices] if cpu_sensor else []
    rows += _cpu_rows(cpu_sensor, cpu_reason, cpuinfo)
    if cpu_sensor:
        cpu_sensor.close()
    libraries["rapl"] = cpu_reason or None
    return {
        "sensor": spec,
        # What a call's energy is: the GPUs' share, or on a host with no GPU measured the
        # CPU packages' and DRAM's (energy_source=cpu); None: nothing measured.
        "calls_energy_from": "gpu" if gpus else ("cpu" if cpus else None),
        "gpus": gpus,
        "gpu_note": reason or None,
        "cpus": cpus,
        "cpu_note": cpu_reason or None,
        "devices": rows,
        "libraries": libraries,
    }


def _chosen(
    name: str, opened: list[tuple[str, Sensor | None, str]]
) -> tuple[Sensor, str, str | None]:
    """The sensor ``open_gpu_sensor`` would pick among ``opened``, why none, its vendor."""
    for vendor, sensor, _ in opened:
        if sensor is not None:
            return sensor, "", vendor
    reason = "; ".join(why if name != "auto" else f"{vendor}: {why}" for vendor, _, why in opened)
    return NullSensor(reason), reason, None


def _as_dict(device: DeviceInfo, vendor: str | None) -> dict[str, Any]:
    row = dict(device.__dict__)
    row["vendor"] = device.vendor or vendor
    row["covers_indices"] = list(device.covers_indices)
    row["covers_uuids"] = list(device.covers_uuids)
    return row


def _gpu_rows(sensor: Sensor, vendor: str | None) -> list[dict[str, Any]]:
    """A row per measured GPU, per die that shares a package's reading, per GPU skipped."""
    rows = []
    for device in sensor.devices:
        missing = None
        if device.energy_method == ENERGY_POWER:
            missing = (
                "energy counter (not supported by this GPU, driver or VM): power is polled "
                "and integrated instead, which misses changes between polls"
            )
        if device.covers_uuids:
            missing = (
                "per-die energy: the driver reports the package's total here and 0 on its "
                "other die(s); calls on any die of the package share this reading"
            )
        if device.parent_uuid is not None:
            missing = (
                "per-slice energy (NVML measures the whole GPU only): a static split gives "
                f"this MIG device {device.share or 0.0:.4f} of its parent GPU's energy, "
                "idle included, by compute slices"
            )
        rows.append(_gpu_row(device, device.vendor or vendor, missing))
        die_indices: dict[str, int] = getattr(sensor, "die_indices", {})
        for uuid in device.covers_uuids:
            rows.append(
                {
                    **_gpu_row(device, device.vendor or vendor, None),
                    "index": die_indices.get(uuid),
                    "uuid": uuid,
                    "shares_with": device.uuid,
                    "missing": (
                        "own energy: the driver reports 0 for this die; its energy is in "
                        "the package total read on the die it shares_with"
                    ),
                }
            )
    for uuid, reason in getattr(sensor, "skipped", {}).items():
        rows.append(
            {
                "kind": "gpu",
                "vendor": vendor,
                "model": None,
                "uuid": uuid,
                "index": None,
                "energy_method": ENERGY_MISSING,
                "shares_with": None,
                "missing": f"energy: {reason}",
                **_mig_keys(None),
            }
        )
    return rows


def _gpu_row(device: DeviceInfo, vendor: str | None, missing: str | None) -> dict[str, Any]:
    return {
        "kind": "gpu",
        "vendor": vendor,
        "model": device.name,
        "uuid": device.uuid,
        "index": device.index,
        "energy_method": device.energy_method,
        "shares_with": None,
        "missing": missing,
        **_mig_keys(device),
    }


def _mig_keys(device: DeviceInfo | None) -> dict[str, Any]:
    """``parent``, ``profile`` and ``share`` of a MIG device (None for any other)."""
    if device is None or device.parent_uuid is None:
        return {"parent": None, "profile": None, "share": None}
    return {"parent": device.parent_uuid, "profile": device.profile, "share": device.share}


def _cpu_rows(sensor: Sensor | None, reason: str, cpuinfo: Path) -> list[dict[str, Any]]:
    """A row per CPU package RAPL reads; one saying why when it reads none."""
    vendor, model = cpu_identity(cpuinfo)
    if sensor is None:
        missing = f"energy: {reason}"
        if is_permission_problem(reason):
            missing = f"{missing}; {RAPL_FIX}"
        return [
            {
                "kind": "cpu",
                "vendor": vendor,
                "model": model,
                "uuid": None,
                "index": None,
                "energy_method": ENERGY_MISSING,
                "shares_with": None,
                "missing": missing,
                **_mig_keys(None),
            }
        ]
    return [
        {
            "kind": "cpu",
            "vendor": vendor,
            "model": model,
            "uuid": device.uuid,
            "index": device.index,
            "energy_method": device.energy_method,
            "shares_with": None,
            "missing": None,
            **_mig_keys(None),
            **({"model": device.name} if device.uuid.startswith(DRAM_UUID_PREFIX) else {}),
        }
        for device in sensor.devices
    ]


def cpu_identity(cpuinfo: Path = CPUINFO) -> tuple[str | None, str | None]:
    """(vendor, model) of the first CPU in ``/proc/cpuinfo``; None where it does not say."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return None, None
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() not in fields:
            fields[key.strip()] = value.strip()
    vendor = {"GenuineIntel": "Intel", "AuthenticAMD": "AMD"}.get(
        fields.get("vendor_id", ""), fields.get("vendor_id")
    )
    return vendor or None, fields.get("model name") or None
