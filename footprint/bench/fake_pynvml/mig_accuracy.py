"""How far the static MIG split is from each slice's true energy, on the fake ``pynvml``.

NVML measures a MIG GPU only as a whole; footprint gives each MIG device its share of the
GPU's counter (compute slices over those of all its MIG devices). The fake knows what every
slice truly drew, so the split's error per slice is measured here for a few load patterns:
``python -m footprint.bench.fake_pynvml.mig_accuracy`` prints them as JSON.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from footprint.bench.fake_pynvml.gpu import FakeClock, FakeGpu
from footprint.bench.fake_pynvml.library import make_fake_pynvml
from footprint.bench.fake_pynvml.mig import FakeMigSlice
from footprint.sensors.simulated import LoadModel

PARENT_UUID = "GPU-a1000000-0000-4000-8000-000000000000"
# A100-80GB split 3g.40gb + 2g.20gb + 1g.10gb + 1g.10gb: 7 compute slices in all.
SLICE_SIZES = (3, 2, 1, 1)
SLICE_MEMORY_MB = {3: 40960, 2: 20480, 1: 10240}
IDLE_W_PER_SLICE = 8.0  # W a slice draws idle, per compute slice
BUSY_W_PER_SLICE = 45.0  # W a slice draws flat out, per compute slice
BOARD_W = 4.0  # W the board draws outside the slices
DURATION_S = 60.0
READ_PERIOD_S = 0.05


def mig_uuid(position: int) -> str:
    """The MIG UUID of slice ``position`` of the fake A100."""
    return f"MIG-5{position:07x}-0000-4000-8000-000000000000"


def mig_slices(duty: Callable[[int, LoadModel], None]) -> list[FakeMigSlice]:
    """The four slices, each drawing a ``LoadModel`` that ``duty(position, model)`` loads."""
    slices = []
    for position, size in enumerate(SLICE_SIZES):
        loads = LoadModel(IDLE_W_PER_SLICE * size, BUSY_W_PER_SLICE * size)
        duty(position, loads)
        slices.append(
            FakeMigSlice(
                mig_uuid(position),
                gpu_instance_slices=size,
                memory_mb=SLICE_MEMORY_MB[size],
                loads=loads,
                gpu_instance_id=position + 1,
            )
        )
    return slices


def _idle(position: int, loads: LoadModel) -> None:
    """Nothing runs."""


def _all_busy(position: int, loads: LoadModel) -> None:
    loads.add_load(1000.0, 1000.0 + DURATION_S)


def _one_busy(position: int, loads: LoadModel) -> None:
    if position == 0:  # the 3g slice busy all along, the others idle
        loads.add_load(1000.0, 1000.0 + DURATION_S)


def _small_busy(position: int, loads: LoadModel) -> None:
    if position == 2:  # one 1g slice busy all along, the others idle
        loads.add_load(1000.0, 1000.0 + DURATION_S)


def _half_duty(position: int, loads: LoadModel) -> None:
    """Every slice busy half the time, in phase-shifted 2 s bursts."""
    for k in range(int(DURATION_S / 2)):
        start_s = 1000.0 + 2 * k + 0.5 * position
        loads.add_load(start_s, start_s + 1.0)


SCENARIOS: dict[str, Callable[[int, LoadModel], None]] = {
    "all_idle": _idle,
    "all_busy": _all_busy,
    "3g_busy_others_idle": _one_busy,
    "1g_busy_others_idle": _small_busy,
    "all_half_duty_shifted": _half_duty,
}


def split_errors(duty: Callable[[int, LoadModel], None]) -> dict[str, object]:
    """Each slice's measured (split) and true energy over ``DURATION_S``, the relative
    error, and the parent's counter against the slices' sum."""
    from footprint.sensors.nvml import NvmlSensor

    clock = FakeClock(1000.0)
    slices = mig_slices(duty)
    gpu = FakeGpu(PARENT_UUID, power_w=BOARD_W, mig_mode=1, mig_slices=slices)
    fake = make_fake_pynvml([gpu], clock=clock)
    sensor = NvmlSensor(None, nvml=fake, now_s=clock.now_s)
    first = sensor.read_energy_j()
    while clock.now_s() < 1000.0 + DURATION_S - 1e-9:
        clock.advance(READ_PERIOD_S)
        last = sensor.read_energy_j()
    sensor.close()
    rows = []
    for position, (device, e0, e1) in enumerate(zip(sensor.devices, first, last, strict=True)):
        assert e0 is not None and e1 is not None
        true_j = gpu.true_slice_energy_j(position)
        measured_j = e1 - e0
        rows.append(
            {
                "uuid": device.uuid,
                "profile": device.profile,
                "share": round(device.share or 0.0, 6),
                "true_j": round(true_j, 3),
                "split_j": round(measured_j, 3),
                "error_pct": round(100.0 * (measured_j - true_j) / true_j, 2),
            }
        )
    return {
        "slices": rows,
        "sum_of_slices_j": round(sum(r["split_j"] for r in rows), 3),  # type: ignore[misc]
        "gpu_true_j": round(gpu.true_energy_j(), 3),
    }


def main() -> None:
    """Print the split's error per slice for every scenario, as JSON."""
    result = {name: split_errors(duty) for name, duty in SCENARIOS.items()}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
