"""The per-process runtime: span queues, samplers, resolvers and the writer thread.

The hot path (``footprint.tracking``) only touches ``inflight`` (a dict insert at the
start of a call) and ``ended`` (a deque append at its end). Everything else happens on
the worker thread: every ``flush_interval_s`` it takes the in-flight snapshot, drains the
ended spans and the samples, resolves what it can, and writes the records.

``Runtime`` orchestrates; the parts live beside it: ``measuring`` (sensors, samplers,
resolvers), ``devices`` (device slots), ``pending`` (spans being resolved), ``records``,
``idle`` (the per-minute ledger), ``settling`` (writes made durable, the call journal),
``simload`` (simulated GPUs loaded by the calls) and ``worker`` (the thread's pace).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, NamedTuple

from footprint._clock import SYSTEM_CLOCK, Clock
from footprint._forksafe import no_fork
from footprint.config import Settings
from footprint.runtime.idle import IdleLedger
from footprint.runtime.measuring import Measuring, warn_about_sensors
from footprint.runtime.pending import Complete, PendingSpans
from footprint.runtime.presence import claim_gpus
from footprint.runtime.records import RecordMaker
from footprint.runtime.settling import OnSettled, Settlement
from footprint.runtime.simload import SimulatedLoad, drives_simulator, with_daemon_lag
from footprint.runtime.spans import BAD_VALUES, EndedSpan, SpanQueue
from footprint.runtime.worker import WriterThread, finished_within
from footprint.sampling import Sample
from footprint.storage.journal import CallJournal
from footprint.storage.writer import Writer

log = logging.getLogger("footprint")

# A span that had not reached the in-flight dict or the ended queue when the worker looked
# (a thread paused between two bytecodes) is still seen if it began this long before.
ANNOUNCE_MARGIN_S = 0.5

# A GPU with no new sample for this long (and at least this many sampling periods) has
# stopped answering: its spans are released as partial instead of waiting for it.
STALE_MIN_S = 2.0
STALE_AFTER_PERIODS = 20

# At start, pricing and the store open once every GPU counter has been seen to change,
# or after this long.
ACQUIRE_WAIT_S = 0.25

# The writer thread folds new rows into the hourly rollups every this many flushes.
ROLLUP_EVERY_FLUSHES = 30


class _CycleInputs(NamedTuple):
    """What a cycle takes in at its start, per device slot where a list."""

    inflight: dict[int, tuple[float, tuple | None]]  # snapshot: span id -> (start, gpus)
    ended: list[EndedSpan]
    samples: list[list[Sample]]
    uncertainty_s: list[float]
    periods_s: list[float | None]


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
        self._dropped_spans_reported = 0  # dropped_spans counted in losses so far
        self._flushes = 0
        self.host = socket.gethostname()
        self.pid = os.getpid()

        # Simulated GPUs driven by the tracked calls (workload=spans): the hot path tells
        # the simulator when each call starts and ends on which GPUs.
        self.drives_simulator = drives_simulator(settings.sensor)
        self.simulated_load: SimulatedLoad | None = None
        if self.drives_simulator:  # bound here: the hot path of real GPUs has no test for it
            self.simulated_load = SimulatedLoad(self)
            self.begin = self.simulated_load.begin_call  # type: ignore[method-assign]
            self.end = self.simulated_load.end_call  # type: ignore[method-assign,assignment]
        self.records = RecordMaker(self._count_bad, self.warn_once, self.wall_offset_s)
        self.ledger = IdleLedger(self.wall_offset_s)  # idle, measured and lost energy
        self.pending_overflows = 0
        self._cycle_lock = threading.RLock()
        self._ready = threading.Event()  # sensors, samplers and pricing are open
        self.worker = WriterThread()
        self._exit_flush_started = False
        self.unsaved_at_exit = 0
        self._unsaved_hung = 0  # not stored at exit because the last write hung
        self.pricer: Any = None
        self.writer = Writer(self._open_store, self.host, self.pid, db=settings.db)
        self.journal = CallJournal()  # ended and settled calls: see ``settling``
        self.settlement = Settlement(self.writer, self.journal, self.warn_once)
        # Told the ids of ended spans once their fate is durable (a record written, or a
        # loss counted): the daemon acknowledges its clients' ends with it. Writer thread.
        self.on_settled: OnSettled | None = None
        self.pending = PendingSpans(
            self, self.ledger, self.writer.count_loss, self.warn_once, self.settlement.ids.append
        )
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
        sensor_spec = self.settings.sensor
        if self.presence_role == "daemon" and self.drives_simulator:
            sensor_spec = with_daemon_lag(sensor_spec)
        self.measuring = Measuring(self.settings, self.clock, sensor_spec, self.warn_once)
        # What other modules read (the daemon, the demo, manual-clock drivers):
        self.gpu_sensor, self.gpu_sampler = self.measuring.gpu_sensor, self.measuring.gpu_sampler
        self.devices, self.resolvers = self.measuring.devices, self.measuring.resolvers
        self.gpu_devices = self.devices.gpu_devices
        self.pending.attach(self.devices, self.resolvers)
        if self.simulated_load is not None:  # calls made so far load it now
            self.simulated_load.attach(self.gpu_sensor, self.devices.lookup)

    def _open_services(self) -> None:
        """GPU claims, pricing and the store's modules: after the samplers started."""
        warn_about_sensors(self.measuring, self.settings.sensor, self.warn_once)
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
        """The call journal, for a worker process's runtime only: the daemon's clients
        resend what it did not acknowledge."""
        if self.presence_role == "process":
            self.settlement.open_journal(self.settings.db, self.host, early)

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

            store = Store(self.settings.db, busy_timeout_s=self.settings.db_timeout_s)
        self._record_devices(store)
        return store

    def _record_devices(self, store: Any) -> None:
        """Name the devices measured in the database, so reports show index and model."""
        devices = getattr(self, "devices", None)
        if devices is None:  # the store opened before the sensors: nothing to name yet
            return
        rows = [
            {
                "uuid": d.uuid,
                "kind": d.kind,
                "device_index": d.index,
                "name": d.name,
                "vendor": d.vendor,
                "energy_method": d.energy_method,
            }
            for d in devices.by_slot
        ]
        try:
            store.record_devices(self.host, rows)
        except Exception as exc:
            self.warn_once("devices", f"footprint: could not record the devices measured: {exc}")

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
        self.worker.start(self._run)

    def _run(self) -> None:
        if not self._ready.is_set():
            try:
                self._open_sensors()
                self.measuring.start()
                # The first counter change pins each counter's phase; pricing's and the
                # store's imports hold the GIL for tenths of a second, so they wait
                # (bounded) until then. Records are written a flush interval later anyway.
                self.gpu_sampler.wait_acquired(ACQUIRE_WAIT_S)
                # Before pricing and the store's imports (tenths of a second): a process
                # killed meanwhile leaves its count too. Not before the first samples.
                self._open_journal(early=True)
                self._open_services()
                self._open_store_early()
            except Exception as exc:  # calls are still recorded, with no energy
                self.warn_once("open", f"footprint: no energy will be recorded: {exc!r}")
                opened = getattr(self, "measuring", None)
                if opened is not None:
                    opened.stop_quietly()
                self.settings = replace(self.settings, sensor="none", cpu=False)
                self._open()
                self.measuring.start()
        else:
            self.measuring.start()
        self.worker.pace(self.settings.flush_interval_s, self._paced_cycle)

    def _open_store_early(self) -> None:
        """The database now, not at the first flush: a server that ends its worker with
        SIGTERM's default action soon after starting (uvicorn) leaves a database that
        counts the calls its journal saw. One that cannot be opened is the first
        flush's to report (it keeps the rows): measuring goes on."""
        with contextlib.suppress(Exception):  # the flush says why
            self.writer.open_store()

    def _paced_cycle(self, flush_all: bool) -> None:
        """The writer thread's step: what is due, or (``flush_all``) all that ended."""
        try:
            if flush_all:
                self.cycle(until_s=float("inf"), drain_all=True)
            else:
                self.cycle(until_s=self.now() - ANNOUNCE_MARGIN_S)
        except Exception as exc:  # never let the writer die silently
            self.warn_once("cycle", f"footprint: internal error while resolving: {exc!r}")

    def wait_until_measuring(self, timeout_s: float) -> bool:
        """Wait (bounded) until the sensors are open and every GPU has its first sample;
        True if so. Calls need not wait for this: it is for scripts that check the books."""
        deadline_s = time.monotonic() + timeout_s
        return self._ready.wait(timeout_s) and self.measuring.wait_first_samples(deadline_s)

    def request_flush(self) -> None:
        """Ask the writer thread to write everything that has ended, now (no waiting)."""
        self.worker.request_flush()

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
    def begin_simulated_load(self, gpus: tuple | None, t_s: float) -> None:
        """A call started: load the simulated GPUs it runs on (``drives_simulator`` only)."""
        self.simulated_load.begin(gpus, t_s)  # type: ignore[union-attr]

    def end_simulated_load(self, gpus: tuple | None, t_s: float) -> None:
        """A call ended: its load leaves its simulated GPUs (``drives_simulator`` only)."""
        self.simulated_load.end(gpus, t_s)  # type: ignore[union-attr]

    # -- resolving -----------------------------------------------------------------
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
            inputs = self._take_inputs()
            complete = self._feed_resolvers(inputs)
            complete += self._collect_complete(until_s, drain_all, final)
            return self._emit(complete)

    def _take_inputs(self) -> _CycleInputs:
        """The in-flight snapshot first, then the ended spans and the samples drained:
        see the module's docstring."""
        inflight = dict(self.inflight)
        ended = []
        while self.ended:
            ended.append(self.ended.popleft())
        samples, uncertainty_s, periods_s = self.measuring.take_samples(
            lambda gpu_samples: self._notify(self.on_gpu_samples, gpu_samples)
        )
        return _CycleInputs(inflight, ended, samples, uncertainty_s, periods_s)

    def _feed_resolvers(self, inputs: _CycleInputs) -> Complete:
        """Samples, then running spans, then ended ones to the resolvers; returns the
        ended spans no device measures (complete at once)."""
        for slot, resolver in enumerate(self.resolvers):
            resolver.add_samples(inputs.samples[slot])
            resolver.timing_uncertainty_s = inputs.uncertainty_s[slot]
            resolver.counter_period_s = inputs.periods_s[slot] or resolver.counter_period_s
        self.pending.feed_running(inputs.inflight, self.now(), self.settings.max_span_age_s)
        return self.pending.feed_ended(inputs.ended)

    def _emit(self, complete: Complete) -> int:
        """Records of the complete spans, in the order the calls started, written."""
        complete.sort(key=lambda item: item[0])
        self.settlement.ids.extend(span_id for span_id, _ in complete)
        records = self.records.make_all(complete, self.devices, self.host, self.pid, self.pricer)
        self._write(records)
        return len(records)

    def abandon(self, span_id: int) -> None:
        """Close a running span as abandoned at the next cycle (its caller is gone: the
        daemon's client process died). Its energy goes to the lost bucket, counted."""
        self.pending.abandon(span_id)

    def _collect_complete(self, until_s: float, drain_all: bool, final: bool) -> Complete:
        """Resolve each device up to ``until_s``: the spans every device gave a share.

        GPUs with no sample for ``STALE_AFTER_PERIODS`` periods (a lost GPU), or none
        since start-up for that long, are stale, and every GPU when too many spans wait:
        their spans are released as partial so other GPUs' records keep flowing, and the
        spans waiting for resolution stay bounded.
        """
        stale_s = max(STALE_MIN_S, STALE_AFTER_PERIODS * self.settings.sampling_period_s)
        now_s = min(until_s, self.now())
        if len(self.pending.by_id) > self.max_pending:
            self.pending_overflows += 1
            stale = set(range(len(self.gpu_devices)))
        else:
            stale = self.measuring.stale_gpus(now_s, stale_s)
        return self.pending.collect(until_s, drain_all, final, stale)

    def _count_bad(self, kind: str, count: int) -> None:
        """A value replaced so that its record can be stored: counted (in ``losses``
        too), warned about once."""
        super()._count_bad(kind, count)
        self.writer.count_loss(kind, count)

    def _write(self, records: list[dict[str, Any]]) -> None:
        """Hand the records and the ledger's rows to the writer (observers told first);
        after a good write the journal may open, and the rollups catch up now and then."""
        idle_rows = self.ledger.take_rows(self.host, self.pid)
        dropped = self.dropped_spans
        self.writer.count_loss("span_queue_full", dropped - self._dropped_spans_reported)
        self._dropped_spans_reported = dropped
        self._notify(self.on_records, records, idle_rows)
        if not self.settlement.write(records, idle_rows, self.on_settled):
            return
        self._open_journal()  # the store may just have made the database's folder
        self._flushes += 1
        if self._flushes % ROLLUP_EVERY_FLUSHES == 0:
            self._catch_up_rollups()

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
        self.measuring.sample_once()

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
            self.measuring.sample_fresh()
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
        if self.worker.stopped:
            return
        deadline_s = self.settings.exit_deadline_s if deadline_s is None else deadline_s
        self.worker.stop()
        if finished_within(self._finish, deadline_s):
            return
        self.unsaved_at_exit = self._unsaved_hung = (
            len(self.ended) + len(self.pending.ended_spans()) + self.writer.buffered
        )
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
        self.worker.join()
        if not self._ready.is_set():  # never started: calls made so far still count
            self._open()
        try:
            # Spans that just ended need a sample after their end; with none open or
            # waiting, exit does not wait for the counters' next tick.
            spans_open = bool(self.inflight or self.ended or self.pending.by_id)
            self.measuring.stop(final_sample=spans_open, settle_after_s=self._last_end_s())
            try:
                self.cycle(until_s=float("inf"), drain_all=True, final=True)
            except Exception as exc:  # at exit: say so, never raise into atexit
                log.warning("footprint: could not resolve the last spans at exit: %r", exc)
            lost = self.settlement.give_up()
            if lost:
                self.unsaved_at_exit = lost
        finally:
            if self.gpu_claims is not None:
                with contextlib.suppress(Exception):
                    self.gpu_claims.release()
            self.measuring.close()
            with contextlib.suppress(Exception):
                self.writer.close()

    def _last_end_s(self) -> float | None:
        """The end of the latest call that ended and is not written yet (None: none)."""
        ends = [span.end_s for span in list(self.ended)]
        ends += [span.end_s for span in self.pending.ended_spans()]
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
            "pending_spans": len(self.ended) + len(self.pending.by_id),
            "running_spans": len(self.inflight),
            "dropped_spans": self.dropped_spans,
            "lost_spans": self.writer.dropped
            + self.writer.rejected
            + record_failed
            + self._unsaved_hung,
            "running_at_exit": self.pending.running_at_exit,
            "record_failed": record_failed,
            **{kind: self.bad_values.get(kind, 0) for kind in BAD_VALUES},
            # This mode's own:
            "buffered_records": self.writer.buffered,
            "unsaved_records": self.writer.dropped,
            "unsaved_at_exit": self.unsaved_at_exit,
            "rejected_records": self.writer.rejected,
            "sampler_failed_reads": self.gpu_sampler.failed_reads if ready else 0,
            "sampler_dropped_samples": self.gpu_sampler.dropped_samples if ready else 0,
            "unknown_gpu_spans": self.devices.unknown_gpu_spans if ready else 0,
            "abandoned_spans": self.pending.abandoned_spans,
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
