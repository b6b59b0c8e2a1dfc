"""Check footprint's NVML attribution against direct NVML counter reads on a real GPU.

    python tests/gpu/validate.py [--seconds-per-load S] [--json-out FILE] [--device I]

Runs in about two minutes with the defaults (well under five), on one GPU:

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
   over the same run read directly.

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
"""

from __future__ import annotations

import argparse
import contextlib
import json
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

    def estimated_seconds(self, period_s: float = 0.1) -> float:
        """Rough wall time of a run (CUDA start-up not included)."""
        tick = 2 * period_s
        serial = self.gap_seconds + self.serial_queries * (
            self.seconds_per_load + self.gap_seconds + tick
        )
        concurrent = 2 * self.gap_seconds + self.seconds_per_load + tick
        return (
            self.observe_seconds + self.warmup_seconds + self.gap_seconds + self.idle_seconds
            + tick + serial + concurrent
        )  # fmt: skip


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
            sum(r["energy_j"] or 0.0 for r in rows), idle_j, measured_j,
            (end_mj - phase.start_mj) / 1000.0,
        ),
    }  # fmt: skip


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


# --- the whole run ------------------------------------------------------------------------


def validate(
    opts: Options,
    *,
    nvml: Any = None,
    load: Load | None | Any = DEFAULT,
    now: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    log: Callable[[str], None] = lambda line: None,
) -> dict[str, Any]:
    """The report as a dict (``{"gpu": False, ...}`` on a machine with no usable GPU).

    ``nvml`` is the ``pynvml`` module (default: ``import pynvml``); footprint's runtime
    imports ``pynvml`` by name, so an injected module is put in ``sys.modules`` meanwhile.
    ``load(seconds, device_index)`` keeps the GPU busy for that wall time; ``None`` means no
    load can be generated (only the counter, latencies and idle power are measured).
    """
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
    handle = nvml.nvmlDeviceGetHandleByUUID(device.uuid)
    report["nvml_power_call_us_median"] = median_call_us(
        lambda: nvml.nvmlDeviceGetPowerUsage(handle), nvml
    )
    if device.energy_method != "counter":
        report["reason"] = (
            "this GPU has no NVML total-energy counter (footprint integrates polled power "
            "here); the direct counter comparison cannot be made"
        )
        log(f"validate.py: {report['reason']}")
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

    if load is DEFAULT:
        load, load_desc = torch_matmul_load()
    else:
        load_desc = (
            "no load available" if load is None else getattr(load, "__doc__", None) or repr(load)
        )
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
        return report

    with contextlib.ExitStack() as stack:
        if opts.db_dir:
            db_dir = Path(opts.db_dir)
            db_dir.mkdir(parents=True, exist_ok=True)
        else:
            db_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fp-validate-")))
        ctx = Context(opts, counter, load, device.uuid, report["idle_w"], tick_timeout_s, db_dir,
                      sleep, log)  # fmt: skip
        log(f"validate.py: {opts.serial_queries} loads of {opts.seconds_per_load} s, one at a time")
        report["serial"] = run_serial(ctx)
        log(f"validate.py: {opts.concurrent_loads} loads of {opts.seconds_per_load} s at once")
        report["concurrent"] = run_concurrent(ctx)
    # changes whose time was not trusted (thread descheduled), and the next one used
    report["counter_changes_retimed"] = counter.wide_brackets
    return report


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
        report = validate(opts, nvml=nvml, load=load, now=now, sleep=sleep, log=log)
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
