"""The running integrals that share an interval's busy energy among the spans running.

Per device, per active span since the last rebase: energy (J), GPU-seconds and the
energy's bound (J), each busy stretch shared equally among the spans running in it. A
span's share is the difference of an integral between its end and its start, so cost
does not depend on how many spans run at once: each start and end is one step.
"""

from __future__ import annotations

import math
from bisect import bisect_right
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
        "first_s",
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
        self.first_s: float | None = None  # its first token, once its end told it


Event = tuple[float, int, int, OpenSpan]  # (time s, START or END, sequence, span)


class RunningShares:
    """The spans open on one device, and what the running ones have received so far."""

    def __init__(self) -> None:
        self.spans: dict[Hashable, OpenSpan] = {}
        self.active = 0  # spans running at the sweep position
        self._energy_per_span_j = 0.0  # running integrals per active span since a rebase
        self._gpu_s_per_span = 0.0
        self._bound_per_span_j = 0.0
        # The per-span energy integral at each event and interval edge since the rebase
        # (it is linear in between): what a span had received by its first token, which
        # is only told with its end, after the sweep may have passed it.
        self._history_s: list[float] = []
        self._history_j: list[float] = []
        self._history_limit = 4096

    def first_token(self, span: OpenSpan, first_s: float) -> None:
        """``span``'s first token came at ``first_s`` (told with its end): its energy
        splits there into prefill and decode. Ignored outside the span."""
        if span.start_s < first_s < span.end_s:
            span.first_s = first_s

    def _energy_at(self, t_s: float) -> float:
        """The per-span energy integral at ``t_s`` (inside the recorded history)."""
        times, values = self._history_s, self._history_j
        i = bisect_right(times, t_s)
        if i == 0:
            return values[0] if values else 0.0
        if i == len(times):
            return values[-1]
        t0, t1 = times[i - 1], times[i]
        e0, e1 = values[i - 1], values[i]
        if t1 <= t0:
            return e1
        return e0 + (e1 - e0) * (t_s - t0) / (t1 - t0)

    def _phases(self, span: OpenSpan, energy_j: float) -> tuple[float | None, float | None]:
        """(prefill J, decode J) of a span that ends now with ``energy_j``; (None, None)
        without a first-token time, or where part of it was not measured."""
        if span.first_s is None or span.partial:
            return None, None
        return split_phases(energy_j, self._energy_at(span.first_s) - span.energy_at_start_j)

    def _record(self, t_s: float, energy_j: float) -> None:
        self._history_s.append(t_s)
        self._history_j.append(energy_j)

    def _prune_history(self) -> None:
        """Forget the history before the earliest start of the spans running."""
        starts = [span.start_s for span in self.spans.values() if span.started]
        keep_from = bisect_right(self._history_s, min(starts)) - 1 if starts else 0
        if keep_from > 0:
            del self._history_s[:keep_from]
            del self._history_j[:keep_from]
        self._history_limit = max(4096, 2 * len(self._history_s))

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
        # A stretch gets its fraction of the busy time: never J/s, which can overflow
        # over a tiny busy time.
        energy = self._energy_per_span_j
        gpu_s = self._gpu_s_per_span
        bound = self._bound_per_span_j
        active = self.active
        cursor = t0
        for j in range(end_index):
            t, kind, _, span = events[j]
            if active > 0:
                share_s = (t - cursor) / active
                if busy_s > 0:
                    energy += busy_j * (share_s / busy_s)
                    bound += bound_j * (share_s / busy_s)
                gpu_s += share_s
            cursor = t
            self._record(t, energy)
            if kind == START:
                span.energy_at_start_j = energy
                span.gpu_s_at_start = gpu_s
                span.bound_at_start_j = bound
                span.started = True
                active += 1
            else:
                active -= 1
                del self.spans[span.key]
                energy_j = energy - span.energy_at_start_j
                prefill_j, decode_j = self._phases(span, energy_j)
                done[span.key] = SpanShare(
                    energy_j,
                    gpu_s - span.gpu_s_at_start,
                    bound - span.bound_at_start_j,
                    span.partial,
                    span.start_s < estimated_before_s,
                    prefill_j,
                    decode_j,
                )
        if active > 0:
            share_s = (t1 - cursor) / active
            if busy_s > 0:
                energy += busy_j * (share_s / busy_s)
                bound += bound_j * (share_s / busy_s)
            gpu_s += share_s
            self._record(t1, energy)
            if len(self._history_s) > self._history_limit:
                self._prune_history()
        else:
            energy = gpu_s = bound = 0.0  # nobody holds a start value: rebase (precision)
            self._history_s.clear()
            self._history_j.clear()
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


def split_phases(energy_j: float, prefill_j: float) -> tuple[float, float]:
    """(prefill J, decode J) of a span's ``energy_j`` given what it had received by its
    first token, held inside [0, energy_j] (rounding) so that the two sum to it."""
    prefill_j = min(max(prefill_j, 0.0), energy_j) if energy_j > 0 else 0.0
    return prefill_j, energy_j - prefill_j
