"""Check footprint's NVML attribution against direct NVML counter reads on a real GPU.

    python tests/gpu/validate.py [--seconds-per-load S] [--json-out FILE] [--device I]
                                 [--timing-seconds S] [--timing-load-ms MS]
                                 [--timing-offsets N] [--timing-repeats K]
                                 [--timing-step-seconds S] [--skip-timing]
                                 [--vendor nvidia|amd] [--mig-seconds S]

``--vendor amd`` validates footprint's amdsmi sensor instead (idle power, loads one at a
time against the energy accumulator read directly, conservation: ``tests/gpu/vendors.py``).
On an NVIDIA host with GPUs in MIG mode, a ``mig`` section checks that footprint's MIG
devices (each a static share of its GPU's counter) add up to the parent's counter read
directly over ``--mig-seconds``; the per-query comparisons need a whole GPU (``--device``
naming a MIG device skips them).

Runs in about two and a half minutes with the defaults (well under five), on one GPU:

1. opens NVML through footprint's own ``open_nvml`` (no GPU: one line on stderr,
   ``{"gpu": false, "reason": ...}`` on stdout, exit 0);
2. polls ``nvmlDeviceGetTotalEnergyConsumption`` tightly to observe how often the counter
   changes, and times the energy and power calls;
3. measures idle power from the counter delta over ``--idle-seconds`` of no load;
4. runs ``--serial-queries`` loads of ``--seconds-per-load`` one at a time under
   ``@footprint.track``, reading the counter directly around each (tick-aligned), and
   compares each query's attributed energy with that direct figure;
5. runs ``--concurrent-loads`` loads at once (threads, same GPU) and checks conservation:
   Σ attributed + Σ idle (from the SQLite file footprint wrote) against the counter delta
   over the same run read directly;
6. times the counter and the power reading ("counter timing", key ``counter_timing``,
   about 30 s; ``--skip-timing`` leaves it out), see below.

It prints ONE JSON object on stdout (progress goes to stderr). The load is a PyTorch
matmul loop on ``cuda:I``; without PyTorch/CUDA the script says so and still measures the
counter, the call latencies and idle power. Everything is injectable (``nvml`` module,
``load(seconds, device_index)`` callable, clock functions) so the logic is tested on the
fake ``pynvml`` in ``tests/test_gpu_validate.py``.

How the direct ("ground truth") figure of a query is taken: the counter only changes every
update period (tens of ms), so the script waits for a change right before starting the
load (the value then describes "now") and for the first change after it ends; the idle
energy of the short stretches between those changes and the load's start and end is
subtracted using the measured idle power (``idle_subtracted_s`` of it; the changes are
timed to ``tick_timing_ms`` in all, so that idle energy is good to idle power × that).
GPUs stay above idle for a moment after a load, so on real hardware the direct figure is
slightly high, by at most one counter period of (tail power − idle power).

Counter timing (``counter_timing``; times in ms, energies in J, powers in W):

* ``energy_counter``: the counter is polled tightly for ``--timing-seconds``; each change
  is timed by the two polls around it (only changes timed to within a couple of ms are
  used). The period is given as the median interval (``period_ms_median``) and over the
  long baseline, first to last change over the whole number of periods between them
  (``period_ms_long_baseline``); the changes are placed on the grid ``phase + k × period``
  (``phase_ms``: the first grid tick after polling started), and ``jitter_ms_std`` /
  ``_p90`` / ``_max`` is their spread around it. ``periodic`` is false when the changes do
  not sit on such a grid (then nothing below can be phase-locked).
* ``window``: whether the counter integrates the whole period or only part of it (NVIDIA
  A100/H100 were reported to observe ~25 ms of each 100 ms: Yang et al., SC'24, "Part-time
  Power Measurements: nvidia-smi's Lack of Attention"). A short load of
  ``--timing-load-ms`` (default PyTorch load: 2048×2048 matmuls, so it ends on time) is
  started at ``--timing-offsets`` offsets spread across a period after a counter change,
  ``--timing-repeats`` times each, in shuffled order with one no-load control run per
  repeat. Each run reads the counter at the change just before (the phase is locked
  afresh every run) and at the first change at least ``span_ticks_min`` periods later, so
  the span holds the whole load and its tail wherever it falls; its excess is that delta
  minus the controls' idle power over the span's whole periods. ``offsets`` gives per
  offset the measured start after the tick, the load's length and the mean excess. An
  ideal counter shows the same excess at every offset. One that observes a window of W
  ms of each period and scales it to the period shows period/W times the load's excess
  where the load is inside the window and none where it is outside: the excesses (scaled
  to the median load length) are fitted with that model (window length and start on a
  grid of period/100, least squares). ``observed_window`` is "whole period" when they
  are flat (within 10 % of their mean, or 3 standard errors from the repeats), else
  "part-time" with ``observed_window_ms`` and ``observed_window_start_ms`` /
  ``_end_ms`` counted from the tick that starts the period (the end may pass the next
  tick), or "inconclusive" when the load's excess is not above the noise. The offsets are
  ``offset_spacing_ms`` apart: windows are placed to about that.
* ``power``: ``nvmlDeviceGetPowerUsage`` is polled every 2 ms from before a load step of
  ``--timing-step-seconds`` (on its own thread) to after it: ``rise_90_ms`` and
  ``fall_90_ms`` are the times from switching the load on (off) to the first reading past
  90 % of the step; "instantaneous" up to 200 ms, else "averaged", with the boxcar average
  that would rise that slowly (``average_window_ms_estimate``, e.g. ~1000 for a 1 s
  average; the step must outlast it). ``instant_field`` says whether
  ``nvmlDeviceGetFieldValues`` with ``NVML_FI_DEV_POWER_INSTANT`` works here (an
  NVMLError, or a pynvml without it, means not supported), and when it does, times it on
  the same step.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import random
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

try:
    import footprint
except ImportError:  # a checkout that is not pip-installed: run from its root
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    import footprint

from footprint.sensors.nvml import NvmlSensor, open_nvml  # noqa: E402
from footprint.storage.store import Store  # noqa: E402
from footprint.tracking import get_runtime  # noqa: E402

try:
    from tests.gpu import vendors
except ImportError:  # run as a script: tests/gpu is on sys.path
    import vendors  # type: ignore[no-redef]

Load = Callable[[float, int], None]
SERIAL_MODEL = "validate-serial"
CONCURRENT_MODEL = "validate-concurrent"
PHASE_START_ATTEMPTS = 5


class _Default:
    def __repr__(self) -> str:
        return "DEFAULT"


DEFAULT: Any = _Default()  # "use the PyTorch matmul load"


class ValidationError(RuntimeError):
    """The run could not be completed (the message says why); reported, exit 1."""


@dataclass
class Options:
    seconds_per_load: float = 10.0
    serial_queries: int = 5
    concurrent_loads: int = 4
    gap_seconds: float = 3.0
    idle_seconds: float = 15.0
    observe_seconds: float = 2.0
    warmup_seconds: float = 2.0
    sampling_period_s: float = 0.05
    device: int = 0
    db_dir: str | None = None
    json_out: str | None = None
    timing_seconds: float = 3.0
    timing_load_ms: float = 10.0
    timing_offsets: int = 10
    timing_repeats: int = 4
    timing_step_seconds: float = 2.0
    skip_timing: bool = False
    vendor: str = "nvidia"
    mig_seconds: float = 5.0

    def estimated_seconds(self, period_s: float = 0.1) -> float:
        """Rough wall time of a run (CUDA start-up not included)."""
        tick = 2 * period_s
        serial = self.gap_seconds + self.serial_queries * (
            self.seconds_per_load + self.gap_seconds + tick
        )
        concurrent = 2 * self.gap_seconds + self.seconds_per_load + tick
        return (
            self.observe_seconds
            + self.warmup_seconds
            + self.gap_seconds
            + self.idle_seconds
            + tick
            + serial
            + concurrent
            + self.timing_estimated_seconds(period_s)
        )

    def timing_estimated_seconds(self, period_s: float = 0.1) -> float:
        """Rough wall time of the counter-timing section (0 with ``--skip-timing``)."""
        if self.skip_timing:
            return 0.0
        # each probe: wait for a tick, then a span of ticks; one control run per repeat
        probe_s = (
            (self.timing_offsets + 1)
            * self.timing_repeats
            * (probe_span_ticks(period_s, self.timing_load_ms / 1000) + 1)
            * period_s
        )
        baseline_s, after_s = power_step_margins(self.timing_step_seconds)
        return self.timing_seconds + probe_s + baseline_s + self.timing_step_seconds + after_s


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def _positive_milliseconds(text: str) -> float:
    value = float(text)
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of ms, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


def parse_args(argv: list[str] | None) -> Options:
    d = Options()
    p = argparse.ArgumentParser(
        prog="validate.py",
        description="Compare footprint's per-query GPU energy with direct NVML counter reads.",
    )
    p.add_argument(
        "--seconds-per-load",
        metavar="S",
        type=_positive_float,
        default=d.seconds_per_load,
        help="length of each load, s (default %(default)s)",
    )
    p.add_argument(
        "--serial-queries",
        metavar="K",
        type=_positive_int,
        default=d.serial_queries,
        help="loads run one at a time (default %(default)s)",
    )
    p.add_argument(
        "--concurrent-loads",
        metavar="N",
        type=_positive_int,
        default=d.concurrent_loads,
        help="loads run at once on the same GPU (default %(default)s)",
    )
    p.add_argument(
        "--gap-seconds",
        metavar="S",
        type=_non_negative_float,
        default=d.gap_seconds,
        help="idle time between loads, s (default %(default)s)",
    )
    p.add_argument(
        "--idle-seconds",
        metavar="S",
        type=_positive_float,
        default=d.idle_seconds,
        help="idle baseline, s (default %(default)s)",
    )
    p.add_argument(
        "--observe-seconds",
        metavar="S",
        type=_positive_float,
        default=d.observe_seconds,
        help="tight polling of the energy counter, s (default %(default)s)",
    )
    p.add_argument(
        "--warmup-seconds",
        metavar="S",
        type=_non_negative_float,
        default=d.warmup_seconds,
        help="untracked load first (CUDA start-up), s; 0 skips (default %(default)s)",
    )
    p.add_argument(
        "--sampling-period",
        metavar="S",
        type=_positive_float,
        default=d.sampling_period_s,
        dest="sampling_period_s",
        help="footprint's sampling period, s (default %(default)s)",
    )
    p.add_argument(
        "--device",
        metavar="I",
        type=_non_negative_int,
        default=d.device,
        help="CUDA index of the GPU to validate (default %(default)s)",
    )
    p.add_argument(
        "--db-dir",
        metavar="DIR",
        default=None,
        help="keep footprint's SQLite files in this folder (default: a temp folder)",
    )
    p.add_argument(
        "--json-out", metavar="FILE", default=None, help="also write the JSON object to this file"
    )
    p.add_argument(
        "--timing-seconds",
        metavar="S",
        type=_positive_float,
        default=d.timing_seconds,
        help="counter timing: tight polling for the counter's period and phase, s "
        "(default %(default)s)",
    )
    p.add_argument(
        "--timing-load-ms",
        metavar="MS",
        type=_positive_milliseconds,
        default=d.timing_load_ms,
        help="counter timing: length of each short load placed inside a counter period, ms "
        "(default %(default)s)",
    )
    p.add_argument(
        "--timing-offsets",
        metavar="N",
        type=_positive_int,
        default=d.timing_offsets,
        help="counter timing: offsets of the short load across a counter period "
        "(default %(default)s)",
    )
    p.add_argument(
        "--timing-repeats",
        metavar="K",
        type=_positive_int,
        default=d.timing_repeats,
        help="counter timing: runs at each offset, and idle control runs (default %(default)s)",
    )
    p.add_argument(
        "--timing-step-seconds",
        metavar="S",
        type=_positive_float,
        default=d.timing_step_seconds,
        help="counter timing: length of the load step the power reading is timed on, s "
        "(default %(default)s)",
    )
    p.add_argument(
        "--skip-timing",
        action="store_true",
        help="leave out the counter-timing section",
    )
    p.add_argument(
        "--vendor",
        choices=("nvidia", "amd"),
        default=d.vendor,
        help="nvidia: NVML (default); amd: amdsmi (idle, serial loads, conservation)",
    )
    p.add_argument(
        "--mig-seconds",
        metavar="S",
        type=_positive_float,
        default=d.mig_seconds,
        help="MIG check: how long the parent counter and the MIG devices are read, s "
        "(default %(default)s)",
    )
    ns = p.parse_args(argv)
    return Options(**vars(ns))


# --- NVML measurements ------------------------------------------------------------------


class EnergyCounter:
    """Direct reads of one GPU's ``nvmlDeviceGetTotalEnergyConsumption`` (mJ).

    A change is timed by the two polls around it: the counter ticked after the start of
    the last read that returned the old value and before the end of the first read that
    returned the new one. When that bracket is
    wider than ``max_bracket_s`` (the thread was descheduled between two polls), the time
    is not trusted and the next change is used instead.
    """

    RETRIES = 5

    def __init__(
        self, nvml: Any, handle: Any, now: Callable[[], float], max_bracket_s: float = 0.002
    ) -> None:
        self.nvml = nvml
        self.handle = handle
        self.now = now
        self.max_bracket_s = max_bracket_s
        self.wide_brackets = 0
        self.last_bracket_s = 0.0  # width of the bracket that timed the last change returned

    def read_mj(self) -> int:
        return int(self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle))

    def wait_for_change(self, timeout_s: float) -> tuple[int, float]:
        """Poll tightly until the counter changes: its new value and when it changed."""
        now = self.now
        low_s = now()  # the tick is after the start of the last read of the old value
        last = self.read_mj()
        deadline = low_s + timeout_s
        retries = 0
        while True:
            before_s = now()
            value = self.read_mj()
            seen_s = now()
            if value != last:
                if seen_s - low_s <= self.max_bracket_s or retries == self.RETRIES:
                    self.last_bracket_s = seen_s - low_s
                    return value, (low_s + seen_s) / 2
                self.wide_brackets += 1
                retries += 1
                last, deadline = value, seen_s + timeout_s
            elif seen_s > deadline:
                raise ValidationError(
                    f"the NVML energy counter did not change in {timeout_s:.2f} s"
                )
            low_s = before_s


def observe_counter(counter: EnergyCounter, seconds: float) -> dict[str, Any]:
    """Poll the counter as fast as possible: median interval between changes, call time.

    Intervals are taken between changes timed to within ``counter.max_bracket_s`` (a change
    seen after the thread was descheduled has no usable time); only if no such pair exists
    is the limit widened. ``counter_period_resolution_ms`` is the limit used.
    """
    now = counter.now
    perf = time.perf_counter_ns
    call_ns: list[int] = []
    changes: list[tuple[float, float]] = []  # (time of the change, width of its bracket)
    low_s = now()
    last = counter.read_mj()
    end_s = low_s + seconds
    while True:
        before_s = now()
        before = perf()
        value = counter.read_mj()
        call_ns.append(perf() - before)
        seen_s = now()
        if value != last:
            changes.append(((low_s + seen_s) / 2, seen_s - low_s))
            last = value
        if seen_s >= end_s:
            break
        low_s = before_s
    intervals: list[float] = []
    for factor in (1, 2, 5, 10, 20, 50):  # widen only when descheduling left no good pair
        limit_s = counter.max_bracket_s * factor
        intervals = [
            b - a for (a, wa), (b, wb) in zip(changes, changes[1:]) if max(wa, wb) <= limit_s
        ]
        if intervals:
            break
    return {
        "counter_update_period_ms_observed": (
            _round(statistics.median(intervals) * 1000, 3) if intervals else None
        ),
        # each change is timed to within this, so each interval is good to within it too
        "counter_period_resolution_ms": _round(limit_s * 1000, 3) if intervals else None,
        "counter_changes_observed": len(changes),
        "counter_intervals_used": len(intervals),
        "counter_polls": len(call_ns),
        "nvml_energy_call_us_median": _round(statistics.median(call_ns) / 1000, 3),
    }


def median_call_us(fn: Callable[[], Any], nvml: Any, calls: int = 200) -> float | None:
    """Median wall time of ``fn()`` in µs, or None when NVML refuses it (not supported)."""
    perf = time.perf_counter_ns
    times = []
    for _ in range(calls):
        before = perf()
        try:
            fn()
        except nvml.NVMLError:
            return None
        times.append(perf() - before)
    return _round(statistics.median(times) / 1000, 3)


def measure_idle(
    counter: EnergyCounter, seconds: float, sleep: Callable[[float], None], timeout_s: float
) -> float:
    """Idle power in W from the counter delta between two changes ``seconds`` apart."""
    e0, t0 = counter.wait_for_change(timeout_s)
    sleep(seconds)
    e1, t1 = counter.wait_for_change(timeout_s)
    return (e1 - e0) / 1000.0 / (t1 - t0)


# --- the load ---------------------------------------------------------------------------


def torch_matmul_load(size: int = 4096) -> tuple[Load | None, str]:
    """A load that keeps ``cuda:i`` busy with matmuls for a given wall time, or why not."""
    try:
        import torch
    except ImportError as exc:
        return None, f"PyTorch is not installed ({exc}): cannot generate GPU load"
    if not torch.cuda.is_available():
        return None, "PyTorch sees no CUDA device (torch.cuda.is_available() is False)"

    def load(seconds: float, device_index: int) -> None:
        if device_index >= torch.cuda.device_count():
            raise ValidationError(
                f"PyTorch sees {torch.cuda.device_count()} CUDA devices, no cuda:{device_index}"
            )
        device = torch.device("cuda", device_index)
        stream = torch.cuda.Stream(device=device)
        with torch.cuda.stream(stream):
            a = torch.randn(size, size, device=device)
            b = torch.randn(size, size, device=device)
            c = torch.empty_like(a)
            stream.synchronize()
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                torch.matmul(a, b, out=c)
                torch.matmul(b, a, out=c)
                stream.synchronize()
            del a, b, c

    return load, f"torch {torch.__version__} fp32 matmul {size}x{size} on its own CUDA stream"


# --- footprint phases ---------------------------------------------------------------------


@dataclass
class PhaseRun:
    db: Path
    start_mj: int
    start_aligned: bool  # the direct read at the start is where footprint's books start
    attempts: int


def start_phase(
    name: str, db_dir: Path, opts: Options, counter: EnergyCounter, tick_timeout_s: float
) -> PhaseRun:
    """Start footprint on a fresh SQLite file and read the counter where its books start.

    The runtime opens NVML on its own thread; its books start at its first sample (with
    NVML, the first counter change it sees). The direct read just after that is that
    value when the sampler's next poll still sees no other change; otherwise the start
    is retried on a new file (the direct delta would be off by one counter step).
    """
    for attempt in range(1, PHASE_START_ATTEMPTS + 1):
        db = db_dir / f"{name}-{attempt}.db"
        for stale in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
            stale.unlink(missing_ok=True)  # a kept --db-dir from an earlier run
        Store(str(db)).close()  # create the tables now, so the runtime starts quickly
        footprint.configure(
            db=str(db),
            sensor="nvml",
            cpu=False,
            sampling_period_s=opts.sampling_period_s,
            daemon="off",  # measured in this process even if FOOTPRINT_DAEMON is set
            detect_cloud=False,  # no cloud metadata lookup: pricing is not what is checked
        )
        counter.wait_for_change(tick_timeout_s)
        runtime = get_runtime()
        measuring = runtime is not None and runtime.wait_until_measuring(10 * tick_timeout_s)
        after_mj = counter.read_mj()
        if runtime is None or not measuring or not runtime.gpu_devices:
            footprint.shutdown()
            raise ValidationError("footprint could not start its NVML sensor (see warnings)")
        sampler = runtime.gpu_sampler
        polls = sampler.polls
        deadline_s = time.monotonic() + 10 * tick_timeout_s
        while sampler.polls <= polls + 1 and time.monotonic() < deadline_s:
            time.sleep(0.001)  # a whole poll after the direct read
        aligned = sampler.changes_seen()[0] == 1
        if aligned or attempt == PHASE_START_ATTEMPTS:
            return PhaseRun(db, after_mj, aligned, attempt)
        footprint.shutdown()
    raise AssertionError("unreachable")


def finish_phase(counter: EnergyCounter) -> int:
    """Write everything, stop footprint, and read the counter at once.

    ``shutdown`` ends with a sample taken just after a counter change, then only writes a
    few idle rows, so the read that follows sees the same counter value.
    """
    footprint.flush()
    footprint.shutdown()
    return counter.read_mj()


def read_phase(db: Path, model: str, uuid: str) -> tuple[list[dict[str, Any]], float, float]:
    """The phase's query rows (in start order), Σ idle and Σ measured energy of the GPU."""
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    try:
        rows = [
            dict(r)
            for r in con.execute(
                "SELECT energy_j, energy_source, duration_s, gpu_seconds, status, gpus "
                "FROM queries WHERE model = ? ORDER BY started_at, id",
                (model,),
            )
        ]
        idle_j, measured_j = con.execute(
            "SELECT COALESCE(SUM(idle_energy_j), 0), COALESCE(SUM(measured_energy_j), 0) "
            "FROM idle_energy WHERE device_uuid = ?",
            (uuid,),
        ).fetchone()
    finally:
        con.close()
    return rows, float(idle_j), float(measured_j)


def conservation(
    attributed_j: float, idle_j: float, measured_j: float, direct_j: float
) -> dict[str, Any]:
    error_j = attributed_j + idle_j - direct_j
    return {
        "attributed_j": _round(attributed_j, 4),
        "idle_j": _round(idle_j, 4),
        "measured_j": _round(measured_j, 4),
        "direct_counter_delta_j": _round(direct_j, 4),
        "conservation_error_j": _round(error_j, 6),
        "conservation_rel_error": _round(abs(error_j) / direct_j, 8) if direct_j > 0 else None,
        # footprint's own invariant: Σ queries + Σ idle = Σ measured, to float precision
        "internal_conservation_error_j": _round(attributed_j + idle_j - measured_j, 9),
    }


@dataclass
class Context:
    opts: Options
    counter: EnergyCounter
    load: Load
    uuid: str
    idle_w: float
    tick_timeout_s: float
    db_dir: Path
    sleep: Callable[[float], None]
    log: Callable[[str], None]


def run_serial(ctx: Context) -> dict[str, Any]:
    opts, counter, now = ctx.opts, ctx.counter, ctx.counter.now
    device = opts.device

    @footprint.track(model=SERIAL_MODEL, gpus=[device])
    def tracked(seconds: float) -> None:
        ctx.load(seconds, device)

    phase = start_phase("serial", ctx.db_dir, opts, counter, ctx.tick_timeout_s)
    direct: list[dict[str, float]] = []
    try:
        ctx.sleep(opts.gap_seconds)
        for _ in range(opts.serial_queries):
            e0, t0 = counter.wait_for_change(ctx.tick_timeout_s)
            bracket0_s = counter.last_bracket_s
            t_call = now()
            tracked(opts.seconds_per_load)
            t_end = now()
            e1, t1 = counter.wait_for_change(ctx.tick_timeout_s)
            outside_s = (t_call - t0) + (t1 - t_end)
            direct.append(
                {
                    "duration_s": t_end - t_call,
                    "direct_j": (e1 - e0) / 1000.0 - ctx.idle_w * outside_s,
                    "idle_subtracted_s": outside_s,
                    # each change is timed to within half its bracket, so outside_s to this
                    "tick_timing_s": (bracket0_s + counter.last_bracket_s) / 2,
                }
            )
            ctx.sleep(opts.gap_seconds)
    finally:
        end_mj = finish_phase(counter)
    rows, idle_j, measured_j = read_phase(phase.db, SERIAL_MODEL, ctx.uuid)
    if len(rows) != len(direct):
        raise ValidationError(
            f"footprint stored {len(rows)} serial queries, expected {len(direct)}"
        )
    queries = []
    for i, (row, truth) in enumerate(zip(rows, direct)):
        attributed = row["energy_j"]
        rel = (
            abs(attributed - truth["direct_j"]) / truth["direct_j"]
            if attributed is not None
            else None
        )
        queries.append(
            {
                "i": i,
                "duration_s": _round(truth["duration_s"], 4),
                "direct_j": _round(truth["direct_j"], 4),
                "idle_subtracted_s": _round(truth["idle_subtracted_s"], 6),
                "tick_timing_ms": _round(truth["tick_timing_s"] * 1000, 3),
                "attributed_j": _round(attributed, 4),
                "rel_error": _round(rel, 6),
                "energy_source": row["energy_source"],
                "gpu_seconds": _round(row["gpu_seconds"], 4),
            }
        )
    errors = [q["rel_error"] for q in queries if q["rel_error"] is not None]
    return {
        "queries": queries,
        "max_rel_error": max(errors) if len(errors) == len(queries) else None,
        "mean_rel_error": _round(statistics.fmean(errors), 6) if errors else None,
        "start_aligned": phase.start_aligned,
        **conservation(
            sum(r["energy_j"] or 0.0 for r in rows),
            idle_j,
            measured_j,
            (end_mj - phase.start_mj) / 1000.0,
        ),
    }


def run_concurrent(ctx: Context) -> dict[str, Any]:
    opts, counter, now = ctx.opts, ctx.counter, ctx.counter.now
    device, n = opts.device, opts.concurrent_loads

    @footprint.track(model=CONCURRENT_MODEL, gpus=[device])
    def tracked(seconds: float) -> None:
        ctx.load(seconds, device)

    starts = [0.0] * n
    ends = [0.0] * n
    failures: list[BaseException] = []
    barrier = threading.Barrier(n)

    def worker(k: int) -> None:
        try:
            barrier.wait()
            starts[k] = now()
            tracked(opts.seconds_per_load)
            ends[k] = now()
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)

    phase = start_phase("concurrent", ctx.db_dir, opts, counter, ctx.tick_timeout_s)
    try:
        ctx.sleep(opts.gap_seconds)
        e0, t0 = counter.wait_for_change(ctx.tick_timeout_s)
        bracket0_s = counter.last_bracket_s
        threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(n)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if failures:
            raise ValidationError(f"a concurrent load failed: {failures[0]!r}") from failures[0]
        e1, t1 = counter.wait_for_change(ctx.tick_timeout_s)
        outside_s = (min(starts) - t0) + (t1 - max(ends))
        window_j = (e1 - e0) / 1000.0 - ctx.idle_w * outside_s
        ctx.sleep(opts.gap_seconds)
    finally:
        end_mj = finish_phase(counter)
    rows, idle_j, measured_j = read_phase(phase.db, CONCURRENT_MODEL, ctx.uuid)
    if len(rows) != n:
        raise ValidationError(f"footprint stored {len(rows)} concurrent queries, expected {n}")
    attributed = [r["energy_j"] or 0.0 for r in rows]
    queries_error_j = sum(attributed) - window_j
    return {
        "loads": n,
        "window_s": _round(max(ends) - min(starts), 4),
        "per_query_attributed_j": [_round(a, 4) for a in attributed],
        "energy_sources": sorted({r["energy_source"] for r in rows}),
        # Σ of the queries against the counter delta over the window they ran in together
        "queries_window_direct_j": _round(window_j, 4),
        "window_idle_subtracted_s": _round(outside_s, 6),
        "window_tick_timing_ms": _round((bracket0_s + counter.last_bracket_s) / 2 * 1000, 3),
        "queries_error_j": _round(queries_error_j, 4),
        "queries_rel_error": _round(abs(queries_error_j) / window_j, 6) if window_j > 0 else None,
        "start_aligned": phase.start_aligned,
        **conservation(sum(attributed), idle_j, measured_j, (end_mj - phase.start_mj) / 1000.0),
    }


# --- counter timing ---------------------------------------------------------------------

PROBE_MATMUL_SIZE = 2048  # the window probe's default load: short matmuls, so it ends on time
PROBE_TAIL_S = 0.15  # a probe's counter span runs on at least this long after its load ends
POWER_POLL_S = 0.002
POWER_BASELINE_S = 0.5
POWER_AFTER_S = 1.5
INSTANT_RISE_MAX_S = 0.2  # a power reading that reaches 90 % of a step this fast follows it
MIN_PERIODIC_CHANGES = 5
WINDOW_GRID_STEPS = 100  # window lengths and starts tried: multiples of period / this
FLAT_REL_TOLERANCE = 0.1  # offsets' excesses within this of their mean: no window seen
PROBE_TRIES = 3  # runs of one probe when the earlier ones were disturbed


@dataclass
class TickGrid:
    """The counter's changes fitted to ``phase_s + k × period_s`` (the script's clock)."""

    period_s: float
    phase_s: float
    periodic: bool


@dataclass
class ProbeRun:
    """One window-probe run: a short load (or none) inside a span of counter ticks."""

    offset_index: int | None  # None: an idle control run
    offset_s: float  # when the load call started, after the tick before it (measured)
    load_s: float  # how long the load call took (0 for a control run)
    delta_j: float  # counter delta over the span
    ticks: int  # counter periods in the span
    tries: int = 1  # runs made for this one (a disturbed run is made again)


def probe_span_ticks(period_s: float, load_s: float) -> int:
    """Counter periods a probe's span covers at least.

    The load starts one period after the first tick (time to get ready) at an offset below
    one period, so it ends before ``2 × period + load``; the span runs on ``PROBE_TAIL_S``
    after that, for the GPU's power tail.
    """
    return 2 + math.ceil((load_s + PROBE_TAIL_S) / period_s - 1e-9)


def poll_counter_changes(
    counter: EnergyCounter, seconds: float
) -> tuple[list[tuple[float, float]], int, float, float]:
    """Poll the counter tightly for ``seconds``.

    Returns the bracket ``(after_s, before_s)`` of every change (it happened after the
    start of the last read of the old value and before the end of the first read of the
    new one), the number of polls, and when polling started and ended.
    """
    now = counter.now
    brackets: list[tuple[float, float]] = []
    polls = 0
    start_s = low_s = now()
    last = counter.read_mj()
    end_s = start_s + seconds
    while True:
        before_s = now()
        value = counter.read_mj()
        seen_s = now()
        polls += 1
        if value != last:
            brackets.append((low_s, seen_s))
            last = value
        if seen_s >= end_s:
            return brackets, polls, start_s, seen_s
        low_s = before_s


def fit_ticks(
    brackets: list[tuple[float, float]], max_bracket_s: float, start_s: float
) -> tuple[dict[str, Any], TickGrid | None]:
    """Period, phase and jitter of the counter's changes (brackets from ``poll_counter_changes``).

    Only changes timed to within ``max_bracket_s`` are used (widened, as in
    ``observe_counter``, only when too few are); the others leave gaps of whole periods
    between used changes. The long-baseline period is the first to last used change over
    the whole number of periods between them. That number is counted (each change after
    the first is one tick, a bracket wider than a period may hide more) and also worked
    out from the intervals between used changes (shortest first, each a whole number of
    periods of the period so far); the count is taken when the used changes sit on its
    grid, else the one they fit better. Each interval divided by the number of periods it
    spans: their median is ``period_ms_median``. The changes are placed on the grid
    ``phase + k × period`` (long-baseline period, phase the mean offset); the jitter is
    their spread around it.

    The ticks are called periodic when at least ``MIN_PERIODIC_CHANGES`` were used, 90 %
    of them are within a tenth of a period of the grid (plus half the resolution they are
    timed to), the two periods agree to 10 % (plus the resolution), at most a tenth of the
    used changes share a tick with another, and 80 % of the grid's ticks from the first
    used change to the last had a change (used or not) around them; and not when the
    changes used are timed to over half a period (``reason`` says so).
    """
    used: list[float] = []
    limit_s = max_bracket_s
    for factor in (1, 2, 5, 10, 20, 50):  # widen only when descheduling left too few
        limit_s = max_bracket_s * factor
        used = [(lo + hi) / 2 for lo, hi in brackets if hi - lo <= limit_s]
        if len(used) >= MIN_PERIODIC_CHANGES:
            break
    report: dict[str, Any] = {
        "changes": len(brackets),
        "changes_used": len(used),
        # each used change is timed to within this, so the jitter below is good to half of it
        "resolution_ms": _round(limit_s * 1000, 3),
    }
    if len(used) < 3:
        report.update(periodic=False, reason=f"only {len(used)} well-timed counter changes")
        return report, None
    intervals_s = [b - a for a, b in itertools.pairwise(used)]
    span_s = used[-1] - used[0]
    # Whole periods from the first used change to the last, two ways. Counted: every change
    # after the first is one tick (a bracket wider than a period may hide more).
    inside = [(lo, hi) for lo, hi in brackets if used[0] < (lo + hi) / 2 <= used[-1]]
    guess_s = span_s / max(1, len(inside))
    counted = max(1, sum(max(1, round((hi - lo) / guess_s)) for lo, hi in inside))
    # From the intervals between used changes, shortest first: each is a whole number of
    # periods, the period refined as they are added (a first one from the shortest).
    shortest_s = min(intervals_s)
    guess_s = statistics.median(iv for iv in intervals_s if iv < 1.5 * shortest_s)
    from_intervals, summed_s = 0, 0.0
    for iv in sorted(intervals_s):
        from_intervals += max(1, round(iv / guess_s))
        summed_s += iv
        guess_s = summed_s / from_intervals
    fits = [_grid_fit(used, span_s / n) for n in (counted, from_intervals)]
    # the counted grid when the used changes sit on it (every change a tick), else the
    # one that fits them better
    good = [f for f in fits if f[3] <= 0.1 * f[0] + limit_s / 2]
    period_s, ks, phase_s, p90_s, residuals_s = (
        good[0] if good else min(fits, key=lambda f: f[3] / f[0])
    )
    ticks = round(span_s / period_s)
    median_s = statistics.median(iv / max(1, round(iv / period_s)) for iv in intervals_s)
    abs_sorted_s = sorted(abs(r) for r in residuals_s)
    extra = len(ks) - len(set(ks))
    # grid ticks from the first used change to the last, and those within (a tenth of a
    # period of) a change's bracket: a wide bracket may hide several ticks, not show a gap
    seen_ticks: set[int] = set()
    slack_s = 0.1 * period_s
    for lo, hi in brackets:
        first_k = math.ceil((lo - slack_s - phase_s) / period_s)
        last_k = math.floor((hi + slack_s - phase_s) / period_s)
        seen_ticks.update(k for k in range(max(first_k, ks[0]), min(last_k, ks[-1]) + 1))
    grid_ticks = ks[-1] - ks[0] + 1
    periodic = (
        len(used) >= MIN_PERIODIC_CHANGES
        and p90_s <= 0.1 * period_s + limit_s / 2  # each change is timed to ± limit / 2
        and abs(median_s - period_s) <= 0.1 * period_s + limit_s
        and extra <= 0.1 * len(used)
        and len(seen_ticks) >= 0.8 * grid_ticks
    )
    too_coarse = limit_s > period_s / 2
    report.update(
        {
            "period_ms_median": _round(median_s * 1000, 4),
            "period_ms_long_baseline": _round(period_s * 1000, 4),
            "ticks_spanned": ticks,
            # when the grid's first tick came after polling started
            "phase_ms": _round((phase_s - start_s) % period_s * 1000, 3),
            "jitter_ms_std": _round(statistics.pstdev(residuals_s) * 1000, 4),
            "jitter_ms_p90": _round(p90_s * 1000, 4),
            "jitter_ms_max": _round(abs_sorted_s[-1] * 1000, 4),
            # used changes on a tick another one is on, and ticks with no used change
            "extra_changes": extra,
            "ticks_without_used_change": ks[-1] - ks[0] + 1 - len(set(ks)),
            "grid_ticks": grid_ticks,
            "grid_ticks_with_a_change": len(seen_ticks),
            "periodic": periodic and not too_coarse,
        }
    )
    if too_coarse:  # the thread was descheduled too often: try a longer --timing-seconds
        report["reason"] = "the changes were timed too coarsely (resolution over period / 2)"
    return report, TickGrid(period_s, phase_s, report["periodic"])


def _grid_fit(
    times_s: list[float], period_s: float
) -> tuple[float, list[int], float, float, list[float]]:
    """``times_s`` on the grid ``phase + k × period_s``: period, k's, phase, p90 |residual|,
    residuals (phase: the mean offset)."""
    ks = [round((t - times_s[0]) / period_s) for t in times_s]
    phase_s = statistics.fmean(t - k * period_s for t, k in zip(times_s, ks))
    residuals_s = [t - phase_s - k * period_s for t, k in zip(times_s, ks)]
    abs_sorted_s = sorted(abs(r) for r in residuals_s)
    p90_s = abs_sorted_s[math.ceil(0.9 * len(abs_sorted_s)) - 1]
    return period_s, ks, phase_s, p90_s, residuals_s


def observe_ticks(counter: EnergyCounter, seconds: float) -> tuple[dict[str, Any], TickGrid | None]:
    """The counter's update period, phase and jitter from ``seconds`` of tight polling."""
    brackets, polls, start_s, end_s = poll_counter_changes(counter, seconds)
    report, grid = fit_ticks(brackets, counter.max_bracket_s, start_s)
    return {
        "seconds": _round(end_s - start_s, 3),
        "polls": polls,
        "poll_interval_us_mean": _round((end_s - start_s) / polls * 1e6, 3),
        **report,
    }, grid


def _wrap_s(x_s: float, period_s: float) -> float:
    """``x_s`` moved by whole periods into [-period/2, period/2)."""
    return (x_s + period_s / 2) % period_s - period_s / 2


def _overlap_s(start_s: float, length_s: float, w0_s: float, w_s: float, period_s: float) -> float:
    """How much of [start, start + length) lies in the windows [w0 + k·P, w0 + w + k·P)."""
    end_s = start_s + length_s
    total_s = 0.0
    k = math.floor((start_s - w0_s - w_s) / period_s)
    while w0_s + k * period_s < end_s:
        lo_s = w0_s + k * period_s
        total_s += max(0.0, min(end_s, lo_s + w_s) - max(start_s, lo_s))
        k += 1
    return total_s


def infer_window(
    offsets_s: list[float],
    excess_j: list[float],
    load_s: float,
    period_s: float,
    noise_j: float | None = None,
) -> dict[str, Any]:
    """The part of each counter period the counter integrates, from excess vs. load offset.

    ``excess_j[i]`` is the counter's excess energy for a load of ``load_s`` started
    ``offsets_s[i]`` after a tick; ``noise_j`` the standard error of each figure (None:
    unknown). A counter that observes the window [w0, w0 + W) of each period and scales it
    to the period gives ``a × overlap(load, window) × period / W``: the same ``a × load``
    at every offset when W is the period, else a trapezoid, ``period / W`` times higher
    where the load is inside the window and 0 where it is outside. Over offsets evenly
    spread across the period the mean is ``a × load`` either way.

    When the excesses are within ``FLAT_REL_TOLERANCE`` of their mean or 3 × ``noise_j``
    (RMS), the window is the whole period. Otherwise W and w0 are fitted by least squares
    over a grid of period / ``WINDOW_GRID_STEPS`` (``a`` fitted for each); w0 is counted
    from the tick that starts the period, and the window may run past the next tick
    (end above the period). When the mean excess is not above 3 × ``noise_j`` the load was
    not seen and nothing is inferred.
    """
    n = len(excess_j)
    mean_j = statistics.fmean(excess_j)
    const_rms_j = math.sqrt(statistics.fmean((e - mean_j) ** 2 for e in excess_j))
    floor_j = 3 * noise_j if noise_j else 0.0
    flat_tolerance_j = max(FLAT_REL_TOLERANCE * abs(mean_j), floor_j)
    report: dict[str, Any] = {
        "excess_j_mean": _round(mean_j, 4),
        "excess_peak_to_mean": _round(max(excess_j) / mean_j, 3) if mean_j > 0 else None,
        "constant_fit_rms_j": _round(const_rms_j, 4),
        "flat_tolerance_j": _round(flat_tolerance_j, 4),
        "window_fit_rms_j": None,
        "observed_window": "inconclusive",
        "observed_window_ms": None,
        "observed_window_start_ms": None,
        "observed_window_end_ms": None,
    }
    if n < 2:
        report["reason"] = "one offset cannot show a window"
        return report
    if mean_j <= floor_j or mean_j <= 0:
        report["reason"] = "the load's excess energy is not above the noise"
        return report
    if const_rms_j <= flat_tolerance_j:
        report.update(
            observed_window="whole period",
            observed_window_ms=_round(period_s * 1000, 3),
            observed_window_start_ms=0.0,
            observed_window_end_ms=_round(period_s * 1000, 3),
        )
        return report
    step_s = period_s / WINDOW_GRID_STEPS
    best: tuple[float, float, float] | None = None  # (sum of squares, w0, W)
    for wi in range(1, WINDOW_GRID_STEPS):
        w_s = wi * step_s
        for si in range(WINDOW_GRID_STEPS):
            w0_s = si * step_s
            model = [_overlap_s(o, load_s, w0_s, w_s, period_s) * period_s / w_s for o in offsets_s]
            norm = sum(m * m for m in model)
            if norm == 0:
                continue
            a = max(0.0, sum(e * m for e, m in zip(excess_j, model)) / norm)
            ss = sum((e - a * m) ** 2 for e, m in zip(excess_j, model))
            if best is None or ss < best[0] - 1e-15:
                best = (ss, w0_s, w_s)
    if best is None:  # unreachable: a window always overlaps some offset's load
        report["reason"] = "no window fits"
        return report
    ss, w0_s, w_s = best
    report.update(
        window_fit_rms_j=_round(math.sqrt(ss / n), 4),
        observed_window="part-time",
        observed_window_ms=_round(w_s * 1000, 3),
        observed_window_start_ms=_round(w0_s * 1000, 3),
        observed_window_end_ms=_round((w0_s + w_s) * 1000, 3),
    )
    return report


def probe_counter_window(
    counter: EnergyCounter,
    load: Load,
    device: int,
    period_s: float,
    load_s: float,
    offsets: int,
    repeats: int,
    sleep: Callable[[float], None],
) -> list[ProbeRun]:
    """Run the short load at ``offsets`` offsets across a counter period, ``repeats`` times.

    Each run waits for a counter change (tick t0: the phase is locked afresh every run),
    starts the load at ``t0 + period + offset`` and reads the counter again at the first
    change at least ``probe_span_ticks`` periods after t0 (more if the load ended late),
    so the span holds the whole load, wherever it falls, and its tail. Each repeat also has
    one control run with no load, for the idle power over such spans; the order of the
    runs is shuffled (reproducibly) in each repeat so that a drift of the GPU's idle power
    does not follow the offset. A load that started late (by over a tenth of the offset
    spacing, at least 1 ms) or whose call ran long (over 1.2 × its length + 1 ms and
    1.3 × the median so far: the thread was descheduled) is run again, up to
    ``PROBE_TRIES`` times in all (``ProbeRun.tries``).
    """
    now = counter.now
    timeout_s = max(1.0, 20 * period_s)
    min_ticks = probe_span_ticks(period_s, load_s)
    late_limit_s = max(0.001, 0.1 * period_s / offsets)
    runs: list[ProbeRun] = []

    def run_once(index: int | None, offset_s: float) -> tuple[ProbeRun, float]:
        e0, t0 = counter.wait_for_change(timeout_s)
        start_s = t0 + period_s + offset_s
        pause_s = start_s - now()
        if pause_s > 0:
            sleep(pause_s)
        on_s = now()
        if index is not None:
            load(load_s, device)
        off_s = now()
        ticks = max(min_ticks, math.ceil((off_s - t0 + PROBE_TAIL_S) / period_s))
        last_tick_s = t0 + (ticks - 0.5) * period_s  # half a period before the span's end
        pause_s = last_tick_s - now()
        if pause_s > 0:
            sleep(pause_s)
        while True:
            e1, t1 = counter.wait_for_change(timeout_s)
            if t1 >= last_tick_s:
                break
        run = ProbeRun(
            offset_index=index,
            offset_s=(on_s - t0) % period_s,
            load_s=off_s - on_s if index is not None else 0.0,
            delta_j=(e1 - e0) / 1000.0,
            ticks=round((t1 - t0) / period_s),
        )
        return run, on_s - start_s

    for repeat in range(repeats):
        order: list[int | None] = [None, *range(offsets)]
        random.Random(repeat).shuffle(order)
        for index in order:
            offset_s = 0.0 if index is None else index * period_s / offsets
            for tries in range(1, PROBE_TRIES + 1):
                run, late_s = run_once(index, offset_s)
                lengths_s = [r.load_s for r in runs if r.offset_index is not None]
                long_s = max(
                    1.2 * load_s + 0.001,
                    1.3 * statistics.median(lengths_s) if lengths_s else 0.0,
                )
                disturbed = index is not None and (late_s > late_limit_s or run.load_s > long_s)
                if not disturbed or tries == PROBE_TRIES:
                    run.tries = tries
                    runs.append(run)
                    break
    return runs


def summarize_probe(
    runs: list[ProbeRun], period_s: float, load_s: float, offsets: int
) -> dict[str, Any]:
    """Per offset the mean excess over idle, and the window ``infer_window`` sees in them.

    Idle energy per period is the control runs' delta over their spans' periods; a run's
    excess is its delta minus that over its periods. For the inference each excess is scaled to
    the median load length (a load call that ran long drew more), and the noise is the
    pooled spread of the runs at one offset (controls included) over √repeats.
    """
    controls = [r for r in runs if r.offset_index is None]
    # idle energy per counter period: what is subtracted does not hang on the period's value
    idle_tick_j = sum(r.delta_j for r in controls) / sum(r.ticks for r in controls)
    loaded = [r for r in runs if r.offset_index is not None]
    load_median_s = statistics.median(r.load_s for r in loaded)

    def excess_j(run: ProbeRun) -> float:
        return run.delta_j - idle_tick_j * run.ticks

    def scaled_j(run: ProbeRun) -> float:
        return excess_j(run) * (load_median_s / run.load_s if run.load_s > 0 else 1.0)

    rows: list[dict[str, Any]] = []
    measured_offsets_s: list[float] = []
    means_j: list[float] = []
    squares_j2, dof = 0.0, 0
    groups: list[list[float]] = [[excess_j(r) for r in controls]]
    for index in range(offsets):
        group = [r for r in loaded if r.offset_index == index]
        target_s = index * period_s / offsets
        measured_s = target_s + statistics.fmean(
            _wrap_s(r.offset_s - target_s, period_s) for r in group
        )
        excesses_j = [excess_j(r) for r in group]
        scaled = [scaled_j(r) for r in group]
        groups.append(scaled)
        measured_offsets_s.append(measured_s % period_s)
        means_j.append(statistics.fmean(scaled))
        rows.append(
            {
                "offset_ms": _round(target_s * 1000, 3),
                "measured_offset_ms": _round(measured_s % period_s * 1000, 3),
                "load_ms": _round(statistics.fmean(r.load_s for r in group) * 1000, 3),
                "excess_j": _round(statistics.fmean(excesses_j), 4),
                "excess_j_std": (
                    _round(statistics.stdev(excesses_j), 4) if len(excesses_j) > 1 else None
                ),
                "runs": len(group),
            }
        )
    for values in groups:
        if len(values) > 1:
            mean = statistics.fmean(values)
            squares_j2 += sum((v - mean) ** 2 for v in values)
            dof += len(values) - 1
    noise_j = math.sqrt(squares_j2 / dof) if dof else None
    repeats = max(1, len(controls))
    window = infer_window(
        measured_offsets_s,
        means_j,
        load_median_s,
        period_s,
        noise_j / math.sqrt(repeats) if noise_j is not None else None,
    )
    return {
        "period_ms": _round(period_s * 1000, 4),
        "load_ms_nominal": _round(load_s * 1000, 3),
        "load_ms_median": _round(load_median_s * 1000, 3),
        "repeats": repeats,
        "span_ticks_min": min(r.ticks for r in runs),
        # loads run again because they started late or ran long (thread descheduled)
        "runs_retried": sum(r.tries - 1 for r in runs),
        "idle_w": _round(idle_tick_j / period_s, 4),
        # spread of one run's excess (J), from the runs repeated at each offset
        "run_noise_j": _round(noise_j, 4),
        "offset_spacing_ms": _round(period_s / offsets * 1000, 3),
        "offsets": rows,
        **window,
    }


def instant_power_reader(nvml: Any, handle: Any) -> tuple[Callable[[], float] | None, dict]:
    """A reader of ``NVML_FI_DEV_POWER_INSTANT`` in W, or None and why not.

    Tried once: a pynvml without the field or ``nvmlDeviceGetFieldValues``, an NVMLError,
    or a field value whose own return code is not success all mean "not supported".
    """
    field_id = getattr(nvml, "NVML_FI_DEV_POWER_INSTANT", None)
    get_values = getattr(nvml, "nvmlDeviceGetFieldValues", None)
    if field_id is None or get_values is None:
        return None, {
            "supported": False,
            "reason": "this pynvml has no NVML_FI_DEV_POWER_INSTANT or nvmlDeviceGetFieldValues",
        }
    success = getattr(nvml, "NVML_SUCCESS", 0)
    members = {0: "dVal", 1: "uiVal", 2: "ulVal", 3: "ullVal", 4: "sllVal", 5: "siVal", 6: "usVal"}

    def read_w() -> float:
        (value,) = get_values(handle, [field_id])
        if value.nvmlReturn != success:
            raise nvml.NVMLError(value.nvmlReturn)
        member = members.get(int(value.valueType), "uiVal")
        return float(getattr(value.value, member)) / 1000.0  # the field is in mW

    try:
        first_w = read_w()
    except Exception as exc:  # NVMLError, or a pynvml/driver that cannot do it: unsupported
        return None, {"supported": False, "reason": f"{type(exc).__name__}: {exc}"}
    return read_w, {"supported": True, "field_id": field_id, "first_read_w": _round(first_w, 3)}


def step_response(samples: list[tuple[float, float]], on_s: float, off_s: float) -> dict[str, Any]:
    """How a power reading followed a load switched on at ``on_s`` and off at ``off_s``.

    ``samples`` are (time, W). Idle is the median before ``on_s``, loaded the median over
    the second half of the step; the rise (fall) time is from ``on_s`` (``off_s``) to the
    first reading past 90 % of the step. A reading that rises within
    ``INSTANT_RISE_MAX_S`` is "instantaneous", else "averaged", with the boxcar average
    that would rise that slowly (rise / 0.9); the step must outlast that average.
    """
    before = [w for t, w in samples if t < on_s]
    loaded = [w for t, w in samples if on_s + (off_s - on_s) / 2 <= t < off_s]
    changes_s = [b[0] for a, b in itertools.pairwise(samples) if b[1] != a[1]]
    gaps_s = [b - a for a, b in itertools.pairwise(changes_s)]
    report: dict[str, Any] = {
        "readings": len(samples),
        "update_period_ms_median": (
            _round(statistics.median(gaps_s) * 1000, 3) if len(gaps_s) >= 3 else None
        ),
    }
    if not before or not loaded:
        report["response"] = "too few readings"
        return report
    idle_w, loaded_w = statistics.median(before), statistics.median(loaded)
    step_w = loaded_w - idle_w
    report.update(idle_w=_round(idle_w, 3), loaded_w=_round(loaded_w, 3))
    if step_w < max(5.0, 0.05 * idle_w):
        report["response"] = "no step seen"
        return report
    rise_s = next((t - on_s for t, w in samples if t >= on_s and w >= idle_w + 0.9 * step_w), None)
    fall_s = next(
        (t - off_s for t, w in samples if t >= off_s and w <= idle_w + 0.1 * step_w), None
    )
    instantaneous = rise_s is not None and rise_s <= INSTANT_RISE_MAX_S
    report.update(
        rise_90_ms=_round(rise_s * 1000, 3) if rise_s is not None else None,
        fall_90_ms=_round(fall_s * 1000, 3) if fall_s is not None else None,
        response="instantaneous" if instantaneous else "averaged",
        average_window_ms_estimate=(
            _round(rise_s / 0.9 * 1000, 1) if rise_s is not None and not instantaneous else None
        ),
    )
    return report


def power_step_margins(step_s: float) -> tuple[float, float]:
    """How long to poll the power reading before and after a load step of ``step_s``.

    ``POWER_BASELINE_S`` and ``POWER_AFTER_S``, shortened for a short step: a step only
    shows averages shorter than itself, and those have fallen by 0.75 × step after it.
    """
    return min(POWER_BASELINE_S, step_s / 4), min(POWER_AFTER_S, 0.75 * step_s)


def power_step(
    nvml: Any,
    handle: Any,
    load: Load,
    device: int,
    step_s: float,
    now: Callable[[], float],
    sleep: Callable[[float], None],
    instant: Callable[[], float] | None = None,
    baseline_s: float = POWER_BASELINE_S,
    after_s: float = POWER_AFTER_S,
) -> dict[str, Any]:
    """Poll ``nvmlDeviceGetPowerUsage`` (and ``instant``) around a load step of ``step_s``.

    The load runs on its own thread; this one polls every ``POWER_POLL_S`` from
    ``baseline_s`` before it to ``after_s`` after it. Reads that raise NVMLError are left
    out.
    """
    usage: list[tuple[float, float]] = []
    instant_samples: list[tuple[float, float]] = []
    failures: list[BaseException] = []
    ended_s: list[float] = []
    read_errors = 0

    def poll() -> None:
        nonlocal read_errors
        before_s = now()
        try:
            power_w = nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0
            instant_w = instant() if instant is not None else None
        except nvml.NVMLError:
            read_errors += 1
            return
        at_s = (before_s + now()) / 2
        usage.append((at_s, power_w))
        if instant_w is not None:
            instant_samples.append((at_s, instant_w))

    def run_load() -> None:
        try:
            load(step_s, device)
        except BaseException as exc:  # reported by the polling thread
            failures.append(exc)
        finally:
            ended_s.append(now())

    thread = threading.Thread(target=run_load, daemon=True)
    start_s = now()
    while now() < start_s + baseline_s:
        poll()
        sleep(POWER_POLL_S)
    on_s = now()
    thread.start()
    while thread.is_alive():
        poll()
        sleep(POWER_POLL_S)
    thread.join()
    if failures:
        raise ValidationError(f"the power-step load failed: {failures[0]!r}") from failures[0]
    off_s = ended_s[0]
    while now() < off_s + after_s:
        poll()
        sleep(POWER_POLL_S)
    report: dict[str, Any] = {
        "step_s": _round(off_s - on_s, 4),
        "read_errors": read_errors,
        "power_usage": step_response(usage, on_s, off_s),
    }
    if instant is not None:
        report["instant_field"] = step_response(instant_samples, on_s, off_s)
    return report


def measure_counter_timing(
    opts: Options,
    nvml: Any,
    handle: Any,
    max_bracket_s: float | None,
    load: Load | None,
    probe_load: Load | None,
    now: Callable[[], float],
    sleep: Callable[[float], None],
    log: Callable[[str], None],
) -> dict[str, Any]:
    """The "counter timing" section: the counter's ticks, its observed window, power's response.

    ``max_bracket_s`` None: the GPU has no energy counter (only the power reading is
    timed). ``probe_load`` is the short load placed inside counter periods (``load`` when
    None). A part that fails reports ``{"error": ...}`` and the others still run (the
    section is run last, and must not lose the report of the others).
    """

    def guarded(part: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        try:
            return part()
        except Exception as exc:  # e.g. ValidationError, NVMLError, a CUDA error in a load
            message = str(exc) if isinstance(exc, ValidationError) else f"{exc!r}"
            log(f"validate.py: counter timing: failed: {message}")
            return {"error": message}

    section: dict[str, Any] = {}
    probe_load = probe_load or load
    grid: list[TickGrid | None] = [None]
    counter = EnergyCounter(nvml, handle, now, max_bracket_s) if max_bracket_s is not None else None

    def ticks_part() -> dict[str, Any]:
        assert counter is not None
        log(f"validate.py: counter timing: polling the counter {opts.timing_seconds} s")
        report, grid[0] = observe_ticks(counter, opts.timing_seconds)
        return report

    def window_part() -> dict[str, Any]:
        assert counter is not None and probe_load is not None and grid[0] is not None
        period_s, load_s = grid[0].period_s, opts.timing_load_ms / 1000
        log(
            f"validate.py: counter timing: {load_s * 1000:g} ms loads at {opts.timing_offsets} "
            f"offsets in the {period_s * 1000:.1f} ms period, {opts.timing_repeats} times"
        )
        probe_load(load_s, opts.device)  # first call of this load: allocations, kernel choice
        runs = probe_counter_window(
            counter,
            probe_load,
            opts.device,
            period_s,
            load_s,
            opts.timing_offsets,
            opts.timing_repeats,
            sleep,
        )
        report = summarize_probe(runs, period_s, load_s, opts.timing_offsets)
        report["counter_changes_retimed"] = counter.wide_brackets
        return report

    if counter is None:
        section["energy_counter"] = {"skipped": "this GPU has no NVML total-energy counter"}
        section["window"] = {"skipped": "this GPU has no NVML total-energy counter"}
    else:
        section["energy_counter"] = guarded(ticks_part)
        fitted = grid[0]
        if probe_load is None:
            section["window"] = {"skipped": "cannot generate GPU load"}
        elif fitted is None or not fitted.periodic:
            section["window"] = {
                "skipped": "the counter's changes are not periodic: no phase to place loads by"
            }
        elif opts.timing_load_ms / 1000 > fitted.period_s / 2:
            section["window"] = {
                "skipped": f"a {opts.timing_load_ms:g} ms load is over half the counter period "
                f"({fitted.period_s * 1000:.1f} ms); see --timing-load-ms"
            }
        else:
            section["window"] = guarded(window_part)

    instant, instant_info = instant_power_reader(nvml, handle)
    if load is None:
        section["power"] = {
            "skipped": "cannot generate GPU load",
            "instant_field": instant_info,
        }
    else:
        log(f"validate.py: counter timing: power around a {opts.timing_step_seconds} s load step")

        def power_part() -> dict[str, Any]:
            assert load is not None
            step_s = opts.timing_step_seconds
            baseline_s, after_s = power_step_margins(step_s)
            report = power_step(
                nvml, handle, load, opts.device, step_s, now, sleep, instant, baseline_s, after_s
            )
            report["instant_field"] = {**instant_info, **report.get("instant_field", {})}
            return report

        section["power"] = guarded(power_part)
        section["power"].setdefault("instant_field", instant_info)
    return section


# --- the whole run ------------------------------------------------------------------------


def validate(
    opts: Options,
    *,
    nvml: Any = None,
    load: Load | None | Any = DEFAULT,
    now: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    log: Callable[[str], None] = lambda line: None,
    smi: Any = None,
) -> dict[str, Any]:
    """The report as a dict (``{"gpu": False, ...}`` on a machine with no usable GPU).

    ``smi``: the ``amdsmi`` module for ``--vendor amd`` (default: ``import amdsmi``).

    ``nvml`` is the ``pynvml`` module (default: ``import pynvml``); footprint's runtime
    imports ``pynvml`` by name, so an injected module is put in ``sys.modules`` meanwhile.
    ``load(seconds, device_index)`` keeps the GPU busy for that wall time; ``None`` means no
    load can be generated (only the counter, latencies and idle power are measured).
    """
    if opts.vendor == "amd":
        return _validate_amd(opts, smi, load, now, sleep, log)
    if nvml is None:
        try:
            import pynvml as nvml
        except ImportError as exc:
            return _no_gpu(f"pynvml is not importable (install nvidia-ml-py): {exc}", log)
    with _as_pynvml(nvml):
        sensor, reason = open_nvml(nvml=nvml)
        if sensor is None:
            return _no_gpu(reason, log)
        try:
            return _validate_gpu(opts, sensor, nvml, load, now, sleep, log)
        finally:
            footprint.shutdown()
            footprint.reset_configuration()
            sensor.close()


def _validate_gpu(
    opts: Options,
    sensor: NvmlSensor,
    nvml: Any,
    load: Any,
    now: Callable[[], float],
    sleep: Callable[[float], None],
    log: Callable[[str], None],
) -> dict[str, Any]:
    by_index = {d.index: d for d in sensor.devices}
    device = by_index.get(opts.device)
    if device is None:
        raise ValidationError(
            f"no measurable GPU with CUDA index {opts.device}; measurable: "
            + ", ".join(f"{d.index} ({d.uuid})" for d in sensor.devices)
        )
    report: dict[str, Any] = {
        "gpu": True,
        "gpu_name": device.name,
        "gpu_uuid": device.uuid,
        "device_index": device.index,
        "driver_version": sensor.driver_version,
        "energy_method": device.energy_method,
        "footprint_version": footprint.__version__,
        "settings": asdict(opts),
    }
    # A MIG device has no counter of its own: its GPU's is read.
    handle = nvml.nvmlDeviceGetHandleByUUID(device.parent_uuid or device.uuid)
    report["nvml_power_call_us_median"] = median_call_us(
        lambda: nvml.nvmlDeviceGetPowerUsage(handle), nvml
    )
    if any(d.parent_uuid for d in sensor.devices):
        mig_load = _resolve_load(load)[0] if device.parent_uuid else None
        log(f"validate.py: MIG check over {opts.mig_seconds} s")
        report["mig"] = vendors.mig_check(
            sensor, nvml, opts.mig_seconds, sleep, mig_load, device.index
        )
    if device.parent_uuid is not None:
        report["reason"] = (
            f"CUDA device {device.index} is a MIG device ({device.profile} of "
            f"{device.parent_uuid}); footprint gives it a static share of its GPU's counter, "
            "checked in 'mig'. The per-query comparisons need a whole GPU."
        )
        return report
    if device.energy_method != "counter":
        report["reason"] = (
            "this GPU has no NVML total-energy counter (footprint integrates polled power "
            "here); the direct counter comparison cannot be made"
        )
        log(f"validate.py: {report['reason']}")
        if not opts.skip_timing:  # how the power reading it integrates follows a step
            load, load_desc = _resolve_load(load)
            report["load"] = {"available": load is not None, "description": load_desc}
            report["counter_timing"] = measure_counter_timing(
                opts, nvml, handle, None, load, None, now, sleep, log
            )
        return report

    counter = EnergyCounter(nvml, handle, now)
    log(f"validate.py: {device.name} {device.uuid}; observing the counter {opts.observe_seconds} s")
    report.update(observe_counter(counter, opts.observe_seconds))
    # a change is timed to within a few polls; slower NVML calls widen what is accepted
    counter.max_bracket_s = max(0.002, 20e-6 * report["nvml_energy_call_us_median"])
    period_ms = report["counter_update_period_ms_observed"]
    period_s = period_ms / 1000.0 if period_ms else 0.1
    tick_timeout_s = max(1.0, 20 * period_s)
    log(f"validate.py: about {opts.estimated_seconds(period_s):.0f} s to go")

    default_load = load is DEFAULT
    load, load_desc = _resolve_load(load)
    report["load"] = {"available": load is not None, "description": load_desc}
    if load is None:
        log(f"validate.py: cannot generate GPU load ({load_desc}); measuring idle only")
    elif opts.warmup_seconds > 0:
        load(opts.warmup_seconds, opts.device)

    sleep(opts.gap_seconds)
    report["idle_w"] = _round(measure_idle(counter, opts.idle_seconds, sleep, tick_timeout_s), 4)
    log(f"validate.py: idle {report['idle_w']} W")
    if load is None:
        skipped = {"skipped": f"cannot generate GPU load: {load_desc}"}
        report["serial"] = report["concurrent"] = skipped
        report["counter_changes_retimed"] = counter.wide_brackets
    else:
        _run_phases(report, opts, counter, load, device.uuid, tick_timeout_s, sleep, log)
    if opts.skip_timing:
        report["counter_timing"] = {"skipped": "--skip-timing"}
    else:
        probe_load = torch_matmul_load(PROBE_MATMUL_SIZE)[0] if default_load and load else None
        report["counter_timing"] = measure_counter_timing(
            opts, nvml, handle, counter.max_bracket_s, load, probe_load, now, sleep, log
        )
    return report


def _resolve_load(load: Any) -> tuple[Load | None, str]:
    """The load to use and its description (``DEFAULT``: the PyTorch matmul load)."""
    if load is DEFAULT:
        return torch_matmul_load()
    return load, (
        "no load available" if load is None else getattr(load, "__doc__", None) or repr(load)
    )


def _run_phases(
    report: dict[str, Any],
    opts: Options,
    counter: EnergyCounter,
    load: Load,
    uuid: str,
    tick_timeout_s: float,
    sleep: Callable[[float], None],
    log: Callable[[str], None],
) -> None:
    """The serial and concurrent phases, into ``report``."""
    with contextlib.ExitStack() as stack:
        if opts.db_dir:
            db_dir = Path(opts.db_dir)
            db_dir.mkdir(parents=True, exist_ok=True)
        else:
            db_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fp-validate-")))
        ctx = Context(
            opts, counter, load, uuid, report["idle_w"], tick_timeout_s, db_dir, sleep, log
        )
        log(f"validate.py: {opts.serial_queries} loads of {opts.seconds_per_load} s, one at a time")
        report["serial"] = run_serial(ctx)
        log(f"validate.py: {opts.concurrent_loads} loads of {opts.seconds_per_load} s at once")
        report["concurrent"] = run_concurrent(ctx)
    # changes whose time was not trusted (thread descheduled), and the next one used
    report["counter_changes_retimed"] = counter.wide_brackets


def _validate_amd(
    opts: Options,
    smi: Any,
    load: Any,
    now: Callable[[], float],
    sleep: Callable[[float], None],
    log: Callable[[str], None],
) -> dict[str, Any]:
    """``--vendor amd``: footprint's amdsmi sensor against the accumulator read directly."""
    if smi is None:
        from footprint.sensors.amd import _import_amdsmi

        try:
            smi = _import_amdsmi()
        except ImportError as exc:
            log(f"validate.py: no AMD GPU to validate on ({exc}); nothing to measure")
            return {"gpu": False, "vendor": "amd", "reason": str(exc)}
    resolved, description = _resolve_load(load)
    previous = sys.modules.get("amdsmi")
    sys.modules["amdsmi"] = smi  # footprint's runtime imports amdsmi by name
    try:
        return vendors.validate_amd(opts, smi, resolved, description, now, sleep, log)
    except RuntimeError as exc:
        raise ValidationError(str(exc)) from exc
    finally:
        if previous is None:
            sys.modules.pop("amdsmi", None)
        else:
            sys.modules["amdsmi"] = previous


def _no_gpu(reason: str, log: Callable[[str], None]) -> dict[str, Any]:
    log(f"validate.py: no NVIDIA GPU to validate on ({reason}); nothing to measure")
    return {"gpu": False, "reason": reason}


@contextlib.contextmanager
def _as_pynvml(nvml: Any) -> Iterator[None]:
    """Make ``import pynvml`` give ``nvml`` while the block runs (footprint imports it)."""
    missing = object()
    previous = sys.modules.get("pynvml", missing)
    if previous is nvml:
        yield
        return
    sys.modules["pynvml"] = nvml
    try:
        yield
    finally:
        if previous is missing:
            sys.modules.pop("pynvml", None)
        else:
            sys.modules["pynvml"] = previous  # type: ignore[assignment]


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(float(value), digits) + 0.0  # no -0.0


def main(
    argv: list[str] | None = None,
    *,
    nvml: Any = None,
    load: Load | None | Any = DEFAULT,
    now: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    smi: Any = None,
) -> int:
    """Run, print one JSON object; 0 when measured or when there is no GPU, 1 on failure."""
    opts = parse_args(argv)
    out = stdout or sys.stdout
    err = stderr or sys.stderr

    def log(line: str) -> None:
        print(line, file=err, flush=True)

    started_s = now()
    code = 0
    try:
        report = validate(opts, nvml=nvml, load=load, now=now, sleep=sleep, log=log, smi=smi)
    except Exception as exc:  # reported as JSON too, so a harness can read why
        message = str(exc) if isinstance(exc, ValidationError) else f"{type(exc).__name__}: {exc}"
        log(f"validate.py: failed: {message}")
        report, code = {"gpu": True, "error": message}, 1
    if report.get("gpu"):
        report["total_seconds"] = _round(now() - started_s, 3)
    text = json.dumps(report, indent=2)
    print(text, file=out, flush=True)
    if opts.json_out:
        Path(opts.json_out).write_text(text + "\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
