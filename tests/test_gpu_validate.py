"""The GPU validation script's logic, run on the fake ``pynvml`` in real time.

The fake GPUs run on ``time.monotonic`` (footprint's own clock), so the script, footprint's
sampler thread and the load threads all see one time base, and the whole run takes a few
seconds. ``pynvml`` is replaced in ``sys.modules`` so footprint's ``NvmlSensor`` (opened by
the runtime through ``open_nvml``) reads the same fake GPU as the script's direct reads.
"""

from __future__ import annotations

import itertools
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fakes import fake_pynvml as fk
from tests.fakes.fake_pynvml import FakeClock, FakeGpu, make_fake_pynvml
from tests.gpu import validate

REPO = Path(__file__).resolve().parents[1]
UUID = "GPU-7e57a100-0000-1111-2222-333344445555"
PERIOD_S = 0.05  # not NVML's usual 100 ms: the script must observe it, not assume it
IDLE_W = 60.0
# footprint's sampling period: it knows each counter tick to about this, so the bounds on
# its error below scale with it
SAMPLING_S = 0.005
# The fake's reads are pure Python and hold the GIL, where the real library's (ctypes) let
# other threads run: with the interpreter's 5 ms switch interval, the script's tight polling
# would hold footprint's sampler thread back by up to that. The fake GPU's fixture shortens it.
SWITCH_INTERVAL_S = 0.0005
LOAD_S = 0.4


def busy_w(active: int) -> float:
    """Power of the fake GPU with ``active`` loads running."""
    return IDLE_W if active == 0 else 400.0 + 50.0 * (active - 1)


class RealTimeClock(FakeClock):
    """The fake's clock, following real monotonic time."""

    def now_s(self) -> float:
        return time.monotonic()

    def advance(self, dt_s: float) -> None:
        raise RuntimeError("real time cannot be advanced; sleep instead")


class FakeLoad:
    """``load(seconds, device_index)`` that raises the fake GPU's power while it runs.

    It records, on the fake GPU's clock, when each call raised and dropped the power
    (``on``) and every power step (``steps``), so the test knows the energy drawn over
    any stretch of time exactly.
    """

    def __init__(self, gpu: FakeGpu, lock: threading.Lock) -> None:
        self.gpu = gpu
        self.lock = lock
        self.active = 0
        self.calls: list[tuple[float, int]] = []
        self.on: list[tuple[float, float]] = []  # (power up, power down) per call, as they end
        self.steps: list[tuple[float, float]] = []  # (from, W); IDLE_W before the first

    def __call__(self, seconds: float, device_index: int) -> None:
        """fake load: GPU power up while it sleeps"""
        with self.lock:
            self.calls.append((seconds, device_index))
            self.active += 1
            up_s = self._step()
        try:
            time.sleep(seconds)
        finally:
            with self.lock:
                self.active -= 1
                self.on.append((up_s, self._step()))

    def _step(self) -> float:
        power_w = busy_w(self.active)
        at_s = self.gpu.set_power_w(power_w)
        self.steps.append((at_s, power_w))
        return at_s

    def energy_j(self, start_s: float, end_s: float) -> float:
        """Energy the fake GPU drew from ``start_s`` to ``end_s``."""
        edges = [(float("-inf"), IDLE_W), *self.steps, (float("inf"), 0.0)]
        return sum(
            power_w * max(0.0, min(end_s, b) - max(start_s, a))
            for (a, power_w), (b, _) in itertools.pairwise(edges)
        )


@dataclass(frozen=True)
class EnergyRead:
    footprint: bool  # made by footprint's sensor (else by the script)
    handle: object  # each NvmlSensor footprint opens has its own handles
    start_s: float
    end_s: float
    mj: int


def real_time_fake(gpus: list[FakeGpu]):
    """A fake pynvml on real time whose reads are serialised with the load's power changes.

    The fake integrates energy lazily on each read and is not thread-safe; here the script,
    footprint's sampler thread and the load threads use it at once, so reads and power
    changes share one lock (the real library is thread-safe).

    Returns the module, the lock and a log of energy reads: every read footprint makes,
    and the script's first read after each of them (the script polls tightly, and only
    those are needed: they give the counter right after footprint's reads).
    """
    fake = make_fake_pynvml(gpus, clock=RealTimeClock())
    lock = threading.Lock()
    reads: list[EnergyRead] = []
    script_read_due = True
    read_energy = fake.nvmlDeviceGetTotalEnergyConsumption
    read_power = fake.nvmlDeviceGetPowerUsage

    def energy(handle):
        nonlocal script_read_due
        by_footprint = sys._getframe(1).f_globals.get("__name__", "").startswith("footprint")
        with lock:
            start_s = time.monotonic()
            mj = read_energy(handle)
            if by_footprint or script_read_due:
                reads.append(EnergyRead(by_footprint, handle, start_s, time.monotonic(), mj))
                script_read_due = by_footprint
        return mj

    def power(handle):
        with lock:
            return read_power(handle)

    fake.nvmlDeviceGetTotalEnergyConsumption = energy
    fake.nvmlDeviceGetPowerUsage = power
    return fake, lock, reads


class FootprintReads:
    """What one of footprint's runtimes read of the fake counter, from the read log."""

    def __init__(self, reads: list[EnergyRead], during_s: float) -> None:
        """The reads of the sensor footprint was reading through at ``during_s``."""
        by_handle: dict[object, list[EnergyRead]] = {}
        for r in reads:
            if r.footprint:
                by_handle.setdefault(r.handle, []).append(r)
        (by_sensor,) = [
            rs for rs in by_handle.values() if rs[0].start_s <= during_s <= rs[-1].end_s
        ]
        self.reads = by_sensor
        self.first, self.last = by_sensor[0], by_sensor[-1]
        # A change is known to footprint to within the polls around it: the counter ticked
        # after the start of the last read of the old value and before the end of the first
        # read of the new one.
        self.change_windows = [
            (a.start_s, b.end_s) for a, b in itertools.pairwise(by_sensor) if b.mj != a.mj
        ]
        self.poll_gaps_s = [b.start_s - a.start_s for a, b in itertools.pairwise(by_sensor)]
        # the script's reads right after footprint's first and last ones
        self.script_after_first = next(
            r for r in reads if not r.footprint and r.start_s > self.first.end_s
        )
        self.script_after_last = next(
            r for r in reads if not r.footprint and r.start_s > self.last.end_s
        )

    def window_s(self, start_s: float, end_s: float | None = None) -> float:
        """The widest change window within two counter periods of ``start_s``..``end_s``.

        The interval around a span's edge is placed by the samples at its ends and weighed
        against its neighbours: four ticks, all within two periods of the edge.
        """
        reach_s = 2 * PERIOD_S
        end_s = start_s if end_s is None else end_s
        return max(
            hi - lo
            for lo, hi in self.change_windows
            if hi > start_s - reach_s and lo < end_s + reach_s
        )


@pytest.fixture(autouse=True)
def _no_cuda_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


@pytest.fixture
def fake_gpu(monkeypatch: pytest.MonkeyPatch):
    gpu = FakeGpu(UUID, power_w=IDLE_W, counter_update_period_s=PERIOD_S, counter_start_mj=123_456)
    fake, lock, reads = real_time_fake([gpu])
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    switch_interval_s = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    yield gpu, fake, lock, reads
    sys.setswitchinterval(switch_interval_s)


def run_main(argv: list[str], capsys: pytest.CaptureFixture, **kwargs) -> tuple[int, dict, str]:
    code = validate.main(argv, **kwargs)
    captured = capsys.readouterr()
    return code, json.loads(captured.out), captured.err


FAST = [
    "--observe-seconds", "0.3", "--idle-seconds", "0.3", "--gap-seconds", "0.1",
    "--warmup-seconds", "0", "--sampling-period", str(SAMPLING_S),
]  # fmt: skip

# What the script's direct figures may differ from the fake's energy by besides their tick
# timing: the counter's whole millijoules (1 mJ per read) and the rounding of the JSON
# figures (0.1 ms durations at ≤ 60 W, 0.1 mJ energies).
ROUNDING_J = 0.01


def direct_tolerance_j(direct: dict, idle_w: float, prefix: str = "") -> float:
    """How far the script's direct figure can be from the fake's energy, from its report.

    It subtracts ``idle_w`` over the ``idle_subtracted_s`` between the ticks it read and the
    load; those ticks are timed to ``tick_timing_ms`` in all, at idle power, and ``idle_w``
    is itself measured.
    """
    return (
        IDLE_W * direct[prefix + "tick_timing_ms"] / 1000
        + abs(idle_w - IDLE_W) * direct[prefix + "idle_subtracted_s"]
        + ROUNDING_J
    )


def test_full_run_on_the_fake_gpu(fake_gpu, capsys, tmp_path) -> None:
    gpu, fake, lock, reads = fake_gpu
    load = FakeLoad(gpu, lock)
    out_file = tmp_path / "report.json"
    argv = FAST + [
        "--seconds-per-load", str(LOAD_S), "--serial-queries", "3", "--concurrent-loads", "4",
        "--json-out", str(out_file), "--db-dir", str(tmp_path / "dbs"),
    ]  # fmt: skip
    code, report, err = run_main(argv, capsys, load=load)

    assert code == 0, err
    assert json.loads(out_file.read_text()) == report
    for key in (
        "gpu_name", "gpu_uuid", "driver_version", "energy_method",
        "counter_update_period_ms_observed", "nvml_energy_call_us_median",
        "nvml_power_call_us_median", "idle_w", "serial", "concurrent", "total_seconds",
    ):  # fmt: skip
        assert key in report, key
    assert report["gpu"] is True
    assert (report["gpu_uuid"], report["gpu_name"]) == (UUID, gpu.name)
    assert report["driver_version"] == "550.54.15"
    assert report["energy_method"] == "counter"
    assert report["nvml_energy_call_us_median"] > 0
    assert report["nvml_power_call_us_median"] > 0
    # 3 serial loads, then 4 concurrent ones, all of the requested length on cuda:0
    assert load.calls == [(LOAD_S, 0)] * 7
    assert report["total_seconds"] < 8

    # Each change is timed by the polls around it (a few µs apart here), and changes seen
    # after the thread was descheduled are not used; the script reports that bracket as
    # the resolution (2 ms unless it had to widen it, which a loaded machine can make it
    # do), and every interval is good to within it. Below half the period, the answer
    # cannot be a multiple or a fraction of the period (NVML's usual 100 ms, footprint's
    # 10 ms poll).
    assert report["counter_changes_observed"] >= 5
    resolution_ms = report["counter_period_resolution_ms"]
    assert resolution_ms < PERIOD_S * 1000 / 2
    assert report["counter_update_period_ms_observed"] == pytest.approx(
        PERIOD_S * 1000, abs=resolution_ms
    )
    idle_w = report["idle_w"]
    assert idle_w == pytest.approx(IDLE_W, rel=0.01)

    serial = report["serial"]
    queries = serial["queries"]
    assert len(queries) == 3
    assert serial["max_rel_error"] == max(q["rel_error"] for q in queries)
    mean_error = statistics.fmean(q["rel_error"] for q in queries)
    assert serial["mean_rel_error"] == pytest.approx(mean_error, abs=1e-6)
    sampled = FootprintReads(reads, during_s=load.on[0][0])
    # footprint's sampler polled at the period it was given (±10 % jitter): the windows the
    # bounds below are made of come from that period and from how late the machine ran it
    assert statistics.median(sampled.poll_gaps_s) < 1.5 * SAMPLING_S
    for q, (up_s, down_s) in zip(queries, load.on[:3]):
        assert q["energy_source"] == "counter"
        assert LOAD_S <= q["duration_s"] < LOAD_S + 0.1
        assert q["rel_error"] == pytest.approx(
            abs(q["attributed_j"] - q["direct_j"]) / q["direct_j"], abs=1e-5
        )
        # The script's direct figure is the fake's ground truth: busy power while the load
        # had the power up, idle power for the rest of the call (thread start-up, locks).
        on_s = down_s - up_s
        idle_s = q["duration_s"] - on_s
        assert q["direct_j"] == pytest.approx(
            busy_w(1) * on_s + IDLE_W * idle_s, abs=direct_tolerance_j(q, idle_w)
        )
        # Footprint's error, bounded by what it could know. NVML does not say when its
        # counter ticks: footprint's sampler knows each tick only to within its change
        # window (``FootprintReads``, measured from the reads it made): about one sampling
        # period when its thread runs on time, wider when a loaded machine runs it late. An
        # attribution that is right when the ticks' times are known can then misplace, at
        # each edge of the span, at most what the GPU drew during the widest window there:
        # busy power × window. The direct figure also counts the idle power of the call's
        # start-up and end, outside footprint's span, and is good to its own tolerance.
        # Quiet machine: windows 5-12 ms, bound 400 W × 2 × 7 ms / 160 J ≈ 3.5 % (2.7-4.7 %),
        # errors measured ≤ 0.9 %, so a 5 % bias or a one-tick (50 ms, 10.6 %) misplacement
        # of an edge fails it. Both cores of a 2-core machine busy: windows up to 20-50 ms,
        # bound up to 7-14 %, errors measured ≤ 1.2 %.
        edges_s = sampled.window_s(up_s) + sampled.window_s(down_s)
        bound_j = busy_w(1) * edges_s + IDLE_W * idle_s + direct_tolerance_j(q, idle_w)
        assert q["rel_error"] <= bound_j / q["direct_j"], (q, edges_s)
    assert_conserved(serial, sampled)

    concurrent = report["concurrent"]
    assert concurrent["loads"] == 4
    assert concurrent["energy_sources"] == ["counter"]
    per_query = concurrent["per_query_attributed_j"]
    assert len(per_query) == 4
    on = load.on[3:]
    first_up, last_up = min(u for u, _ in on), max(u for u, _ in on)
    first_down, last_down = min(d for _, d in on), max(d for _, d in on)
    # the script's window runs from the first load's call to the last one's return: the
    # stretch with power up, and idle power around it
    window_idle_s = concurrent["window_s"] - (last_down - first_up)
    assert window_idle_s >= -1e-4
    assert concurrent["queries_window_direct_j"] == pytest.approx(
        load.energy_j(first_up, last_down) + IDLE_W * window_idle_s,
        abs=direct_tolerance_j(concurrent, idle_w, prefix="window_"),
    )
    sampled = FootprintReads(reads, during_s=first_up)
    assert statistics.median(sampled.poll_gaps_s) < 1.5 * SAMPLING_S
    # As for one load, with up to four loads' power (550 W) at the edges of the stretch,
    # where the loads start and end (a few ms apart; more under load).
    edges_j = busy_w(4) * (
        sampled.window_s(first_up, last_up) + sampled.window_s(first_down, last_down)
    )
    window_tolerance_j = direct_tolerance_j(concurrent, idle_w, prefix="window_")
    bound_j = edges_j + IDLE_W * window_idle_s + window_tolerance_j
    assert abs(concurrent["queries_error_j"]) <= bound_j
    # The four loads overlap almost entirely, so each gets about a quarter: they differ by
    # what one got while the others had not started or had ended (≤ 400 W: one load), and
    # by what the edges' windows can move.
    alone_s = (last_up - first_up) + (last_down - first_down) + 2 * window_idle_s
    assert max(per_query) - min(per_query) <= busy_w(1) * alone_s + edges_j
    assert_conserved(concurrent, sampled)


def assert_conserved(phase: dict, sampled: FootprintReads) -> None:
    # footprint's invariant, from the rows it wrote: exact to float precision
    assert abs(phase["internal_conservation_error_j"]) < 1e-6
    assert phase["attributed_j"] > 0 and phase["idle_j"] > 0
    # Against the counter read directly around the run, exactly. footprint's books hold
    # the counter delta from its first sample (the first counter change its sampler saw)
    # to its last read. The script reads the counter right after that first sample
    # (retried until the sampler's next poll saw no other change: ``start_aligned``; after
    # 5 tries footprint's books may start a tick or more earlier) and right after
    # footprint's shutdown, which writes the records after footprint's last read: ticks
    # in that time (more on a loaded machine) are missing from footprint's books, and
    # nothing else may be.
    start, end = sampled.script_after_first, sampled.script_after_last
    started_mj = {r.mj for r in sampled.reads if r.end_s < start.start_s}
    error_j = phase["conservation_error_j"]
    if phase["start_aligned"]:
        started_mj = {start.mj}
    explained_j = [((sampled.last.mj - end.mj) + (start.mj - mj)) / 1000 for mj in started_mj]
    assert any(error_j == pytest.approx(e, abs=1e-5) for e in explained_j), (error_j, explained_j)
    assert phase["conservation_rel_error"] == pytest.approx(
        abs(error_j) / phase["direct_counter_delta_j"], abs=1e-7
    )


def test_without_a_load_it_still_measures_the_counter_and_idle(fake_gpu, capsys) -> None:
    argv = ["--observe-seconds", "0.25", "--idle-seconds", "0.2", "--gap-seconds", "0"]
    code, report, err = run_main(argv, capsys, load=None)
    assert code == 0, err
    assert "cannot generate GPU load" in err
    assert report["load"]["available"] is False
    assert report["idle_w"] == pytest.approx(IDLE_W, rel=0.01)
    assert report["counter_update_period_ms_observed"] == pytest.approx(
        PERIOD_S * 1000, abs=report["counter_period_resolution_ms"]
    )
    assert "skipped" in report["serial"] and "skipped" in report["concurrent"]


def test_an_injected_nvml_module_is_also_what_footprint_reads(monkeypatch, capsys) -> None:
    """``nvml=`` not in sys.modules: footprint's runtime must still read that fake."""
    monkeypatch.setitem(sys.modules, "pynvml", None)  # the real one must not be touched
    gpu = FakeGpu(UUID, power_w=IDLE_W, counter_update_period_s=PERIOD_S)
    fake, lock, _ = real_time_fake([gpu])
    argv = [
        "--observe-seconds", "0.15", "--idle-seconds", "0.1", "--gap-seconds", "0.05",
        "--warmup-seconds", "0", "--sampling-period", str(SAMPLING_S),
        "--seconds-per-load", "0.15", "--serial-queries", "1", "--concurrent-loads", "2",
    ]  # fmt: skip
    code, report, err = run_main(argv, capsys, nvml=fake, load=FakeLoad(gpu, lock))
    assert code == 0, err
    assert report["serial"]["queries"][0]["energy_source"] == "counter"
    assert report["concurrent"]["loads"] == 2
    assert sys.modules["pynvml"] is None  # restored afterwards
    assert fake.fake_state.init_refcount == 0  # every nvmlInit was shut down


@pytest.mark.parametrize(
    ("make_module", "reason"),
    [
        (lambda: None, "pynvml is not importable"),
        (
            lambda: make_fake_pynvml([], init_error=fk.NVML_ERROR_LIBRARY_NOT_FOUND),
            "NVML library not found",
        ),
        (lambda: make_fake_pynvml([]), "NVML found no GPU"),
    ],
    ids=["no-pynvml", "no-driver", "no-gpu"],
)
def test_no_gpu_exits_0_with_a_message(monkeypatch, capsys, make_module, reason) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", make_module())
    code, report, err = run_main([], capsys, load=lambda s, i: pytest.fail("no load"))
    assert code == 0
    assert report == {"gpu": False, "reason": report["reason"]}
    assert reason in report["reason"]
    assert err.count("\n") == 1 and "no NVIDIA GPU" in err


def test_the_script_runs_from_the_repo_root_and_exits_0_without_a_visible_gpu() -> None:
    """As a user runs it; CUDA_VISIBLE_DEVICES=-1 hides any GPU, so it is quick anywhere."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "-1"}
    done = subprocess.run(
        [sys.executable, "tests/gpu/validate.py", "--seconds-per-load", "1"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["gpu"] is False and report["reason"]
    assert "no NVIDIA GPU" in done.stderr


def test_bad_arguments_exit_2(capsys) -> None:
    with pytest.raises(SystemExit) as caught:
        validate.main(["--seconds-per-load", "0"])
    assert caught.value.code == 2
    assert "positive" in capsys.readouterr().err


def test_default_settings_fit_in_five_minutes() -> None:
    opts = validate.parse_args([])
    assert opts.concurrent_loads == 4
    assert 90 < opts.estimated_seconds(period_s=0.1) < 200
