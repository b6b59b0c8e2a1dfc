"""The spans being resolved, from their announcement to the devices' resolvers to their end.

Each device a span runs on gives it a share; once every one has, the span is complete
(a record), unless it was abandoned or still running at exit: then it is lost, counted,
and its energy goes to the ledger's lost column (stored + idle + lost = measured).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from footprint.attribution import DeviceResolver, EnergyPiece, SpanShare
from footprint.attribution.placement import span_tokens
from footprint.runtime.devices import DeviceSlots
from footprint.runtime.idle import IdleLedger
from footprint.runtime.spans import EndedSpan, SpanQueue


class PendingSpan:
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


Complete = list[tuple[int, PendingSpan]]  # (span id, span) of spans ready for a record


class PendingSpans:
    """The spans of ``queue`` the resolvers know, by span id.

    ``settle`` is told the id of each ended span closed without a record (abandoned or
    lost); ``count_loss`` counts what is lost where losses are kept.
    """

    def __init__(
        self,
        queue: SpanQueue,
        ledger: IdleLedger,
        count_loss: Callable[[str, int], None],
        warn_once: Callable[[str, str], None],
        settle: Callable[[int], None],
    ) -> None:
        self.by_id: dict[int, PendingSpan] = {}
        self._queue = queue
        self._ledger = ledger
        self._count_loss = count_loss
        self._warn_once = warn_once
        self._settle = settle
        self._devices: DeviceSlots | None = None
        self._resolvers: list[DeviceResolver] = []
        self._abandoned: dict[int, None] = {}  # ids closed as abandoned, still running
        self._to_abandon: deque[int] = deque()  # asked from outside (``abandon``)
        self.abandoned_spans = 0
        self.running_at_exit = 0

    def attach(self, devices: DeviceSlots, resolvers: list[DeviceResolver]) -> None:
        """The devices are open: one resolver per slot."""
        self._devices = devices
        self._resolvers = resolvers

    def abandon(self, span_id: int) -> None:
        """Close a running span as abandoned at the next ``feed_running``."""
        self._to_abandon.append(span_id)

    def ended_spans(self) -> list[EndedSpan]:
        """The spans that ended and wait for their shares."""
        return [p.span for p in list(self.by_id.values()) if p.span is not None]

    def _announce(self, span_id: int, start_s: float, gpus: tuple | None) -> PendingSpan:
        pending = self.by_id.get(span_id)
        if pending is None:
            assert self._devices is not None
            devices = self._devices.devices_of(gpus)
            pending = self.by_id[span_id] = PendingSpan(start_s, devices)
            for slot in devices:
                self._resolvers[slot].begin(span_id, start_s)
        return pending

    def feed_running(
        self, inflight: dict[int, tuple[float, tuple | None]], now_s: float, max_span_age_s: float
    ) -> None:
        """Announce the running spans; abandon those older than ``max_span_age_s`` or
        asked to be."""
        abandon_before_s = now_s - max_span_age_s
        to_abandon = set()
        while self._to_abandon:
            to_abandon.add(self._to_abandon.popleft())
        for span_id, (start_s, gpus) in inflight.items():
            pending = self._announce(span_id, start_s, gpus)
            if (start_s < abandon_before_s or span_id in to_abandon) and not pending.abandoned:
                self._abandon(span_id, pending, now_s, max_span_age_s)

    def feed_ended(self, ended: list[EndedSpan]) -> Complete:
        """End the spans on their resolvers; returns those no device measures (complete
        at once)."""
        complete = []
        for span in ended:
            if self._abandoned and span.span_id in self._abandoned:
                del self._abandoned[span.span_id]  # ended at last: already counted
                self._settle(span.span_id)
                continue
            pending = self._announce(span.span_id, span.start_s, span.gpus)
            pending.span = span
            if not pending.devices:  # nothing measures it: a record right away
                complete.append((span.span_id, self.by_id.pop(span.span_id)))
                continue
            tokens = span_tokens(span.input_tokens, span.output_tokens, span.ttft_s)
            for slot in pending.devices:
                self._resolvers[slot].end(span.span_id, span.end_s, tokens)
        return complete

    def collect(self, until_s: float, drain_all: bool, final: bool, stale: set[int]) -> Complete:
        """Resolve each device up to ``until_s`` (``stale`` slots: expired, their spans
        partial); returns the spans every device of which has given its share. Idle
        energy and what is lost go to the ledger; ``final``: every span left is lost."""
        assert self._devices is not None
        complete: Complete = []
        for slot, resolver in enumerate(self._resolvers):
            done = resolver.resolve(until_s, drain_all=drain_all, final=final)
            if slot in stale:
                done.update(resolver.expire(until_s))
            self._take_shares(slot, done, complete)
            self._ledger.collect(self._devices.by_slot[slot].uuid, resolver)
        if final:
            for pending in self.by_id.values():  # devices that never answered
                self._lose(pending)
            self.by_id.clear()
        return complete

    def _take_shares(self, slot: int, done: dict, complete: Complete) -> None:
        """The shares device ``slot`` resolved; a span given all its shares is complete,
        or lost if it was running at exit or abandoned."""
        for span_id, share in done.items():
            pending = self.by_id.get(span_id)
            if pending is None:
                continue
            pending.shares[slot] = share
            if len(pending.shares) == len(pending.devices):
                del self.by_id[span_id]
                if pending.span is not None and not pending.abandoned:
                    complete.append((span_id, pending))
                else:  # running at exit, or abandoned: never a record
                    self._lose(pending)

    def _abandon(
        self, span_id: int, pending: PendingSpan, end_s: float, max_span_age_s: float
    ) -> None:
        """Close a call that ran past ``max_span_age_s`` (a generator never closed, a
        leaked ``Query``): its energy so far goes to the lost bucket, counted."""
        pending.abandoned = True
        self._queue.inflight.pop(span_id, None)
        self._abandoned[span_id] = None
        if len(self._abandoned) > self._queue.max_pending:  # bounded: forget the oldest ids
            del self._abandoned[next(iter(self._abandoned))]
        self.abandoned_spans += 1
        self._count_loss("abandoned_spans", 1)
        self._warn_once(
            "abandoned",
            "footprint: a call ran longer than max_span_age_s="
            f"{max_span_age_s:g} s (a generator never closed?) or its process "
            "went away; it is closed as abandoned, its energy counted as lost "
            "(stats()['abandoned_spans'])",
        )
        if not pending.devices:
            del self.by_id[span_id]
        for slot in pending.devices:
            self._resolvers[slot].end(span_id, end_s)

    def _lose(self, pending: PendingSpan) -> None:
        """Energy given to a call that is never stored goes to the lost bucket per device
        and minute, and the call is counted."""
        if not pending.abandoned:
            self.running_at_exit += 1
            self._count_loss("running_at_exit", 1)
        if pending.span is not None:
            self._settle(pending.span.span_id)
        assert self._devices is not None
        devices = self._devices.by_slot
        for slot, share in pending.shares.items():
            if not share.energy_j:
                continue
            resolver = self._resolvers[slot]
            end_s = resolver.resolved_until_s or pending.start_s
            if pending.span is not None:
                end_s = min(end_s, pending.span.end_s)
            piece = EnergyPiece(pending.start_s, max(end_s, pending.start_s + 1e-9), share.energy_j)
            self._ledger.add_lost(devices[slot].uuid, piece)
