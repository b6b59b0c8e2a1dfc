"""The resolver: energy conservation (property-based) and accuracy against the simulator."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from footprint._clock import ManualClock
from footprint.attribution import DeviceResolver
from footprint.bench.accuracy_truth import truth_j
from footprint.sampling import Sampler
from footprint.sensors.simulated import SimulatedGpuSpec, SimulatedSensor


@st.composite
def traces_and_spans(draw):
    """Random monotone counter samples and random overlapping spans over them."""
    n = draw(st.integers(2, 60))
    gaps = draw(st.lists(st.floats(0.001, 2.0), min_size=n - 1, max_size=n - 1))
    powers = draw(st.lists(st.floats(0.0, 1000.0), min_size=n - 1, max_size=n - 1))
    t, e = 100.0, draw(st.floats(0, 1e9))
    samples = [(t, e)]
    for gap, power in zip(gaps, powers):
        t += gap
        e += gap * power
        samples.append((t, e))
    t_first, t_last = samples[0][0], samples[-1][0]
    span_list = []
    for _ in range(draw(st.integers(0, 25))):
        a = draw(st.floats(t_first - 1, t_last + 1))
        length = draw(st.floats(0.0, t_last - t_first + 2))
        span_list.append((a, a + length))
    chunk = draw(st.integers(1, 10))
    return samples, span_list, chunk


@given(traces_and_spans())
@settings(max_examples=300, deadline=None)
def test_energy_is_conserved(case):
    """Σ span J + Σ idle J = counter(last) − counter(first), streamed in chunks."""
    samples, spans, chunk = case
    resolver = DeviceResolver()
    resolver.add_samples(samples[:1])
    for key, (start, end) in enumerate(spans):
        resolver.begin(key, start)
        resolver.end(key, end)
    shares = {}
    for i in range(1, len(samples), chunk):
        resolver.add_samples(samples[i : i + chunk])
        shares.update(resolver.resolve())
    shares.update(resolver.resolve(final=True))
    assert set(shares) == set(range(len(spans)))
    attributed = sum(s.energy_j for s in shares.values())
    idle = sum(p.energy_j for p in resolver.idle)
    measured = sum(p.energy_j for p in resolver.measured)
    expected = samples[-1][1] - samples[0][1]
    scale = max(1.0, abs(samples[-1][1]))
    assert math.isclose(measured, expected, rel_tol=0, abs_tol=1e-9 * scale)
    assert math.isclose(attributed + idle, expected, rel_tol=0, abs_tol=1e-9 * scale)
    for key, (start, end) in enumerate(spans):
        share = shares[key]
        assert share.energy_j >= -1e-9 * scale
        assert share.gpu_s <= (end - start) + 1e-9
    total_gpu_s = sum(s.gpu_s for s in shares.values())
    assert total_gpu_s <= samples[-1][0] - samples[0][0] + 1e-6


def test_idle_interval_goes_to_idle_and_busy_to_the_only_span():
    resolver = DeviceResolver()
    resolver.add_samples([(0.0, 0.0), (1.0, 60.0), (2.0, 460.0), (3.0, 860.0), (4.0, 920.0)])
    resolver.begin("q", 1.0)
    resolver.end("q", 3.0)
    done = resolver.resolve(final=True)
    assert done["q"].energy_j == pytest.approx(800.0)
    assert done["q"].gpu_s == pytest.approx(2.0)
    assert sum(p.energy_j for p in resolver.idle) == pytest.approx(120.0)


def test_an_interval_busy_to_float_rounding_is_busy_throughout():
    """A call that began a float's rounding after the sample at 0.3 s covers the interval:
    all its energy is the call's, with no idle power known yet and no guess in its bound."""
    resolver = DeviceResolver()
    resolver.add_samples([(0.3, 0.0), (1.0, 70.0)])
    resolver.begin("q", 0.3 + 4e-16)  # busy 0.6999999999999996 s of 0.7
    resolver.end("q", 1.0)
    done = resolver.resolve(final=True)
    assert done["q"].energy_j == pytest.approx(70.0)
    assert done["q"].uncertainty_j < 1.0  # not the whole delta: nothing is unknown
    assert resolver.oddities["unknown_idle_intervals"] == 0


def test_step_inside_an_interval_uses_neighbouring_power():
    """Idle 60 W then 400 W from t=1.5: the split follows power, not just time."""
    resolver = DeviceResolver()
    energy = [0.0, 60.0, 60.0 + 30.0 + 200.0, 290.0 + 400.0]
    resolver.add_samples([(float(i), e) for i, e in enumerate(energy)])
    resolver.begin("q", 1.5)
    resolver.end("q", 3.0)
    done = resolver.resolve(final=True)
    assert done["q"].energy_j == pytest.approx(200.0 + 400.0)


def test_concurrent_spans_share_by_overlap():
    resolver = DeviceResolver()
    resolver.add_samples([(0.0, 0.0), (1.0, 100.0), (2.0, 200.0), (3.0, 300.0)])
    resolver.begin("a", 0.0)
    resolver.end("a", 2.0)
    resolver.begin("b", 1.0)
    resolver.end("b", 3.0)
    done = resolver.resolve(final=True)
    assert done["a"].energy_j == pytest.approx(150.0)
    assert done["b"].energy_j == pytest.approx(150.0)
    assert done["a"].gpu_s == pytest.approx(1.5)


def test_running_span_is_not_returned_until_it_ends():
    resolver = DeviceResolver()
    resolver.add_samples([(0.0, 0.0), (1.0, 100.0), (2.0, 200.0), (3.0, 300.0)])
    resolver.begin("a", 0.5)
    assert resolver.resolve(until_s=1.0) == {}  # still running at t=1: nothing complete
    resolver.end("a", 1.5)
    done = resolver.resolve()
    assert done["a"].energy_j == pytest.approx(100.0)
    assert not done["a"].partial


def test_span_starting_before_first_sample_is_partial():
    resolver = DeviceResolver()
    resolver.add_samples([(1.0, 0.0), (2.0, 100.0), (3.0, 200.0)])
    resolver.begin("early", 0.0)
    resolver.end("early", 2.0)
    done = resolver.resolve(final=True)
    assert done["early"].partial
    assert done["early"].energy_j == pytest.approx(100.0)


# -- accuracy against the simulator's ground truth ------------------------------------


def _run_workload(spans, spec, poll_s=0.05, seed=3, start_s=5000.0):
    """Drive a simulated GPU, a hand-stepped sampler and the resolver over ``spans``.

    Polls follow the sampler's own schedule (``next_wait_s``), with the scheduling
    jitter of a busy machine added.
    """
    clock = ManualClock(monotonic_s=start_s)
    sensor = SimulatedSensor(spec, clock=clock)
    gpu = sensor.gpus[0]
    for start, end in spans:
        gpu.add_load(start, end, 1.0)
    sampler = Sampler(sensor, period_s=poll_s, clock=clock)
    resolver = DeviceResolver()
    for key, (start, end) in enumerate(spans):
        resolver.begin(key, start)
        resolver.end(key, end)
    rng = random.Random(seed)
    horizon = max(end for _, end in spans) + 1.0
    shares = {}
    while clock.monotonic_s() < horizon:
        sampler.sample_once()
        wait_s = sampler.next_wait_s()
        clock.advance(wait_s + rng.uniform(0, 0.1 * wait_s))
        resolver.add_samples(sampler.drain()[0])
        resolver.timing_uncertainty_s = sampler.timing_uncertainty_s()[0]
        shares.update(resolver.resolve())
    sampler.sample_fresh()
    resolver.add_samples(sampler.drain()[0])
    shares.update(resolver.resolve(final=True))
    return gpu, shares, sampler


def _truth(gpu, spans):
    """The overlap rule at infinite resolution: each constant-set segment split equally."""
    return truth_j(spans, gpu.true_energy_j)


@pytest.mark.parametrize("noise", [0.0, 0.05])
def test_sequential_queries_within_one_percent(noise):
    spec = SimulatedGpuSpec(idle_w=60, busy_w=400, update_period_s=0.1, noise=noise, seed=11)
    rng = random.Random(5)
    spans, t = [], 5002.0  # two seconds of warm-up to lock onto the counter's phase
    for _ in range(20):
        start = t + rng.uniform(0.2, 0.6)
        end = start + rng.uniform(1.0, 3.0)
        spans.append((start, end))
        t = end
    gpu, shares, _ = _run_workload(spans, spec)
    truth = _truth(gpu, spans)
    errors = []
    for key, true_j in enumerate(truth):
        error = abs(shares[key].energy_j - true_j)
        # The record's own bound holds, and it is tight enough to mean something.
        assert error <= shares[key].uncertainty_j, (key, error, shares[key].uncertainty_j)
        assert shares[key].uncertainty_j <= 0.005 * true_j
        errors.append(error / true_j)
    assert max(errors) <= 0.001


def test_concurrent_queries_within_one_percent():
    spec = SimulatedGpuSpec(idle_w=60, busy_w=400, update_period_s=0.1, noise=0.02, seed=2)
    rng = random.Random(9)
    spans = []
    for _ in range(40):
        start = 5002.0 + rng.uniform(0, 30)
        spans.append((start, start + rng.uniform(1.0, 4.0)))
    gpu, shares, sampler = _run_workload(spans, spec)
    truth = _truth(gpu, spans)
    worst = max(abs(shares[k].energy_j - t) / t for k, t in enumerate(truth))
    assert worst <= 0.01, worst
    measured = sum(s.energy_j for s in shares.values())
    assert measured == pytest.approx(sum(truth), rel=2e-3)


# -- short, bursty traffic: the busy parts of an interval get the busy energy ---------


def _sequential(rng, count, call_s, gap_s, t=5002.0):
    spans = []
    for _ in range(count):
        start = t + rng.uniform(*gap_s)
        end = start + rng.uniform(*call_s)
        spans.append((start, end))
        t = end
    return spans


@pytest.mark.parametrize(
    ("gap_s", "noise"), [((0.02, 0.05), 0.0), ((0.0, 0.005), 0.0), ((0.005, 0.05), 0.02)]
)
def test_short_bursty_calls_total_within_one_percent(gap_s, noise):
    """1–20 ms calls, gaps shorter than the 100 ms counter: no interval is idle or full."""
    spec = SimulatedGpuSpec(idle_w=60, busy_w=400, update_period_s=0.1, noise=noise, seed=4)
    spans = _sequential(random.Random(8), 300, (0.001, 0.02), gap_s)
    gpu, shares, sampler = _run_workload(spans, spec)
    truth = _truth(gpu, spans)
    measured = sum(shares[k].energy_j for k in range(len(spans)))
    assert measured == pytest.approx(sum(truth), rel=0.01)
    within = sum(
        abs(shares[k].energy_j - t) <= shares[k].uncertainty_j + 1e-9 for k, t in enumerate(truth)
    )
    assert within >= 0.95 * len(spans)


def test_first_call_after_start_is_measured_from_its_start():
    """A 1 s call right after the first sample: no idle interval has been seen yet."""
    spec = SimulatedGpuSpec(idle_w=60, busy_w=400, update_period_s=0.1, seed=3)
    for offset in (0.0, 0.013, 0.047, 0.071, 0.096):
        spans = [(5000.0 + offset + 0.001, 5001.0 + offset)]
        gpu, shares, _ = _run_workload(spans, spec, start_s=5000.0 + offset)
        (true_j,) = _truth(gpu, spans)
        assert shares[0].energy_j == pytest.approx(true_j, rel=0.005), offset


# -- bad input: never raises, conserves, counts ---------------------------------------


@st.composite
def messy_traces(draw):
    """Samples whose time may go backwards, counters that reset or stall, odd spans."""
    n = draw(st.integers(2, 50))
    t, e = 100.0, draw(st.floats(0, 1e6))
    samples = [(t, e)]
    for _ in range(n - 1):
        t += draw(st.sampled_from([-0.05, 0.0, 0.001, 0.05, 0.1, 0.7]))
        kind = draw(st.sampled_from(["normal", "zero", "reset", "normal"]))
        if kind == "normal":
            e += draw(st.floats(0, 500))
        elif kind == "reset":
            e = draw(st.floats(0, 10))  # the counter went back to near zero
        samples.append((t, e))
    spans = []
    for _ in range(draw(st.integers(0, 20))):
        a = draw(st.floats(99.0, t + 1))
        b = a + draw(st.floats(-1.0, 3.0))  # some end before they start
        late = draw(st.booleans())  # announced only after part was resolved
        spans.append((a, b, late))
    return samples, spans


@given(messy_traces())
@settings(max_examples=300, deadline=None)
def test_bad_input_never_raises_and_energy_is_still_conserved(case):
    samples, spans = case
    resolver = DeviceResolver()
    half = len(samples) // 2
    for key, (a, b, late) in enumerate(spans):
        if not late:
            resolver.begin(key, a)
            resolver.end(key, b)
    resolver.add_samples(samples[:half])
    shares = dict(resolver.resolve())
    for key, (a, b, late) in enumerate(spans):
        if late:
            resolver.begin(key, a)
            resolver.end(key, b)
    resolver.add_samples(samples[half:])
    shares.update(resolver.resolve(final=True))
    assert set(shares) == set(range(len(spans)))
    accepted = [samples[0]]
    for t, e in samples[1:]:
        if t > accepted[-1][0]:
            accepted.append((t, e))
    expected = accepted[-1][1] - accepted[0][1]
    measured = sum(p.energy_j for p in resolver.measured)
    idle = sum(p.energy_j for p in resolver.idle)
    attributed = sum(s.energy_j for s in shares.values())
    scale = max(1.0, max(abs(e) for _, e in samples))
    assert math.isclose(measured, expected, abs_tol=1e-9 * scale)
    assert math.isclose(attributed + idle, expected, abs_tol=1e-9 * scale)
    assert all(s.energy_j >= -1e-9 * scale and s.uncertainty_j >= 0 for s in shares.values())
    odd = resolver.oddities
    assert odd["non_increasing_samples"] == len(samples) - len(accepted)
    assert odd["negative_deltas"] == sum(b[1] < a[1] for a, b in zip(accepted, accepted[1:]))
    assert odd["ends_before_start"] == sum(b < a for a, b, _ in spans)


def test_late_announced_span_is_partial_and_counted():
    resolver = DeviceResolver()
    resolver.add_samples([(0.0, 0.0), (1.0, 100.0), (2.0, 200.0), (3.0, 300.0)])
    resolver.resolve()
    resolver.begin("late", 0.5)  # began before the resolved part it missed
    resolver.end("late", 2.5)
    done = resolver.resolve(final=True)
    assert done["late"].partial
    assert resolver.oddities["late_starts"] == 1


def test_a_span_begun_just_before_the_first_sample_is_measured_from_its_start():
    """The runtime opens its sensors off the caller's thread: a call may begin a few ms
    before the first sample. Its energy is extended back at the first interval's power,
    with all of that estimate in its bound, and conservation still holds."""
    resolver = DeviceResolver(extrapolate_start=True)
    resolver.add_samples([(1.0, 0.0), (2.0, 100.0), (3.0, 200.0)])
    resolver.begin("early", 0.8)
    resolver.end("early", 2.0)
    done = resolver.resolve(final=True)
    assert not done["early"].partial
    assert done["early"].energy_j == pytest.approx(120.0)  # 1.2 s at 100 W
    assert done["early"].uncertainty_j >= 20.0  # the extrapolated 0.2 s is not measured
    assert resolver.oddities["extrapolated_starts"] == 1
    measured = sum(p.energy_j for p in resolver.measured)
    idle = sum(p.energy_j for p in resolver.idle)
    assert measured == pytest.approx(220.0)
    assert done["early"].energy_j + idle == pytest.approx(measured)


def test_extrapolation_is_bounded_in_time():
    resolver = DeviceResolver(extrapolate_start=True)
    resolver.add_samples([(100.0, 0.0), (101.0, 100.0)])
    resolver.begin("ancient", 0.0)
    resolver.end("ancient", 101.0)
    done = resolver.resolve(final=True)
    assert done["ancient"].partial  # 100 s before the first sample: not invented
    assert done["ancient"].energy_j == pytest.approx(100.0 + 10 * 100.0)
