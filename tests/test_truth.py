"""Per-query truth through the public API, on simulated GPUs that the calls themselves load.

With ``workload=spans`` a call alone on the GPU draws ``busy_w`` for its duration, so the
truth of every record follows from the record: ``busy_w × duration_s`` for calls that do
not overlap. ``test_short_bursty_calls_get_their_energy`` runs in real time, with the real
sampler thread (the end-to-end check of that path); the others run on a manual clock
(``conftest.ManualRun``): deterministic, and in milliseconds.
"""

from __future__ import annotations

import json
import random
import time

import pytest
from conftest import ManualRun, rows

import footprint
from footprint.config import Settings

BUSY_W, IDLE_W = 400.0, 60.0


def _configure(db, gpus=1, noise=0.0, **extra):
    footprint.configure(
        db=str(db),
        sensor=f"simulated:gpus={gpus},idle_w={IDLE_W:g},busy_w={BUSY_W:g},noise={noise},seed=5",
        cpu=False,
        region="FRA",
        **extra,
    )


def _manual(db, sensor: str | None = None, seed: int = 0) -> ManualRun:
    """A manual-clock runtime on the simulated GPU ``_configure`` sets up (or ``sensor``)."""
    sensor = sensor or f"simulated:gpus=1,idle_w={IDLE_W:g},busy_w={BUSY_W:g},noise=0.0,seed=5"
    return ManualRun(Settings(db=str(db), sensor=sensor, cpu=False, region="FRA"), seed=seed)


def _busy_wait(seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(min(0.001, max(0.0, deadline - time.monotonic())))


def test_short_bursty_calls_get_their_energy(tmp_path):
    """1–20 ms calls with 20–50 ms gaps: on main the calls got 64 % too little."""
    db = tmp_path / "t.db"
    _configure(db)
    rng = random.Random(3)

    @footprint.track(model="short")
    def call(seconds):
        time.sleep(seconds)

    deadline = time.monotonic() + 4.0
    while time.monotonic() < deadline:
        call(rng.uniform(0.001, 0.02))
        time.sleep(rng.uniform(0.02, 0.05))
    footprint.shutdown()
    got = rows(db)
    truth_j = sum(BUSY_W * r["duration_s"] for r in got)
    measured_j = sum(r["energy_j"] for r in got)
    assert len(got) > 50
    assert measured_j == pytest.approx(truth_j, rel=0.02), (measured_j, truth_j)
    bounds_j = sum(r["energy_uncertainty_j"] for r in got)
    assert abs(measured_j - truth_j) <= bounds_j


def test_short_bursty_calls_get_their_energy_on_a_manual_clock(tmp_path):
    """The real-time test above, deterministic: the same calls and gaps, simulated."""
    db = tmp_path / "t.db"
    run = _manual(db, seed=3)
    rng = random.Random(3)

    @run.tracker.track(model="short")
    def call(seconds):
        run.advance(seconds)

    deadline_s = run.now_s() + 4.0
    while run.now_s() < deadline_s:
        call(rng.uniform(0.001, 0.02))
        run.advance(rng.uniform(0.02, 0.05))
    run.close()
    got = rows(db)
    truth_j = sum(BUSY_W * r["duration_s"] for r in got)
    measured_j = sum(r["energy_j"] for r in got)
    assert len(got) > 50
    assert measured_j == pytest.approx(truth_j, rel=0.02), (measured_j, truth_j)
    bounds_j = sum(r["energy_uncertainty_j"] for r in got)
    assert abs(measured_j - truth_j) <= bounds_j


def test_a_call_alone_draws_busy_power_for_its_duration(tmp_path):
    db = tmp_path / "t.db"
    run = _manual(db)

    @run.tracker.track(model="long")
    def call():
        run.advance(1.0)

    call()  # the first call of the process: measured from its start
    run.advance(0.3)
    call()
    run.close()
    first, second = rows(db)
    for row in (first, second):
        assert row["energy_source"] == "simulated"
        true_j = BUSY_W * row["duration_s"]
        assert row["energy_j"] == pytest.approx(true_j, rel=0.01), row
        assert abs(row["energy_j"] - true_j) <= row["energy_uncertainty_j"]


def test_workload_manual_leaves_the_gpu_idle(tmp_path):
    db = tmp_path / "t.db"
    run = _manual(db, sensor="simulated:idle_w=60,busy_w=400,workload=manual")

    @run.tracker.track(model="m")
    def call():
        run.advance(0.5)

    call()
    run.close()
    (row,) = rows(db)
    assert row["energy_j"] == pytest.approx(60 * row["duration_s"], rel=0.05)


def test_simulator_options_are_validated():
    with pytest.raises(ValueError, match="workload must be one of spans, manual"):
        footprint.configure(sensor="simulated:workload=both")


def test_sync_runs_before_the_end_time(tmp_path):
    db = tmp_path / "t.db"
    run = _manual(db)
    calls = []

    def synchronize():
        calls.append(run.now_s())
        run.advance(0.2)  # the GPU work still running when the call returned

    @run.tracker.track(model="async-gpu", sync=synchronize)
    def launch():
        return "queued"

    assert launch() == "queued"
    with run.tracker.query(model="ctx", sync=synchronize):
        pass
    run.tracker.flush()
    got = rows(db)
    run.close()
    assert len(calls) == 2 and len(got) == 2
    assert all(r["duration_s"] >= 0.2 for r in got)
    assert all(r["energy_j"] >= 0.9 * BUSY_W * 0.2 for r in got)


def test_failing_sync_warns_and_never_raises(tmp_path):
    _configure(tmp_path / "t.db")

    def broken():
        raise RuntimeError("CUDA error: device-side assert")

    @footprint.track(model="m", sync=broken)
    def f():
        return 7

    with pytest.warns(footprint.FootprintWarning, match="sync= callable failed"):
        assert f() == 7
    with pytest.raises(TypeError, match="sync= must be a callable"):
        footprint.track(model="m", sync=3)


def test_unknown_gpu_ids_warn_once_and_are_counted(tmp_path):
    db = tmp_path / "t.db"
    _configure(db, gpus=2)

    @footprint.track(model="bad", gpus=[7])
    def bad():
        return None

    @footprint.track(model="empty", gpus=[])
    def empty():
        return None

    @footprint.track(model="mixed", gpus=[1, "GPU-nope"])
    def mixed():
        return None

    bad()
    empty()
    mixed()
    with pytest.warns(footprint.FootprintWarning, match=r"unknown GPU ids \[7\].*Known GPUs: 0"):
        footprint.flush()
    assert footprint.stats()["unknown_gpu_spans"] == 3
    got = {r["model"]: r for r in rows(db)}
    assert got["bad"]["energy_source"] == "missing"
    assert len(json.loads(got["mixed"]["gpus"])) == 1


def test_gpus_must_be_indices_or_uuids():
    for bad in (0, "GPU-1", [[0]], [0.5], [True]):
        with pytest.raises(TypeError, match="gpus= must be a list of GPU indices or UUIDs"):
            footprint.track(model="m", gpus=bad)
        with pytest.raises(TypeError, match="gpus="):
            footprint.query(model="m", gpus=bad)
