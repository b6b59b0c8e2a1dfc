"""Attribution: split each device's measured energy among the spans that ran on it.

The resolver sweeps a device's sampling intervals in time order. An interval's energy
(the counter delta between two samples) goes to the spans active in it, the part with no
active span being the device's idle energy. Inside one interval, span boundaries cut it
into segments; each segment's share is its duration weighted by the power estimated for
it (the neighbouring intervals' average power for the segments that touch the interval's
ends, the remainder shared by duration for the ones inside), and a segment's share is
split equally among its active spans (equal overlap time). Every interval's delta is
handed out in full, so energy is conserved exactly:

    Σ span energy + Σ idle energy = counter(last sample) − counter(first sample)
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field

from footprint.sampling import Sample


@dataclass
class SpanShare:
    """What one device gave one span: energy in J and GPU-seconds (its time share)."""

    energy_j: float = 0.0
    gpu_s: float = 0.0
    partial: bool = False  # part of the span had no measurement (before/after samples)


@dataclass
class _OpenSpan:
    start_s: float
    end_s: float = float("inf")  # still running until ``end`` is called
    share: SpanShare = field(default_factory=SpanShare)


@dataclass(frozen=True)
class EnergyPiece:
    """Energy of one interval (or part of it): ``start_s``..``end_s`` in monotonic s."""

    start_s: float
    end_s: float
    energy_j: float


class DeviceResolver:
    """Streaming resolver for one device.

    Feed it samples (``add_samples``) and spans (``add_span``) in any order; ``resolve``
    hands out every interval whose neighbours are known and returns the spans that are
    complete (a sample after their end exists). ``idle`` and ``measured`` collect the
    idle energy and the total counter delta per resolved interval.
    """

    def __init__(self) -> None:
        self._samples: list[Sample] = []
        self._open: dict[Hashable, _OpenSpan] = {}
        self._prev_power_w: float | None = None
        self.first_sample_s: float | None = None
        self.resolved_until_s: float | None = None
        self.idle: list[EnergyPiece] = []
        self.measured: list[EnergyPiece] = []

    def add_samples(self, samples: list[Sample]) -> None:
        """Append samples (monotonic time, cumulative J), in time order."""
        for t_s, energy_j in samples:
            if self._samples and t_s <= self._samples[-1][0]:
                continue
            if self.first_sample_s is None:
                self.first_sample_s = t_s
                self.resolved_until_s = t_s
            self._samples.append((t_s, energy_j))

    def begin(self, key: Hashable, start_s: float) -> None:
        """A span started at ``start_s``; it takes its share of every interval from then."""
        span = _OpenSpan(start_s)
        span.share.partial = self.resolved_until_s is None or start_s < self.resolved_until_s
        self._open[key] = span

    def end(self, key: Hashable, end_s: float) -> None:
        """The span ended; it completes once intervals up to ``end_s`` are resolved."""
        span = self._open.get(key)
        if span is not None:
            span.end_s = max(end_s, span.start_s)

    @property
    def open_spans(self) -> int:
        return len(self._open)

    def resolve(
        self, until_s: float = float("inf"), drain_all: bool = False, final: bool = False
    ) -> dict[Hashable, SpanShare]:
        """Attribute every interval ending by ``until_s`` that can be; return complete spans.

        The caller guarantees that every span begun before ``until_s`` has been announced
        with ``begin`` (and ``end`` if it ended). An interval needs the next one to
        estimate power at its end, so the last one waits, unless ``drain_all`` (a flush).
        ``final`` (exit) also returns the spans that could not complete, as partial.
        """
        last = len(self._samples) - (1 if drain_all or final else 2)
        done = 0
        for i in range(max(last, 0)):
            if self._samples[i + 1][0] > until_s:
                break
            next_power_w = None
            if i + 2 < len(self._samples):
                (t1, e1), (t2, e2) = self._samples[i + 1], self._samples[i + 2]
                next_power_w = (e2 - e1) / (t2 - t1)
            self._resolve_interval(self._samples[i], self._samples[i + 1], next_power_w)
            done = i + 1
        if done:
            del self._samples[:done]
        return self._pop_complete(final)

    def _pop_complete(self, final: bool) -> dict[Hashable, SpanShare]:
        done: dict[Hashable, SpanShare] = {}
        until = self.resolved_until_s
        for key, span in list(self._open.items()):
            if until is not None and span.end_s <= until:
                done[key] = self._open.pop(key).share
            elif final:
                span.share.partial = True
                done[key] = self._open.pop(key).share
        return done

    def _resolve_interval(self, a: Sample, b: Sample, next_power_w: float | None) -> None:
        t0, e0 = a
        t1, e1 = b
        delta_j = e1 - e0
        duration_s = t1 - t0
        self.measured.append(EnergyPiece(t0, t1, delta_j))
        active = [s for s in self._open.values() if s.start_s < t1 and s.end_s > t0]
        cuts = sorted({t for s in active for t in (s.start_s, s.end_s) if t0 < t < t1} | {t0, t1})
        segments = list(zip(cuts, cuts[1:]))
        energies_j = self._segment_energies(segments, delta_j, duration_s, next_power_w)
        idle_j = 0.0
        for (s0, s1), energy_j in zip(segments, energies_j):
            running = [s for s in active if s.start_s <= s0 and s.end_s >= s1]
            if not running:
                idle_j += energy_j
                continue
            each_j = energy_j / len(running)
            each_s = (s1 - s0) / len(running)
            for span in running:
                span.share.energy_j += each_j
                span.share.gpu_s += each_s
        if idle_j:
            self.idle.append(EnergyPiece(t0, t1, idle_j))
        self._prev_power_w = delta_j / duration_s
        self.resolved_until_s = t1

    def _segment_energies(
        self,
        segments: list[tuple[float, float]],
        delta_j: float,
        duration_s: float,
        next_power_w: float | None,
    ) -> list[float]:
        if len(segments) == 1:
            return [delta_j]
        lengths_s = [s1 - s0 for s0, s1 in segments]
        estimates: list[float | None] = [None] * len(segments)
        if self._prev_power_w is not None:
            estimates[0] = max(self._prev_power_w, 0.0) * lengths_s[0]
        if next_power_w is not None:
            estimates[-1] = max(next_power_w, 0.0) * lengths_s[-1]
        known_j = sum(e for e in estimates if e is not None)
        unknown_s = sum(d for d, e in zip(lengths_s, estimates) if e is None)
        if unknown_s > 0 and known_j <= delta_j:
            rest_per_s = (delta_j - known_j) / unknown_s
            return [e if e is not None else d * rest_per_s for d, e in zip(lengths_s, estimates)]
        # Only estimated segments, or estimates above the measured delta: scale them.
        average_w = delta_j / duration_s
        weights = [e if e is not None else d * average_w for d, e in zip(lengths_s, estimates)]
        total = sum(weights)
        if total <= 0:
            return [delta_j * d / duration_s for d in lengths_s]
        return [delta_j * w / total for w in weights]
