"""The simulated sensor under ``workload=spans`` for a long time and with absurd times.

Before: every call added four floats per load change to lists that were never pruned
(about 0.35 KB a call, in the daemon for as long as it ran), and one call starting at
-1.7e308 made every later reading raise OverflowError (or turned it into inf) until the
process was restarted.
"""

from __future__ import annotations

import math

import pytest

from footprint._clock import ManualClock
from footprint.sensors.simulated import SimulatedGpuSpec, SimulatedSensor
from footprint.sensors.simulated.gpu import MAX_STEPS, MAX_TIME_SKEW_S, PRUNE_EVERY

IDLE_W, BUSY_W = 60.0, 400.0
# One call: 1/32 s busy, then 1/32 s idle; ticks every 1/8 s (binary fractions: exact
# sums, so every read falls on the tick it is meant to).
BUSY_S = IDLE_S = 0.03125
PERIOD_S = 0.125
CYCLE_J = BUSY_S * BUSY_W + IDLE_S * IDLE_W
PER_S = 16  # calls a second


def _sensor(**options) -> tuple[SimulatedSensor, ManualClock]:
    clock = ManualClock(1024.0)
    spec = SimulatedGpuSpec(idle_w=IDLE_W, busy_w=BUSY_W, update_period_s=PERIOD_S, **options)
    return SimulatedSensor(spec, clock), clock


def _calls(sensor: SimulatedSensor, clock: ManualClock, n: int, read_every: int = 10) -> None:
    for k in range(n):
        sensor.begin_load((0,), clock.monotonic_s())
        clock.advance(BUSY_S)
        sensor.end_load((0,), clock.monotonic_s())
        clock.advance(IDLE_S)
        if k % read_every == 0:
            sensor.read_energy_j()


def _sizes(sensor: SimulatedSensor) -> dict[str, int]:
    gpu = sensor.gpus[0]
    loads = gpu.loads
    return {
        "times": len(loads._times_s),
        "deltas": len(loads._deltas),
        "load_after": len(loads._load_after),
        "dyn_j_at": len(loads._dyn_j_at),
        "fix_ticks": len(gpu._fix_ticks),
        "fix_sums": len(gpu._fix_sums_j),
    }


def _energy_over_j(sensor: SimulatedSensor, clock: ManualClock, calls: int) -> float:
    """What the counter counts over ``calls`` more calls, from one tick to another."""
    before_j = sensor.read_energy_j()[0]
    _calls(sensor, clock, calls)
    return sensor.read_energy_j()[0] - before_j


# part-time: each tick's counter sees only its first quarter (busy), and doubles the busy power
OPTIONS = pytest.mark.parametrize(
    "options", [{}, {"window_s": 0.03125, "window_offset_s": 0.0}], ids=["whole", "part-time"]
)


@OPTIONS
def test_memory_stays_bounded_over_200k_calls(options):
    sensor, clock = _sensor(**options)
    _calls(sensor, clock, 200_000)
    sizes = _sizes(sensor)
    assert max(sizes.values()) <= MAX_STEPS + PRUNE_EVERY, sizes
    assert sensor.oddities()["forgotten_steps"] >= 2 * 200_000 - MAX_STEPS - PRUNE_EVERY
    # still exact for what readers ask: the counter over the next 1000 calls (62.5 s,
    # whole ticks) as on a fresh sensor (a part-time one sees only part of each tick),
    # and the truth over the last second
    fresh, fresh_clock = _sensor(**options)
    _calls(fresh, fresh_clock, 100)
    expected_j = _energy_over_j(fresh, fresh_clock, 1000)
    if not options:
        assert expected_j == pytest.approx(1000 * CYCLE_J, abs=0.01)
    assert _energy_over_j(sensor, clock, 1000) == pytest.approx(expected_j, abs=0.01)
    now_s = clock.monotonic_s()
    assert sensor.gpus[0].true_energy_j(now_s - 1.0, now_s) == pytest.approx(PER_S * CYCLE_J)
    assert sensor.oddities()["clamped_steps"] == 0


@pytest.mark.parametrize("absurd", [-1.7e308, 1.7e308, -math.inf, math.inf, math.nan, -1.0])
def test_an_absurd_start_is_ignored_and_counted(absurd):
    sensor, clock = _sensor()
    _calls(sensor, clock, 100)
    sensor.begin_load((0,), absurd)  # as a daemon's client once sent
    clock.advance(PERIOD_S)
    sensor.end_load((0,), clock.monotonic_s())  # its end: no load is open, ignored
    clock.advance(PERIOD_S)
    # -1.0 is 1031 s before the clock: within MAX_TIME_SKEW_S, taken (then ended)
    far = abs(absurd - clock.monotonic_s()) > MAX_TIME_SKEW_S or not math.isfinite(absurd)
    energy_j = _energy_over_j(sensor, clock, 1000)
    if far:
        assert energy_j == pytest.approx(1000 * CYCLE_J, abs=0.01)
        assert sensor.oddities()["refused_times"] == 1
        assert sensor.oddities()["unmatched_ends"] == 1
    else:
        assert sensor.oddities()["refused_times"] == 0
    assert all(math.isfinite(v) for v in sensor.read_energy_j())
    now_s = clock.monotonic_s()
    assert sensor.gpus[0].true_energy_j(now_s - 1.0, now_s) == pytest.approx(PER_S * CYCLE_J)


def test_an_absurd_end_ends_its_load_now():
    sensor, clock = _sensor()
    sensor.read_energy_j()
    sensor.begin_load((0,), clock.monotonic_s())
    clock.advance(0.5)
    sensor.end_load((0,), math.inf)  # taken as now: the load does not stay on for good
    assert sensor.oddities()["refused_times"] == 1
    clock.advance(1.0)
    now_s = clock.monotonic_s()
    assert sensor.gpus[0].true_energy_j(now_s - 1.0, now_s) == pytest.approx(IDLE_W * 1.0)
    assert sensor.gpus[0].true_energy_j(now_s - 1.5, now_s - 1.0) == pytest.approx(BUSY_W * 0.5)


@OPTIONS
def test_a_late_step_older_than_what_is_kept_is_clamped_and_counted(options):
    sensor, clock = _sensor(**options)
    _calls(sensor, clock, 200_000)
    gpu = sensor.gpus[0]
    oldest_s = gpu.loads.change_times_s(-math.inf)[0]
    assert oldest_s > 1024.0 + 3600.0  # the first hour is forgotten
    sensor.begin_load((0,), oldest_s - 60.0)  # within the skew, older than what is kept
    sensor.end_load((0,), oldest_s - 59.0)
    assert sensor.oddities()["clamped_steps"] == 2
    assert all(math.isfinite(v) for v in sensor.read_energy_j())
    fresh, fresh_clock = _sensor(**options)
    _calls(fresh, fresh_clock, 100)
    expected_j = _energy_over_j(fresh, fresh_clock, 1000)
    assert _energy_over_j(sensor, clock, 1000) == pytest.approx(expected_j, abs=0.01)
