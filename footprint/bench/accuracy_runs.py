"""Running one accuracy scenario: fresh processes whose first footprint action is the
call, alone or behind a daemon, on the simulated GPU or a fake ``pynvml``; what they left
(``Run``: the records and each GPU's load steps)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from footprint.bench.accuracy_scenarios import (
    BUSY_W,
    IDLE_W,
    PART_TIME_WINDOW_S,
    SAMPLING_PERIOD_S,
    UPDATE_PERIOD_S,
    Scenario,
)

CHILD_TIMEOUT_S = 300.0


@dataclass
class Run:
    """What one scenario run left: its records and each GPU's load steps."""

    rows: list[dict[str, Any]]
    steps: list[tuple[int, float, float]]
    wall_offset_s: float
    uuids: list[str]


def _environment(folder: Path, path: str, db: Path, daemon: str = "off") -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOOTPRINT_")}
    env.update(
        FOOTPRINT_DB=str(db),
        FOOTPRINT_CPU="0",
        FOOTPRINT_REGION="FRA",
        FOOTPRINT_DAEMON=daemon,
        FOOTPRINT_SAMPLING_PERIOD_S=str(SAMPLING_PERIOD_S),
        XDG_RUNTIME_DIR=str(folder),
        PYTHONUNBUFFERED="1",
    )
    if path == "nvml-part-time":
        env["FOOTPRINT_COUNTER_WINDOW_S"] = str(PART_TIME_WINDOW_S)
    return env


def _fake_options(path: str, gpus: int, seed: int) -> dict[str, Any]:
    options: dict[str, Any] = {
        "gpus": gpus,
        "idle_w": IDLE_W,
        "busy_w": BUSY_W,
        "counter_update_period_s": UPDATE_PERIOD_S,
        "seed": seed,
    }
    if path == "nvml-part-time":
        options["counter_window_s"] = PART_TIME_WINDOW_S
    # A real counter's tick phase is unrelated to the process: a different one each run.
    options["counter_phase_s"] = random.Random(seed * 7919).uniform(0, UPDATE_PERIOD_S)
    return options


def _sensor(path: str, gpus: int, seed: int) -> str:
    if path == "simulated":
        return (
            f"simulated:gpus={gpus},idle_w={IDLE_W:g},busy_w={BUSY_W:g},"
            f"update_period_s={UPDATE_PERIOD_S:g},seed={seed}"
        )
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
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _wait(proc: subprocess.Popen, what: str) -> None:
    try:
        _, err = proc.communicate(timeout=CHILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()  # reaps it and closes its stderr pipe
        raise RuntimeError(f"{what} did not finish in {CHILD_TIMEOUT_S:g} s") from None
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed ({proc.returncode}): {err.decode()[-2000:]}")


def _read_rows(db: Path) -> list[dict[str, Any]]:
    import sqlite3

    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    try:
        return [
            dict(row)
            for row in con.execute(
                "SELECT model, started_at, ended_at, gpus, energy_j, energy_uncertainty_j, "
                "energy_source FROM queries ORDER BY started_at"
            )
        ]
    finally:
        con.close()


def run_in_process(scenario: Scenario, path: str, params: dict, seed: int, folder: Path) -> Run:
    db, out = folder / f"run-{seed}.db", folder / f"run-{seed}.json"
    spec = {
        "workload": scenario.workload,
        "params": params,
        "seed": seed,
        "out": str(out),
        "path": "simulated" if path == "simulated" else "nvml",
        "gpus": scenario.gpus,
        "fake": _fake_options(path, scenario.gpus, seed),
    }
    env = _environment(folder, path, db)
    env["FOOTPRINT_SENSOR"] = _sensor(path, scenario.gpus, seed)
    _wait(_child(spec, env), f"{scenario.name} on {path}")
    written = json.loads(out.read_text())
    return Run(
        _read_rows(db),
        [tuple(s) for s in written["steps"]],
        written["wall_offset_s"],
        _uuids(path, scenario.gpus, seed),
    )


_DAEMON_BOOT = (
    "import json, sys\n"
    "from footprint.bench.fake_pynvml import install_fake_pynvml\n"
    "install_fake_pynvml(json.loads(sys.argv[1]))\n"
    "from footprint.cli import main\n"
    "main(sys.argv[2:])\n"
)


def run_behind_daemon(scenario: Scenario, path: str, params: dict, seed: int, folder: Path) -> Run:
    """A daemon measures the GPUs; ``clients`` processes make the calls through it."""
    db, sock, log = folder / "daemon.db", folder / "daemon.sock", folder / "loads.bin"
    env = _environment(folder, path, db)
    args = [
        "daemon",
        "--socket",
        str(sock),
        "--http",
        "off",
        "--db",
        str(db),
        "--sensor",
        _sensor(path, scenario.gpus, seed) + (",workload=spans" if path == "simulated" else ""),
        "--sampling-period",
        str(SAMPLING_PERIOD_S),
    ]
    if path == "simulated":
        command = [sys.executable, "-m", "footprint.cli", *args]
    else:
        fake = {**_fake_options(path, scenario.gpus, seed), "shared_load_log": str(log)}
        command = [sys.executable, "-c", _DAEMON_BOOT, json.dumps(fake), *args]
    daemon = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline_s = time.monotonic() + 30
        while not sock.exists():
            if daemon.poll() is not None or time.monotonic() > deadline_s:
                said = daemon.stderr.read().decode() if daemon.stderr is not None else ""
                raise RuntimeError(f"the daemon did not start: {said}")
            time.sleep(0.02)
        wall_offset_s = time.time() - time.monotonic()
        clients = []
        for n in range(scenario.clients):
            out = folder / f"client-{n}.json"
            spec = {
                "workload": scenario.workload,
                "params": params,
                "seed": seed * 100 + n,
                "out": str(out),
                "gpus": scenario.gpus,
                "path": "simulated" if path == "simulated" else "nvml",
                "shared_load_log": None if path == "simulated" else str(log),
            }
            client_env = _environment(folder, path, db, daemon=str(sock))
            client_env["FOOTPRINT_SENSOR"] = _sensor(path, scenario.gpus, seed)
            clients.append(_child(spec, client_env))
        for n, proc in enumerate(clients):
            _wait(proc, f"{scenario.name} client {n} on {path}")
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:  # communicate, not wait: its stderr pipe is drained and closed
            daemon.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.communicate()
    steps: list[tuple[int, float, float]] = []
    if path != "simulated":
        from footprint.bench.fake_pynvml import SharedLoadLog

        steps = [(int(s[0]), float(s[1]), float(s[2])) for s in SharedLoadLog(str(log)).read_all()]
    return Run(_read_rows(db), steps, wall_offset_s, _uuids(path, scenario.gpus, seed))
