"""OpenTelemetry metrics: each record footprint writes, added to OTel counters per model.

    import footprint.integrations.otel as fp_otel
    handle = fp_otel.publish_metrics()  # the global MeterProvider (your SDK's)
    ...
    handle.close()

Counters (monotonic sums, cumulative or delta as the reader asks), one data point per
attribute set: ``footprint.energy`` (J, attributed GPU energy), ``footprint.co2e`` (g,
location-based), ``footprint.cost`` (USD: GPU time, plus energy unless the GPU is
rented), ``footprint.tokens.input`` and ``footprint.tokens.output`` ({token}) and
``footprint.queries`` ({query}). Attributes: ``model``, ``status``, ``energy_source`` and
the record's tags named in ``tags=`` (an allow-list: tags are unbounded, metrics must not
be). A value a record does not know (no energy measured, no price) is not added, never
added as 0: a model with no known cost has no ``footprint.cost`` point at all.

Records are made once a call's energy is known (after its span ended and the GPU's next
samples came: about two sampling periods, then up to one flush interval), so the counters
lag the calls by that much. They are fed by the runtime that measures (in-process, or the
host's daemon: ``footprint daemon --otel-metrics``); a process whose calls go to a daemon
makes no records of its own. OpenTelemetry is imported only by this module (the ``otel``
extra: ``pip install 'footprint[otel]'``).
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Iterable
from typing import Any

from footprint.pricing.factors import record_cost_usd
from footprint.runtime.local import Runtime
from footprint.tracking import Tracker, default_tracker

__all__ = ["MetricsHandle", "RecordMetrics", "configured_meter_provider", "publish_metrics"]

METER_NAME = "footprint"
MAX_MODELS = 1000  # distinct models kept apart; the others are summed as "_other"
OTHER_MODELS = "_other"
MAX_TAG_CHARS = 128  # a tag value in an attribute is cut to this
Observer = Callable[[list[dict[str, Any]], list[dict[str, Any]]], None]


class OtelUnavailable(RuntimeError):
    """OpenTelemetry's API (or a configured SDK) is not there; the message says what to do."""


def _metrics_api() -> Any:
    try:
        from opentelemetry import metrics
    except ImportError:
        raise OtelUnavailable(
            "OpenTelemetry metrics need opentelemetry-api and -sdk: pip install 'footprint[otel]'"
        ) from None
    return metrics


def configured_meter_provider() -> Any:
    """The global MeterProvider the process configured (the SDK's, set by
    ``metrics.set_meter_provider`` or ``opentelemetry-instrument``); ``OtelUnavailable``
    when none is: OTel's API alone hands out a no-op one whose counts go nowhere."""
    provider = _metrics_api().get_meter_provider()
    if type(provider).__name__ in ("_ProxyMeterProvider", "NoOpMeterProvider"):
        raise OtelUnavailable(
            "no OpenTelemetry SDK MeterProvider is configured in this process: run it under "
            "opentelemetry-instrument (opentelemetry-distro and an exporter, configured by "
            "the OTEL_* environment variables, e.g. OTEL_METRICS_EXPORTER=otlp), or call "
            "opentelemetry.metrics.set_meter_provider() first"
        )
    return provider


class RecordMetrics:
    """The counters, and ``observe``: a ``Runtime.on_records`` observer adding each record
    to them. ``tags``: the tag names copied into attributes (values cut to 128
    characters; numbers and booleans kept as they are, anything else as text)."""

    def __init__(self, meter_provider: Any, tags: Iterable[str] = ()) -> None:
        tag_names = tuple(tags)
        for name in tag_names:
            if not isinstance(name, str) or not name:
                raise TypeError("tags= names the record tags to publish (non-empty strings)")
            if name in ("model", "status", "energy_source"):
                raise ValueError(f"tags=: {name!r} is an attribute already")
        self.tags = tag_names
        meter = meter_provider.get_meter(METER_NAME, _version())
        self.energy = meter.create_counter(
            "footprint.energy", unit="J", description="GPU energy attributed to the queries"
        )
        self.co2e = meter.create_counter(
            "footprint.co2e", unit="g", description="CO2e of the queries' energy (location-based)"
        )
        self.cost = meter.create_counter(
            "footprint.cost", unit="USD", description="What the queries cost, where known"
        )
        self.input_tokens = meter.create_counter(
            "footprint.tokens.input", unit="{token}", description="Input tokens of the queries"
        )
        self.output_tokens = meter.create_counter(
            "footprint.tokens.output", unit="{token}", description="Output tokens of the queries"
        )
        self.queries = meter.create_counter(
            "footprint.queries", unit="{query}", description="Queries recorded"
        )
        self._models: set[str] = set()
        self._lock = threading.Lock()

    def _model(self, model: str) -> str:
        if model not in self._models:
            if len(self._models) >= MAX_MODELS:
                return OTHER_MODELS
            self._models.add(model)
        return model

    def attributes(self, record: dict[str, Any]) -> dict[str, Any]:
        """The attributes of a record's data points."""
        attributes: dict[str, Any] = {
            "model": self._model(str(record["model"])),
            "status": str(record.get("status") or "ok"),
            "energy_source": str(record.get("energy_source") or "missing"),
        }
        if self.tags:
            try:
                tags = json.loads(record.get("tags") or "{}")
            except ValueError:
                tags = {}
            if isinstance(tags, dict):
                for name in self.tags:
                    if name in tags:
                        attributes[name] = _attribute_value(tags[name])
        return attributes

    def observe(self, records: list[dict[str, Any]], idle_rows: list[dict[str, Any]]) -> None:
        """Add ``records`` to the counters (``idle_rows``: not queries, not published)."""
        with self._lock:  # the model set; OTel's instruments are thread-safe themselves
            for record in records:
                attributes = self.attributes(record)
                self.queries.add(1, attributes)
                for counter, value in (
                    (self.energy, record.get("energy_j")),
                    (self.co2e, record.get("co2e_g")),
                    (self.cost, record_cost_usd(record)),
                    (self.input_tokens, record.get("input_tokens")),
                    (self.output_tokens, record.get("output_tokens")),
                ):
                    if value is not None and value >= 0:  # unknown: no point, never a 0
                        counter.add(value, attributes)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("footprint")
    except PackageNotFoundError:
        return "0+unknown"


def _attribute_value(value: Any) -> Any:
    if isinstance(value, (bool, int, float)):
        return value
    return str(value)[:MAX_TAG_CHARS]


class MetricsHandle:
    """What ``publish_metrics`` started: ``close()`` stops adding records (what was added
    stays with the MeterProvider, which exports it as it is configured to)."""

    def __init__(self, runtime: Runtime, metrics: RecordMetrics) -> None:
        self.runtime = runtime
        self.metrics = metrics
        self._observer: Observer | None = metrics.observe

    def close(self) -> None:
        observer, self._observer = self._observer, None
        if observer is not None:
            with contextlib.suppress(ValueError):  # gone with its runtime already
                self.runtime.on_records.remove(observer)

    def __enter__(self) -> MetricsHandle:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def publish_metrics(
    tracker: Tracker | None = None,
    meter_provider: Any = None,
    tags: Iterable[str] = (),
) -> MetricsHandle:
    """Publish the records of ``tracker`` (default: the one ``footprint.track`` uses) as
    OpenTelemetry counters from now on; returns a handle to ``close()``.

    ``meter_provider``: an SDK ``MeterProvider`` (default: the global one, which must be
    configured: ``OtelUnavailable`` otherwise). ``tags``: record tags to copy into
    attributes. Starts the tracker's runtime if it has not started. ``OtelUnavailable``
    too when the tracker sends its calls to a daemon (its records are made there: run
    the daemon with ``--otel-metrics``) or tracking is disabled.
    """
    tracker = tracker or default_tracker()
    if meter_provider is None:
        meter_provider = configured_meter_provider()
    metrics = RecordMetrics(meter_provider, tags)
    runtime = tracker.ensure()
    if runtime is None:
        raise OtelUnavailable("footprint tracking is disabled in this process: nothing to publish")
    if not isinstance(runtime, Runtime):
        raise OtelUnavailable(
            "this process sends its calls to a footprint daemon, which makes their records: "
            "publish the metrics there (footprint daemon --otel-metrics)"
        )
    runtime.on_records.append(metrics.observe)
    return MetricsHandle(runtime, metrics)
