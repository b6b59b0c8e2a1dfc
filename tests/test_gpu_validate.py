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
import random
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from footprint.bench import fake_pynvml as fk
from footprint.bench.fake_pynvml import FakeClock, FakeGpu, make_fake_pynvml
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


@pytest.fixture(autouse=True)
def _region(monkeypatch: pytest.MonkeyPatch) -> None:
    """The script checks energy, not prices: a region keeps footprint's no-region warning
    out of its runs."""
    monkeypatch.setenv("FOOTPRINT_REGION", "FRA")


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
    "--observe-seconds",
    "0.3",
    "--idle-seconds",
    "0.3",
    "--gap-seconds",
    "0.1",
    "--warmup-seconds",
    "0",
    "--sampling-period",
    str(SAMPLING_S),
    "--skip-timing",
]

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
        "--seconds-per-load",
        str(LOAD_S),
        "--serial-queries",
        "3",
        "--concurrent-loads",
        "4",
        "--json-out",
        str(out_file),
        "--db-dir",
        str(tmp_path / "dbs"),
    ]
    code, report, err = run_main(argv, capsys, load=load)

    assert code == 0, err
    assert json.loads(out_file.read_text()) == report
    for key in (
        "gpu_name",
        "gpu_uuid",
        "driver_version",
        "energy_method",
        "counter_update_period_ms_observed",
        "nvml_energy_call_us_median",
        "nvml_power_call_us_median",
        "idle_w",
        "serial",
        "concurrent",
        "total_seconds",
    ):
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
    argv = [
        "--observe-seconds",
        "0.25",
        "--idle-seconds",
        "0.2",
        "--gap-seconds",
        "0",
        "--timing-seconds",
        "0.3",
    ]
    code, report, err = run_main(argv, capsys, load=None)
    assert code == 0, err
    assert "cannot generate GPU load" in err
    assert report["load"]["available"] is False
    assert report["idle_w"] == pytest.approx(IDLE_W, rel=0.01)
    assert report["counter_update_period_ms_observed"] == pytest.approx(
        PERIOD_S * 1000, abs=report["counter_period_resolution_ms"]
    )
    assert "skipped" in report["serial"] and "skipped" in report["concurrent"]
    # the counter's ticks need no load; the window and the power step do
    timing = report["counter_timing"]
    assert timing["energy_counter"]["changes"] >= 3 and "periodic" in timing["energy_counter"]
    assert "skipped" in timing["window"]
    assert "skipped" in timing["power"]
    assert timing["power"]["instant_field"]["supported"] is False


def test_an_injected_nvml_module_is_also_what_footprint_reads(monkeypatch, capsys) -> None:
    """``nvml=`` not in sys.modules: footprint's runtime must still read that fake."""
    monkeypatch.setitem(sys.modules, "pynvml", None)  # the real one must not be touched
    gpu = FakeGpu(UUID, power_w=IDLE_W, counter_update_period_s=PERIOD_S)
    fake, lock, _ = real_time_fake([gpu])
    argv = [
        "--observe-seconds",
        "0.15",
        "--idle-seconds",
        "0.1",
        "--gap-seconds",
        "0.05",
        "--warmup-seconds",
        "0",
        "--sampling-period",
        str(SAMPLING_S),
        "--seconds-per-load",
        "0.15",
        "--serial-queries",
        "1",
        "--concurrent-loads",
        "2",
        "--skip-timing",
    ]
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
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
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
    # the counter-timing section is in that estimate: 3 s of polling, 11 runs × 4 of
    # 5 periods, a 2 s step with 2 s around it
    timing_s = opts.timing_estimated_seconds(period_s=0.1)
    assert timing_s == pytest.approx(3 + 44 * 0.5 + 4, abs=0.01)
    skipped = validate.parse_args(["--skip-timing"])
    assert skipped.estimated_seconds(period_s=0.1) == pytest.approx(
        opts.estimated_seconds(period_s=0.1) - timing_s
    )


def test_timing_options() -> None:
    opts = validate.parse_args(
        [
            "--timing-seconds",
            "1.5",
            "--timing-load-ms",
            "5",
            "--timing-offsets",
            "20",
            "--timing-repeats",
            "2",
            "--timing-step-seconds",
            "3",
            "--skip-timing",
        ]
    )
    assert (opts.timing_seconds, opts.timing_load_ms, opts.timing_offsets) == (1.5, 5.0, 20)
    assert (opts.timing_repeats, opts.timing_step_seconds, opts.skip_timing) == (2, 3.0, True)
    defaults = validate.parse_args([])
    assert (defaults.timing_load_ms, defaults.timing_offsets, defaults.skip_timing) == (
        10.0,
        10,
        False,
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--timing-load-ms", "0"], "positive number of ms"),
        (["--timing-offsets", "0"], "integer >= 1"),
        (["--timing-repeats", "-1"], "integer >= 1"),
        (["--timing-seconds", "nan"], "positive"),
    ],
)
def test_bad_timing_arguments_exit_2(capsys, argv, message) -> None:
    with pytest.raises(SystemExit) as caught:
        validate.main(argv)
    assert caught.value.code == 2
    assert message in capsys.readouterr().err


# --- counter timing ---------------------------------------------------------------------
#
# The tick and window measurements run on the fake GPU's own clock (``SteppingClock``):
# each time the script reads it, it moves on by one poll's worth, its sleeps advance it
# and the load advances it by its length, so seconds of tight polling take a fraction of
# a second and the figures are exact to the poll. The power step needs a load thread
# beside the polling one, so it runs in real time on the ``fake_gpu`` fixture.

POLL_S = 25e-6  # one clock read in the stepped tests: changes are timed to ~2 of them
PROBE_LOAD_S = 0.01
BUSY_W = 400.0


class SteppingClock(FakeClock):
    """The fake GPU's clock; the script reads it through ``read_s``, which takes ``POLL_S``."""

    def read_s(self) -> float:
        self.t_s += POLL_S
        return self.t_s


class SteppedLoad:
    """``load(seconds, device_index)`` on a ``SteppingClock``: ``BUSY_W`` for that long."""

    def __init__(self, gpu: FakeGpu, clock: SteppingClock) -> None:
        self.gpu = gpu
        self.clock = clock
        self.calls: list[tuple[float, int]] = []

    def __call__(self, seconds: float, device_index: int) -> None:
        self.calls.append((seconds, device_index))
        self.gpu.set_power_w(BUSY_W)
        self.clock.advance(seconds)
        self.gpu.set_power_w(IDLE_W)


def stepped_counter(**gpu_options) -> tuple[validate.EnergyCounter, FakeGpu, SteppingClock]:
    clock = SteppingClock()
    gpu = FakeGpu(UUID, power_w=IDLE_W, counter_start_mj=5_000, **gpu_options)
    fake = make_fake_pynvml([gpu], clock=clock)
    fake.nvmlInit()
    handle = fake.nvmlDeviceGetHandleByUUID(UUID)
    return validate.EnergyCounter(fake, handle, clock.read_s), gpu, clock


def circular_distance_ms(a_ms: float, b_ms: float, period_ms: float) -> float:
    return abs((a_ms - b_ms + period_ms / 2) % period_ms - period_ms / 2)


def test_counter_ticks_period_phase_and_jitter_on_the_fake_counter() -> None:
    counter, gpu, clock = stepped_counter(counter_update_period_s=PERIOD_S)
    clock.advance(0.0123)  # polling starts 12.3 ms after a tick: the next is 37.7 ms later
    report, grid = validate.observe_ticks(counter, 1.0)
    assert grid is not None and grid.periodic and report["periodic"] is True
    assert report["changes"] == report["changes_used"] == 20
    assert report["resolution_ms"] == 2.0
    # the fake ticks exactly every 50 ms; each change is timed to within ~2 polls (50 µs)
    assert report["period_ms_median"] == pytest.approx(PERIOD_S * 1000, abs=0.06)
    assert report["period_ms_long_baseline"] == pytest.approx(PERIOD_S * 1000, abs=0.01)
    assert grid.period_s == pytest.approx(PERIOD_S, abs=1e-5)
    assert report["ticks_spanned"] == 19
    assert report["phase_ms"] == pytest.approx(PERIOD_S * 1000 - 12.3, abs=0.06)
    assert report["jitter_ms_max"] < 0.05
    assert report["extra_changes"] == report["ticks_without_used_change"] == 0
    assert report["polls"] == pytest.approx(1.0 / (2 * POLL_S), rel=0.01)


def test_irregular_counter_changes_are_not_periodic() -> None:
    rng = random.Random(7)
    times_s = sorted(rng.uniform(0, 2.0) for _ in range(40))
    report, grid = validate.fit_ticks([(t, t + 1e-4) for t in times_s], 0.002, 0.0)
    assert report["periodic"] is False and grid is not None and not grid.periodic
    # the same count of changes on a 50 ms grid with ±1 ms of jitter is periodic, and the
    # jitter reported is that spread
    times_s = [0.3 + k * PERIOD_S + rng.uniform(-0.001, 0.001) for k in range(40)]
    report, grid = validate.fit_ticks([(t, t + 1e-4) for t in times_s], 0.002, 0.0)
    assert report["periodic"] is True
    assert report["period_ms_long_baseline"] == pytest.approx(PERIOD_S * 1000, abs=0.1)
    assert 0.4 < report["jitter_ms_std"] < 0.8  # uniform ±1 ms: 0.58 ms
    assert report["jitter_ms_max"] <= 2.0
    # every other change descheduled (timed to 5 ms only): the gaps are two periods
    brackets = [(t, t + (0.005 if k % 2 else 1e-4)) for k, t in enumerate(times_s)]
    report, grid = validate.fit_ticks(brackets, 0.002, 0.0)
    assert report["changes_used"] == 20 and report["periodic"] is True
    assert report["period_ms_median"] == pytest.approx(PERIOD_S * 1000, abs=1)
    assert report["period_ms_long_baseline"] == pytest.approx(PERIOD_S * 1000, abs=0.1)
    assert report["ticks_without_used_change"] == 19
    assert report["grid_ticks"] == report["grid_ticks_with_a_change"] == 39
    # too few changes to say anything
    report, grid = validate.fit_ticks([(0.1, 0.1001), (0.2, 0.2001)], 0.002, 0.0)
    assert grid is None and report["periodic"] is False and "reason" in report


def run_probe(
    counter: validate.EnergyCounter,
    gpu: FakeGpu,
    clock: SteppingClock,
    offsets: int = 10,
    repeats: int = 2,
) -> dict:
    """Lock onto the counter as the script does, then probe and summarize."""
    _, grid = validate.observe_ticks(counter, 0.5)
    assert grid is not None and grid.periodic
    load = SteppedLoad(gpu, clock)
    runs = validate.probe_counter_window(
        counter, load, 0, grid.period_s, PROBE_LOAD_S, offsets, repeats, clock.advance
    )
    assert load.calls == [(PROBE_LOAD_S, 0)] * offsets * repeats
    assert len(runs) == (offsets + 1) * repeats
    return validate.summarize_probe(runs, grid.period_s, PROBE_LOAD_S, offsets)


def test_an_ideal_counter_observes_the_whole_period() -> None:
    counter, gpu, clock = stepped_counter(counter_update_period_s=PERIOD_S)
    report = run_probe(counter, gpu, clock)
    assert report["observed_window"] == "whole period"
    assert report["observed_window_ms"] == pytest.approx(PERIOD_S * 1000, rel=0.01)
    assert report["period_ms"] == pytest.approx(PERIOD_S * 1000, rel=0.01)
    assert report["idle_w"] == pytest.approx(IDLE_W, rel=1e-3)
    # the span holds the load and 150 ms after it: 2 + ceil(160 / 50) periods
    assert report["span_ticks_min"] == 6 and report["runs_retried"] == 0
    # every offset sees the load's whole excess, (400 − 60) W × 10 ms (whole mJ: ±2 mJ)
    rows = report["offsets"]
    assert [r["offset_ms"] for r in rows] == pytest.approx([5.0 * i for i in range(10)])
    for row in rows:
        assert row["excess_j"] == pytest.approx((BUSY_W - IDLE_W) * PROBE_LOAD_S, abs=0.005)
        assert circular_distance_ms(row["measured_offset_ms"], row["offset_ms"], 50) < 0.1
        assert row["runs"] == 2
    assert report["excess_peak_to_mean"] == pytest.approx(1.0, abs=0.01)


@pytest.mark.parametrize("window_offset_s", [0.0, 0.03, None])  # None: ends at the tick
def test_a_part_time_counter_window_is_found(window_offset_s: float | None) -> None:
    period_s, window_s = 0.1, 0.025
    counter, gpu, clock = stepped_counter(
        counter_update_period_s=period_s,
        counter_window_s=window_s,
        counter_window_offset_s=window_offset_s,
    )
    report = run_probe(counter, gpu, clock)
    start_s = period_s - window_s if window_offset_s is None else window_offset_s
    assert report["observed_window"] == "part-time"
    assert report["observed_window_ms"] == pytest.approx(window_s * 1000, abs=10)
    assert circular_distance_ms(report["observed_window_start_ms"], start_s * 1000, 100) <= 10
    end_ms = report["observed_window_end_ms"]
    assert end_ms == pytest.approx(
        report["observed_window_start_ms"] + report["observed_window_ms"], abs=1e-6
    )
    # inside the window the load counts period/window = 4 times, outside not at all
    excess = [r["excess_j"] for r in report["offsets"]]
    load_j = (BUSY_W - IDLE_W) * PROBE_LOAD_S
    assert max(excess) == pytest.approx(4 * load_j, rel=0.02)
    assert min(excess) == pytest.approx(0.0, abs=0.02)
    assert report["excess_j_mean"] == pytest.approx(load_j, rel=0.02)


def sampled_excess_j(offset_s: float, w0_s: float, w_s: float, period_s: float) -> float:
    """A part-time counter's excess for a ``PROBE_LOAD_S`` load of 100 W, by 10 µs samples."""
    dt_s = 1e-5
    inside = sum(
        1
        for i in range(round(PROBE_LOAD_S / dt_s))
        if (offset_s + (i + 0.5) * dt_s - w0_s) % period_s < w_s
    )
    return 100.0 * inside * dt_s * period_s / w_s


@pytest.mark.parametrize(("w0_ms", "w_ms"), [(50, 25), (90, 25), (0, 50), (33, 12), (10, 80)])
def test_infer_window_from_offset_profiles(w0_ms: float, w_ms: float) -> None:
    period_s = 0.1
    offsets_s = [i * period_s / 10 for i in range(10)]
    excess = [sampled_excess_j(o, w0_ms / 1000, w_ms / 1000, period_s) for o in offsets_s]
    report = validate.infer_window(offsets_s, excess, PROBE_LOAD_S, period_s)
    assert report["observed_window"] == "part-time"
    assert report["observed_window_ms"] == pytest.approx(w_ms, abs=5)
    assert circular_distance_ms(report["observed_window_start_ms"], w0_ms, 100) <= 5
    assert report["window_fit_rms_j"] < report["constant_fit_rms_j"] / 5


def test_infer_window_whole_period_and_inconclusive() -> None:
    period_s = 0.1
    offsets_s = [i * period_s / 10 for i in range(10)]
    rng = random.Random(3)
    # noise of 0.05 J on each mean, as repeats would report it: flat within it
    noisy = [1.0 + rng.gauss(0, 0.05) for _ in offsets_s]
    report = validate.infer_window(offsets_s, noisy, PROBE_LOAD_S, period_s, noise_j=0.05)
    assert report["observed_window"] == "whole period"
    assert (report["observed_window_start_ms"], report["observed_window_end_ms"]) == (0, 100)
    # a load the counter did not see: nothing to infer
    unseen = [rng.gauss(0, 0.05) for _ in offsets_s]
    report = validate.infer_window(offsets_s, unseen, PROBE_LOAD_S, period_s, noise_j=0.05)
    assert report["observed_window"] == "inconclusive" and report["observed_window_ms"] is None


def test_step_response_instantaneous_averaged_and_none() -> None:
    on_s, off_s = 0.5, 2.5
    times_s = [i * 0.002 for i in range(2000)]  # 4 s every 2 ms

    def true_w(t_s: float) -> float:
        return BUSY_W if on_s <= t_s < off_s else IDLE_W

    instant = validate.step_response([(t, true_w(t)) for t in times_s], on_s, off_s)
    assert instant["response"] == "instantaneous"
    assert instant["rise_90_ms"] <= 2.0 and instant["fall_90_ms"] <= 2.0
    assert (instant["idle_w"], instant["loaded_w"]) == (IDLE_W, BUSY_W)
    assert instant["average_window_ms_estimate"] is None

    def average_w(t_s: float, span_s: float = 1.0) -> float:  # 1 s boxcar, exactly
        busy_s = max(0.0, min(t_s, off_s) - max(t_s - span_s, on_s))
        return IDLE_W + (BUSY_W - IDLE_W) * busy_s / span_s

    averaged = validate.step_response([(t, average_w(t)) for t in times_s], on_s, off_s)
    assert averaged["response"] == "averaged"
    assert averaged["rise_90_ms"] == pytest.approx(900, abs=3)
    assert averaged["fall_90_ms"] == pytest.approx(900, abs=3)
    assert averaged["average_window_ms_estimate"] == pytest.approx(1000, abs=5)

    flat = validate.step_response([(t, IDLE_W) for t in times_s], on_s, off_s)
    assert flat["response"] == "no step seen"


class FieldValue:
    """What ``nvmlDeviceGetFieldValues`` returns per field (``c_nvmlFieldValue_t``)."""

    def __init__(self, nvml_return: int, mw: int) -> None:
        self.nvmlReturn = nvml_return
        self.valueType = 1  # NVML_VALUE_TYPE_UNSIGNED_INT
        self.value = type("Value", (), {"uiVal": mw})()


def test_instant_power_field_support_is_probed_without_crashing() -> None:
    gpu = FakeGpu(UUID, power_w=IDLE_W)
    fake = make_fake_pynvml([gpu])
    fake.nvmlInit()
    handle = fake.nvmlDeviceGetHandleByUUID(UUID)

    # the fake, like an old pynvml, has neither the field nor the function
    reader, info = validate.instant_power_reader(fake, handle)
    assert reader is None and info["supported"] is False
    assert "NVML_FI_DEV_POWER_INSTANT" in info["reason"]

    fake.NVML_FI_DEV_POWER_INSTANT = 186
    cases = {
        "NotSupported": lambda h, ids: (_ for _ in ()).throw(
            fk.NVMLError(fk.NVML_ERROR_NOT_SUPPORTED)
        ),
        "NVMLError": lambda h, ids: [FieldValue(fk.NVML_ERROR_NOT_SUPPORTED, 0)],
        "TypeError": lambda h, ids: (_ for _ in ()).throw(TypeError("bad fieldIds")),
    }
    for expected, get_values in cases.items():
        fake.nvmlDeviceGetFieldValues = get_values
        reader, info = validate.instant_power_reader(fake, handle)
        assert reader is None and info["supported"] is False
        assert expected in info["reason"], info

    asked: list[list[int]] = []

    def get_values(h, ids):
        asked.append(ids)
        return [FieldValue(fk.NVML_SUCCESS, 61_500)]

    fake.nvmlDeviceGetFieldValues = get_values
    reader, info = validate.instant_power_reader(fake, handle)
    assert info == {"supported": True, "field_id": 186, "first_read_w": 61.5}
    assert reader is not None and reader() == 61.5
    assert asked == [[186], [186]]


@pytest.mark.parametrize(("average_s", "response"), [(0.0, "instantaneous"), (0.3, "averaged")])
def test_power_step_on_the_fake_gpu(fake_gpu, average_s: float, response: str) -> None:
    gpu, fake, lock, _ = fake_gpu
    gpu.power_average_s = average_s
    fake.nvmlInit()
    handle = fake.nvmlDeviceGetHandleByUUID(UUID)
    load = FakeLoad(gpu, lock)
    try:
        report = validate.power_step(
            fake, handle, load, 0, 0.6, time.monotonic, time.sleep, baseline_s=0.1, after_s=0.4
        )
    finally:
        fake.nvmlShutdown()
    assert load.calls == [(0.6, 0)]
    assert report["read_errors"] == 0 and "instant_field" not in report
    assert report["step_s"] == pytest.approx(0.6, abs=0.05)
    usage = report["power_usage"]
    assert usage["response"] == response
    assert usage["idle_w"] == pytest.approx(IDLE_W, abs=0.5)
    assert usage["loaded_w"] == pytest.approx(busy_w(1), abs=0.5)
    if average_s:  # a 0.3 s average reaches 90 % after 0.27 s
        assert usage["rise_90_ms"] == pytest.approx(270, abs=20)
        assert usage["average_window_ms_estimate"] == pytest.approx(300, abs=25)
    else:
        assert usage["rise_90_ms"] < 50 and usage["fall_90_ms"] < 50


def test_counter_timing_section_in_real_time(fake_gpu) -> None:
    """The whole section on the real-time fake: loads on their own clock, a load thread."""
    gpu, fake, lock, _ = fake_gpu
    load = FakeLoad(gpu, lock)
    opts = validate.parse_args(
        [
            "--timing-seconds",
            "1",
            "--timing-offsets",
            "3",
            "--timing-repeats",
            "2",
            "--timing-step-seconds",
            "0.2",
        ]
    )
    lines: list[str] = []
    fake.nvmlInit()
    try:
        handle = fake.nvmlDeviceGetHandleByUUID(UUID)
        timing = validate.measure_counter_timing(
            opts, fake, handle, 0.002, load, None, time.monotonic, time.sleep, lines.append
        )
    finally:
        fake.nvmlShutdown()
    ticks = timing["energy_counter"]
    assert ticks["periodic"] is True, json.dumps(ticks)
    # within 3 %, or what the ends of the baseline are timed to (a loaded machine)
    tolerance_ms = max(0.03 * PERIOD_S * 1000, ticks["resolution_ms"] / ticks["ticks_spanned"])
    assert ticks["period_ms_long_baseline"] == pytest.approx(PERIOD_S * 1000, abs=tolerance_ms)
    window = timing["window"]
    assert window["observed_window"] == "whole period", window
    assert window["period_ms"] == ticks["period_ms_long_baseline"]
    assert window["idle_w"] == pytest.approx(
        IDLE_W * PERIOD_S * 1000 / window["period_ms"], rel=1e-3
    )
    assert len(window["offsets"]) == 3 and window["repeats"] == 2
    for row in window["offsets"]:  # (400 − 60) W for at least 10 ms, at most the call's time
        step_w = busy_w(1) - IDLE_W
        assert step_w * 0.0099 < row["excess_j"] < step_w * row["load_ms"] / 1000 * 1.01
    power = timing["power"]
    assert power["power_usage"]["response"] == "instantaneous"
    assert power["instant_field"]["supported"] is False
    # a warm-up and 3 × 2 probes of the short load (and any made again), then the step
    probes = 7 + window["runs_retried"]
    assert load.calls == [(PROBE_LOAD_S, 0)] * probes + [(0.2, 0)]
    assert all(line.startswith("validate.py: counter timing: ") for line in lines)


def test_counter_timing_is_in_the_report(fake_gpu, capsys, monkeypatch) -> None:
    """Its place in a run (the footprint phases, tested above, are left out here)."""
    gpu, _, lock, _ = fake_gpu

    def no_phases(report, *args) -> None:
        report["serial"] = report["concurrent"] = {"skipped": "not in this test"}

    monkeypatch.setattr(validate, "_run_phases", no_phases)
    load = FakeLoad(gpu, lock)
    argv = [
        "--observe-seconds",
        "0.1",
        "--idle-seconds",
        "0.1",
        "--gap-seconds",
        "0",
        "--warmup-seconds",
        "0",
        "--timing-seconds",
        "0.4",
        "--timing-offsets",
        "2",
        "--timing-repeats",
        "1",
        "--timing-step-seconds",
        "0.1",
    ]
    code, report, err = run_main(argv, capsys, load=load)
    assert code == 0, err
    assert report["settings"]["timing_offsets"] == 2
    timing = report["counter_timing"]
    assert set(timing) == {"energy_counter", "window", "power"}
    assert timing["energy_counter"]["changes"] > 0
    # The probe's results are tested above; here, that it ran with the load given. (A
    # machine loaded enough to deschedule 0.4 s of polling often finds no periodic ticks.)
    if timing["energy_counter"]["periodic"]:
        assert "observed_window" in timing["window"]
        probes = 1 + 2 + timing["window"]["runs_retried"]  # a warm-up call, then 2 offsets
    else:
        assert "not periodic" in timing["window"]["skipped"]
        probes = 0
    assert load.calls == [(PROBE_LOAD_S, 0)] * probes + [(0.1, 0)]
    assert "response" in timing["power"]["power_usage"]


def test_skip_timing_leaves_the_section_out(fake_gpu, capsys) -> None:
    argv = [
        "--observe-seconds",
        "0.1",
        "--idle-seconds",
        "0.1",
        "--gap-seconds",
        "0",
        "--skip-timing",
    ]
    code, report, err = run_main(argv, capsys, load=None)
    assert code == 0, err
    assert report["counter_timing"] == {"skipped": "--skip-timing"}


def test_without_an_energy_counter_only_the_power_reading_is_timed(monkeypatch, capsys) -> None:
    gpu = FakeGpu(UUID, power_w=IDLE_W, supports_energy_counter=False)
    fake, lock, _ = real_time_fake([gpu])
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    load = FakeLoad(gpu, lock)
    code, report, err = run_main(["--timing-step-seconds", "0.2"], capsys, load=load)
    assert code == 0, err
    assert report["energy_method"] != "counter" and "serial" not in report
    timing = report["counter_timing"]
    assert "skipped" in timing["energy_counter"] and "skipped" in timing["window"]
    assert timing["power"]["power_usage"]["response"] == "instantaneous"
    assert load.calls == [(0.2, 0)]


# --- --vendor amd and the MIG check ----------------------------------------------------


def test_amd_path_compares_footprint_with_the_accumulator(capsys, monkeypatch) -> None:
    """On main there was no AMD path: --vendor was an unknown argument (exit 2)."""
    from tests.fake_amdsmi import make_fake_amdsmi, mi300x_host

    monkeypatch.setitem(sys.modules, "pynvml", None)
    (gpu,) = mi300x_host(1)
    gpu.power_w = IDLE_W
    smi = make_fake_amdsmi([gpu], now_s=time.monotonic)
    lock = threading.Lock()

    def load(seconds: float, device_index: int) -> None:
        """400 W on the fake MI300X while it runs."""
        with lock:
            smi.fake_state.gpu_of(smi.fake_state.handles[0])  # bring it up to now
            gpu.power_w = 400.0
        time.sleep(seconds)
        with lock:
            smi.fake_state.gpu_of(smi.fake_state.handles[0])
            gpu.power_w = IDLE_W

    argv = [*FAST, "--vendor", "amd", "--serial-queries", "3", "--seconds-per-load", "0.3"]
    code, report, err = run_main(argv, capsys, load=load, smi=smi)
    assert code == 0, err
    assert (report["vendor"], report["gpu_uuid"]) == ("amd", gpu.uuid)
    assert report["idle_w"] == pytest.approx(IDLE_W, rel=0.02)
    serial = report["serial"]
    assert serial["records"] == 3
    for query in serial["queries"]:  # 400 W for 0.3 s, within a sampling period or two
        assert query["direct_j"] == pytest.approx(120.0, abs=400 * 2 * SAMPLING_S + 2)
        assert query["attributed_j"] == pytest.approx(query["direct_j"], abs=400 * 4 * SAMPLING_S)
    assert abs(serial["internal_conservation_error_j"]) < 1e-6
    assert serial["measured_j"] <= serial["direct_phase_delta_j"] + 1.0


def test_amd_path_without_amdsmi_exits_0(capsys, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "amdsmi", None)
    code, report, _ = run_main(["--vendor", "amd"], capsys)
    assert code == 0
    assert report["gpu"] is False and "amdsmi" in report["reason"]


def test_mig_check_slices_add_up_to_the_parent_counter(capsys, monkeypatch) -> None:
    """On main a MIG host made the script fail (MIG devices were refused)."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    slices = [
        fk.FakeMigSlice(f"MIG-{n}0000000-0000-4000-8000-000000000000", size, power_w=w)
        for n, size, w in ((1, 3, 90.0), (2, 4, 40.0))
    ]
    gpu = FakeGpu(
        UUID, power_w=10.0, mig_mode=1, mig_slices=slices, counter_update_period_s=PERIOD_S
    )
    fake = make_fake_pynvml([gpu], clock=RealTimeClock())
    argv = [*FAST, "--mig-seconds", "0.5"]
    code, report, err = run_main(argv, capsys, nvml=fake, load=None)
    assert code == 0, err
    assert "MIG device" in report["reason"]
    (parent,) = report["mig"]["gpus"]
    assert parent["parent_uuid"] == UUID
    assert parent["shares_sum"] == pytest.approx(1.0)
    assert parent["parent_direct_delta_j"] == pytest.approx(140 * 0.5, rel=0.25)
    # footprint reads the parent just before the direct read: a counter step apart at most
    assert abs(parent["sum_minus_parent_j"]) <= 140 * PERIOD_S + 0.01
    assert [s["share"] for s in parent["slices"]] == pytest.approx([3 / 7, 4 / 7])
    for s in parent["slices"]:
        assert s["delta_j"] == pytest.approx(parent["slices_sum_j"] * s["share"], rel=1e-4)
