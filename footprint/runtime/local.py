"""The per-process runtime: span queues, samplers, resolvers and the writer thread.

The hot path (``footprint.tracking``) only touches ``inflight`` (a dict insert at the
start of a call) and ``ended`` (a deque append at its end). Everything else happens on
the worker thread: every ``flush_interval_s`` it takes the in-flight snapshot, drains the
ended spans and the samples, resolves what it can, and writes the records.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from footprint._clock import SYSTEM_CLOCK, Clock
from footprint._forksafe import no_fork
from footprint._sanitize import Cleaner
from footprint.attribution import DeviceResolver, EnergyPiece, SpanShare
from footprint.config import Settings
from footprint.runtime.presence import claim_gpus
from footprint.runtime.spans import BAD_VALUES, EndedSpan, SpanQueue
from footprint.sampling import Sampler
from footprint.sensors import ENERGY_MISSING, ENERGY_POWER, Sensor, open_cpu_sensor, open_gpu_sensor
from footprint.sensors.base import NullSensor
from footprint.storage.columns import PRICING_COLUMNS
from footprint.storage.journal import CallJournal
from footprint.storage.writer import WriteFailed, Writer

log = logging.getLogger("footprint")

# A span that had not reached the in-flight dict or the ended queue when the worker looked
# (a thread paused between two bytecodes) is still seen if it began this long before.
ANNOUNCE_MARGIN_S = 0.5

# A GPU with no new sample for this long (and at least this many sampling periods) has
# stopped answering: its spans are released as partial instead of waiting for it.
STALE_MIN_S = 2.0
STALE_AFTER_PERIODS = 20

# The daemon's simulated GPUs publish each tick this long after it (``lag_s``): clients
# send their calls' starts every 20 ms, but a busy client or daemon can take far longer
# (with 0.25 s, 5-9 % of the energy landed in later calls in the bench), and a load
# registered for a tick already read is carried into later ticks instead of its own.
DAEMON_SIMULATED_LAG_S = 1.0

# At start, pricing and the store open once every GPU counter has been seen to change,
# or after this long.
ACQUIRE_WAIT_S = 0.25

# The writer thread folds new rows into the hourly rollups every this many flushes.
ROLLUP_EVERY_FLUSHES = 30


def _drives_simulator(sensor_spec: str) -> bool:
    """Whether the GPUs are simulated and loaded by the tracked calls (workload=spans)."""
    name, _, options = sensor_spec.partition(":")
    if name != "simulated":
        return False
    from footprint.sensors.simulated import SimulatedGpuSpec

    return SimulatedGpuSpec.parse(options).workload == "spans"


def _plain_sqlite_path(db: str) -> str | None:
    """The SQLite file of a plain path or a simple ``sqlite:///`` URL, without importing
    the store's modules; None for anything else."""
    if "://" not in db:
        return str(Path(db).expanduser().resolve())
    if db.startswith("sqlite:///") and "?" not in db and db != "sqlite:///:memory:":
        return db.removeprefix("sqlite:///")
    return None


@dataclass(frozen=True)
class _DeviceSet:
    """What the records of calls measured on one set of device slots share."""

    gpu_slots: tuple[int, ...]
    cpu_slots: tuple[int, ...]
    gpus_json: str  # JSON list of the GPUs' UUIDs
    gpu_source: str  # energy_source when fully measured


class _Pending:
    """A span being resolved: what it is, and what each of its devices gave it.

    ``span`` is None while the call runs; ``abandoned`` once it ran past
    ``max_span_age_s`` (its energy then goes to the lost bucket, never to a record).
    """

    __slots__ = ("span", "start_s", "devices", "shares", "abandoned")

    def __init__(self, start_s: float, devices: tuple[int, ...]) -> None:
        self.span: EndedSpan | None = None
        self.start_s = start_s
        self.devices = devices
        self.shares: dict[int, SpanShare] = {}
        self.abandoned = False


class Runtime(SpanQueue):
    """Owns the sensors, samplers, resolvers and store of this process."""

    def __init__(
        self,
        settings: Settings,
        clock: Clock = SYSTEM_CLOCK,
        *,
        open_now: bool = True,
        presence_role: str = "process",
    ) -> None:
        """Queues and counters now; sensors, samplers and pricing now too, unless
        ``open_now`` is False: then the writer thread opens them (``start``), so the first
        tracked call does not wait for NVML or zone detection."""
        self.settings = settings
        self.presence_role = presence_role  # "daemon" for the host's daemon
        self.gpu_claims: Any = None  # this process's claim on measuring its GPUs
        super().__init__(clock, settings.max_pending_spans)
        self.wall_offset_s = clock.wall_s() - clock.monotonic_s()
        # Observers (the daemon's metrics): told of each batch of records and idle rows
        # handed to the writer, and of each GPU samples drained; an observer that raises
        # is warned about once and never stops the records.
        self.on_records: list[Callable[[list[dict], list[dict]], None]] = []
        self.on_gpu_samples: list[Callable[[list], None]] = []
        self._dropped_spans_reported = 0
        self._flushes = 0
        self.host = socket.gethostname()
        self.pid = os.getpid()

        # Simulated GPUs driven by the tracked calls (workload=spans): the hot path tells
        # the simulator when each call starts and ends on which GPUs. Calls made before
        # the sensor is open are replayed to it once it is.
        self.drives_simulator = _drives_simulator(settings.sensor)
        if self.drives_simulator:  # bound here: the hot path of real GPUs has no test for it
            self.begin = self._begin_loading  # type: ignore[method-assign]
            self.end = self._end_loading  # type: ignore[method-assign]
        self._early_loads: list[tuple[bool, tuple | None, float]] | None = []
        self._load_lock = threading.Lock()
        self._load_slots: dict[tuple | None, tuple[int, ...]] = {}
        self.unknown_gpu_spans = 0
        self._pending: dict[int, _Pending] = {}
        self._device_sets: dict[tuple[int, ...], _DeviceSet] = {}
        self._devices_of: dict[tuple | None, tuple[int, ...]] = {}
        self._clean = Cleaner(self._count_bad)
        self._unpriced = dict.fromkeys(PRICING_COLUMNS)
        # Per (device UUID, minute): [idle J, measured J, lost J, seconds measured].
        self._idle_rows: dict[tuple[str, datetime], list[float]] = {}
        self._abandoned: dict[int, None] = {}  # ids closed as abandoned, still running
        self._to_abandon: deque[int] = deque()  # asked from outside (``abandon``)
        self.abandoned_spans = 0
        self.running_at_exit = 0
        self.pending_overflows = 0
        self._cycle_lock = threading.RLock()
        self._ready = threading.Event()  # sensors, samplers and pricing are open
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._flush_requested = threading.Event()
        self._flushed = threading.Event()
        self._exit_flush_started = False
        self.unsaved_at_exit = 0
        self._unsaved_hung = 0  # not stored at exit because the last write hung
        self._worker: threading.Thread | None = None
        self.pricer: Any = None
        self.writer = Writer(self._open_store, self.host, self.pid, db=settings.db)
        # Told the ids of ended spans once their fate is durable (a record written, or a
        # loss counted): the daemon acknowledges its clients' ends with it. Writer thread.
        self.on_settled: Callable[[list[int]], None] | None = None
        self._settled: list[int] = []
        # Ended and settled calls counted in a file a killed process leaves behind
        # (``footprint.storage.journal``): the hot path adds its ends, ``_settle`` the rest.
        self.journal = CallJournal()
        if open_now:
            self._open()

    # -- setup ---------------------------------------------------------------------
    def _open(self) -> None:
        """Open the sensors, samplers and resolvers, then pricing and the store's modules."""
        self._open_sensors()
        self._open_services()

    def _open_sensors(self) -> None:
        """Sensors (first samples at once), samplers and resolvers: measuring first.

        Nothing slower (pricing, SQLAlchemy, GPU claims) runs before the samplers do, so
        the first calls of a process are measured from a sample taken as they run.
        """
        settings, clock = self.settings, self.clock
        sensor_spec = settings.sensor
        if self.presence_role == "daemon" and self.drives_simulator and "lag_s=" not in sensor_spec:
            # Spans reach the daemon after they start: simulated ticks are published late
            # enough for their loads to be known (the sampler stamps them back).
            sensor_spec += ("," if ":" in sensor_spec else ":") + f"lag_s={DAEMON_SIMULATED_LAG_S}"
        with no_fork():  # imports a sensor's module on first use
            self.gpu_sensor, reason = self._open_gpu(sensor_spec)
            self._no_gpu_reason = reason
            self.cpu_sensor: Sensor | None = None
            if settings.cpu:
                self.cpu_sensor, _ = open_cpu_sensor()
        self.gpu_sampler = Sampler(self.gpu_sensor, settings.sampling_period_s, clock)
        self.cpu_sampler = (
            Sampler(self.cpu_sensor, settings.sampling_period_s, clock) if self.cpu_sensor else None
        )
        self.gpu_devices = self.gpu_sensor.devices
        self.cpu_devices = self.cpu_sensor.devices if self.cpu_sensor else []
        self._uuid_to_index = {d.uuid: slot for slot, d in enumerate(self.gpu_devices)}
        self._cuda_to_slot = {d.index: slot for slot, d in enumerate(self.gpu_devices)}
        n_gpu = len(self.gpu_devices)
        window_s = self._counter_window_s()
        self.resolvers = [
            DeviceResolver(
                extrapolate_start=True,
                max_power_w=device.max_power_w,
                counter_period_s=self.gpu_sensor.counter_update_period_s if slot < n_gpu else None,
                counter_window_s=window_s if slot < n_gpu else None,
            )
            for slot, device in enumerate(self.gpu_devices + self.cpu_devices)
        ]
        self._all_gpus = tuple(range(n_gpu))
        self._cpu_slots = tuple(range(n_gpu, n_gpu + len(self.cpu_devices)))
        self._started_s = self.now()
        with self._load_lock:
            early, self._early_loads = self._early_loads or [], None
            for begins, gpus, t_s in early:  # load steps are absolute: order is free
                (self.begin_simulated_load if begins else self.end_simulated_load)(gpus, t_s)

    def _counter_window_s(self) -> float | None:
        """How much of each counter period the GPUs' counter observes (None: all of it):
        the ``counter_window_s`` setting, else what the sensor says."""
        if self.settings.counter_window_s is not None:
            return self.settings.counter_window_s
        return self.gpu_sensor.counter_window_s

    def _open_services(self) -> None:
        """GPU claims, pricing and the store's modules: after the samplers started."""
        if self._no_gpu_reason and self.settings.sensor.partition(":")[0] != "none":
            self.warn_once(
                "no-gpu", f"footprint: no GPU energy will be recorded: {self._no_gpu_reason}"
            )
        if self.gpu_claims is not None:  # _open runs twice after a failed first try
            self.gpu_claims.release()
        self.gpu_claims = claim_gpus(
            [d.uuid for d in self.gpu_devices], self.warn_once, role=self.presence_role
        )
        with no_fork():
            self._open_pricer()
            # The store's modules (SQLAlchemy) now, off the caller's thread: a process
            # forked later inherits them instead of importing them at its exit.
            import footprint.storage.store  # noqa: F401
        self._open_journal()
        self._ready.set()

    def _open_journal(self, early: bool = False) -> None:
        """Map the call journal beside a SQLite database (under the runtime directory
        for a server database), once (a worker process's
        runtime only: the daemon's clients resend what it did not acknowledge).
        ``early``: before the store's modules are imported, for a plain file path."""
        if self.presence_role != "process" or self.journal.path is not None:
            return
        path = _plain_sqlite_path(self.settings.db) if early else self.writer.journal_base()
        if path is not None and os.path.isdir(os.path.dirname(path)):
            self.journal.open(path, self.host)

    def _open_gpu(self, spec: str) -> tuple[Sensor, str]:
        try:
            return open_gpu_sensor(spec, self.clock)
        except Exception as exc:
            return NullSensor(str(exc)), f"{type(exc).__name__}: {exc}"

    def _open_pricer(self) -> None:
        from footprint.pricing.pricer import Pricer

        gpu_model = self.gpu_devices[0].name if self.gpu_devices else None
        try:
            self.pricer = Pricer(self.settings, gpu_model)
        except Exception as exc:
            self.warn_once("pricing", f"footprint: records will carry no CO2e or cost: {exc}")

    def _open_store(self) -> Any:
        with no_fork():  # imports SQLAlchemy and a driver on the writer thread
            from footprint.storage.store import Store

            return Store(self.settings.db, busy_timeout_s=self.settings.db_timeout_s)

    @property
    def store(self) -> Any:
        """The open store (opened now if needed), or None if it cannot be opened."""
        try:
            return self.writer.open_store()
        except Exception:
            return None

    def start(self) -> None:
        """First samples now (so the first span is measured from its start), then threads.

        Exit, signals and fork are the business of ``footprint.runtime.lifecycle``, once per
        process: a runtime never installs process-wide hooks itself.
        """
        self._worker = threading.Thread(target=self._run, name="footprint-writer", daemon=True)
        self._worker.start()

    def _run(self) -> None:
        if not self._ready.is_set():
            try:
                self._open_sensors()
                self._start_samplers()
                # The first counter change pins each counter's phase; pricing's and the
                # store's imports hold the GIL for tenths of a second, so they wait
                # (bounded) until then. Records are written a flush interval later anyway.
                self.gpu_sampler.wait_acquired(ACQUIRE_WAIT_S)
                # Before pricing and the store's imports (tenths of a second): a process
                # killed meanwhile leaves its count too. Not before the first samples.
                self._open_journal(early=True)
                self._open_services()
            except Exception as exc:  # calls are still recorded, with no energy
                self.warn_once("open", f"footprint: no energy will be recorded: {exc!r}")
                self._stop_samplers()
                self.settings = replace(self.settings, sensor="none", cpu=False)
                self._open()
                self._start_samplers()
        else:
            self._start_samplers()
        self._loop()

    def _start_samplers(self) -> None:
        self.gpu_sampler.start()
        if self.cpu_sampler:
            self.cpu_sampler.start()

    def _stop_samplers(self) -> None:
        for sampler in (getattr(self, "gpu_sampler", None), getattr(self, "cpu_sampler", None)):
            if sampler is not None:
                with contextlib.suppress(Exception):
                    sampler.stop(final_sample=False)

    def _loop(self) -> None:
        """A cycle every ``flush_interval_s``, measured start to start (a long cycle does
        not push the next one back: under heavy traffic records stay one interval late),
        or at once when a flush is requested."""
        interval_s = self.settings.flush_interval_s
        next_s = time.monotonic() + interval_s
        while not self._stop.is_set():
            self._wake.wait(max(0.0, next_s - time.monotonic()))
            self._wake.clear()
            if self._stop.is_set():
                return
            requested = self._flush_requested.is_set()
            self._flush_requested.clear()
            next_s = max(next_s + interval_s, time.monotonic()) if not requested else next_s
            try:
                if requested:
                    self.cycle(until_s=float("inf"), drain_all=True)
                else:
                    self.cycle(until_s=self.now() - ANNOUNCE_MARGIN_S)
            except Exception as exc:  # never let the writer die silently
                self.warn_once("cycle", f"footprint: internal error while resolving: {exc!r}")
            finally:
                if requested:
                    self._flushed.set()

    def wait_until_measuring(self, timeout_s: float) -> bool:
        """Wait (bounded) until the sensors are open and every GPU has its first sample;
        True if so. Calls need not wait for this: it is for scripts that check the books."""
        deadline_s = time.monotonic() + timeout_s
        if not self._ready.wait(timeout_s):
            return False
        while any(t is None for t in self.gpu_sampler.latest_sample_times_s()):
            if time.monotonic() >= deadline_s:
                return False
            time.sleep(0.002)
        return True

    def request_flush(self) -> None:
        """Ask the writer thread to write everything that has ended, now (no waiting)."""
        self._flushed.clear()
        self._flush_requested.set()
        self._wake.set()

    def flush_before_exit(self, deadline_s: float) -> bool:
        """The exit flush, now, within ``deadline_s``: True if everything ended was
        stored or counted. For a signal whose default action ends the process: the calls
        that just ended wait for the counters' next tick as at a normal exit. A second
        call while the first waits (a second signal) returns at once."""
        if self._exit_flush_started:
            return False
        self._exit_flush_started = True
        self.shutdown(deadline_s)
        return self.journal.unsettled <= 0

    # -- simulated GPUs driven by the calls ---------------------------------------
    def _begin_loading(self, gpus: tuple | None) -> tuple[int, float]:
        """``begin``, and the simulated GPUs of the call take its load from its start."""
        span_id, start_s = SpanQueue.begin(self, gpus)
        self.begin_simulated_load(gpus, start_s)
        return span_id, start_s

    def _end_loading(self, *span: Any) -> float:
        """``end`` (same arguments), and the call's load leaves its simulated GPUs."""
        end_s = SpanQueue.end(self, *span)
        self.end_simulated_load(span[-1], end_s)  # the last argument: its gpus
        return end_s

    def begin_simulated_load(self, gpus: tuple | None, t_s: float) -> None:
        """A call started: load the simulated GPUs it runs on (``workload=spans``)."""
        if self._early_loads is not None:
            with self._load_lock:
                if self._early_loads is not None:  # the sensor is not open yet
                    self._early_loads.append((True, gpus, t_s))
                    return
        slots = self._load_slots.get(gpus)
        if slots is None:
            slots = self._load_slots[gpus] = self._lookup_slots(gpus)[0]
        self.gpu_sensor.begin_load(slots, t_s)  # type: ignore[attr-defined]

    def end_simulated_load(self, gpus: tuple | None, t_s: float) -> None:
        if self._early_loads is not None:
            with self._load_lock:
                if self._early_loads is not None:
                    self._early_loads.append((False, gpus, t_s))
                    return
        self.gpu_sensor.end_load(self._load_slots[gpus], t_s)  # type: ignore[attr-defined]

    # -- resolving -----------------------------------------------------------------
    def _lookup_slots(self, gpus: tuple | None) -> tuple[tuple[int, ...], list]:
        """Device slots for a call's ``gpus`` (indices or UUIDs), and the unknown ids."""
        if gpus is None:
            return self._all_gpus, []
        slots, unknown = [], []
        for gpu in gpus:
            slot = (self._uuid_to_index if isinstance(gpu, str) else self._cuda_to_slot).get(gpu)
            if slot is None:
                unknown.append(gpu)
            else:
                slots.append(slot)
        return tuple(dict.fromkeys(slots)), unknown

    def _gpu_slots(self, gpus: tuple | None) -> tuple[tuple[int, ...], bool]:
        """The GPU slots of a call, and whether its ids were all known (warned if not)."""
        slots, unknown = self._lookup_slots(gpus)
        if (unknown or not slots) and gpus is not None and self.gpu_devices:
            self.unknown_gpu_spans += 1
            known = ", ".join(f"{d.index} ({d.uuid})" for d in self.gpu_devices)
            what = f"unknown GPU ids {unknown!r}" if unknown else "an empty gpus= list"
            self.warn_once(
                "unknown-gpus",
                f"footprint: a call named {what}; its energy is attributed to the GPUs "
                f"found among its ids only (none: no GPU energy). Known GPUs: {known}. "
                "Counted in stats()['unknown_gpu_spans'].",
            )
            return slots, False
        return slots, True

    def _announce(self, span_id: int, start_s: float, gpus: tuple | None) -> _Pending:
        pending = self._pending.get(span_id)
        if pending is None:
            devices = self._devices_of.get(gpus)
            if devices is None:
                slots, valid = self._gpu_slots(gpus)
                devices = slots + self._cpu_slots
                if valid:  # invalid ids are warned about and counted for every call
                    self._devices_of[gpus] = devices
            pending = self._pending[span_id] = _Pending(start_s, devices)
            for slot in devices:
                self.resolvers[slot].begin(span_id, start_s)
        return pending

    def _notify(self, observers: list[Callable[..., None]], *args: Any) -> None:
        for observer in observers:
            try:
                observer(*args)
            except Exception as exc:
                self.warn_once(f"observer:{observer!r}", f"footprint: an observer failed: {exc!r}")

    def cycle(self, until_s: float, drain_all: bool = False, final: bool = False) -> int:
        """Resolve intervals ending by ``until_s`` and write what is complete.

        Returns the number of records handed to the store.
        """
        with self._cycle_lock:
            inflight = dict(self.inflight)  # snapshot first, then drain: see module doc
            ended = []
            while self.ended:
                ended.append(self.ended.popleft())
            gpu_samples = self.gpu_sampler.drain()
            self._notify(self.on_gpu_samples, gpu_samples)
            samples = gpu_samples + (self.cpu_sampler.drain() if self.cpu_sampler else [])
            uncertainty_s = self.gpu_sampler.timing_uncertainty_s() + (
                self.cpu_sampler.timing_uncertainty_s() if self.cpu_sampler else []
            )
            periods_s = self.gpu_sampler.counter_periods_s() + (
                self.cpu_sampler.counter_periods_s() if self.cpu_sampler else []
            )
            for slot, resolver in enumerate(self.resolvers):
                resolver.add_samples(samples[slot])
                resolver.timing_uncertainty_s = uncertainty_s[slot]
                resolver.counter_period_s = periods_s[slot] or resolver.counter_period_s
            now_s = self.now()
            abandon_before_s = now_s - self.settings.max_span_age_s
            complete: list[tuple[int, _Pending]] = []
            to_abandon = set()
            while self._to_abandon:
                to_abandon.add(self._to_abandon.popleft())
            for span_id, (start_s, gpus) in inflight.items():
                pending = self._announce(span_id, start_s, gpus)
                if (start_s < abandon_before_s or span_id in to_abandon) and not pending.abandoned:
                    self._abandon(span_id, pending, now_s)
            for span in ended:
                if self._abandoned and span.span_id in self._abandoned:
                    del self._abandoned[span.span_id]  # ended at last: already counted
                    self._settled.append(span.span_id)
                    continue
                pending = self._announce(span.span_id, span.start_s, span.gpus)
                pending.span = span
                if not pending.devices:  # nothing measures it: a record right away
                    complete.append((span.span_id, self._pending.pop(span.span_id)))
                for slot in pending.devices:
                    self.resolvers[slot].end(span.span_id, span.end_s)
            stale = self._stale_slots(until_s)
            for slot, resolver in enumerate(self.resolvers):
                done = resolver.resolve(until_s, drain_all=drain_all, final=final)
                if slot in stale:
                    done.update(resolver.expire(until_s))
                for span_id, share in done.items():
                    pending = self._pending.get(span_id)
                    if pending is None:
                        continue
                    pending.shares[slot] = share
                    if len(pending.shares) == len(pending.devices):
                        del self._pending[span_id]
                        if pending.span is not None and not pending.abandoned:
                            complete.append((span_id, pending))
                        else:  # running at exit, or abandoned: never a record
                            self._lose(pending)
                self._collect_idle(slot, resolver)
            if final:
                for pending in self._pending.values():  # devices that never answered
                    self._lose(pending)
                self._pending.clear()
            complete.sort(key=lambda item: item[0])  # records in the order calls started
            self._settled.extend(span_id for span_id, _ in complete)
            records = []
            for _, pending in complete:
                try:
                    records.append(self._record(pending))
                except Exception as exc:  # one bad span never takes the others with it
                    self.writer.count_loss("record_failed", 1)
                    self.bad_values["record_failed"] = self.bad_values.get("record_failed", 0) + 1
                    self.warn_once("record", f"footprint: could not build a record: {exc!r}")
            self._write(records)
            return len(records)

    def abandon(self, span_id: int) -> None:
        """Close a running span as abandoned at the next cycle (its caller is gone: the
        daemon's client process died). Its energy goes to the lost bucket, counted."""
        self._to_abandon.append(span_id)

    def _abandon(self, span_id: int, pending: _Pending, end_s: float) -> None:
        """Close a call that ran past ``max_span_age_s`` (a generator never closed, a
        leaked ``Query``): its energy so far goes to the lost bucket, counted."""
        pending.abandoned = True
        self.inflight.pop(span_id, None)
        self._abandoned[span_id] = None
        if len(self._abandoned) > self.max_pending:  # bounded: forget the oldest ids
            del self._abandoned[next(iter(self._abandoned))]
        self.abandoned_spans += 1
        self.writer.count_loss("abandoned_spans", 1)
        self.warn_once(
            "abandoned",
            "footprint: a call ran longer than max_span_age_s="
            f"{self.settings.max_span_age_s:g} s (a generator never closed?) or its process "
            "went away; it is closed as abandoned, its energy counted as lost "
            "(stats()['abandoned_spans'])",
        )
        if not pending.devices:
            del self._pending[span_id]
        for slot in pending.devices:
            self.resolvers[slot].end(span_id, end_s)

    def _lose(self, pending: _Pending) -> None:
        """Energy given to a call that is never stored goes to the lost bucket per device
        and minute (stored queries + idle + lost = measured), and the call is counted."""
        if not pending.abandoned:
            self.running_at_exit += 1
            self.writer.count_loss("running_at_exit", 1)
        if pending.span is not None:
            self._settled.append(pending.span.span_id)
        devices = self.gpu_devices + self.cpu_devices
        for slot, share in pending.shares.items():
            if not share.energy_j:
                continue
            resolver = self.resolvers[slot]
            end_s = resolver.resolved_until_s or pending.start_s
            if pending.span is not None:
                end_s = min(end_s, pending.span.end_s)
            piece = EnergyPiece(pending.start_s, max(end_s, pending.start_s + 1e-9), share.energy_j)
            for minute, energy_j, _ in self._split_by_minute(piece):
                row = self._idle_rows.setdefault((devices[slot].uuid, minute), [0.0] * 4)
                row[2] += energy_j

    def _stale_slots(self, until_s: float) -> set[int]:
        """GPU slots with no sample for ``STALE_AFTER_PERIODS`` periods (a lost GPU), or
        none since start-up for that long; every slot when too many spans wait.

        Their spans are released as partial so other GPUs' records keep flowing, and the
        spans waiting for resolution stay bounded.
        """
        stale_s = max(STALE_MIN_S, STALE_AFTER_PERIODS * self.settings.sampling_period_s)
        now_s = min(until_s, self.now())
        if len(self._pending) > self.max_pending:
            self.pending_overflows += 1
            return set(range(len(self.gpu_devices)))
        latest = self.gpu_sampler.latest_sample_times_s()
        return {
            slot
            for slot, t_s in enumerate(latest)
            if now_s - (self._started_s if t_s is None else t_s) > stale_s
        }

    def _collect_idle(self, slot: int, resolver: DeviceResolver) -> None:
        devices = self.gpu_devices + self.cpu_devices
        uuid = devices[slot].uuid
        for pieces, column in ((resolver.idle, 0), (resolver.measured, 1)):
            for piece in pieces:
                for minute, energy_j, seconds in self._split_by_minute(piece):
                    row = self._idle_rows.setdefault((uuid, minute), [0.0] * 4)
                    row[column] += energy_j
                    if column == 1:
                        row[3] += seconds  # the time this process measured the device
            pieces.clear()

    def _split_by_minute(self, piece: EnergyPiece) -> list[tuple[datetime, float, float]]:
        """(UTC minute, energy J, seconds) of each minute the piece overlaps."""
        start = piece.start_s + self.wall_offset_s
        end = piece.end_s + self.wall_offset_s
        out = []
        cursor = start
        while cursor < end:
            minute_start = cursor - cursor % 60.0
            stop = min(end, minute_start + 60.0)
            fraction = (stop - cursor) / (end - start)
            out.append(
                (
                    datetime.fromtimestamp(minute_start, timezone.utc),
                    piece.energy_j * fraction,
                    stop - cursor,
                )
            )
            cursor = stop
        return out

    def _device_set(self, devices: tuple[int, ...]) -> _DeviceSet:
        known = self._device_sets.get(devices)
        if known is None:
            n_gpu = len(self.gpu_devices)
            gpu_slots = tuple(s for s in devices if s < n_gpu)
            methods = {self.gpu_devices[s].energy_method for s in gpu_slots}
            source = ENERGY_POWER if ENERGY_POWER in methods else next(iter(methods), None)
            known = _DeviceSet(
                gpu_slots=gpu_slots,
                cpu_slots=tuple(s for s in devices if s >= n_gpu),
                gpus_json=json.dumps([self.gpu_devices[s].uuid for s in gpu_slots]),
                gpu_source=source or ENERGY_MISSING,
            )
            self._device_sets[devices] = known
        return known

    def _count_bad(self, kind: str, count: int) -> None:
        """A value replaced so that its record can be stored: counted (in ``losses``
        too), warned about once."""
        super()._count_bad(kind, count)
        self.writer.count_loss(kind, count)

    def _record(self, pending: _Pending) -> dict[str, Any]:
        span = pending.span
        assert span is not None
        device_set = self._device_set(pending.devices)
        shares = pending.shares
        energy_j: float | None = None
        gpu_seconds: float | None = None
        uncertainty_j: float | None = None
        source = ENERGY_MISSING
        if device_set.gpu_slots:
            gpu_shares = [shares[s] for s in device_set.gpu_slots]
            energy_j = gpu_seconds = uncertainty_j = 0.0
            partial = False
            estimated = False
            for share in gpu_shares:
                energy_j += share.energy_j
                gpu_seconds += share.gpu_s
                uncertainty_j += share.uncertainty_j
                partial = partial or share.partial
                estimated = estimated or share.estimated
            source = device_set.gpu_source
            if partial:
                source, uncertainty_j = "estimated", None  # part of it was not measured
            elif estimated:
                source = "estimated"  # part of it extrapolated; the bound covers it
        cpu_energy_j: float | None = None
        cpu_source = ENERGY_MISSING
        if device_set.cpu_slots:
            cpu_shares = [shares[s] for s in device_set.cpu_slots]
            cpu_energy_j = sum(s.energy_j for s in cpu_shares)
            cpu_source = "estimated" if any(s.partial for s in cpu_shares) else "counter"
        offset = self.wall_offset_s
        record = {
            "model": self._clean.model(span.model),
            "tags": self._clean.tags_json(span.tags),
            "started_at": datetime.fromtimestamp(span.start_s + offset, timezone.utc),
            "ended_at": datetime.fromtimestamp(span.end_s + offset, timezone.utc),
            "duration_s": span.end_s - span.start_s,
            "time_to_first_token_s": span.ttft_s,
            "status": span.status,
            "error_type": span.error_type,
            "input_tokens": self._clean.tokens(span.input_tokens),
            "output_tokens": self._clean.tokens(span.output_tokens),
            "gpus": device_set.gpus_json,
            "gpu_seconds": gpu_seconds,
            "energy_j": energy_j,
            "energy_uncertainty_j": uncertainty_j,
            "energy_source": source,
            "cpu_energy_j": cpu_energy_j,
            "cpu_energy_source": cpu_source,
            "host": span.host or self.host,
            "pid": span.pid or self.pid,
            "span_key": span.key,
            **self._unpriced,
        }
        if self.pricer is not None:
            try:
                self.pricer.apply(record)
            except Exception as exc:
                self.warn_once("price", f"footprint: could not price a record: {exc!r}")
        return record

    def _write(self, records: list[dict[str, Any]]) -> None:
        idle_rows = [
            {
                "device_uuid": uuid,
                "minute": minute,
                "idle_energy_j": idle_j,
                "measured_energy_j": measured_j,
                "lost_energy_j": lost_j,
                "measured_s": measured_s,
                "host": self.host,
                "pid": self.pid,
            }
            for (uuid, minute), (idle_j, measured_j, lost_j, measured_s) in self._idle_rows.items()
        ]
        self._idle_rows.clear()
        dropped = self.dropped_spans
        self.writer.count_loss("span_queue_full", dropped - self._dropped_spans_reported)
        self._dropped_spans_reported = dropped
        self._notify(self.on_records, records, idle_rows)
        self.writer.submit(records, idle_rows)
        try:
            self.writer.flush()
        except WriteFailed as exc:
            if exc.reason != "disk full":  # a full disk: the writer said so in one line
                self.warn_once(
                    "write",
                    f"footprint: records will not be stored for now ({exc}); keeping up to "
                    f"{self.writer.max_buffered} in memory and counting what overflows",
                )
            # The writer keeps its newest records: older ones were dropped and counted.
            excess = len(self._settled) - self.writer.max_buffered
            if excess > 0:
                self._settle(excess)
            return
        self._settle(len(self._settled))
        self._open_journal()  # the store may just have made the database's folder
        self._flushes += 1
        if self._flushes % ROLLUP_EVERY_FLUSHES == 0:
            self._catch_up_rollups()

    def _settle(self, count: int) -> None:
        """The oldest ``count`` settled span ids: counted in the journal, told to
        ``on_settled``."""
        if count <= 0:
            return
        ids = self._settled[:count]
        del self._settled[:count]
        self.journal.settled(len(ids))
        callback = self.on_settled
        if callback is None:
            return
        try:
            callback(ids)
        except Exception as exc:  # the acknowledgements never stop the records
            self.warn_once("settled", f"footprint: internal error after a write: {exc!r}")

    def _catch_up_rollups(self) -> None:
        try:
            if self.writer.store is not None:
                with no_fork():
                    self.writer.store.catch_up_rollups()
        except Exception as exc:  # reports catch up themselves; never fail the writer
            self.warn_once("rollups", f"footprint: could not update rollups: {exc}")

    # -- public control ------------------------------------------------------------
    def sample(self) -> None:
        """Read the sensors once: the sampler thread's step, for a runtime driven on a
        manual clock (the demo, the benchmarks, deterministic tests)."""
        self.gpu_sampler.sample_once()
        if self.cpu_sampler is not None:
            self.cpu_sampler.sample_once()

    def next_sample_wait_s(self) -> float:
        """How long the sampler thread would wait before its next read, in seconds."""
        return self.gpu_sampler.next_wait_s()

    def step(self, now_s: float | None = None) -> int:
        """Resolve and write what is complete by ``now_s`` (the clock's now if None),
        less the margin the writer thread leaves for calls not yet announced: the writer
        thread's step, for a runtime driven on a manual clock. Returns records written."""
        now_s = self.now() if now_s is None else now_s
        return self.cycle(until_s=now_s - ANNOUNCE_MARGIN_S)

    def flush(self) -> int:
        """Measure up to now and write every span that has ended; returns records written."""
        if not self._ready.wait(self.settings.exit_deadline_s):
            return 0  # still opening the sensors: the writer thread writes them later
        try:
            self.gpu_sampler.sample_fresh()
            if self.cpu_sampler:
                self.cpu_sampler.sample_fresh()
            return self.cycle(until_s=float("inf"), drain_all=True)
        except Exception as exc:  # footprint's failure never reaches the caller
            self.warn_once("cycle", f"footprint: internal error while resolving: {exc!r}")
            return 0

    def shutdown(self, deadline_s: float | None = None) -> None:
        """Stop the threads and write everything, within ``deadline_s`` (default
        ``exit_deadline_s``).

        The final write runs on its own thread: a database that stops answering cannot
        hold the process past the deadline. What is not stored by then is counted
        (``stats()["unsaved_at_exit"]``) and logged. Spans still running are dropped.
        """
        if self._stop.is_set():
            return
        deadline_s = self.settings.exit_deadline_s if deadline_s is None else deadline_s
        self._stop.set()
        self._wake.set()
        finisher = threading.Thread(target=self._finish, name="footprint-exit", daemon=True)
        try:
            finisher.start()
        except RuntimeError:  # no new threads this late in interpreter shutdown
            self._finish()
            return
        finisher.join(deadline_s)
        if finisher.is_alive():
            self.unsaved_at_exit = self._unsaved_hung = (
                len(self.ended) + sum(p.span is not None for p in self._pending.values())
                + self.writer.buffered
            )  # fmt: skip
            log.warning(
                "footprint: exit deadline of %g s passed; about %d records were not stored",
                deadline_s,
                self.unsaved_at_exit,
            )
            if self.journal.path is not None:
                return  # the journal keeps the count, true to the last write
            with contextlib.suppress(Exception):  # counted where losses are kept
                self.writer.save_loss_counts({"unsaved_at_exit": self.unsaved_at_exit})

    def _finish(self) -> None:
        if self._worker is not None:
            self._worker.join()
        if not self._ready.is_set():  # never started: calls made so far still count
            self._open()
        try:
            # Spans that just ended need a sample after their end; with none open or
            # waiting, exit does not wait for the counters' next tick.
            spans_open = bool(self.inflight or self.ended or self._pending)
            last_end_s = self._last_end_s()
            self.gpu_sampler.stop(final_sample=spans_open, settle_after_s=last_end_s)
            if self.cpu_sampler:
                self.cpu_sampler.stop(final_sample=spans_open, settle_after_s=last_end_s)
            try:
                self.cycle(until_s=float("inf"), drain_all=True, final=True)
            except Exception as exc:  # at exit: say so, never raise into atexit
                log.warning("footprint: could not resolve the last spans at exit: %r", exc)
            self.writer.losses_saved_to = None
            lost = self.writer.abandon()  # logs and saves the count where losses are kept
            if lost:
                self.unsaved_at_exit = lost
                if self.writer.losses_saved_to is not None:
                    self.journal.settled(lost)
            self.journal.close()  # removed when every ended call is settled
        finally:
            if self.gpu_claims is not None:
                with contextlib.suppress(Exception):
                    self.gpu_claims.release()
            for closing in (self.gpu_sensor, self.cpu_sensor, self.writer):
                if closing is not None:
                    with contextlib.suppress(Exception):
                        closing.close()

    def _last_end_s(self) -> float | None:
        """The end of the latest call that ended and is not written yet (None: none)."""
        ends = [span.end_s for span in list(self.ended)]
        ends += [p.span.end_s for p in list(self._pending.values()) if p.span is not None]
        return max(ends, default=None)

    def stats(self) -> dict[str, int]:
        """Counters a user can check: nothing is dropped silently. Safe from any thread:
        the dictionaries the writer thread adds to are copied whole (one step under the
        GIL) before they are read."""
        ready = self._ready.is_set()
        record_failed = self.bad_values.get("record_failed", 0)
        return {
            # The core every mode has (``footprint.runtime.spans.CORE_STATS``):
            "records_written": self.writer.written,
            "pending_spans": len(self.ended) + len(self._pending),
            "running_spans": len(self.inflight),
            "dropped_spans": self.dropped_spans,
            "lost_spans": self.writer.dropped
            + self.writer.rejected
            + record_failed
            + self._unsaved_hung,
            "running_at_exit": self.running_at_exit,
            "record_failed": record_failed,
            **{kind: self.bad_values.get(kind, 0) for kind in BAD_VALUES},
            # This mode's own:
            "buffered_records": self.writer.buffered,
            "unsaved_records": self.writer.dropped,
            "unsaved_at_exit": self.unsaved_at_exit,
            "rejected_records": self.writer.rejected,
            "sampler_failed_reads": self.gpu_sampler.failed_reads if ready else 0,
            "sampler_dropped_samples": self.gpu_sampler.dropped_samples if ready else 0,
            "unknown_gpu_spans": self.unknown_gpu_spans,
            "abandoned_spans": self.abandoned_spans,
            "pending_overflows": self.pending_overflows,
            **{f"attribution_{name}": count for name, count in self.attribution_oddities().items()},
        }

    def attribution_oddities(self) -> dict[str, int]:
        """Odd input the resolvers met and handled (see ``DeviceResolver.oddities``)."""
        totals: dict[str, int] = {}
        for resolver in list(self.resolvers) if self._ready.is_set() else ():
            for name, count in dict(resolver.oddities).items():
                totals[name] = totals.get(name, 0) + count
        return totals
