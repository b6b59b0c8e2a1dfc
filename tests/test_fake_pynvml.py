"""The fake ``pynvml``'s hardware models: part-time counters, averaged power, exact energy
models, real time and ``install_fake_pynvml``."""

from __future__ import annotations

import math
import sys
import threading
import time

import pytest

from footprint.bench.fake_pynvml import (
    FakeClock,
    FakeGpu,
    FakeInstallSpec,
    SystemClock,
    fake_uuids,
    install_fake_pynvml,
    make_fake_pynvml,
)
from footprint.bench.loads import LoadModel
from footprint.sensors.nvml import NvmlSensor

UUID = "GPU-0f0f0f0f-0000-4000-8000-000000000001"
IDLE_W, BUSY_W = 60.0, 160.0  # a full load adds 100 W


def _reader(gpu: FakeGpu, clock: FakeClock | SystemClock):
    """The GPU on a fresh fake module; returns the module and a handle to read it by."""
    fake = make_fake_pynvml([gpu], clock=clock)
    fake.nvmlInit()
    return fake, fake.nvmlDeviceGetHandleByIndex(0)


def _window_gpu(source: str, **window: float) -> tuple[FakeGpu, FakeClock]:
    """A part-time GPU drawing IDLE_W, with its power given as ``source`` describes."""
    clock = FakeClock(1000.0)
    if source == "model":
        gpu = FakeGpu(UUID, loads=LoadModel(IDLE_W, BUSY_W), **window)
    else:
        gpu = FakeGpu(UUID, power_w=IDLE_W, **window)
    return gpu, clock


def _pulse(gpu: FakeGpu, clock: FakeClock, start_s: float, end_s: float) -> int:
    """A full load between two offsets (s) in the first period; returns the counter
    increase (mJ) at the first tick."""
    fake, handle = _reader(gpu, clock)
    before_mj = fake.nvmlDeviceGetTotalEnergyConsumption(handle)
    if gpu.loads is not None:
        gpu.loads.add_load(1000.0 + start_s, 1000.0 + end_s)
    else:
        clock.advance(start_s)
        gpu.set_power_w(BUSY_W)
        clock.advance(end_s - start_s)
        gpu.set_power_w(IDLE_W)
    clock.t_s = 1000.15  # past the first tick (1000.1), before the second
    return fake.nvmlDeviceGetTotalEnergyConsumption(handle) - before_mj


@pytest.mark.parametrize("source", ["constant", "model"])
def test_a_part_time_counter_misses_a_load_outside_its_window(source):
    gpu, clock = _window_gpu(source, counter_window_s=0.025)  # sees the last 25 ms of 100
    assert _pulse(gpu, clock, 0.020, 0.030) == pytest.approx(6000, abs=1)  # idle only
    assert gpu.true_energy_j() == pytest.approx(60 * 0.15 + 100 * 0.01)


@pytest.mark.parametrize("source", ["constant", "model"])
def test_a_part_time_counter_sees_four_times_a_load_inside_its_window(source):
    gpu, clock = _window_gpu(source, counter_window_s=0.025)
    assert _pulse(gpu, clock, 0.080, 0.090) == pytest.approx(6000 + 4000, abs=1)
    assert gpu.true_energy_j() == pytest.approx(60 * 0.15 + 100 * 0.01)


def test_the_window_offset_places_the_window_after_the_previous_tick():
    gpu, clock = _window_gpu("model", counter_window_s=0.025, counter_window_offset_s=0.0)
    assert _pulse(gpu, clock, 0.010, 0.020) == pytest.approx(10000, abs=1)
    gpu, clock = _window_gpu("model", counter_window_s=0.025, counter_window_offset_s=0.0)
    assert _pulse(gpu, clock, 0.080, 0.090) == pytest.approx(6000, abs=1)


def test_a_function_of_time_is_integrated_over_the_window_too():
    clock = FakeClock(1000.0)

    def power_w(t_s: float) -> float:
        return BUSY_W if 1000.0805 <= t_s < 1000.0895 else IDLE_W

    gpu = FakeGpu(UUID, power_w=power_w, counter_window_s=0.025)
    fake, handle = _reader(gpu, clock)
    clock.advance(0.15)
    # 9 ms of 100 W, seen 4 times (1 ms midpoint steps: to within a step's energy x 4)
    assert fake.nvmlDeviceGetTotalEnergyConsumption(handle) == pytest.approx(9600, abs=400)


def test_a_whole_period_window_is_todays_counter():
    clock = FakeClock(1000.0)
    gpu = FakeGpu(UUID, power_w=123.4567, counter_window_s=0.1, counter_window_offset_s=0.0)
    fake, handle = _reader(gpu, clock)
    clock.advance(0.35)
    assert fake.nvmlDeviceGetTotalEnergyConsumption(handle) == math.floor(123.4567 * 300)


def test_over_whole_busy_periods_a_part_time_counter_counts_the_exact_energy():
    clock = FakeClock(1000.0)
    gpu = FakeGpu(UUID, loads=LoadModel(IDLE_W, BUSY_W), counter_window_s=0.025)
    gpu.loads.add_load(1000.1, 1001.1, 0.5)  # constant over each period it covers
    fake, handle = _reader(gpu, clock)
    readings = []
    for _ in range(14):
        clock.advance(0.1)
        readings.append(fake.nvmlDeviceGetTotalEnergyConsumption(handle))
    assert readings == sorted(readings)
    assert readings[-1] == pytest.approx(1000 * (60 * 1.4 + 50 * 1.0), abs=2)


@pytest.mark.parametrize(
    ("window", "match"),
    [
        ({"counter_window_s": 0.0}, "counter_window_s must be in"),
        ({"counter_window_s": 0.2}, "counter_window_s must be in"),
        ({"counter_window_s": -0.01}, "counter_window_s must be in"),
        ({"counter_window_s": 0.025, "counter_window_offset_s": 0.08}, "offset_s must be in"),
        ({"counter_window_s": 0.025, "counter_window_offset_s": -0.001}, "offset_s must be in"),
        ({"counter_window_offset_s": 0.01}, "offset_s must be in"),  # whole period: 0 only
        ({"power_average_s": -1.0}, "power_average_s"),
    ],
)
def test_impossible_windows_are_refused(window, match):
    with pytest.raises(ValueError, match=match):
        FakeGpu(UUID, **window)


def test_the_largest_offset_that_fits_is_accepted():
    FakeGpu(UUID, counter_window_s=0.025, counter_window_offset_s=0.075)


@pytest.mark.parametrize("source", ["constant", "model", "function"])
def test_a_one_second_average_power_lags_a_step(source):
    clock = FakeClock(1000.0)
    step_s = 1002.0
    if source == "constant":
        gpu = FakeGpu(UUID, power_w=IDLE_W, power_average_s=1.0)
    elif source == "model":
        gpu = FakeGpu(UUID, loads=LoadModel(IDLE_W, BUSY_W), power_average_s=1.0)
        gpu.loads.add_step(step_s, 1.0)
    else:
        gpu = FakeGpu(
            UUID, power_w=lambda t: BUSY_W if t >= step_s else IDLE_W, power_average_s=1.0
        )
    fake, handle = _reader(gpu, clock)
    clock.advance(2.0)
    if source == "constant":
        gpu.set_power_w(BUSY_W)
    assert fake.nvmlDeviceGetPowerUsage(handle) == pytest.approx(60_000, abs=100)
    clock.advance(0.25)
    assert fake.nvmlDeviceGetPowerUsage(handle) == pytest.approx(85_000, abs=100)
    clock.advance(0.5)
    assert fake.nvmlDeviceGetPowerUsage(handle) == pytest.approx(135_000, abs=100)
    clock.advance(0.5)
    assert fake.nvmlDeviceGetPowerUsage(handle) == pytest.approx(160_000, abs=100)


def test_instantaneous_power_of_an_exact_model_follows_the_step_at_once():
    clock = FakeClock(1000.0)
    gpu = FakeGpu(UUID, loads=LoadModel(IDLE_W, BUSY_W))
    gpu.loads.add_step(1001.0, 0.5)
    fake, handle = _reader(gpu, clock)
    clock.advance(0.999)
    assert fake.nvmlDeviceGetPowerUsage(handle) == 60_000
    clock.advance(0.002)
    assert fake.nvmlDeviceGetPowerUsage(handle) == 110_000


def test_an_exact_energy_function_replaces_integration():
    clock = FakeClock(1000.0)
    calls = []

    def energy_j(t0_s: float, t1_s: float) -> float:
        calls.append((t0_s, t1_s))
        return 42.0 * (t1_s - t0_s)

    gpu = FakeGpu(UUID, power_w=999.0, energy_between_j=energy_j)
    fake, handle = _reader(gpu, clock)
    clock.advance(0.25)
    assert fake.nvmlDeviceGetTotalEnergyConsumption(handle) == math.floor(42.0 * 200)
    assert gpu.true_energy_j() == pytest.approx(42.0 * 0.25)
    assert fake.nvmlDeviceGetPowerUsage(handle) == 42_000
    assert calls


def test_with_an_exact_model_a_late_load_is_carried_into_the_next_tick():
    """A load registered after its start was read: the published tick stays, the next one
    has all its energy (counter = exact energy again), and the counter never decreases."""
    clock = FakeClock(1000.0)
    gpu = FakeGpu(UUID, loads=LoadModel(IDLE_W, BUSY_W))
    fake, handle = _reader(gpu, clock)
    clock.advance(0.35)
    published = fake.nvmlDeviceGetTotalEnergyConsumption(handle)
    assert published == pytest.approx(18_000, abs=1)
    gpu.loads.add_load(1000.12, 1000.2)  # arrives late: 8 J at ticks already read
    assert fake.nvmlDeviceGetTotalEnergyConsumption(handle) == published
    clock.advance(0.1)
    assert fake.nvmlDeviceGetTotalEnergyConsumption(handle) == math.floor(
        gpu.loads.energy_j(1000.0, 1000.4) * 1000 + 1e-6
    )
    assert gpu.true_energy_j() == pytest.approx(60 * 0.45 + 8.0)


def test_system_clock_is_real_time_and_cannot_be_advanced():
    clock = SystemClock()
    before_s = time.monotonic()
    now_s = clock.now_s()
    assert before_s <= now_s <= time.monotonic()
    with pytest.raises(TypeError):
        clock.advance(1.0)


def test_concurrent_readers_on_real_time_count_each_joule_once():
    """The sampler thread and a user thread read at once, loads arriving meanwhile: each
    reader sees a monotonic counter, and the integrated energy is not double-counted."""
    loads = LoadModel(IDLE_W, BUSY_W)
    before_attach_s = time.monotonic()
    gpu = FakeGpu(UUID, power_w=100.0, counter_update_period_s=0.002)
    model_gpu = FakeGpu(
        UUID.replace("1", "2"), loads=loads, counter_update_period_s=0.002, counter_window_s=0.0005
    )
    fake = make_fake_pynvml([gpu, model_gpu], clock=SystemClock())
    after_attach_s = time.monotonic()
    fake.nvmlInit()
    handles = [fake.nvmlDeviceGetHandleByIndex(i) for i in range(2)]
    seen: list[list[tuple[int, int]]] = [[], []]
    errors: list[BaseException] = []
    done = threading.Event()

    def read(into: list[tuple[int, int]]) -> None:
        try:
            while not done.is_set():
                into.append(tuple(fake.nvmlDeviceGetTotalEnergyConsumption(h) for h in handles))
                fake.nvmlDeviceGetPowerUsage(handles[1])
        except BaseException as err:  # reported below
            errors.append(err)

    def load() -> None:
        for _ in range(200):
            now_s = time.monotonic()
            loads.add_load(now_s, now_s + 0.001)
            time.sleep(0.0002)
        done.set()

    threads = [threading.Thread(target=read, args=(s,)) for s in seen]
    threads.append(threading.Thread(target=load))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors
    for readings in seen:
        for column in range(2):
            values = [r[column] for r in readings]
            assert values == sorted(values)
    lower_s = time.monotonic() - after_attach_s
    true_j = gpu.true_energy_j()
    upper_s = time.monotonic() - before_attach_s
    assert 100.0 * lower_s <= true_j <= 100.0 * upper_s


def test_install_puts_a_real_time_fake_where_footprint_imports_pynvml(monkeypatch):
    monkeypatch.delitem(sys.modules, "pynvml", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    module = install_fake_pynvml(
        "gpus=2, idle_w=50, busy_w=250, counter_window_s=0.025, power_average_s=1, seed=7"
    )
    import pynvml

    assert pynvml is module
    assert isinstance(module.fake_state.clock, SystemClock)
    gpus = module.fake_state.gpus
    assert [g.uuid for g in gpus] == fake_uuids(2, 7) == fake_uuids(2, 7)
    assert fake_uuids(2, 7) != fake_uuids(2, 8)
    assert gpus[0].name == "NVIDIA H100 80GB HBM3"
    assert (gpus[0].counter_window_s, gpus[0].power_average_s) == (0.025, 1.0)
    assert isinstance(gpus[1].loads, LoadModel) and gpus[0].loads is not gpus[1].loads
    sensor = NvmlSensor()  # footprint's own import of pynvml
    try:
        assert [d.uuid for d in sensor.devices] == fake_uuids(2, 7)
        assert all(value is not None for value in sensor.read_energy_j())
    finally:
        sensor.close()
    module.nvmlInit()
    handle = module.nvmlDeviceGetHandleByIndex(1)
    now_s = time.monotonic()
    gpus[1].loads.add_load(now_s - 10.0, now_s + 10.0)  # busy for the whole last second
    assert module.nvmlDeviceGetPowerUsage(handle) == 250_000
    assert module.nvmlDeviceGetEnforcedPowerLimit(handle) == 250_000


def test_install_options_from_a_mapping_and_their_errors(monkeypatch):
    monkeypatch.delitem(sys.modules, "pynvml", raising=False)
    module = install_fake_pynvml({"gpus": 1, "energy_counter": False, "power_limit_w": 0})
    (gpu,) = module.fake_state.gpus
    assert not gpu.supports_energy_counter and gpu.power_limit_w is None
    assert FakeInstallSpec.parse("counter_window_s=none").counter_window_s is None
    with pytest.raises(ValueError, match="unknown option 'window'; allowed: gpus"):
        install_fake_pynvml("window=0.025")
    with pytest.raises(ValueError, match="bad value for gpus"):
        install_fake_pynvml("gpus=two")
    with pytest.raises(ValueError, match="gpus must be 1..64"):
        install_fake_pynvml({"gpus": 0})
    with pytest.raises(ValueError, match="counter_window_s must be in"):
        install_fake_pynvml("counter_window_s=0.5")
