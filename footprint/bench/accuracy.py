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
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import footprint

IDLE_W, BUSY_W, UPDATE_PERIOD_S, SAMPLING_PERIOD_S = 60.0, 400.0, 0.1, 0.05
PART_TIME_WINDOW_S = 0.025
CHILD_TIMEOUT_S = 300.0

PATHS = ("simulated", "nvml", "nvml-part-time")

NOT_COVERED = (
    "The counters here report the exact energy of what they observe; real GPUs add their "
    "sensor's own error (NVML: ±5% of the draw) and draw powers that vary between and "
    "within calls, which the attribution rule (busy power shared equally among the calls "
    "running at each instant) does not see: the calls-of-different-power scenario says "
    "how far that rule is from each call's own energy."
)


@dataclass(frozen=True)
class Scenario:
    """One fixed workload (``accuracy_child.WORKLOADS``), run ``repeats`` times in fresh
    processes (``clients`` at once behind a daemon when ``daemon``)."""

    name: str
    description: str
    workload: str
    params: dict[str, Any]
    gpus: int = 1
    repeats: int = 1
    daemon: bool = False
    clients: int = 1
    paths: tuple[str, ...] = PATHS
    scaled: tuple[str, ...] = ()  # params multiplied by --scale
    extra: tuple[str, ...] = field(default=())  # extra figures: "warmup", "own_energy"


SCENARIOS = (
    Scenario("one-call-10ms", "one 10 ms call, then exit (5 processes)",
             "one_call", {"seconds": 0.01}, repeats=5),
    Scenario("one-call-100ms", "one 100 ms call, then exit (5 processes)",
             "one_call", {"seconds": 0.1}, repeats=5),
    Scenario("one-call-1s", "one 1 s call, then exit (5 processes)",
             "one_call", {"seconds": 1.0}, repeats=5),
    Scenario("warm-up", "the first 200 calls of a process: 1–20 ms calls, 5–50 ms gaps "
             "(3 processes)", "bursty", {"calls": 200}, repeats=3, extra=("warmup",)),
    Scenario("short-bursty", "1,000 calls of 1–20 ms with 5–50 ms gaps",
             "bursty", {"calls": 1000}, scaled=("calls",)),
    Scenario("long", "sequential 1–3 s calls with 20–150 ms gaps",
             "long", {"seconds": 16.0}, scaled=("seconds",)),
    Scenario("concurrent-16", "16 threads of overlapping 50 ms–2 s calls on one GPU",
             "threads", {"threads": 16, "seconds": 10.0, "gpus": 1}, scaled=("seconds",)),
    Scenario("two-gpus", "two GPUs, 6 threads: calls on GPU 0, on GPU 1, and on both",
             "threads", {"threads": 6, "seconds": 10.0, "gpus": 2}, gpus=2,
             scaled=("seconds",)),
    Scenario("daemon-bursty", "4 processes behind one daemon, each 250 calls of 1–20 ms "
             "with 5–50 ms gaps", "bursty", {"calls": 250}, daemon=True, clients=4,
             scaled=("calls",)),
    Scenario("daemon-long", "4 processes behind one daemon, each making 1–3 s calls",
             "long", {"seconds": 12.0}, daemon=True, clients=4, scaled=("seconds",)),
    Scenario("different-power", "heavy calls (full load) overlapping light ones (a fifth "
             "of it), 0.2–1 s each", "mixed_power", {"seconds": 12.0},
             paths=("nvml", "nvml-part-time"), scaled=("seconds",), extra=("own_energy",)),
)  # fmt: skip


# -- truth ------------------------------------------------------------------------------


def _truth_j(spans: list[tuple[float, float]], energy_j: Callable[[float, float], float]):
    """Each span's exact share: every stretch's energy split equally among its spans."""
    edges = sorted({t for span in spans for t in span})
    order = sorted(range(len(spans)), key=lambda k: spans[k][0])
    truth = [0.0] * len(spans)
    active: set[int] = set()
    cursor = 0
    for a, b in zip(edges, edges[1:]):
        while cursor < len(order) and spans[order[cursor]][0] <= a:
            active.add(order[cursor])
            cursor += 1
        active = {k for k in active if spans[k][1] > a}
        if active:
            each_j = energy_j(a, b) / len(active)
            for k in active:
                truth[k] += each_j
    return truth


def _own_energy_j(spans: list[tuple[float, float]], loads: list[float], gpu: Any) -> list[float]:
    """Each span's own energy: idle power shared equally, the power above idle split by
    the calls' loads (what each call itself drew)."""
    edges = sorted({t for span in spans for t in span})
    own = [0.0] * len(spans)
    for a, b in zip(edges, edges[1:]):
        active = [k for k, (s, e) in enumerate(spans) if s <= a and e > a]
        if not active:
            continue
        total_j = gpu.true_energy_j(a, b)
        idle_j = IDLE_W * (b - a)
        load = sum(loads[k] for k in active)
        for k in active:
            own[k] += idle_j / len(active) + (total_j - idle_j) * loads[k] / load
    return own


def _gpu_model(seed: int, noise: float = 0.0) -> Any:
    from footprint.sensors.simulated import SimulatedGpu, SimulatedGpuSpec

    spec = SimulatedGpuSpec(idle_w=IDLE_W, busy_w=BUSY_W, update_period_s=UPDATE_PERIOD_S,
                            noise=noise, seed=seed)  # fmt: skip
    return lambda index: SimulatedGpu(index, spec)


# -- running ----------------------------------------------------------------------------


@dataclass
class _Run:
    """What one scenario run left: its records and each GPU's load steps."""

    rows: list[dict[str, Any]]
    steps: list[tuple[int, float, float]]
    wall_offset_s: float
    uuids: list[str]


def _environment(folder: Path, path: str, db: Path, daemon: str = "off") -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOOTPRINT_")}
    env.update(
        FOOTPRINT_DB=str(db), FOOTPRINT_CPU="0", FOOTPRINT_REGION="FRA",
        FOOTPRINT_DAEMON=daemon, FOOTPRINT_SAMPLING_PERIOD_S=str(SAMPLING_PERIOD_S),
        XDG_RUNTIME_DIR=str(folder), PYTHONUNBUFFERED="1",
    )  # fmt: skip
    if path == "nvml-part-time":
        env["FOOTPRINT_COUNTER_WINDOW_S"] = str(PART_TIME_WINDOW_S)
    return env


def _fake_options(path: str, gpus: int, seed: int) -> dict[str, Any]:
    options: dict[str, Any] = {
        "gpus": gpus, "idle_w": IDLE_W, "busy_w": BUSY_W,
        "counter_update_period_s": UPDATE_PERIOD_S, "seed": seed,
    }  # fmt: skip
    if path == "nvml-part-time":
        options["counter_window_s"] = PART_TIME_WINDOW_S
    # A real counter's tick phase is unrelated to the process: a different one each run.
    options["counter_phase_s"] = random.Random(seed * 7919).uniform(0, UPDATE_PERIOD_S)
    return options


def _sensor(path: str, gpus: int, seed: int) -> str:
    if path == "simulated":
        return (f"simulated:gpus={gpus},idle_w={IDLE_W:g},busy_w={BUSY_W:g},"
                f"update_period_s={UPDATE_PERIOD_S:g},seed={seed}")  # fmt: skip
    return "nvml"


def _uuids(path: str, gpus: int, seed: int) -> list[str]:
    if path == "simulated":
        from footprint.sensors.simulated import SimulatedGpuSpec, SimulatedSensor

        spec = SimulatedGpuSpec(gpus=gpus, seed=seed)
        return [device.uuid for device in SimulatedSensor(spec).devices]
    from footprint.bench.fake_pynvml import fake_uuids

    return fake_uuids(gpus, seed)


def _child(spec: dict[str, Any], env: dict[str, str]) -> subprocess.Popen:
    command = [sys.executable, "-m", "footprint.bench.accuracy_child", json.dumps(spec)]
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)  # fmt: skip


def _wait(proc: subprocess.Popen, what: str) -> None:
    try:
        _, err = proc.communicate(timeout=CHILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise RuntimeError(f"{what} did not finish in {CHILD_TIMEOUT_S:g} s") from None
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed ({proc.returncode}): {err.decode()[-2000:]}")


def _epoch_s(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp()


def _read_rows(db: Path) -> list[dict[str, Any]]:
    import sqlite3

    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    try:
        return [dict(row) for row in con.execute(
            "SELECT model, started_at, ended_at, gpus, energy_j, energy_uncertainty_j, "
            "energy_source FROM queries ORDER BY started_at")]  # fmt: skip
    finally:
        con.close()


def _run_in_process(scenario: Scenario, path: str, params: dict, seed: int,
                    folder: Path) -> _Run:  # fmt: skip
    db, out = folder / f"run-{seed}.db", folder / f"run-{seed}.json"
    spec = {"workload": scenario.workload, "params": params, "seed": seed, "out": str(out),
            "path": "simulated" if path == "simulated" else "nvml", "gpus": scenario.gpus,
            "fake": _fake_options(path, scenario.gpus, seed)}  # fmt: skip
    env = _environment(folder, path, db)
    env["FOOTPRINT_SENSOR"] = _sensor(path, scenario.gpus, seed)
    _wait(_child(spec, env), f"{scenario.name} on {path}")
    written = json.loads(out.read_text())
    return _Run(_read_rows(db), [tuple(s) for s in written["steps"]], written["wall_offset_s"],
                _uuids(path, scenario.gpus, seed))  # fmt: skip


_DAEMON_BOOT = (
    "import json, sys\n"
    "from footprint.bench.fake_pynvml import install_fake_pynvml\n"
    "install_fake_pynvml(json.loads(sys.argv[1]))\n"
    "from footprint.cli import main\n"
    "main(sys.argv[2:])\n"
)


def _run_behind_daemon(scenario: Scenario, path: str, params: dict, seed: int,
                       folder: Path) -> _Run:  # fmt: skip
    """A daemon measures the GPUs; ``clients`` processes make the calls through it."""
    db, sock, log = folder / "daemon.db", folder / "daemon.sock", folder / "loads.bin"
    env = _environment(folder, path, db)
    args = ["daemon", "--socket", str(sock), "--http", "off", "--db", str(db),
            "--sensor", _sensor(path, scenario.gpus, seed) + (
                ",workload=spans" if path == "simulated" else ""),
            "--sampling-period", str(SAMPLING_PERIOD_S)]  # fmt: skip
    if path == "simulated":
        command = [sys.executable, "-m", "footprint.cli", *args]
    else:
        fake = {**_fake_options(path, scenario.gpus, seed), "shared_load_log": str(log)}
        command = [sys.executable, "-c", _DAEMON_BOOT, json.dumps(fake), *args]
    daemon = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)  # fmt: skip
    try:
        deadline_s = time.monotonic() + 30
        while not sock.exists():
            if daemon.poll() is not None or time.monotonic() > deadline_s:
                raise RuntimeError(f"the daemon did not start: {daemon.stderr.read().decode()}")
            time.sleep(0.02)
        wall_offset_s = time.time() - time.monotonic()
        clients = []
        for n in range(scenario.clients):
            out = folder / f"client-{n}.json"
            spec = {"workload": scenario.workload, "params": params, "seed": seed * 100 + n,
                    "out": str(out), "gpus": scenario.gpus,
                    "path": "simulated" if path == "simulated" else "nvml",
                    "shared_load_log": None if path == "simulated" else str(log)}  # fmt: skip
            client_env = _environment(folder, path, db, daemon=str(sock))
            client_env["FOOTPRINT_SENSOR"] = _sensor(path, scenario.gpus, seed)
            clients.append(_child(spec, client_env))
        for n, proc in enumerate(clients):
            _wait(proc, f"{scenario.name} client {n} on {path}")
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(30)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
    steps: list[tuple[int, float, float]] = []
    if path != "simulated":
        from footprint.bench.fake_pynvml import SharedLoadLog

        steps = [tuple(s) for s in SharedLoadLog(str(log)).read_all()]
    return _Run(_read_rows(db), steps, wall_offset_s, _uuids(path, scenario.gpus, seed))


# -- figures ----------------------------------------------------------------------------


def _percentiles(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    ordered = sorted(values)

    def rank(q: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, int(q * len(ordered) + 0.999999) - 1))]

    return {"p50": round(rank(0.5), 4), "p95": round(rank(0.95), 4), "max": round(ordered[-1], 4)}


@dataclass
class _Judged:
    """One record beside its truth."""

    model: str
    start_s: float
    end_s: float
    measured_j: float
    truth_j: float
    bound_j: float | None
    source: str
    own_j: float | None = None
    run: int = 0  # which process (repeat) made the call


def _judge(run: _Run, path: str, seed: int) -> list[_Judged]:
    """Every record of a run beside its true energy (and its own, where loads differ)."""
    gpu_of = _gpu_model(seed)
    rows = run.rows
    spans = [(_epoch_s(r["started_at"]) - run.wall_offset_s,
              _epoch_s(r["ended_at"]) - run.wall_offset_s) for r in rows]  # fmt: skip
    judged = [
        _Judged(r["model"], a, b, r["energy_j"] or 0.0, 0.0, r["energy_uncertainty_j"],
                r["energy_source"], 0.0)
        for r, (a, b) in zip(rows, spans)
    ]  # fmt: skip
    for index, uuid in enumerate(run.uuids):
        mine = [k for k, r in enumerate(rows) if uuid in json.loads(r["gpus"] or "[]")]
        gpu = gpu_of(index)
        if path == "simulated":  # the simulated GPUs carry each span's load, 1.0
            for k in mine:
                gpu.add_load(spans[k][0], spans[k][1], 1.0)
        else:
            for gpu_index, t_s, delta in run.steps:
                if gpu_index == index:
                    gpu.add_step(t_s, delta)
        my_spans = [spans[k] for k in mine]
        for k, true_j in zip(mine, _truth_j(my_spans, gpu.true_energy_j)):
            judged[k].truth_j += true_j
        loads = [0.2 if rows[k]["model"] == "light" else 1.0 for k in mine]
        for k, own_j in zip(mine, _own_energy_j(my_spans, loads, gpu)):
            judged[k].own_j = (judged[k].own_j or 0.0) + own_j
    return judged


def _error_pct(measured: float, truth: float) -> float | None:
    return (measured - truth) / truth * 100 if truth > 0 else None


def _figures(scenario: Scenario, path: str, judged: list[_Judged]) -> dict[str, Any]:
    errors = [abs(e) for j in judged if (e := _error_pct(j.measured_j, j.truth_j)) is not None]
    long_errors = [abs(e) for j in judged if j.end_s - j.start_s >= 1.0
                   and (e := _error_pct(j.measured_j, j.truth_j)) is not None]  # fmt: skip
    covered = [j.bound_j is not None and abs(j.measured_j - j.truth_j) <= j.bound_j + 1e-9
               for j in judged]  # fmt: skip
    measured = sum(j.measured_j for j in judged)
    truth = sum(j.truth_j for j in judged)
    signed = _error_pct(measured, truth)
    result: dict[str, Any] = {
        "name": f"{scenario.name} · {path}",
        "scenario": scenario.name,
        "path": path,
        "description": scenario.description,
        "queries": len(judged),
        "total_error_pct": None if signed is None else round(abs(signed), 4),
        "total_signed_error_pct": None if signed is None else round(signed, 4),
        "per_query_error_pct": _percentiles(errors),
        "long_queries": len(long_errors),
        "long_query_error_pct": _percentiles(long_errors),
        "within_bound_pct": round(100 * sum(covered) / len(covered), 2) if covered else None,
        "estimated_records": sum(j.source == "estimated" for j in judged),
        "unbounded_records": sum(j.bound_j is None for j in judged),
        "zero_energy_records": sum(j.measured_j <= 0.0 < j.truth_j for j in judged),
    }
    if "warmup" in scenario.extra:
        result["first_calls"] = _first_calls(judged)
    if "own_energy" in scenario.extra:
        result["vs_own_energy"] = _own(judged)
    return result


def _first_calls(judged: list[_Judged]) -> dict[str, Any]:
    """Total error of the first 10 / 50 / 200 calls of each process, all processes
    together, and how the first 10 fare one by one."""
    by_run: dict[int, list[_Judged]] = {}
    for j in judged:
        by_run.setdefault(j.run, []).append(j)
    runs = [sorted(calls, key=lambda j: j.start_s) for calls in by_run.values()]
    out: dict[str, Any] = {}
    for n in (10, 50, 200):
        firsts = [j for run in runs for j in run[:n]]
        signed = _error_pct(sum(j.measured_j for j in firsts), sum(j.truth_j for j in firsts))
        out[f"first_{n}_total_signed_error_pct"] = None if signed is None else round(signed, 4)
    firsts = [j for run in runs for j in run[:10]]
    errors = [abs(e) for j in firsts if (e := _error_pct(j.measured_j, j.truth_j)) is not None]
    covered = [j.bound_j is not None and abs(j.measured_j - j.truth_j) <= j.bound_j + 1e-9
               for j in firsts]  # fmt: skip
    out["first_10_median_error_pct"] = _percentiles(errors)["p50"] if errors else None
    out["first_10_within_bound_pct"] = (
        round(100 * sum(covered) / len(covered), 2) if covered else None
    )
    return out


def _own(judged: list[_Judged]) -> dict[str, Any]:
    """Per kind of call, the error against the rule's target and against its own energy."""
    out: dict[str, Any] = {}
    for model in sorted({j.model for j in judged}):
        mine = [j for j in judged if j.model == model]
        measured = sum(j.measured_j for j in mine)
        rule = _error_pct(measured, sum(j.truth_j for j in mine))
        own = _error_pct(measured, sum(j.own_j or 0.0 for j in mine))
        out[model] = {
            "queries": len(mine),
            "vs_rule_signed_error_pct": None if rule is None else round(rule, 2),
            "vs_own_energy_signed_error_pct": None if own is None else round(own, 2),
        }
    return out


def run_scenario(scenario: Scenario, path: str, scale: float = 1.0) -> dict[str, Any]:
    """Run one scenario on one path (``repeats`` fresh processes); its figures."""
    params = {k: (type(v)(max(1, v * scale)) if k in scenario.scaled else v)
              for k, v in scenario.params.items()}  # fmt: skip
    judged: list[_Judged] = []
    for repeat in range(scenario.repeats):
        seed = 1 + repeat
        with tempfile.TemporaryDirectory(prefix="fp-acc-") as tmp:
            runner = _run_behind_daemon if scenario.daemon else _run_in_process
            run = runner(scenario, path, params, seed, Path(tmp))
        for j in _judge(run, path, seed):
            j.run = repeat
            judged.append(j)
    return _figures(scenario, path, judged)


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
        },  # fmt: skip
    }


def write(result: dict[str, Any]) -> Path:
    """Store the figures where reports read them (``footprint/bench/accuracy.json``)."""
    from footprint.reporting.accuracy import accuracy_path

    path = accuracy_path()
    path.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return path
