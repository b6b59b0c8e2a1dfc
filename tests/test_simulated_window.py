"""The simulated GPU's part-time counter (``window_s``) and loads that arrive late."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from footprint._clock import ManualClock
from footprint.sensors.base import NullSensor
from footprint.sensors.simulated import SimulatedGpu, SimulatedGpuSpec, SimulatedSensor

# Ticks at multiples of 0.1 s; reads at mid-period times are clear of float rounding.
SPEC = {"idle_w": 60.0, "busy_w": 160.0, "update_period_s": 0.1}


def _gpu(**options: object) -> SimulatedGpu:
    return SimulatedGpu(0, SimulatedGpuSpec(**{**SPEC, **options}))  # type: ignore[arg-type]


def _first_tick_mj(gpu: SimulatedGpu, start_s: float, end_s: float) -> int:
    """Counter increase over the tick at 100.1 s, with a full load between two times."""
    gpu.add_load(start_s, end_s)
    return gpu.counter_mj(100.15) - gpu.counter_mj(100.05)


def test_a_part_time_counter_misses_a_short_load_outside_its_window():
    gpu = _gpu(window_s=0.025)  # sees (100.075, 100.1] of the period ending at 100.1
    assert _first_tick_mj(gpu, 100.02, 100.03) == pytest.approx(6000, abs=1)
    assert gpu.true_energy_j(100.0, 100.1) == pytest.approx(6.0 + 1.0)


def test_a_part_time_counter_sees_four_times_a_short_load_inside_its_window():
    gpu = _gpu(window_s=0.025)
    assert _first_tick_mj(gpu, 100.08, 100.09) == pytest.approx(6000 + 4000, abs=1)
    assert gpu.true_energy_j(100.0, 100.1) == pytest.approx(6.0 + 1.0)


def test_the_window_offset_moves_the_window_to_the_start_of_the_period():
    assert _first_tick_mj(_gpu(window_s=0.025, window_offset_s=0.0), 100.01, 100.02) == (
        pytest.approx(10000, abs=1)
    )
    assert _first_tick_mj(_gpu(window_s=0.025, window_offset_s=0.0), 100.08, 100.09) == (
        pytest.approx(6000, abs=1)
    )


def test_a_whole_period_counter_sees_the_exact_energy():
    for options in ({}, {"window_s": 0.0}, {"window_s": 0.1, "window_offset_s": 0.0}):
        assert _first_tick_mj(_gpu(**options), 100.02, 100.03) == pytest.approx(7000, abs=1)


def test_over_whole_periods_of_steady_load_the_part_time_counter_is_exact():
    gpu = _gpu(window_s=0.025, noise=0.3, seed=5)
    gpu.add_load(100.0, 101.0, 0.5)  # steady over each period it covers
    counted_mj = gpu.counter_mj(101.05) - gpu.counter_mj(99.95)
    assert counted_mj == pytest.approx(gpu.true_energy_j(99.9, 101.0) * 1000, abs=2)


def test_part_time_corrections_follow_loads_added_in_any_order():
    """Loads registered out of time order give the same counter as in order."""
    spans = [(100.33, 100.38), (100.01, 100.09), (100.52, 100.6), (100.18, 100.28)]
    in_order, shuffled = _gpu(window_s=0.02), _gpu(window_s=0.02)
    for start, end in sorted(spans):
        in_order.add_load(start, end)
    for start, end in spans:
        shuffled.add_load(start, end)
        shuffled.counter_mj(99.0)  # recomputes the corrections between additions
    for t_s in (100.05, 100.25, 100.45, 100.65, 101.05):
        assert shuffled.counter_mj(t_s) == in_order.counter_mj(t_s)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ("window_s=0.2", "window_s must be in \\(0, update_period_s\\]"),
        ("window_s=-0.01", "window_s must be in"),
        ("window_s=nan", "window_s must be in"),
        ("window_s=0.025,window_offset_s=0.08", "window_offset_s must be in .* = \\[0, 0.075\\]"),
        ("window_s=0.025,window_offset_s=-1", "window_offset_s must be in"),
        ("window_offset_s=0.01", "window_offset_s must be in .* = \\[0, 0\\]"),
        ("window_s=abc", "bad value for window_s"),
    ],
)
def test_impossible_windows_are_refused_with_the_allowed_range(options, match):
    with pytest.raises(ValueError, match=match):
        SimulatedGpuSpec.parse(options)


def test_window_options_parse_and_the_sensor_reports_its_window():
    spec = SimulatedGpuSpec.parse("gpus=2,window_s=0.025,window_offset_s=0.075")
    assert (spec.window_s, spec.window_offset_s, spec.part_time) == (0.025, 0.075, True)
    assert SimulatedSensor(spec, ManualClock()).counter_window_s == 0.025
    for whole in ("", "window_s=0", "window_s=0.1"):
        sensor = SimulatedSensor(SimulatedGpuSpec.parse(whole), ManualClock())
        assert sensor.counter_window_s is None
        assert sensor.counter_update_period_s == 0.1
    assert NullSensor().counter_window_s is None


# -- late loads ---------------------------------------------------------------------


def test_a_late_load_never_rewrites_a_read_tick_and_is_carried_into_the_next():
    gpu = _gpu()
    published = gpu.counter_mj(100.35)  # tick 100.3 read
    gpu.add_step(100.12, 1.0)  # a span start that arrives after that read
    assert gpu.counter_mj(100.35) == published  # never rewritten
    assert gpu.late_steps == 1
    assert gpu.late_energy_j == pytest.approx(100 * 0.18)
    assert gpu.counter_mj(100.45) == math.floor(gpu._energy_since_origin_j(100.4) * 1000)
    assert gpu.counter_mj(100.45) - published == pytest.approx(6000 + 100 * 0.28 * 1000, abs=1)


def test_a_late_end_holds_the_counter_until_the_energy_catches_up():
    gpu = _gpu()
    gpu.add_step(100.12, 1.0)
    readings = [gpu.counter_mj(t / 100) for t in range(10005, 10046, 10)]  # to tick 100.4
    gpu.add_step(100.2, -1.0)  # the end arrives late: 20 J counted that were not drawn
    assert gpu.late_steps == 1
    assert gpu.late_energy_j == pytest.approx(-20.0)
    readings += [gpu.counter_mj(t / 100) for t in range(10045, 10156, 10)]
    assert readings == sorted(readings)  # never backwards
    # ticks 100.4 (read again) to 100.7 held while idle power (6 J a tick) makes up 20 J
    assert readings[4] == readings[5] == readings[6] == readings[7] == readings[8] < readings[9]
    assert readings[-1] == math.floor(gpu._energy_since_origin_j(101.5) * 1000)


def test_late_loads_from_the_daemon_do_not_make_the_sensor_go_backwards():
    clock = ManualClock(100.0)
    sensor = SimulatedSensor(SimulatedGpuSpec(**SPEC, gpus=2), clock)  # type: ignore[arg-type]
    readings = []
    for k in range(30):
        clock.advance(0.05)
        if k == 10:  # a span that began at 100.05 arrives now, ends 0.1 s later
            sensor.begin_load((0, 1), 100.05)
        if k == 20:
            sensor.end_load((0, 1), 100.15)
        readings.append(sensor.read_energy_j())
    for device in (0, 1):
        values = [r[device] for r in readings]
        assert values == sorted(values)
    assert [g.late_steps for g in sensor.gpus] == [2, 2]


_loads = st.lists(
    st.tuples(
        st.floats(100.0, 103.0),
        st.floats(0.001, 1.0),
        st.floats(0.0, 1.5),
        st.integers(0, 40),
        st.integers(0, 20),
    ),
    max_size=12,
)


@given(
    _loads,
    st.lists(st.floats(0.001, 0.2), min_size=40, max_size=40),
    st.sampled_from([None, 0.025]),
)
@settings(max_examples=150, deadline=None)
def test_late_loads_keep_the_counter_monotonic_and_it_catches_up(loads, gaps, window_s):
    """Each load's start arrives after ``arrives`` reads and its end ``delay`` reads later,
    as a daemon gets them; an on-time twin had every load from the start."""
    late, on_time = _gpu(window_s=window_s), _gpu(window_s=window_s)
    steps = []  # (reads before it arrives, time, load change)
    for start, length, load, arrives, delay in loads:
        on_time.add_load(start, start + length, load)
        steps += [(arrives, start, load), (arrives + delay, start + length, -load)]
    t_s, readings = 100.0, []
    for k, gap in enumerate(gaps):
        for arrives, step_s, delta in steps:
            if arrives == k:
                late.add_step(step_s, delta)
        t_s += gap
        readings.append(late.counter_mj(t_s))
    for arrives, step_s, delta in steps:
        if arrives >= len(gaps):
            late.add_step(step_s, delta)
    assert readings == sorted(readings)
    final_s = 500.05  # long after every load: idle power has made up any over-count
    assert late.counter_mj(final_s) >= readings[-1]
    assert late.counter_mj(final_s) == pytest.approx(on_time.counter_mj(final_s), abs=1)
    assert late.true_energy_j(99.0, 510.0) == pytest.approx(on_time.true_energy_j(99.0, 510.0))
