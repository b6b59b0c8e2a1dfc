"""A resolved span made into a ``queries`` record: its devices' shares summed, its
user-given values cleaned (``footprint._sanitize``), then priced."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, NamedTuple

from footprint._sanitize import Cleaner
from footprint._tracing import hex_ids
from footprint.attribution import SpanShare
from footprint.runtime.devices import DeviceSet, DeviceSlots
from footprint.runtime.pending import Complete
from footprint.runtime.spans import EndedSpan
from footprint.sensors import ENERGY_MISSING
from footprint.storage.columns import PRICING_COLUMNS


class _GpuEnergy(NamedTuple):
    energy_j: float | None
    gpu_seconds: float | None
    uncertainty_j: float | None
    source: str
    prefill_energy_j: float | None = None
    decode_energy_j: float | None = None


def _phase_energy(gpu_shares: list[SpanShare]) -> tuple[float | None, float | None]:
    """The GPUs' prefill and decode energy summed; None unless every GPU split its share."""
    if any(s.prefill_energy_j is None or s.decode_energy_j is None for s in gpu_shares):
        return None, None
    return (
        sum(s.prefill_energy_j or 0.0 for s in gpu_shares),
        sum(s.decode_energy_j or 0.0 for s in gpu_shares),
    )


# energy_source of a record whose energy is the CPU's (no GPU measured where it ran):
# measured, or in part estimated over a gap in the samples.
CPU_SOURCE = "cpu"
CPU_ESTIMATED_SOURCE = "cpu-estimated"


def _gpu_energy(device_set: DeviceSet, shares: dict[int, SpanShare]) -> _GpuEnergy:
    """The GPUs' shares summed, and where the figure comes from; with no GPU measured in
    the process, the CPU packages' and DRAM's shares (``energy_source`` cpu)."""
    if not device_set.gpu_slots:
        if device_set.on_cpu:
            return _cpu_as_model_energy(device_set, shares)
        return _GpuEnergy(None, None, None, ENERGY_MISSING)
    energy_j = gpu_seconds = bound_j = 0.0
    partial = False
    estimated = False
    gpu_shares = [shares[s] for s in device_set.gpu_slots]
    for share in gpu_shares:
        energy_j += share.energy_j
        gpu_seconds += share.gpu_s
        bound_j += share.uncertainty_j
        partial = partial or share.partial
        estimated = estimated or share.estimated
    if partial:  # part of it was not measured: no bound, no phases
        return _GpuEnergy(energy_j, gpu_seconds, None, "estimated")
    # Part of it extrapolated: estimated, and the bound covers it.
    source = "estimated" if estimated else device_set.gpu_source
    return _GpuEnergy(energy_j, gpu_seconds, bound_j, source, *_phase_energy(gpu_shares))


def _cpu_as_model_energy(device_set: DeviceSet, shares: dict[int, SpanShare]) -> _GpuEnergy:
    """A CPU-only host: the call's energy is its share of the CPU packages and DRAM,
    resolved like a GPU's (concurrency, idle, bound); no GPU-seconds."""
    cpu_shares = [shares[s] for s in device_set.cpu_slots]
    energy_j = sum(s.energy_j for s in cpu_shares)
    if any(s.partial for s in cpu_shares):
        return _GpuEnergy(energy_j, None, None, CPU_ESTIMATED_SOURCE)
    source = CPU_ESTIMATED_SOURCE if any(s.estimated for s in cpu_shares) else CPU_SOURCE
    return _GpuEnergy(energy_j, None, sum(s.uncertainty_j for s in cpu_shares), source)


def _cpu_energy(device_set: DeviceSet, shares: dict[int, SpanShare]) -> tuple[float | None, str]:
    """The CPU packages' shares summed (J), and the figure's source."""
    if not device_set.package_slots:
        return None, ENERGY_MISSING
    cpu_shares = [shares[s] for s in device_set.package_slots]
    cpu_source = "estimated" if any(s.partial for s in cpu_shares) else "counter"
    return sum(s.energy_j for s in cpu_shares), cpu_source


class RecordMaker:
    """Makes the records of one process's resolved spans.

    ``count_bad`` counts the values replaced to be storable and the records that could
    not be made, by kind; ``warn_once`` says so.
    """

    def __init__(
        self,
        count_bad: Callable[[str, int], None],
        warn_once: Callable[[str, str], None],
        wall_offset_s: float,
    ) -> None:
        self._count_bad = count_bad
        self._clean = Cleaner(count_bad)
        self._warn_once = warn_once
        self.wall_offset_s = wall_offset_s
        self._unpriced = dict.fromkeys(PRICING_COLUMNS)

    def make_all(
        self, complete: Complete, devices: DeviceSlots, host: str, pid: int, pricer: Any
    ) -> list[dict[str, Any]]:
        """The records of the ``complete`` spans, in their order; a span whose record
        cannot be made is counted (``record_failed``) and left out."""
        records = []
        for _, pending in complete:
            try:
                span = pending.span
                assert span is not None
                device_set = devices.device_set(pending.devices)
                records.append(self.record(span, pending.shares, device_set, host, pid, pricer))
            except Exception as exc:  # one bad span never takes the others with it
                self._count_bad("record_failed", 1)
                self._warn_once("record", f"footprint: could not build a record: {exc!r}")
        return records

    def record(
        self,
        span: EndedSpan,
        shares: dict[int, SpanShare],
        device_set: DeviceSet,
        host: str,
        pid: int,
        pricer: Any,
    ) -> dict[str, Any]:
        """The record of a span measured on ``device_set`` (``shares``: what each device
        slot gave it), priced by ``pricer`` (None: unpriced); ``host`` and ``pid`` for a
        span that names neither."""
        gpu = _gpu_energy(device_set, shares)
        cpu_energy_j, cpu_source = _cpu_energy(device_set, shares)
        offset = self.wall_offset_s
        trace = hex_ids(span.trace)
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
            "gpu_seconds": gpu.gpu_seconds,
            "energy_j": gpu.energy_j,
            "energy_uncertainty_j": gpu.uncertainty_j,
            "energy_source": gpu.source,
            "cpu_energy_j": cpu_energy_j,
            "cpu_energy_source": cpu_source,
            "host": span.host or host,
            "pid": span.pid or pid,
            "span_key": span.key,
            "trace_id": None if trace is None else trace[0],
            "span_id": None if trace is None else trace[1],
            "prefill_energy_j": gpu.prefill_energy_j,
            "decode_energy_j": gpu.decode_energy_j,
            **self._unpriced,
        }
        if pricer is not None:
            try:
                pricer.apply(record)
            except Exception as exc:
                self._warn_once("price", f"footprint: could not price a record: {exc!r}")
        return record
