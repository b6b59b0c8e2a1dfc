"""Per-call truth in fresh processes, as users run footprint: the first footprint action of
each process is the tracked call, nothing was imported ahead, and the process exits as a
script does. Each case runs on the simulated GPU and on footprint's real NVML code path
(``NvmlSensor`` and sampler over a fake ``pynvml`` on the real clock), through the
accuracy benchmark's runner (``footprint.bench.accuracy``), and compares every record with
the exact energy of the load its call put on the GPU (a call alone draws 400 W).

One test per row of issue 18's table; the figures measured on main before the fix are in
each docstring.
"""

from __future__ import annotations

import pytest

from footprint.bench.accuracy import run_scenario
from footprint.bench.accuracy_scenarios import Scenario

pytestmark = pytest.mark.slow


def _one_call(seconds: float, repeats: int = 2) -> Scenario:
    return Scenario(f"one-call-{seconds:g}s", "", "one_call", {"seconds": seconds}, repeats=repeats)


@pytest.mark.parametrize("path", ["simulated", "nvml"])
@pytest.mark.parametrize("seconds, tolerance_pct", [(0.01, 5.0), (0.1, 2.0)])
def test_one_short_call_then_exit_is_measured(path, seconds, tolerance_pct):
    """Main: −85 % every run on the simulated GPU (charged idle power, bound = its own
    energy); 0 J, ``estimated``, bound NULL on the NVML path."""
    result = run_scenario(_one_call(seconds), path)
    assert result["queries"] == 2
    # A call that began before the counter's first value describes (a tick between the
    # call's start and NVML's first read: a few runs in a hundred) is "estimated", with
    # a bound that covers it; never unbounded.
    assert result["unbounded_records"] == 0 and result["zero_energy_records"] == 0
    assert result["within_bound_pct"] == 100.0, result
    if result["estimated_records"] == 0:  # measured from their start: as close as this
        assert result["per_query_error_pct"]["max"] <= tolerance_pct, result


def test_one_second_call_on_the_nvml_path_is_within_one_percent():
    """Main: up to +4.4 %."""
    result = run_scenario(_one_call(1.0), "nvml")
    assert result["per_query_error_pct"]["max"] <= 1.0, result
    assert result["within_bound_pct"] == 100.0, result


def test_the_first_calls_of_a_process_are_measured_like_the_others():
    """1–20 ms calls with 5–50 ms gaps on the simulated GPU. Main: the first 10 / 50 calls
    −40 % / −8.8 % in total (worst run −68 / −29 %), their bound held for 40 %."""
    scenario = Scenario("warm-up", "", "bursty", {"calls": 50}, repeats=2, extra=("warmup",))
    result = run_scenario(scenario, "simulated")
    first = result["first_calls"]
    assert abs(first["first_10_total_signed_error_pct"]) <= 5.0, result
    assert abs(first["first_50_total_signed_error_pct"]) <= 2.0, result
    assert result["within_bound_pct"] >= 95.0, result


def test_short_bursty_calls_on_the_nvml_path_with_an_ideal_counter():
    """Main: −10.8 % over 1,000 calls (−2.4 to −5 % over 2,000)."""
    result = run_scenario(Scenario("bursty", "", "bursty", {"calls": 300}), "nvml")
    assert result["total_error_pct"] <= 1.0, result
    assert result["within_bound_pct"] >= 95.0, result


def test_a_part_time_counter_keeps_its_bounds():
    """A counter that observes 25 ms of each 100 ms. Main: bounds held for 85 % of 1,000
    calls. A call shorter than the window is seen whole (×4) a quarter of the time and
    missed otherwise: the total of N such calls is off by about 1.7/√N (10 % for 300), which
    no attribution can undo; the bounds must say so call by call."""
    result = run_scenario(Scenario("bursty", "", "bursty", {"calls": 300}), "nvml-part-time")
    assert result["within_bound_pct"] >= 95.0, result
    assert result["total_error_pct"] <= 35.0, result  # 3.5 standard deviations


def test_the_daemons_simulated_gpu_never_rewrites_the_past():
    """4 processes of short calls behind a daemon on simulated GPUs. Main: the counter ran
    backwards (3–13 negative deltas a run), 13–43 records with energy 0 and bound 0."""
    scenario = Scenario("daemon-bursty", "", "bursty", {"calls": 60}, daemon=True, clients=4)
    result = run_scenario(scenario, "simulated")
    assert result["queries"] == 240
    assert result["zero_energy_records"] == 0, result
    assert result["within_bound_pct"] >= 95.0, result
    assert result["total_error_pct"] <= 2.0, result


def test_long_calls_behind_a_daemon_on_the_nvml_path():
    """Main: bounds covered 94–98.5 % (some records −24 % / +50 % outside)."""
    scenario = Scenario("daemon-long", "", "long", {"seconds": 4.0}, daemon=True, clients=4)
    result = run_scenario(scenario, "nvml")
    assert result["within_bound_pct"] >= 95.0, result
    assert result["total_error_pct"] <= 1.0, result


def test_calls_of_different_power_are_within_the_rules_bound():
    """A heavy call (load 1.0) overlapping a light one (0.2). Main: against the equal-split
    rule's target the bound missed 21–26 % of heavy calls."""
    scenario = Scenario(
        "different-power", "", "mixed_power", {"seconds": 6.0}, extra=("own_energy",)
    )
    result = run_scenario(scenario, "nvml")
    # Over ~16 calls one miss is 6 %: the benchmark's longer run measures the rate.
    assert result["within_bound_pct"] >= 85.0, result
    own = result["vs_own_energy"]
    # The equal-split rule itself charges the light calls for part of the heavy ones'
    # power: measured and reported, not hidden.
    assert own["light"]["vs_own_energy_signed_error_pct"] > 10.0, own
