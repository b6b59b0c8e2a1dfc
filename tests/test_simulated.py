"""The simulated GPU: counter behaviour like hardware, exact ground truth, determinism."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from footprint._clock import ManualClock
from footprint.sampling.ticks import TickEstimator
from footprint.sensors.simulated import SimulatedGpu, SimulatedGpuSpec, SimulatedSensor


def test_counter_changes_only_at_ticks_in_whole_millijoules():
    gpu = SimulatedGpu(0, SimulatedGpuSpec(idle_w=60.0, update_period_s=0.1))
    assert gpu.counter_mj(100.01) == gpu.counter_mj(100.09)
    assert gpu.counter_mj(100.1001) - gpu.counter_mj(100.09) == pytest.approx(
        6000, abs=1
    )  # 60 W x 0.1 s
    assert isinstance(gpu.counter_mj(12.3456), int)


def test_true_energy_follows_the_power_model_with_saturation():
    gpu = SimulatedGpu(0, SimulatedGpuSpec(idle_w=50.0, busy_w=450.0))
    gpu.add_load(10.0, 12.0, 0.5)
    gpu.add_load(11.0, 13.0, 0.75)  # 10-11: 0.5, 11-12: 1.25 -> capped at 1, 12-13: 0.75
    expected = 50 * 4 + 400 * (0.5 + 1.0 + 0.75)
    assert gpu.true_energy_j(9.0, 13.0) == pytest.approx(expected)
    assert gpu.power_w(11.5) == pytest.approx(450.0)


@given(
    st.lists(st.tuples(st.floats(0, 50), st.floats(0.01, 5), st.floats(0, 2)), max_size=20),
    st.floats(0, 60),
    st.floats(0, 60),
)
@settings(max_examples=100, deadline=None)
def test_noise_and_loads_keep_energy_additive_and_counter_monotonic(loads, a, b):
    gpu = SimulatedGpu(0, SimulatedGpuSpec(noise=0.5, seed=3))
    for start, length, load in loads:
        gpu.add_load(start, start + length, load)
    lo, hi = min(a, b), max(a, b)
    mid = (lo + hi) / 2
    assert gpu.true_energy_j(lo, hi) == pytest.approx(
        gpu.true_energy_j(lo, mid) + gpu.true_energy_j(mid, hi), abs=1e-6
    )
    assert gpu.true_energy_j(lo, hi) >= 0
    assert gpu.counter_mj(hi) >= gpu.counter_mj(lo)


def test_same_seed_same_counter_in_another_instance():
    """Two processes with the same seed agree: nothing depends on instance state."""
    spec = SimulatedGpuSpec(gpus=2, noise=0.3, seed=42)
    clock_a, clock_b = ManualClock(1234.5), ManualClock(1234.5)
    a, b = SimulatedSensor(spec, clock_a), SimulatedSensor(spec, clock_b)
    assert a.read_energy_j() == b.read_energy_j()
    assert [d.uuid for d in a.devices] == [d.uuid for d in b.devices]
    other = SimulatedSensor(SimulatedGpuSpec(gpus=2, noise=0.3, seed=43), ManualClock(1234.5))
    assert other.read_energy_j() != a.read_energy_j()


def test_run_loads_the_chosen_devices_and_advances_the_clock():
    clock = ManualClock(100.0)
    sensor = SimulatedSensor(SimulatedGpuSpec(gpus=2, idle_w=10, busy_w=110), clock)
    before = sensor.read_energy_j()
    sensor.run(2.0, load=1.0, devices=[1])
    after = sensor.read_energy_j()
    assert clock.monotonic_s() == 102.0
    assert after[0] - before[0] == pytest.approx(20.0, abs=0.01)
    assert after[1] - before[1] == pytest.approx(220.0, abs=0.01)


def test_options_parse():
    spec = SimulatedGpuSpec.parse("gpus=2, idle_w=60,busy_w=400,seed=7,noise=0.1")
    assert (spec.gpus, spec.idle_w, spec.busy_w, spec.seed, spec.noise) == (2, 60, 400, 7, 0.1)
    with pytest.raises(ValueError, match="bad value for gpus"):
        SimulatedGpuSpec.parse("gpus=two")


def test_tick_estimator_locks_onto_the_phase():
    period, phase = 0.1, 0.0372
    estimator = TickEstimator(period)
    poll = 0.0
    import random

    rng = random.Random(1)
    last = None
    for _ in range(200):
        prev_poll, poll = poll, poll + 0.05 * rng.uniform(0.9, 1.1)
        ticks_before = int((prev_poll - phase) // period)
        ticks_now = int((poll - phase) // period)
        if ticks_now > ticks_before:
            last = (estimator.tick_time_s(prev_poll, poll), phase + ticks_now * period)
    estimate, truth = last
    assert abs(estimate - truth) < 0.002
    assert estimator.uncertainty_s < 0.002


def _poll_windows(period_s, poll_s, n_polls, seed=4):
    """Windows (previous poll, poll] in which a counter of ``period_s`` changed."""
    import random

    rng = random.Random(seed)
    t, windows = 0.0, []
    for _ in range(n_polls):
        prev, t = t, t + poll_s * rng.uniform(0.9, 1.1)
        if int((t - 0.013) // period_s) > int((prev - 0.013) // period_s):
            windows.append((prev, t))
    return windows


def test_period_learner_finds_an_unannounced_counter_period():
    from footprint.sampling.ticks import PeriodLearner

    learner = PeriodLearner(poll_period_s=0.05)
    learned = None
    for lo, hi in _poll_windows(0.1, 0.05, 400):
        learned = learner.observe(lo, hi) or learned
        if learned:
            break
    assert learned == pytest.approx(0.1, abs=0.002)


def test_period_learner_gives_up_on_counters_faster_than_polls():
    from footprint.sampling.ticks import PeriodLearner

    learner = PeriodLearner(poll_period_s=0.05)
    assert all(learner.observe(lo, hi) is None for lo, hi in _poll_windows(0.02, 0.05, 400))
    assert learner.gave_up


def test_sampler_learns_the_period_of_a_counter_sensor():
    """An NVML-like sensor (counter, period unknown) gets tick-stamped samples."""
    from footprint.sampling import Sampler
    from footprint.sensors.base import ENERGY_COUNTER, DeviceInfo

    class CounterWithoutPeriod(SimulatedSensor):
        @property
        def counter_update_period_s(self):
            return None

        @property
        def devices(self):
            return [DeviceInfo(0, "GPU-x", "x", "gpu", ENERGY_COUNTER)]

    clock = ManualClock(500.0)
    sampler = Sampler(CounterWithoutPeriod(SimulatedGpuSpec(), clock), 0.05, clock)
    import random

    rng = random.Random(2)
    sampler._started_s = clock.monotonic_s()
    while clock.monotonic_s() < 575.0:  # 75 s on the sampler's own schedule (fast polls
        sampler.sample_once()  # at start and around a tick each second), late by 0-0.5 ms
        clock.advance(sampler.next_wait_s() + rng.uniform(0.0, 0.0005))
    (period,) = sampler.counter_periods_s()
    assert period == pytest.approx(0.1, abs=0.00005)
    assert sampler.polls < 75 * 30  # 20 polls a second, and a few around one tick
    samples = sampler.drain()[0]
    # Once locked, samples sit on the counter's ticks (multiples of 0.1 s), not on polls.
    late = [t for t, _ in samples[-20:]]
    # (Poll-time stamps would be up to a poll period, 50 ms, after the tick.)
    assert max(abs(t * 10 - round(t * 10)) / 10 for t in late) < 0.01


def test_a_long_poll_gap_stamps_the_last_tick_before_the_poll():
    """A poll after a pause (a busy GIL, a stalled thread) reads the value of the last tick.

    On main the estimate was the tick nearest the window's middle: 5 s off after a 10 s gap.
    """
    from footprint.sampling import Sampler

    clock = ManualClock(monotonic_s=100.0)
    sensor = SimulatedSensor(SimulatedGpuSpec(update_period_s=0.1), clock=clock)
    sampler = Sampler(sensor, period_s=0.05, clock=clock)
    for _ in range(60):  # lock onto the phase (ticks at multiples of 0.1 s)
        sampler.sample_once()
        clock.advance(sampler.next_wait_s())
    sampler.drain()
    clock.advance(10.0137)
    sampler.sample_once()
    ((t_s, energy_j),) = sampler.drain()[0]
    last_tick_s = (clock.monotonic_s() // 0.1) * 0.1
    assert t_s == pytest.approx(last_tick_s, abs=0.003)
    assert energy_j == sensor.gpus[0].counter_mj(clock.monotonic_s()) / 1000.0


def test_first_value_is_placed_at_its_tick_once_the_counter_changes():
    from footprint.sampling import Sampler

    clock = ManualClock(monotonic_s=100.077)  # 77 ms after the tick the first value shows
    sensor = SimulatedSensor(SimulatedGpuSpec(update_period_s=0.1), clock=clock)
    sampler = Sampler(sensor, period_s=0.05, clock=clock)
    sampler.sample_once()
    assert sampler.drain()[0] == []  # not placed until a change pins the phase
    while True:
        clock.advance(sampler.next_wait_s())
        sampler.sample_once()
        samples = sampler.drain()[0]
        if samples:
            break
    (first_s, _), (second_s, _) = samples
    assert first_s == pytest.approx(100.0, abs=0.0021)
    assert second_s == pytest.approx(100.1, abs=0.0021)
