"""The daemon's Prometheus metrics (``GET /metrics``), in base units.

Counters of queries, energy, tokens, CO2e and cost are fed by the records the runtime hands
to its writer (``RecordTotals.observe``, a ``Runtime.on_records`` observer); gauges are read
from the runtime, its sampler and the intake when Prometheus scrapes.

Labels: ``gpu`` is one GPU's index (``nvidia-smi``'s). A record holds its GPUs and its
energy summed over them, not each GPU's part, so a query that ran on several GPUs has its
energy and tokens split evenly among them: summing over ``gpu`` still gives a model's
totals exactly. ``footprint_gpu_info{gpu,uuid,name}`` maps the indices to the devices.
Past ``MAX_MODELS`` distinct models, the others are summed under ``model="_other"`` (the
database keeps every one). A model whose cost is unknown has no cost sample (not 0).

Health: ``footprint_ready`` is 1 while ``/readyz`` would answer 200, and
``footprint_health_problem{reason}`` is 1 for each reason ``/healthz`` names now (every
known reason is always present, 0 when it does not hold), so alerts need no probe.
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.process_collector import ProcessCollector

from footprint.pricing.factors import record_cost_usd

if TYPE_CHECKING:
    from footprint.daemon.spans import SpanIntake
    from footprint.runtime.local import Runtime

# Metrics keep at most this many models apart (Prometheus series stay bounded whatever
# clients send); the others are summed under ``model="_other"``.
MAX_MODELS = 1000
OTHER_MODELS = "_other"
MAX_GPU_SETS = 4096  # distinct ``gpus`` JSON strings whose labels are cached
NO_GPU = ""  # the gpu label of a record measured on no GPU
# What ``/healthz`` may name in ``reasons`` (``footprint_health_problem`` has each of them).
HEALTH_REASONS = ("stale_samples", "no_gpu", "fd_limit", "connection_limit", "no_memory")

__all__ = [
    "CONTENT_TYPE_LATEST",
    "DaemonCollector",
    "PowerTracker",
    "RecordTotals",
    "record_cost_usd",
    "registry",
]


class RecordTotals:
    """Running totals of the records and idle rows the runtime writes."""

    def __init__(self, gpu_labels: dict[str, str]) -> None:
        self._gpu_labels = gpu_labels  # device UUID -> index label
        self._sets: dict[str, tuple[str, ...]] = {}  # a record's ``gpus`` JSON -> its labels
        self._models: set[str] = set()
        self._lock = threading.Lock()
        self.energy_j: defaultdict[tuple[str, str], float] = defaultdict(float)
        self.input_tokens: defaultdict[tuple[str, str], float] = defaultdict(float)
        self.output_tokens: defaultdict[tuple[str, str], float] = defaultdict(float)
        self.queries: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.co2e_g: defaultdict[str, float] = defaultdict(float)
        self.cost_usd: defaultdict[str, float] = defaultdict(float)  # known costs only
        self.idle_j: defaultdict[str, float] = defaultdict(float)
        self.lost_j: defaultdict[str, float] = defaultdict(float)  # calls never stored
        self.records = 0

    def _gpu_set(self, gpus_json: str | None) -> tuple[str, ...]:
        """The index labels of a record's GPUs (its ``gpus``: a JSON list of UUIDs)."""
        key = gpus_json or ""
        labels = self._sets.get(key)
        if labels is None:
            try:
                uuids = json.loads(gpus_json) if gpus_json else []
            except ValueError:
                uuids = []
            labels = tuple(self._gpu_labels.get(u, str(u)) for u in uuids)
            if len(self._sets) < MAX_GPU_SETS:
                self._sets[key] = labels
        return labels

    def _model(self, model: str) -> str:
        if model not in self._models:
            if len(self._models) >= MAX_MODELS:
                return OTHER_MODELS  # bounded series: the database has them all
            self._models.add(model)
        return model

    @staticmethod
    def _split(
        table: defaultdict[tuple[str, str], float], model: str, gpus: tuple[str, ...], value: Any
    ) -> None:
        """Add ``value`` under ``model``, split evenly among ``gpus`` (none: ``NO_GPU``)."""
        if value is None:
            return
        if not gpus:
            table[model, NO_GPU] += value
            return
        share = value / len(gpus)
        for gpu in gpus:
            table[model, gpu] += share

    def observe(self, records: list[dict[str, Any]], idle_rows: list[dict[str, Any]]) -> None:
        with self._lock:
            for record in records:
                model = self._model(record["model"])
                self.queries[model, record["status"]] += 1
                gpus = self._gpu_set(record.get("gpus"))
                self._split(self.energy_j, model, gpus, record.get("energy_j"))
                self._split(self.input_tokens, model, gpus, record.get("input_tokens"))
                self._split(self.output_tokens, model, gpus, record.get("output_tokens"))
                co2e_g = record.get("co2e_g")
                if co2e_g is not None:
                    self.co2e_g[model] += co2e_g
                cost_usd = record_cost_usd(record)
                if cost_usd is not None:  # unknown: no sample, rather than a false 0
                    self.cost_usd[model] += cost_usd
            self.records += len(records)
            for row in idle_rows:
                label = self._gpu_labels.get(row["device_uuid"])
                if label is not None:  # GPUs only (CPU packages are not GPUs)
                    self.idle_j[label] += row["idle_energy_j"]
                    self.lost_j[label] += row.get("lost_energy_j") or 0.0

    def snapshot(self) -> dict[str, dict]:
        with self._lock:
            return {
                "energy_j": dict(self.energy_j),
                "input_tokens": dict(self.input_tokens),
                "output_tokens": dict(self.output_tokens),
                "queries": dict(self.queries),
                "co2e_g": dict(self.co2e_g),
                "cost_usd": dict(self.cost_usd),
                "idle_j": dict(self.idle_j),
                "lost_j": dict(self.lost_j),
            }


class PowerTracker:
    """Each GPU's average power over the samples the runtime drained last (about one
    flush interval), from the cumulative energy at both ends."""

    def __init__(self, devices: int) -> None:
        self._last: list[tuple[float, float] | None] = [None] * devices
        self.power_w: list[float | None] = [None] * devices

    def observe(self, drained: list[list[tuple[float, float]]]) -> None:
        for index, samples in enumerate(drained[: len(self._last)]):
            if not samples:
                continue
            ref = self._last[index] or samples[0]
            t1_s, e1_j = samples[-1]
            if t1_s > ref[0]:
                self.power_w[index] = max(0.0, (e1_j - ref[1]) / (t1_s - ref[0]))
            self._last[index] = samples[-1]


class DaemonCollector:
    """Builds every footprint_* metric family when Prometheus scrapes."""

    # The daemon's connection limits and what they refused (``ConnectionLimits.snapshot``).
    connection_limits: Callable[[], dict[str, Any]] | None = None
    # What ``/healthz`` answers (``DaemonServer.health``): its status and reasons.
    health: Callable[[], dict[str, Any]] | None = None

    def __init__(
        self,
        runtime: Runtime,
        intake: SpanIntake,
        totals: RecordTotals,
        power: PowerTracker,
        started_s: float,
    ) -> None:
        self.runtime = runtime
        self.intake = intake
        self.totals = totals
        self.power = power
        self.started_s = started_s

    def collect(self) -> Iterator[Metric]:
        yield from _record_metrics(self.totals.snapshot(), self.runtime.gpu_devices)
        yield from self._gpu_metrics()
        yield from self._intake_metrics()

    def _gpu_metrics(self) -> Iterator[Metric]:
        devices = self.runtime.gpu_devices
        now_s = time.monotonic()
        latest = self.runtime.gpu_sampler.latest_sample_times_s()
        power = GaugeMetricFamily(
            "footprint_gpu_power_watts",
            "Average GPU power over the last flush interval, from its energy counter.",
            labels=["gpu"],
        )
        age = GaugeMetricFamily(
            "footprint_last_sample_age_seconds",
            "Seconds since the GPU's latest energy sample (since start-up if none yet).",
            labels=["gpu"],
        )
        info = GaugeMetricFamily(
            "footprint_gpu_info",
            "The GPUs the daemon measures (value 1).",
            labels=["gpu", "uuid", "name"],
        )
        for index, device in enumerate(devices):
            label = str(device.index)
            watts = self.power.power_w[index] if index < len(self.power.power_w) else None
            if watts is not None:
                power.add_metric([label], watts)
            t_s = latest[index] if index < len(latest) else None
            age.add_metric([label], now_s - (self.started_s if t_s is None else t_s))
            info.add_metric([label, device.uuid, device.name], 1.0)
        yield power
        yield age
        yield info

    def _intake_metrics(self) -> Iterator[Metric]:
        runtime, intake = self.runtime, self.intake
        yield GaugeMetricFamily(
            "footprint_spans_in_flight",
            "Spans started and not ended yet.",
            value=len(runtime.inflight),
        )
        yield GaugeMetricFamily(
            "footprint_queue_depth",
            "Spans ended and waiting to be resolved, plus records waiting to be written.",
            value=len(runtime.ended) + runtime.writer.buffered,
        )
        yield GaugeMetricFamily(
            "footprint_client_connections",
            "Open client connections on the Unix socket.",
            value=len(intake.connections),
        )
        if self.connection_limits is not None:
            yield from _connection_limit_metrics(self.connection_limits())
        if self.health is not None:
            yield from _health_metrics(self.health())

        stats = runtime.stats()
        lost = CounterMetricFamily(
            "footprint_lost_spans",
            "Queries that did not become a record, by reason (their energy is in the lost "
            "bucket where it was measured).",
            labels=["reason"],
        )
        for reason, value in (
            ("queue_full", stats["dropped_spans"]),
            ("abandoned", stats["abandoned_spans"]),
            ("running_at_exit", stats["running_at_exit"]),
            ("write_failed", stats["unsaved_records"]),
            ("rejected", stats["rejected_records"]),
            ("clock_mismatch", intake.lost.get("clock_mismatch", 0)),
        ):
            lost.add_metric([reason], value)
        yield lost
        errors = CounterMetricFamily(
            "footprint_protocol_errors",
            "Batches refused (bad JSON, invalid, too large, truncated, other clock, no token).",
            labels=["reason"],
        )
        for reason in ("json", "invalid", "too_large", "truncated", "clock", "unauthorized"):
            errors.add_metric([reason], intake.protocol_errors.get(reason, 0))
        yield errors
        received = CounterMetricFamily(
            "footprint_spans_received",
            "Span starts and ends received from clients.",
            labels=["kind"],
        )
        received.add_metric(["start"], intake.received.get("starts", 0))
        received.add_metric(["end"], intake.received.get("ends", 0))
        yield received
        ignored = CounterMetricFamily(
            "footprint_spans_ignored",
            "Span starts and ends received and not applied, handled: sent again after a "
            "reconnection (duplicate_start, duplicate_end; duplicate_end_stored: an end "
            "sent again that a daemon before this one stored), after their span was closed "
            "as abandoned, or a start past max_pending_spans (its end still makes a record).",
            labels=["kind"],
        )
        for kind in (
            "duplicate_start",
            "duplicate_end",
            "duplicate_end_stored",
            "started_after_abandoned",
            "ended_after_abandoned",
            "start_not_tracked",
        ):
            ignored.add_metric([kind], intake.oddities.get(kind, 0))
        yield ignored
        yield CounterMetricFamily(
            "footprint_records_written",
            "Query records written to the database.",
            value=stats["records_written"],
        )
        yield CounterMetricFamily(
            "footprint_clients_gone",
            "Client processes that went away with spans running (spans closed as abandoned).",
            value=intake.abandoned_clients,
        )


def _record_metrics(snap: dict[str, dict], devices: list[Any]) -> Iterator[Metric]:
    """The counters fed by the records written (``RecordTotals.snapshot``)."""
    split = " A query on several GPUs counts under each of them an even share of its total."
    for key, name, text in (
        (
            "energy_j",
            "footprint_energy_joules",
            "GPU energy attributed to queries (written records), by model and GPU.",
        ),
        (
            "input_tokens",
            "footprint_input_tokens",
            "Input tokens of the queries, by model and GPU.",
        ),
        (
            "output_tokens",
            "footprint_output_tokens",
            "Output tokens of the queries, by model and GPU.",
        ),
    ):
        family = CounterMetricFamily(name, text + split, labels=["model", "gpu"])
        for (model, gpu), value in snap[key].items():
            family.add_metric([model, gpu], value)
        yield family
    family = CounterMetricFamily(
        "footprint_idle_energy_joules",
        "GPU energy spent while no query ran on the GPU.",
        labels=["gpu"],
    )
    for device in devices:
        family.add_metric([str(device.index)], snap["idle_j"].get(str(device.index), 0.0))
    yield family
    family = CounterMetricFamily(
        "footprint_lost_energy_joules",
        "GPU energy given to queries that never became a record (footprint_lost_spans).",
        labels=["gpu"],
    )
    for device in devices:
        family.add_metric([str(device.index)], snap["lost_j"].get(str(device.index), 0.0))
    yield family
    family = CounterMetricFamily(
        "footprint_queries",
        "Queries recorded, by model and status.",
        labels=["model", "status"],
    )
    for (model, status), value in snap["queries"].items():
        family.add_metric([model, status], value)
    yield family
    family = CounterMetricFamily(
        "footprint_co2e_grams",
        "Location-based CO2e of the queries' energy, in grams.",
        labels=["model"],
    )
    for model, value in snap["co2e_g"].items():
        family.add_metric([model], value)
    yield family
    family = CounterMetricFamily(
        "footprint_cost_usd",
        "Cost of the queries in USD, where known: GPU time, plus energy on owned GPUs. "
        "No sample for a model whose cost is unknown (no price), rather than 0.",
        labels=["model"],
    )
    for model, value in snap["cost_usd"].items():
        family.add_metric([model], value)
    yield family


def _health_metrics(health: dict[str, Any]) -> Iterator[Metric]:
    """``/healthz`` as gauges: ready (1 or 0) and 1 for each problem it names now."""
    yield GaugeMetricFamily(
        "footprint_ready",
        "1 while the daemon is ready (/readyz answers 200: GPUs measured, samples fresh, "
        "no limit hit), else 0.",
        value=1.0 if health["status"] == "ok" else 0.0,
    )
    problems = GaugeMetricFamily(
        "footprint_health_problem",
        "1 while /healthz names this reason (stale_samples, no_gpu, fd_limit, "
        "connection_limit, no_memory), else 0.",
        labels=["reason"],
    )
    reasons = list(health["reasons"])
    for reason in (*HEALTH_REASONS, *(r for r in reasons if r not in HEALTH_REASONS)):
        problems.add_metric([reason], 1.0 if reason in reasons else 0.0)
    yield problems


def _connection_limit_metrics(limits: dict[str, Any]) -> Iterator[Metric]:
    yield GaugeMetricFamily(
        "footprint_max_client_connections",
        "Client connections the daemon takes: --max-connections, or fewer where the "
        "open-files limit leaves room for fewer.",
        value=limits["max_connections"],
    )
    refused = CounterMetricFamily(
        "footprint_connections_refused",
        "Client connections refused with a one-line error: over --max-connections, "
        "--max-connections-per-peer or --max-http-connections (reason http, a 503).",
        labels=["reason"],
    )
    for reason in ("max_connections", "per_peer", "http"):
        refused.add_metric([reason], limits["refused"].get(reason, 0))
    yield refused
    yield CounterMetricFamily(
        "footprint_connections_reclaimed",
        "Idle client connections closed to make room at the limit (their clients reconnect).",
        value=limits["reclaimed"],
    )
    failures = CounterMetricFamily(
        "footprint_accept_failures",
        "Times the daemon stopped accepting for a while: no file descriptor left for a "
        "client (fd_limit) or no memory (no_memory), and no idle connection to close.",
        labels=["reason"],
    )
    for reason in ("fd_limit", "no_memory"):
        failures.add_metric([reason], limits["accept_failures"].get(reason, 0))
    yield failures


def registry(collector: DaemonCollector) -> CollectorRegistry:
    """A registry of the daemon's metrics and its process's (CPU, memory, fds)."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(collector)
    ProcessCollector(registry=reg)
    return reg


def render(reg: CollectorRegistry) -> bytes:
    return generate_latest(reg)
