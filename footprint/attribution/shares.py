"""The running integrals that share an interval's busy energy among the spans running.

Per device, per active span since the last rebase: energy (J), GPU-seconds and the
energy's bound (J), each busy stretch shared equally among the spans running in it. A
span's share is the difference of an integral between its end and its start, so cost
does not depend on how many spans run at once: each start and end is one step.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import dataclass

from footprint.attribution.energy import Interval

START, END = 0, 1  # event kinds; a start sorts before an end at the same instant


@dataclass
class SpanShare:
    """What one device gave one span: energy in J, GPU-seconds, and the energy's bound.

    ``uncertainty_j`` bounds |energy_j − true share| under the attribution rule (busy
    power shared equally among the spans running at each instant); ``partial`` means
    part of the span had no measurement (it was announced late, or its device stopped
    answering) and the figure is a lower estimate with no bound; ``estimated`` means
    part of it was extrapolated (it began before the device's first sample), and the
    bound covers anything from no power to the device's maximum there.

    ``prefill_energy_j`` and ``decode_energy_j``: the part of ``energy_j`` the span
    received before its first token (``[start, first token)``) and after it
    (``[first token, end)``); they sum to ``energy_j``. None when the span has no
    first-token time.
    """

    energy_j: float = 0.0
    gpu_s: float = 0.0
    uncertainty_j: float = 0.0
    partial: bool = False
    estimated: bool = False
    prefill_energy_j: float | None = None
    decode_energy_j: float | None = None


class OpenSpan:
    """A span the resolver knows of, with the running integrals' values at its start."""

    __slots__ = (
        "key",
        "start_s",
        "end_s",
        "energy_at_start_j",
        "gpu_s_at_start",
        "bound_at_start_j",
        "started",
        "partial",
    )

    def __init__(self, key: Hashable, start_s: float) -> None:
        self.key = key
        self.start_s = start_s
        self.end_s = math.inf
        self.energy_at_start_j = 0.0
        self.gpu_s_at_start = 0.0
        self.bound_at_start_j = 0.0
        self.started = False
        self.partial = False


Event = tuple[float, int, int, OpenSpan]  # (time s, START or END, sequence, span)


class RunningShares:
    """The spans open on one device, and what the running ones have received so far."""

    def __init__(self) -> None:
        self.spans: dict[Hashable, OpenSpan] = {}
        self.active = 0  # spans running at the sweep position
        self._energy_per_span_j = 0.0  # running integrals per active span since a rebase
        self._gpu_s_per_span = 0.0
        self._bound_per_span_j = 0.0

    def sweep(
        self,
        interval: Interval,
        busy_j: float,
        bound_j: float,
        events: list[Event],
        end_index: int,
        estimated_before_s: float,
        done: dict[Hashable, SpanShare],
    ) -> None:
        """Share ``busy_j`` (bound ``bound_j``) of ``interval`` among the spans running in
        it; ``events[:end_index]`` are the starts and ends inside it. Spans that end go to
        ``done`` (``estimated`` when they began before ``estimated_before_s``)."""
        t0, t1 = interval.start_s, interval.end_s
        busy_s = interval.busy_s
        energy_per_s = busy_j / busy_s if busy_s > 0 else 0.0
        bound_per_s = bound_j / busy_s if busy_s > 0 else 0.0
        energy = self._energy_per_span_j
        gpu_s = self._gpu_s_per_span
        bound = self._bound_per_span_j
        active = self.active
        cursor = t0
        for j in range(end_index):
            t, kind, _, span = events[j]
            if active > 0:
                share_s = (t - cursor) / active
                energy += energy_per_s * share_s
                gpu_s += share_s
                bound += bound_per_s * share_s
            cursor = t
            if kind == START:
                span.energy_at_start_j = energy
                span.gpu_s_at_start = gpu_s
                span.bound_at_start_j = bound
                span.started = True
                active += 1
            else:
                active -= 1
                del self.spans[span.key]
                done[span.key] = SpanShare(
                    energy - span.energy_at_start_j,
                    gpu_s - span.gpu_s_at_start,
                    bound - span.bound_at_start_j,
                    span.partial,
                    span.start_s < estimated_before_s,
                )
        if active > 0:
            share_s = (t1 - cursor) / active
            energy += energy_per_s * share_s
            gpu_s += share_s
            bound += bound_per_s * share_s
        else:
            energy = gpu_s = bound = 0.0  # nobody holds a start value: rebase (precision)
        self._energy_per_span_j, self._gpu_s_per_span, self._bound_per_span_j = energy, gpu_s, bound
        self.active = active

    def release(self, ended_by_s: float) -> dict[Hashable, SpanShare]:
        """The spans that ended by ``ended_by_s``, with what they have so far (partial)."""
        done = {
            key: self.share_so_far(span)
            for key, span in self.spans.items()
            if span.end_s <= ended_by_s
        }
        for key in done:
            self.active -= self.spans.pop(key).started
        return done

    def finish_open(self, done: dict[Hashable, SpanShare]) -> None:
        """At exit: spans not complete get what they have so far, flagged partial."""
        for key, span in self.spans.items():
            done[key] = self.share_so_far(span)
        self.spans.clear()
        self.active = 0

    def share_so_far(self, span: OpenSpan) -> SpanShare:
        """What a span not yet complete has received, flagged partial."""
        if not span.started:
            return SpanShare(partial=True)
        return SpanShare(
            self._energy_per_span_j - span.energy_at_start_j,
            self._gpu_s_per_span - span.gpu_s_at_start,
            self._bound_per_span_j - span.bound_at_start_j,
            partial=True,
        )
