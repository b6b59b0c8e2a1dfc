"""Attribution accuracy against exact energy, on the paths users run.

Every scenario runs in fresh processes whose first footprint action is the call
(``footprint.bench.accuracy_child``: settings come from the environment, nothing is
started ahead), through the real decorator, sampler thread, resolver and SQLite store,
and exits as a script does (the records are written by footprint's exit flush). Each
runs on three code paths:

- ``simulated``: the simulated GPU, loaded by the calls themselves (``workload=spans``);
- ``nvml``: footprint's real ``NvmlSensor`` over a fake ``pynvml`` on the real clock
  (``footprint.bench.fake_pynvml``) with an ideal counter: whole mJ, updated every
  100 ms, period and phase not announced (footprint learns them, as on a real GPU);
- ``nvml-part-time``: the same counter observing only 25 ms of each 100 ms and scaling
  it to the period, as Yang et al. (SC'24) report for A100/H100; footprint is told the
  window (``FOOTPRINT_COUNTER_WINDOW_S``), as a user would after ``tests/gpu/validate.py``.

The truth of a record is the exact energy of its GPUs over its duration (the load each
call put on them, idle ``IDLE_W`` plus ``BUSY_W − IDLE_W`` at full load), shared equally
with the calls that overlapped it (the attribution rule at infinite resolution); where
calls draw different powers, the error against each call's own energy is reported too.

The scenarios are in ``accuracy_scenarios``, running them in ``accuracy_runs``, judging
their records in ``accuracy_truth``; this module runs them all and writes the figures.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import footprint
from footprint.bench.accuracy_runs import run_behind_daemon, run_in_process
from footprint.bench.accuracy_scenarios import (
    BUSY_W,
    IDLE_W,
    NOT_COVERED,
    PART_TIME_WINDOW_S,
    SAMPLING_PERIOD_S,
    SCENARIOS,
    UPDATE_PERIOD_S,
    Scenario,
)
from footprint.bench.accuracy_truth import Judged, figures, judge


def run_scenario(scenario: Scenario, path: str, scale: float = 1.0) -> dict[str, Any]:
    """Run one scenario on one path (``repeats`` fresh processes); its figures."""
    params = {
        k: (type(v)(max(1, v * scale)) if k in scenario.scaled else v)
        for k, v in scenario.params.items()
    }
    judged: list[Judged] = []
    for repeat in range(scenario.repeats):
        seed = 1 + repeat
        with tempfile.TemporaryDirectory(prefix="fp-acc-") as tmp:
            runner = run_behind_daemon if scenario.daemon else run_in_process
            run = runner(scenario, path, params, seed, Path(tmp))
        for j in judge(run, path, seed):
            j.run = repeat
            judged.append(j)
    return figures(scenario, path, judged)


def run(
    scale: float = 1.0,
    names: list[str] | None = None,
    paths: list[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Every scenario on every path (or those named), with the settings they describe."""
    from footprint.reporting.accuracy import source_digest

    results = []
    for scenario in SCENARIOS:
        if names is not None and scenario.name not in names:
            continue
        for path in scenario.paths:
            if paths is not None and path not in paths:
                continue
            started_s = time.monotonic()
            results.append(run_scenario(scenario, path, scale))
            if progress is not None:
                progress(f"{scenario.name} on {path}: {time.monotonic() - started_s:.1f} s")
    return {
        "benchmark": "accuracy",
        "version": footprint.__version__,
        "source_digest": source_digest(),
        "simulator": {
            "idle_w": IDLE_W,
            "busy_w": BUSY_W,
            "update_period_s": UPDATE_PERIOD_S,
            "sampling_period_s": SAMPLING_PERIOD_S,
            "part_time_window_s": PART_TIME_WINDOW_S,
        },
        "scale": scale,
        "scenarios": results,
        "not_covered": NOT_COVERED,
        "targets": {
            "total_error_pct": 1.0,
            "long_query_error_pct_max": 1.0,
            "within_bound_pct_min": 95.0,
            "part_time_total_error_pct_over_1000_calls": 3.0,
        },
    }


def write(result: dict[str, Any]) -> Path:
    """Store the figures where reports read them (``footprint/bench/accuracy.json``)."""
    from footprint.reporting.accuracy import accuracy_path

    path = accuracy_path()
    path.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return path
