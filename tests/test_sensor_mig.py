"""NVIDIA MIG: each MIG device measured as its share of its parent GPU's counter, on a fake
``pynvml`` with MIG handles as NVML exposes them."""

from __future__ import annotations

import pytest
from conftest import ManualRun, rows

from footprint.bench.fake_pynvml import FakeClock, FakeGpu, FakeMigSlice, make_fake_pynvml
from footprint.bench.fake_pynvml.mig_accuracy import SCENARIOS, split_errors
from footprint.config import Settings
from footprint.sensors.base import ENERGY_COUNTER, ENERGY_POWER
from footprint.sensors.nvml import NvmlSensor, open_nvml

PARENT = "GPU-a1000000-0000-4000-8000-000000000000"
PLAIN = "GPU-b2000000-0000-4000-8000-000000000000"
MIGS = [f"MIG-{n}0000000-0000-4000-8000-000000000000" for n in range(1, 5)]
SIZES = [3, 2, 1, 1]  # 3g.40gb + 2g.20gb + 1g.10gb + 1g.10gb: the A100's 7 compute slices


@pytest.fixture(autouse=True)
def _no_cuda_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def mig_gpu(watts: list[float] | None = None, **options: object) -> FakeGpu:
    """An A100 with MIG on and four MIG devices drawing ``watts`` each."""
    watts = watts or [30.0, 20.0, 10.0, 10.0]
    slices = [
        FakeMigSlice(uuid, gpu_instance_slices=size, memory_mb=10240 * size, power_w=w)
        for uuid, size, w in zip(MIGS, SIZES, watts, strict=True)
    ]
    return FakeGpu(PARENT, power_w=0.0, mig_mode=1, mig_slices=slices, **options)  # type: ignore[arg-type]


def make(gpus: list[FakeGpu], visible: str | None = None) -> tuple[NvmlSensor, object, FakeClock]:
    clock = FakeClock()
    fake = make_fake_pynvml(gpus, clock=clock)
    return NvmlSensor(visible, nvml=fake, now_s=clock.now_s), fake, clock


# --- the fake behaves like NVML --------------------------------------------------------


def test_fake_mig_handles_behave_like_nvml() -> None:
    fake = make_fake_pynvml([mig_gpu(), FakeGpu(PLAIN)])
    fake.nvmlInit()
    parent = fake.nvmlDeviceGetHandleByIndex(0)
    assert fake.nvmlDeviceGetMigMode(parent) == [1, 1]
    assert fake.nvmlDeviceGetMaxMigDeviceCount(parent) == 7
    mig = fake.nvmlDeviceGetMigDeviceHandleByIndex(parent, 0)
    assert fake.nvmlDeviceIsMigDeviceHandle(mig) and not fake.nvmlDeviceIsMigDeviceHandle(parent)
    assert fake.nvmlDeviceGetUUID(mig) == MIGS[0]
    assert fake.nvmlDeviceGetName(mig) == "NVIDIA A100-SXM4-80GB MIG 3g.30gb"
    attributes = fake.nvmlDeviceGetAttributes(mig)
    assert (attributes.gpuInstanceSliceCount, attributes.computeInstanceSliceCount) == (3, 3)
    back = fake.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(mig)
    assert fake.nvmlDeviceGetUUID(back) == PARENT
    assert fake.nvmlDeviceGetUUID(fake.nvmlDeviceGetHandleByUUID(MIGS[1])) == MIGS[1]
    with pytest.raises(fake.NVMLError_NotSupported):  # energy is per physical GPU
        fake.nvmlDeviceGetTotalEnergyConsumption(mig)
    with pytest.raises(fake.NVMLError_NotSupported):
        fake.nvmlDeviceGetPowerUsage(mig)
    with pytest.raises(fake.NVMLError_NotFound):  # no MIG device at that index
        fake.nvmlDeviceGetMigDeviceHandleByIndex(parent, 4)
    with pytest.raises(fake.NVMLError_NotSupported):  # a GPU without MIG
        fake.nvmlDeviceGetMigMode(fake.nvmlDeviceGetHandleByIndex(1))


def test_fake_mig_gpu_draws_the_sum_of_its_slices() -> None:
    clock = FakeClock()
    gpu = mig_gpu([30.0, 20.0, 10.0, 5.0])
    make_fake_pynvml([gpu], clock=clock)
    clock.advance(10.0)
    assert gpu.true_energy_j() == pytest.approx(650.0)
    assert gpu.true_slice_energy_j(3) == pytest.approx(50.0)


# --- the sensor ------------------------------------------------------------------------


def test_mig_gpu_is_measured_as_its_slices_with_shares_of_the_parent() -> None:
    """On main a MIG GPU was measured as one whole GPU and MIG UUIDs were refused."""
    sensor, fake, clock = make([mig_gpu(power_limit_w=400.0), FakeGpu(PLAIN)])
    devices = sensor.devices
    assert [d.uuid for d in devices] == [*MIGS, PLAIN]
    assert [d.index for d in devices] == [0, 1, 2, 3, 4]
    assert [d.share for d in devices][:4] == pytest.approx([3 / 7, 2 / 7, 1 / 7, 1 / 7])
    assert devices[4].share is None and devices[4].parent_uuid is None
    assert {d.parent_uuid for d in devices[:4]} == {PARENT}
    assert [d.profile for d in devices[:4]] == ["3g.30gb", "2g.20gb", "1g.10gb", "1g.10gb"]
    assert all(d.energy_method == ENERGY_COUNTER for d in devices)
    assert devices[0].max_power_w == pytest.approx(400.0 * 3 / 7)
    first = sensor.read_energy_j()
    clock.advance(10.0)
    last = sensor.read_energy_j()
    deltas = [b - a for a, b in zip(first, last, strict=True)]  # type: ignore[operator]
    parent_j = 700.0  # 70 W for 10 s, read from the parent's counter
    assert sum(deltas[:4]) == pytest.approx(parent_j, abs=1e-9)  # the GPU counted once
    assert deltas[:4] == pytest.approx([parent_j * s / 7 for s in SIZES])
    assert deltas[4] == pytest.approx(600.0)  # the plain GPU: its own counter, as before


def test_parent_counter_is_read_once_per_sample_for_all_its_slices() -> None:
    gpu = mig_gpu()
    sensor, fake, clock = make([gpu])
    before = gpu.calls["nvmlDeviceGetTotalEnergyConsumption"]
    for _ in range(5):
        clock.advance(0.1)
        sensor.read_energy_j()
    assert gpu.calls["nvmlDeviceGetTotalEnergyConsumption"] - before == 5


def test_cuda_visible_devices_with_mig_uuids_selects_those_slices() -> None:
    sensor, _, clock = make([FakeGpu(PLAIN), mig_gpu()], visible=f"{MIGS[2]},{MIGS[0][:12]}")
    assert [(d.index, d.uuid, d.share) for d in sensor.devices] == [
        (0, MIGS[2], pytest.approx(1 / 7)),
        (1, MIGS[0], pytest.approx(3 / 7)),
    ]
    first = sensor.read_energy_j()
    clock.advance(7.0)
    last = sensor.read_energy_j()
    assert [b - a for a, b in zip(first, last, strict=True)] == pytest.approx([70.0, 210.0])  # type: ignore[operator]


def test_integer_index_of_a_mig_gpu_stands_for_its_slices() -> None:
    sensor, _, _ = make([FakeGpu(PLAIN), mig_gpu()], visible="1")
    assert [d.uuid for d in sensor.devices] == MIGS


@pytest.mark.parametrize("visible", ["MIG-ffff", f"{MIGS[0]},{MIGS[0]}"])
def test_unknown_or_repeated_mig_uuid(visible: str) -> None:
    fake = make_fake_pynvml([mig_gpu()])
    sensor, reason = open_nvml(visible, nvml=fake)
    assert sensor is None
    assert ("hides all" in reason) if visible == "MIG-ffff" else ("more than once" in reason)


def test_mig_parent_without_counter_is_split_from_polled_power() -> None:
    sensor, _, clock = make([mig_gpu(supports_energy_counter=False)])
    assert {d.energy_method for d in sensor.devices} == {ENERGY_POWER}
    first = sensor.read_energy_j()
    clock.advance(2.0)
    last = sensor.read_energy_j()
    deltas = [b - a for a, b in zip(first, last, strict=True)]  # type: ignore[operator]
    assert sum(deltas) == pytest.approx(140.0)
    assert deltas[0] == pytest.approx(60.0)


def test_lost_mig_parent_loses_every_slice() -> None:
    gpu = mig_gpu()
    sensor, _, clock = make([gpu, FakeGpu(PLAIN)])
    gpu.lose()
    clock.advance(0.5)
    energies = sensor.read_energy_j()
    assert energies[:4] == [None] * 4 and energies[4] is not None
    assert sensor.lost_devices == MIGS
    assert sensor.read_errors == 4


def test_mig_mode_off_keeps_the_whole_gpu() -> None:
    gpu = mig_gpu()
    gpu.mig_mode = 0
    sensor, _, _ = make([gpu])
    assert [(d.uuid, d.share) for d in sensor.devices] == [(PARENT, None)]


# --- the static split against each slice's truth ---------------------------------------


def test_split_is_exact_when_slices_draw_in_proportion_and_always_sums_to_the_gpu() -> None:
    """The split's error per slice against the fake's truth: none when every slice draws
    the same per compute slice (the board's own draw aside), large when one is busy alone;
    the slices always add up to the GPU."""
    for name, duty in SCENARIOS.items():
        result = split_errors(duty)
        assert result["sum_of_slices_j"] == pytest.approx(result["gpu_true_j"], abs=0.01), name
    busy = split_errors(SCENARIOS["all_busy"])["slices"]
    # All busy: every slice over by the board's 4 W spread over 45 W per compute slice.
    assert [s["error_pct"] for s in busy] == pytest.approx([100 * 4 / 315] * 4, abs=0.01)
    alone = split_errors(SCENARIOS["3g_busy_others_idle"])["slices"]
    assert alone[0]["error_pct"] < -40 and alone[1]["error_pct"] > 200


# --- through the runtime ---------------------------------------------------------------


class _ManualFakeClock(FakeClock):
    def __init__(self, run_clock: object) -> None:
        self._run_clock = run_clock

    def now_s(self) -> float:
        return self._run_clock.monotonic_s()  # type: ignore[attr-defined]


def test_calls_on_two_slices_share_the_gpu_by_slice_size(tmp_path, monkeypatch) -> None:
    """One process measuring every slice (as the daemon does): each slice's series is its
    share of the parent's counter, so the slices' measured energy adds up to the GPU's,
    counted once; a call on a slice gets energy from that slice's share only."""
    import sys

    from footprint._clock import ManualClock

    clock = ManualClock(monotonic_s=1000.0)
    gpu = mig_gpu([60.0, 40.0, 20.0, 20.0])
    monkeypatch.setitem(
        sys.modules, "pynvml", make_fake_pynvml([gpu], clock=_ManualFakeClock(clock))
    )
    monkeypatch.setattr("conftest.ManualClock", lambda monotonic_s: clock)
    db = tmp_path / "mig.db"
    run = ManualRun(Settings(db=str(db), sensor="nvml", cpu=False, region="FRA"))

    @run.tracker.track(model="big", gpus=[MIGS[0]])
    def on_big() -> None:
        run.advance(1.0)

    @run.tracker.track(model="small", gpus=[MIGS[2]])
    def on_small() -> None:
        run.advance(1.0)

    run.advance(2.0)
    for _ in range(5):
        on_big()
        on_small()
        run.advance(0.5)
    run.advance(2.0)
    run.close()
    idle = rows(
        db,
        "SELECT device_uuid, SUM(measured_energy_j) AS m, SUM(idle_energy_j) AS i, "
        "SUM(lost_energy_j) AS l FROM idle_energy GROUP BY device_uuid",
    )
    measured = {r["device_uuid"]: r["m"] for r in idle}
    assert set(measured) == set(MIGS)  # the parent is never a device of its own
    total = sum(measured.values())
    for uuid, size in zip(MIGS, SIZES, strict=True):
        assert measured[uuid] == pytest.approx(total * size / 7, rel=1e-9)
    assert total == pytest.approx(gpu.true_energy_j(), rel=0.02)
    records = rows(db)
    energy = {m: sum(r["energy_j"] for r in records if r["model"] == m) for m in ("big", "small")}
    assert {r["gpus"] for r in records} == {f'["{MIGS[0]}"]', f'["{MIGS[2]}"]'}
    # Each call is 1 s alone on its slice: its slice's share of the GPU's 140 W.
    assert energy["big"] == pytest.approx(5 * 140.0 * 3 / 7, rel=0.05)
    assert energy["small"] == pytest.approx(5 * 140.0 * 1 / 7, rel=0.05)
    for r in idle:  # conservation per slice
        got = sum(x["energy_j"] for x in records if r["device_uuid"] in x["gpus"])
        assert got + r["i"] + r["l"] == pytest.approx(r["m"], rel=1e-9)


# --- footprint devices -----------------------------------------------------------------


def test_devices_json_lists_mig_slices_with_parent_profile_and_share(monkeypatch, capsys) -> None:
    import json
    import sys

    from footprint.cli import main

    monkeypatch.setitem(sys.modules, "pynvml", make_fake_pynvml([mig_gpu(), FakeGpu(PLAIN)]))
    monkeypatch.setitem(sys.modules, "amdsmi", None)
    main(["devices", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert [g["uuid"] for g in out["gpus"]] == [*MIGS, PLAIN]
    rows = {r["uuid"]: r for r in out["devices"] if r["kind"] == "gpu"}
    slice_row = rows[MIGS[1]]
    assert (slice_row["parent"], slice_row["profile"]) == (PARENT, "2g.20gb")
    assert slice_row["share"] == pytest.approx(2 / 7)
    assert slice_row["vendor"] == "NVIDIA" and slice_row["energy_method"] == "counter"
    assert "static split" in slice_row["missing"] and "0.2857" in slice_row["missing"]
    assert rows[PLAIN]["share"] is None and rows[PLAIN]["missing"] is None
