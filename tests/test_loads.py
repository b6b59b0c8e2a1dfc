"""Load models for fake GPUs: thread-safe in one process, shared through a file between
processes (``SharedLoadLog``)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from footprint.bench.loads import ALL_DEVICES, LoadModel, LoggedLoadModel, SharedLoadLog
from footprint.sensors.simulated import SimulatedGpu, SimulatedGpuSpec

REPO = Path(__file__).resolve().parents[1]


def test_energy_is_exact_with_saturation():
    model = LoadModel(50.0, 450.0)
    model.add_load(10.0, 12.0, 0.5)
    model.add_step(11.0, 0.75)  # 10-11: 0.5, 11-12: 1.25 -> capped at 1, 12-13: 0.75
    model.add_step(13.0, -0.75)
    assert model.energy_j(9.0, 13.0) == pytest.approx(50 * 4 + 400 * (0.5 + 1.0 + 0.75))
    assert model.power_w(11.5) == 450.0 and model.power_w(9.0) == 50.0
    assert model.steps == 4
    with pytest.raises(ValueError):
        model.add_load(2.0, 1.0)
    with pytest.raises(ValueError):
        LoadModel(100.0, 50.0)


def test_the_simulated_gpu_runs_on_the_same_load_model():
    gpu = SimulatedGpu(0, SimulatedGpuSpec(idle_w=50.0, busy_w=450.0))
    model = LoadModel(50.0, 450.0)
    for target in (gpu, model):
        target.add_load(10.0, 12.5, 0.7)
        target.add_step(11.0, 0.2)
    assert isinstance(gpu.loads, LoadModel)
    assert gpu.true_energy_j(9.0, 14.0) == pytest.approx(model.energy_j(9.0, 14.0))


def test_loads_added_from_threads_while_another_reads_are_all_counted():
    model = LoadModel(0.0, 100.0)
    stop = threading.Event()
    errors: list[BaseException] = []

    def add(worker: int) -> None:
        for k in range(300):  # out of time order on purpose: inserts in the middle
            start_s = ((k * 7919 + worker * 104729) % 1000) / 10.0
            model.add_load(start_s, start_s + 0.5, 0.001)

    def read() -> None:
        try:
            while not stop.is_set():
                assert model.energy_j(0.0, 101.0) >= 0.0
        except BaseException as err:
            errors.append(err)

    reader = threading.Thread(target=read)
    reader.start()
    workers = [threading.Thread(target=add, args=(w,)) for w in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    stop.set()
    reader.join()
    assert not errors
    assert model.steps == 2400
    assert model.energy_j(0.0, 101.0) == pytest.approx(1200 * 0.001 * 100 * 0.5)


def _run(code: str, *args: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr


_WRITER = """
import sys, time
from footprint.bench.loads import SharedLoadLog
log = SharedLoadLog(sys.argv[1])
device = int(sys.argv[2])
while time.monotonic() < float(sys.argv[4]):  # both start together (system-wide clock)
    pass
for k in range(int(sys.argv[3])):
    log.append(device, 1000.0 + device + k / 1000.0, float(k + 1))
log.close()
"""


def test_steps_appended_by_another_process_reach_the_readers_model(tmp_path):
    path = tmp_path / "loads.bin"
    gpu0 = LoggedLoadModel(path, 60.0, 160.0, device=0)
    gpu1 = LoggedLoadModel(str(path), 60.0, 160.0, device=1)
    assert gpu0.energy_j(100.0, 110.0) == pytest.approx(600.0)  # no log yet: idle
    code = (
        "import sys\nfrom footprint.bench.loads import SharedLoadLog\n"
        "log = SharedLoadLog(sys.argv[1])\n"
        "log.add_load(101.0, 103.0, 1.0, device=0)\n"
        "log.add_load(104.0, 105.0, 0.5)\n"  # every device
        "log.append(1, 106.0, 1.0)\n"
    )
    _run(code, str(path))
    # read when energy is asked for
    assert gpu0.energy_j(100.0, 110.0) == pytest.approx(600.0 + 100 * 2.0 + 50 * 1.0)
    assert gpu1.energy_j(100.0, 110.0) == pytest.approx(600.0 + 50 * 1.0 + 100 * 4.0)
    assert (gpu0.logged_steps, gpu1.logged_steps) == (4, 3)
    assert gpu0.power_w(102.0) == 160.0


def test_two_processes_appending_at_once_never_interleave_records(tmp_path):
    path = tmp_path / "loads.bin"
    records, start_s = 20000, time.monotonic() + 1.0
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(path), str(d), str(records), str(start_s)],
            cwd=REPO,
            stderr=subprocess.PIPE,
            text=True,
        )
        for d in (0, 1)
    ]
    for writer in writers:
        _, err = writer.communicate(timeout=60)
        assert writer.returncode == 0, err
    assert os.path.getsize(path) == 2 * records * SharedLoadLog.record_size
    steps = SharedLoadLog(path).read_all()
    for device in (0, 1):
        mine = [(t, delta) for d, t, delta in steps if d == device]
        assert mine == [(1000.0 + device + k / 1000.0, float(k + 1)) for k in range(records)]


def test_a_record_still_being_written_is_left_for_the_next_read(tmp_path):
    path = tmp_path / "loads.bin"
    with SharedLoadLog(path) as log:
        log.add_step(5.0, 1.0, device=3)
    whole = path.read_bytes()
    path.write_bytes(whole[:10])
    reader = SharedLoadLog(path)
    assert reader.read(0) == ([], 0)
    path.write_bytes(whole)
    assert reader.read(0) == ([(3, 5.0, 1.0)], SharedLoadLog.record_size)
    assert reader.read(SharedLoadLog.record_size) == ([], SharedLoadLog.record_size)
    assert ALL_DEVICES == -1
    with pytest.raises(ValueError):
        log.add_step(float("nan"), 1.0)
