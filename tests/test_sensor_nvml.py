"""The NVML sensor against a fake ``pynvml`` that behaves like nvidia-ml-py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from footprint.bench import fake_pynvml as fk
from footprint.bench.fake_pynvml import FakeClock, FakeGpu, make_fake_pynvml
from footprint.sensors.base import ENERGY_COUNTER, ENERGY_POWER, SensorError
from footprint.sensors.nvml import NvmlSensor, open_nvml, parse_cuda_visible_devices

UUIDS = [
    "GPU-1a2b3c4d-0000-1111-2222-333344445555",
    "GPU-1a2b9999-0000-1111-2222-333344445555",
    "GPU-77aa0000-0000-1111-2222-333344445555",
]


def make(gpus: list[FakeGpu], visible: str | None = None) -> tuple[NvmlSensor, object, FakeClock]:
    clock = FakeClock()
    fake = make_fake_pynvml(gpus, clock=clock)
    sensor = NvmlSensor(visible, nvml=fake, now_s=clock.now_s)
    return sensor, fake, clock


@pytest.fixture(autouse=True)
def _no_cuda_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


# --- the fake behaves like the library ------------------------------------------------


# The error classes footprint's NVML sensor catches by name: every supported library
# version has them. The fake also mirrors codes added later (GPU_NOT_FOUND and
# INVALID_STATE in nvidia-ml-py 12.550, RESET_TYPE_NOT_SUPPORTED in 13.580): those are
# compared where the installed library has them.
USED_BY_FOOTPRINT = (
    "NotSupported",
    "FunctionNotFound",
    "GpuIsLost",
    "LibraryNotFound",
    "DriverNotLoaded",
)


def test_fake_error_codes_and_classes_match_the_real_library() -> None:
    real = pytest.importorskip("pynvml")
    codes = [n for n in dir(fk) if n.startswith("NVML_ERROR_")]
    assert len(codes) >= 25
    for name in USED_BY_FOOTPRINT:
        assert hasattr(real, f"NVMLError_{name}"), name
    for name in codes:
        if hasattr(real, name):
            assert getattr(fk, name) == getattr(real, name), name
    assert sum(hasattr(real, name) for name in codes) >= 25
    for name in [n for n in dir(fk) if n.startswith("NVMLError_")]:
        if hasattr(real, name):
            assert getattr(real, name)().value == getattr(fk, name)().value


def test_fake_error_construction_maps_codes_to_subclasses() -> None:
    err = fk.NVMLError(fk.NVML_ERROR_NOT_SUPPORTED)
    assert type(err) is fk.NVMLError_NotSupported
    assert err.value == 3
    assert str(err) == "Not Supported"
    assert fk.NVMLError_GpuIsLost().value == fk.NVML_ERROR_GPU_IS_LOST
    assert isinstance(fk.NVMLError(fk.NVML_ERROR_GPU_IS_LOST), fk.NVMLError_GpuIsLost)
    assert type(fk.NVMLError(12345)) is fk.NVMLError


def test_fake_requires_init_and_reference_counts_it() -> None:
    fake = make_fake_pynvml([FakeGpu(UUIDS[0])])
    with pytest.raises(fake.NVMLError_Uninitialized):
        fake.nvmlDeviceGetCount()
    with pytest.raises(fake.NVMLError_Uninitialized):
        fake.nvmlShutdown()
    fake.nvmlInit()
    fake.nvmlInit()
    fake.nvmlShutdown()
    assert fake.nvmlDeviceGetCount() == 1
    fake.nvmlShutdown()
    with pytest.raises(fake.NVMLError_Uninitialized):
        fake.nvmlDeviceGetCount()


def test_fake_handles_strings_and_lookup() -> None:
    fake = make_fake_pynvml([FakeGpu(UUIDS[0], name="Tesla T4"), FakeGpu(UUIDS[1])])
    fake.nvmlInit()
    handle = fake.nvmlDeviceGetHandleByUUID(UUIDS[1])
    assert fake.nvmlDeviceGetUUID(handle) == UUIDS[1]
    assert fake.nvmlDeviceGetName(fake.nvmlDeviceGetHandleByIndex(0)) == "Tesla T4"
    assert isinstance(fake.nvmlSystemGetDriverVersion(), str)
    with pytest.raises(fake.NVMLError_InvalidArgument):
        fake.nvmlDeviceGetHandleByIndex(2)
    with pytest.raises(fake.NVMLError_NotFound):
        fake.nvmlDeviceGetHandleByUUID("GPU-nope")
    with pytest.raises(fake.NVMLError_InvalidArgument):
        fake.nvmlDeviceGetPowerUsage(0)


def test_fake_counter_ticks_every_period_in_whole_millijoules() -> None:
    gpu = FakeGpu(UUIDS[0], power_w=123.4567, counter_update_period_s=0.1)
    fake = make_fake_pynvml([gpu])
    fake.nvmlInit()
    handle = fake.nvmlDeviceGetHandleByIndex(0)
    fake.fake_clock.advance(0.099)
    assert fake.nvmlDeviceGetTotalEnergyConsumption(handle) == 0
    fake.fake_clock.advance(0.002)
    assert fake.nvmlDeviceGetTotalEnergyConsumption(handle) == 12345
    assert fake.nvmlDeviceGetPowerUsage(handle) == 123457


# --- units and methods ----------------------------------------------------------------


def test_counter_device_reports_joules_from_millijoules() -> None:
    gpu = FakeGpu(UUIDS[0], name="NVIDIA H100", power_w=250.0, counter_start_mj=9_000_000_007)
    sensor, _, clock = make([gpu])
    [info] = sensor.devices
    assert (info.index, info.uuid, info.name, info.kind) == (0, UUIDS[0], "NVIDIA H100", "gpu")
    assert info.energy_method == ENERGY_COUNTER
    clock.advance(2.0)
    assert sensor.read_energy_j() == [500.0]
    clock.advance(0.05)
    assert sensor.read_energy_j() == [500.0]
    clock.advance(0.05)
    assert sensor.read_energy_j() == [525.0]


def test_not_supported_counter_falls_back_to_power_trapezoid() -> None:
    old = FakeGpu(UUIDS[1], supports_energy_counter=False, power_w=100.0)
    sensor, _, clock = make([FakeGpu(UUIDS[0]), old])
    assert [d.energy_method for d in sensor.devices] == [ENERGY_COUNTER, ENERGY_POWER]
    assert sensor.read_energy_j()[1] == 0.0
    clock.advance(1.0)
    old.set_power_w(200.0)
    assert sensor.read_energy_j()[1] == 150.0
    clock.advance(0.5)
    old.set_power_w(300.0)
    assert sensor.read_energy_j()[1] == 275.0
    clock.advance(2.0)
    assert sensor.read_energy_j()[1] == 875.0


def test_power_is_read_in_milliwatts() -> None:
    old = FakeGpu(UUIDS[0], supports_energy_counter=False, power_w=12.3456)
    sensor, _, clock = make([old])
    sensor.read_energy_j()
    clock.advance(2.0)
    assert sensor.read_energy_j() == [pytest.approx(2.0 * 12.346, abs=1e-12)]


def test_failed_power_read_is_bridged_by_next_good_sample() -> None:
    old = FakeGpu(UUIDS[1], supports_energy_counter=False, power_w=100.0)
    sensor, _, clock = make([FakeGpu(UUIDS[0]), old])
    sensor.read_energy_j()
    clock.advance(1.0)
    old.set_power_w(200.0)
    old.fail_next(1, fk.NVML_ERROR_TIMEOUT)
    assert sensor.read_energy_j()[1] is None
    clock.advance(1.0)
    old.set_power_w(300.0)
    assert sensor.read_energy_j()[1] == 400.0
    assert sensor.read_errors == 1


def test_device_with_neither_counter_nor_power_is_skipped_with_reason() -> None:
    dead = FakeGpu(UUIDS[1], supports_energy_counter=False, supports_power=False)
    sensor, _, _ = make([FakeGpu(UUIDS[0]), dead])
    assert [d.uuid for d in sensor.devices] == [UUIDS[0]]
    assert "Not Supported" in sensor.skipped[UUIDS[1]]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 2_000_000), st.floats(0.001, 5.0)), min_size=1, max_size=30)
)
def test_power_integration_equals_trapezoid_of_milliwatt_samples(
    samples: list[tuple[int, float]],
) -> None:
    old = FakeGpu(UUIDS[0], supports_energy_counter=False, power_w=0.0)
    sensor, _, clock = make([old])
    assert sensor.read_energy_j() == [0.0]
    expected_j, previous_w, previous = 0.0, 0.0, 0.0
    for power_mw, dt_s in samples:
        clock.advance(dt_s)
        old.set_power_w(power_mw / 1000)
        expected_j += (previous_w + power_mw / 1000) / 2 * dt_s
        previous_w = power_mw / 1000
        [energy_j] = sensor.read_energy_j()
        assert energy_j >= previous
        assert energy_j == pytest.approx(expected_j, rel=1e-9, abs=1e-9)
        previous = energy_j


# --- CUDA_VISIBLE_DEVICES ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, [0, 1, 2]),
        ("2,0", [2, 0]),
        (" 1 , 2 ", [1, 2]),
        ("", []),
        ("  ", []),
        ("-1", []),
        ("0,-1,1", [0]),
        ("1,7,0", [1]),
        ("0,abc,1", [0]),
        ("1x", []),
        ("0,,1", [0]),
        (UUIDS[2], [2]),
        (f"{UUIDS[1]},0", [1, 0]),
        ("GPU-77aa", [2]),
        ("GPU-1a2b9,GPU-77", [1, 2]),
        ("0,GPU-1a2b,2", [0]),
        ("GPU-ffff,0", []),
        ("GPU-", []),
    ],
)
def test_parse_cuda_visible_devices(value: str | None, expected: list[int]) -> None:
    assert parse_cuda_visible_devices(value, UUIDS) == expected


@pytest.mark.parametrize("value", ["0,0", "1,2,1", f"0,{UUIDS[0]}", "2,GPU-77aa"])
def test_parse_cuda_visible_devices_rejects_duplicates(value: str) -> None:
    with pytest.raises(ValueError, match="more than once"):
        parse_cuda_visible_devices(value, UUIDS)


def test_parse_cuda_visible_devices_rejects_mig() -> None:
    with pytest.raises(ValueError, match="MIG"):
        parse_cuda_visible_devices("MIG-4b6e1a9c-0000-1111-2222-333344445555", UUIDS)


def test_sensor_maps_cuda_visible_devices_from_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,0")
    gpus = [FakeGpu(uuid, power_w=100.0 * (i + 1)) for i, uuid in enumerate(UUIDS)]
    sensor, _, clock = make(gpus)
    assert [(d.index, d.uuid) for d in sensor.devices] == [(0, UUIDS[2]), (1, UUIDS[0])]
    clock.advance(1.0)
    assert sensor.read_energy_j() == [300.0, 100.0]


def test_sensor_cuda_index_survives_a_skipped_device() -> None:
    gpus = [
        FakeGpu(UUIDS[0], supports_energy_counter=False, supports_power=False),
        FakeGpu(UUIDS[1]),
    ]
    sensor, _, _ = make(gpus, visible="GPU-1a2b3,GPU-1a2b9")
    assert [(d.index, d.uuid) for d in sensor.devices] == [(1, UUIDS[1])]


# --- counter resets ---------------------------------------------------------------------


def test_counter_reset_keeps_series_monotonic_and_energy_right() -> None:
    gpu = FakeGpu(UUIDS[0], power_w=100.0, counter_start_mj=5_000_000_000)
    sensor, fake, clock = make([gpu])
    clock.advance(1.5)
    assert sensor.read_energy_j() == [150.0]
    gpu.reset_counter()
    clock.advance(0.5)
    assert sensor.read_energy_j() == [200.0]
    clock.advance(1.0)
    assert sensor.read_energy_j() == [300.0]
    assert gpu.true_energy_j() == pytest.approx(300.0)


def test_energy_between_last_read_and_reset_is_not_invented() -> None:
    gpu = FakeGpu(UUIDS[0], power_w=100.0, counter_start_mj=5_000_000_000)
    sensor, _, clock = make([gpu])
    clock.advance(1.0)
    assert sensor.read_energy_j() == [100.0]
    clock.advance(0.5)
    gpu.reset_counter()
    clock.advance(0.2)
    assert sensor.read_energy_j() == [120.0]


@settings(max_examples=80, deadline=None)
@given(
    start_mj=st.integers(0, 10**12),
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("run"), st.integers(0, 30), st.integers(0, 700)),
            st.tuples(st.just("reset"), st.just(0), st.just(0)),
        ),
        max_size=40,
    ),
)
def test_random_counter_traces_with_resets(start_mj: int, ops: list[tuple[str, int, int]]) -> None:
    gpu = FakeGpu(UUIDS[0], counter_start_mj=start_mj, counter_update_period_s=0.1)
    sensor, fake, clock = make([gpu])
    handle = fake.nvmlDeviceGetHandleByIndex(0)
    registered_mj = 0
    previous_j = 0.0
    for op, ticks, power_w in ops:
        raw_before_mj = fake.nvmlDeviceGetTotalEnergyConsumption(handle)
        if op == "reset":
            gpu.reset_counter()
        else:
            gpu.set_power_w(float(power_w))
            clock.advance(ticks * 0.1)
            registered_mj += fake.nvmlDeviceGetTotalEnergyConsumption(handle) - raw_before_mj
        [energy_j] = sensor.read_energy_j()
        assert energy_j >= previous_j
        assert energy_j == registered_mj / 1000
        previous_j = energy_j
    assert registered_mj / 1000 == pytest.approx(gpu.true_energy_j(), abs=0.001 * (len(ops) + 1))


# --- errors -----------------------------------------------------------------------------


def test_read_error_gives_none_counts_and_recovers() -> None:
    flaky = FakeGpu(UUIDS[1], power_w=200.0)
    sensor, _, clock = make([FakeGpu(UUIDS[0], power_w=100.0), flaky])
    flaky.fail_next(2, fk.NVML_ERROR_UNKNOWN)
    clock.advance(1.0)
    assert sensor.read_energy_j() == [100.0, None]
    clock.advance(1.0)
    assert sensor.read_energy_j() == [200.0, None]
    assert sensor.read_errors == 2
    clock.advance(1.0)
    assert sensor.read_energy_j() == [300.0, 600.0]
    assert sensor.read_errors == 2


def test_every_device_failing_raises_sensor_error() -> None:
    gpus = [FakeGpu(UUIDS[0]), FakeGpu(UUIDS[1])]
    sensor, _, clock = make(gpus)
    for gpu in gpus:
        gpu.fail_next(1, fk.NVML_ERROR_TIMEOUT)
    with pytest.raises(SensorError):
        sensor.read_energy_j()
    assert sensor.read_errors == 2
    clock.advance(0.1)
    assert sensor.read_energy_j() == [6.0, 6.0]


def test_lost_gpu_returns_none_and_is_not_queried_again() -> None:
    lost = FakeGpu(UUIDS[1])
    sensor, _, clock = make([FakeGpu(UUIDS[0], power_w=100.0), lost])
    clock.advance(1.0)
    lost.lose()
    assert sensor.read_energy_j() == [100.0, None]
    calls = lost.calls["nvmlDeviceGetTotalEnergyConsumption"]
    for _ in range(3):
        assert sensor.read_energy_j() == [100.0, None]
    assert lost.calls["nvmlDeviceGetTotalEnergyConsumption"] == calls
    assert sensor.lost_devices == [UUIDS[1]]
    assert sensor.read_errors == 4


def test_all_gpus_lost_raises_sensor_error() -> None:
    gpu = FakeGpu(UUIDS[0])
    sensor, _, _ = make([gpu])
    gpu.lose()
    for _ in range(2):
        with pytest.raises(SensorError):
            sensor.read_energy_j()


def test_gpu_lost_before_start_is_skipped() -> None:
    lost = FakeGpu(UUIDS[1])
    lost.lose()
    sensor, _, _ = make([FakeGpu(UUIDS[0]), lost])
    assert [d.uuid for d in sensor.devices] == [UUIDS[0]]
    assert "GPU is lost" in sensor.skipped["nvml-index-1"]


# --- lifecycle and auto mode ------------------------------------------------------------


def test_close_shuts_nvml_down_once() -> None:
    sensor, fake, _ = make([FakeGpu(UUIDS[0])])
    assert fake.fake_state.init_refcount == 1
    sensor.close()
    sensor.close()
    assert fake.fake_state.shutdown_calls == 1
    assert fake.fake_state.init_refcount == 0
    with pytest.raises(SensorError):
        sensor.read_energy_j()


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (fk.NVML_ERROR_LIBRARY_NOT_FOUND, "NVML Shared Library Not Found"),
        (fk.NVML_ERROR_DRIVER_NOT_LOADED, "Driver Not Loaded"),
        (fk.NVML_ERROR_NO_PERMISSION, "Insufficient Permissions"),
    ],
)
def test_open_nvml_when_init_fails(code: int, words: str) -> None:
    fake = make_fake_pynvml([FakeGpu(UUIDS[0])], init_error=code)
    sensor, reason = open_nvml(nvml=fake)
    assert sensor is None
    assert words in reason
    with pytest.raises(SensorError, match=words):
        NvmlSensor(nvml=fake)


def test_open_nvml_finds_gpus_through_the_pynvml_import(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = make_fake_pynvml([FakeGpu(UUIDS[0]), FakeGpu(UUIDS[1])])
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    sensor, reason = open_nvml()
    assert reason == ""
    assert sensor is not None
    assert [d.uuid for d in sensor.devices] == UUIDS[:2]
    sensor.close()
    assert fake.fake_state.init_refcount == 0


def test_open_nvml_without_pynvml(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)
    sensor, reason = open_nvml()
    assert sensor is None
    assert "pynvml is not importable" in reason


def test_open_nvml_with_no_gpu_releases_nvml() -> None:
    fake = make_fake_pynvml([])
    sensor, reason = open_nvml(nvml=fake)
    assert sensor is None
    assert reason == "NVML found no GPU on this machine"
    assert fake.fake_state.init_refcount == 0


@pytest.mark.parametrize("value", ["", "-1", "9"])
def test_open_nvml_when_cuda_visible_devices_hides_all(value: str) -> None:
    fake = make_fake_pynvml([FakeGpu(UUIDS[0]), FakeGpu(UUIDS[1])])
    sensor, reason = open_nvml(value, nvml=fake)
    assert sensor is None
    assert "hides all 2 GPUs" in reason
    assert fake.fake_state.init_refcount == 0


def test_open_nvml_with_duplicate_cuda_visible_devices() -> None:
    fake = make_fake_pynvml([FakeGpu(UUIDS[0]), FakeGpu(UUIDS[1])])
    sensor, reason = open_nvml("1,1", nvml=fake)
    assert sensor is None
    assert "CUDA_VISIBLE_DEVICES" in reason and "more than once" in reason
    assert fake.fake_state.init_refcount == 0


def test_open_nvml_when_no_gpu_can_be_measured() -> None:
    fake = make_fake_pynvml(
        [FakeGpu(UUIDS[0], supports_energy_counter=False, supports_power=False)]
    )
    sensor, reason = open_nvml(nvml=fake)
    assert sensor is None
    assert UUIDS[0] in reason and "Not Supported" in reason


def test_importing_the_module_does_not_import_pynvml() -> None:
    root = Path(__file__).resolve().parents[1]
    code = "import sys, footprint.sensors.nvml; print('pynvml' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"
