"""The resolver: sweeps one device's sampling intervals and hands each one out.

Intervals are resolved in time order once their neighbours are known; each one's
energy is split into busy and idle parts (``footprint.attribution.energy``) and the busy
part is shared among the spans running in it (``footprint.attribution.shares``).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Hashable

from footprint.attribution.energy import BusyEnergy, EnergyPiece, Interval
from footprint.attribution.idle import IdleEstimate, IdlePowerEstimator
from footprint.attribution.placement import SpanTokens, placement
from footprint.attribution.shares import END, START, Event, OpenSpan, RunningShares, SpanShare
from footprint.attribution.tokens import PHASE, SERVE, TokenShares, TokenSpan
from footprint.attribution.weights import TokenWeights
from footprint.sampling.timeline import Sample

# An interval shared by calls and idle time waits for up to this many later intervals
# (and at most this long behind the resolution horizon) while the device's idle power is
# not known (a process that just started), instead of splitting its energy by time.
WAIT_FOR_IDLE = 10
WAIT_FOR_IDLE_S = 1.0

# Spans that began before the device's first sample (the runtime starts its sensors off
# the caller's thread) are measured from their start when they began at most this long
# before it: the counter is extended back at the power of the first interval.
MAX_EXTRAPOLATION_S = 10.0

# The attribution rules: ``equal`` shares each instant's busy energy equally among the
# spans running; ``tokens`` by their token work (``footprint.attribution.tokens``);
# ``auto`` splits equally until a span ends with token counts, then by tokens.
RULES = ("auto", "tokens", "equal")

# Under the token rule an interval waits for the spans running in it to end (their token
# counts come with their end), for at most this long (and ``max_wait_s``): past it, the
# spans still running are charged for that interval as spans with no tokens.
MAX_TOKEN_WAIT_S = 600.0

# The default rule holds a window that filled up (a busy server's) for the weights this
# long (s of intervals), not ``tokens.HOLD_S``: its records wait less. A window that
# closed at a moment with no call running is not held (its few calls are shared alike
# by any weights).
AUTO_HOLD_S = 240.0


class DeviceResolver:
    """Streaming resolver for one device.

    Feed it samples (``add_samples``) and spans (``begin``/``end``) in any order;
    ``resolve`` hands out every interval whose neighbours are known and returns the spans
    that are complete (a sample after their end exists). ``idle`` and ``measured``
    collect the idle energy and the total counter delta per resolved interval. Odd input
    (time going backwards, negative deltas, spans ending before they start, spans
    announced after their start was resolved) never raises: it is counted in
    ``oddities`` and energy stays conserved.
    """

    def __init__(
        self,
        estimator: IdlePowerEstimator | None = None,
        extrapolate_start: bool = False,
        *,
        max_power_w: float | None = None,
        counter_period_s: float | None = None,
        counter_window_s: float | None = None,
        rule: str = "equal",
        max_wait_s: float = MAX_TOKEN_WAIT_S,
    ) -> None:
        """``max_power_w``: the most the device draws (bounds extrapolated stretches);
        ``counter_window_s`` of each ``counter_period_s``: how much of each period the
        counter observes (None: all of it), which bounds what it cannot see. ``rule``:
        one of ``RULES``; ``max_wait_s``: the most an interval waits for the token counts
        of the spans running in it (``MAX_TOKEN_WAIT_S`` at most)."""
        if rule not in RULES:
            raise ValueError(f"attribution rule must be one of {', '.join(RULES)}, got {rule!r}")
        self._samples: list[Sample] = []
        self.extrapolate_start = extrapolate_start
        self.rule = rule
        self.max_wait_s = min(max_wait_s, MAX_TOKEN_WAIT_S)
        self.weights = TokenWeights()
        self._shares: RunningShares | TokenShares = (
            self._token_shares() if rule == "tokens" else RunningShares()
        )
        self._running: list[tuple[float, int, TokenSpan]] = []  # heap: spans not ended
        self._events: list[Event] = []  # sorted, not yet swept
        self._new_events: list[Event] = []
        self._seq = 0
        self._step_s: float | None = None  # the server's last step time seen (token rule)
        self._span_ended = False  # whether a span has ended (``auto``: the rule is decided)
        self.estimator = estimator or IdlePowerEstimator(part_time=bool(counter_window_s))
        self.first_sample_s: float | None = None
        self.resolved_until_s: float | None = None
        self.idle: list[EnergyPiece] = []
        self.measured: list[EnergyPiece] = []
        self.oddities: dict[str, int] = {
            "non_increasing_samples": 0,
            "negative_deltas": 0,
            "below_idle_intervals": 0,
            "unknown_idle_intervals": 0,
            "instant_busy_intervals": 0,  # busy less than a nanosecond: no power told
            "ends_before_start": 0,
            "late_starts": 0,
            "extrapolated_starts": 0,  # began before the first sample, measured back to it
            "late_ends": 0,
            "expired_spans": 0,  # released because the device stopped reporting
            # The token rule: intervals split equally while its weights were not known
            # yet, and intervals handed out before a span running in them had ended.
            "token_equal_intervals": 0,
            "token_wait_expired": 0,
        }
        self._busy = BusyEnergy(self.oddities, max_power_w, counter_period_s, counter_window_s)

    @property
    def timing_uncertainty_s(self) -> float:
        """How far a sample's time may be off (the sampler's figure, set by the runtime)."""
        return self._busy.timing_uncertainty_s

    @timing_uncertainty_s.setter
    def timing_uncertainty_s(self, value_s: float) -> None:
        self._busy.timing_uncertainty_s = value_s

    @property
    def counter_period_s(self) -> float | None:
        """The counter's update period (given, or learned by the sampler)."""
        return self._busy.counter_period_s

    @counter_period_s.setter
    def counter_period_s(self, value_s: float | None) -> None:
        self._busy.counter_period_s = value_s

    # -- input ---------------------------------------------------------------------
    def add_samples(self, samples: list[Sample]) -> None:
        """Append samples (monotonic time, cumulative J); out-of-order ones are counted."""
        for t_s, energy_j in samples:
            if self._samples and t_s <= self._samples[-1][0]:
                self.oddities["non_increasing_samples"] += 1
                continue
            if not (math.isfinite(t_s) and math.isfinite(energy_j)):
                self.oddities["non_increasing_samples"] += 1
                continue
            if self.first_sample_s is None:
                self.first_sample_s = t_s
                self.resolved_until_s = t_s
            self._samples.append((t_s, energy_j))

    @property
    def by_tokens(self) -> bool:
        """Whether intervals are shared by the token rule now (``auto``: once a span
        ended with token counts)."""
        return isinstance(self._shares, TokenShares)

    def begin(self, key: Hashable, start_s: float) -> None:
        """A span started at ``start_s``; it takes its share of every interval from then."""
        spans = self._shares.spans
        if key in spans:
            return
        self._seq += 1
        if isinstance(self._shares, TokenShares):
            token_span = TokenSpan(key, start_s)
            self._shares.spans[key] = token_span
            heapq.heappush(self._running, (start_s, self._seq, token_span))
            self._new_events.append((start_s, START, self._seq, token_span))  # type: ignore[arg-type]
            return
        span = OpenSpan(key, start_s)
        self._shares.spans[key] = span
        self._new_events.append((start_s, START, self._seq, span))

    def end(self, key: Hashable, end_s: float, tokens: SpanTokens | None = None) -> None:
        """The span ended; it completes once intervals up to ``end_s`` are resolved.
        ``tokens``: its token counts and time to first token, for the token rule."""
        span = self._shares.spans.get(key)
        if span is None or span.end_s != math.inf:
            return
        self._span_ended = True
        if tokens is not None and self.rule == "auto" and not self.by_tokens:
            self._switch_to_tokens()
            span = self._shares.spans[key]
        if end_s < span.start_s:
            self.oddities["ends_before_start"] += 1
            end_s = span.start_s
        span.end_s = end_s
        self._seq += 1
        self._new_events.append((end_s, END, self._seq, span))  # type: ignore[arg-type]
        if isinstance(span, OpenSpan) and tokens is not None and tokens.ttft_s is not None:
            assert isinstance(self._shares, RunningShares)
            self._shares.first_token(span, span.start_s + tokens.ttft_s)
        if isinstance(span, TokenSpan) and tokens is not None:
            self._place(span, end_s, tokens)

    def _place(self, span: TokenSpan, end_s: float, tokens: SpanTokens) -> None:
        """The token rule: where ``span``'s tokens go in time (``phases``), and the
        events of its service start and first token."""
        span.tokens = tokens
        placed, step_s = placement(
            span.start_s, end_s, tokens, self._step_s, self.weights.prefill_s_per_token
        )
        if step_s is not None:
            self._step_s = step_s
        span.placed = placed
        if isinstance(self._shares, TokenShares):  # a span started before its tokens
            self._shares.weigh_started(span)
        if placed is not None and placed.serve_s > span.start_s:
            self._seq += 1
            self._new_events.append((placed.serve_s, SERVE, self._seq, span))  # type: ignore[arg-type]
        if tokens.ttft_s is not None:
            first_s = span.first_token_s = min(span.start_s + tokens.ttft_s, end_s)
            # its decode phase made one token a step: the server's step time
            self.weights.add_span(first_s, end_s, tokens.output_tokens - 1)
            if span.start_s < first_s < end_s:
                self._seq += 1
                self._new_events.append((first_s, PHASE, self._seq, span))  # type: ignore[arg-type]

    def _token_shares(self) -> TokenShares:
        shares = TokenShares()
        shares.relative_spread = self.weights.relative_spread
        if self.rule == "auto":
            # The default rule holds only full windows, and not as long: until the
            # weights settle, the others are shared by the last fit (or the step time,
            # or split equally).
            shares.hold_s = AUTO_HOLD_S
            shares.hold_full_only = True
        return shares

    def _switch_to_tokens(self) -> None:
        """``auto``: the first span with token counts ended; from the sweep's position on,
        intervals are shared by the token rule. The spans running carry what the equal
        split gave them so far, and are charged as spans with no tokens from here until
        they end with theirs (``TokenShares.weigh_started``)."""
        old = self._shares
        assert isinstance(old, RunningShares)
        new = self._token_shares()
        zero = new.snap()
        swapped: dict[Hashable, TokenSpan] = {}
        for key, span in old.spans.items():
            token_span = TokenSpan(key, span.start_s)
            token_span.end_s, token_span.partial = span.end_s, span.partial
            if span.started:
                share = old.share_so_far(span)
                token_span.carried = (share.energy_j, share.gpu_s, share.uncertainty_j)
                token_span.carried_until_s = self.resolved_until_s or -math.inf
                token_span.started, token_span.at, token_span.first = True, zero, zero
            if span.end_s == math.inf:
                self._seq += 1
                heapq.heappush(self._running, (span.start_s, self._seq, token_span))
            swapped[key] = token_span
        new.spans, new.active = swapped, old.active
        self._events = [(t, k, q, swapped[s.key]) for t, k, q, s in self._events]  # type: ignore[misc]
        self._new_events = [(t, k, q, swapped[s.key]) for t, k, q, s in self._new_events]  # type: ignore[misc]
        self._shares = new

    def _token_horizon_s(self, until_s: float) -> float:
        """Under the token rule: where intervals stop waiting for their spans' tokens."""
        running = self._running
        while running and running[0][2].end_s != math.inf:
            heapq.heappop(running)
        if len(running) > 2 * len(self._shares.spans) + 1024:  # ended ones pile up behind
            running[:] = [entry for entry in running if entry[2].end_s == math.inf]
            heapq.heapify(running)
        if not running:
            return until_s
        start_s = running[0][0]
        if start_s < until_s - self.max_wait_s:
            self.oddities["token_wait_expired"] += 1
            return until_s - self.max_wait_s
        return min(start_s, until_s)

    def _undecided_horizon_s(self, until_s: float) -> float:
        """``auto`` before any span ended: where intervals stop waiting to learn which
        rule shares them. The first span to end says (with token counts: the token rule
        from the start; without, the equal split), so the calls running then are not
        split equally until the switch (a light call that ran beside heavy ones for a
        minute got 8× its energy). No record waits for it: none is complete before a
        span ends."""
        starts = [span.start_s for span in self._shares.spans.values()]
        if not starts:
            return until_s
        start_s = min(starts)
        if start_s < until_s - self.max_wait_s:
            return until_s - self.max_wait_s
        return min(start_s, until_s)

    @property
    def open_spans(self) -> int:
        return len(self._shares.spans)

    # -- resolving -----------------------------------------------------------------
    def resolve(
        self, until_s: float = math.inf, drain_all: bool = False, final: bool = False
    ) -> dict[Hashable, SpanShare]:
        """Attribute every interval ending by ``until_s`` that can be; return complete spans.

        The caller guarantees that every span begun before ``until_s`` has been announced
        with ``begin`` (and ``end`` if it ended). The last interval waits for the next
        one (its power helps where idle power is not known yet), unless ``drain_all`` (a
        flush). ``final`` (exit) also returns the spans that could not complete, as
        partial, with what they had received so far.
        """
        done: dict[Hashable, SpanShare] = {}
        self._extend_back()
        self._merge_new_events()
        if self.by_tokens and not (drain_all or final):
            until_s = self._token_horizon_s(until_s)
        elif self.rule == "auto" and not self._span_ended and not (drain_all or final):
            until_s = self._undecided_horizon_s(until_s)
        last = len(self._samples) - (1 if drain_all or final else 2)
        lookahead: list[Interval] | None = None
        lookahead_from = 0
        resolved = 0
        for i in range(max(last, 0)):
            (t0, e0), (t1, e1) = self._samples[i], self._samples[i + 1]
            if t1 > until_s:
                break
            interval = Interval(t0, t1, e1 - e0)
            start, _ = self._scan(interval)
            estimate = self.estimator.estimate()
            if estimate is None and 0 < interval.busy_s < t1 - t0:
                if lookahead is None:
                    lookahead, lookahead_from = self._lookahead(i), i
                this_and_ahead = lookahead[i - lookahead_from :]
                ahead = this_and_ahead[1:]
                estimate = self.estimator.estimate(
                    [(x.busy_fraction, x.power_w, x.end_s - x.start_s) for x in this_and_ahead]
                )
                waiting = len(ahead) < WAIT_FOR_IDLE and t1 > until_s - WAIT_FOR_IDLE_S
                if estimate is None and waiting and not (drain_all or final):
                    break  # idle power unknown yet: the next intervals may tell it
                if estimate is None:
                    neighbour = ahead[0] if ahead else None
                    self._apply(interval, start, None, neighbour, done)
                    resolved = i + 1
                    continue
            self._apply(interval, start, estimate, None, done)
            resolved = i + 1
        if resolved:
            del self._samples[:resolved]
        if isinstance(self._shares, TokenShares) and drain_all and not final:
            self._shares.close_window(done)  # a flush: the spans ended so far complete
        if final:  # the spans not complete get what they have so far, flagged partial
            self._shares.finish_open(done)
            self._events.clear()
        if isinstance(self._shares, TokenShares):
            self.oddities["token_equal_intervals"] = self._shares.equal_intervals
        return done

    def _extend_back(self) -> None:
        """With ``extrapolate_start``, before anything is resolved: spans that began
        shortly before the first sample get a sample at the earliest of their starts,
        extrapolated at the first interval's power. That interval's energy (in
        ``measured`` too, so that conservation holds) is an estimate: its bound is all of it.
        """
        samples = self._samples
        if (
            not self.extrapolate_start
            or len(samples) < 2
            or self.resolved_until_s != self.first_sample_s
        ):
            return
        (t0, e0), (t1, e1) = samples[0], samples[1]
        starts = [t for t, kind, _, _ in self._new_events if kind == START and t < t0]
        if not starts:
            return
        earliest_s = max(min(starts), t0 - MAX_EXTRAPOLATION_S)
        power_w = max(e1 - e0, 0.0) / (t1 - t0)
        samples.insert(0, (earliest_s, e0 - power_w * (t0 - earliest_s)))
        self.first_sample_s = self.resolved_until_s = earliest_s
        self._busy.extrapolated_until_s = t0
        self.oddities["extrapolated_starts"] += sum(t >= earliest_s for t in starts)

    def _merge_new_events(self) -> None:
        new = self._new_events
        if not new:
            return
        floor_s = self.resolved_until_s
        if floor_s is not None:
            for n in [n for n, event in enumerate(new) if event[0] < floor_s]:
                _, kind, seq, span = new[n]
                # Began (or ended) inside what is already resolved: it only takes its
                # share from here on, and says so.
                if kind == START:
                    self.oddities["late_starts"] += 1
                    span.partial = True
                elif kind == END:
                    self.oddities["late_ends"] += 1
                elif kind == PHASE:  # its first token is not where it said
                    span.first_token_s = None  # type: ignore[attr-defined]
                new[n] = (floor_s, kind, seq, span)
        new.sort()
        events = self._events
        events.extend(new)
        if len(events) > len(new) and events[-len(new) - 1] > new[0]:
            events.sort()  # the two sorted runs interleave: one merge
        new.clear()

    def _scan(self, interval: Interval, j: int = 0, active: int | None = None) -> tuple[int, int]:
        """Fill ``interval``'s busy time and edge counts from the events from index ``j``
        on, with ``active`` spans running at its start (default: the sweep's); returns the
        index after its events and the spans running at its end. Nothing is swept."""
        events, t1 = self._events, interval.end_s
        active = self._shares.active if active is None else active
        cursor, busy_s, changes, first = interval.start_s, 0.0, 0, j
        after = len(events)
        for k in range(j, after):
            t, kind, _, _ = events[k]
            if t > t1:
                after = k
                break
            if active > 0:
                busy_s += t - cursor
                changes += kind == START or active > 1
            cursor = t
            if kind == START:
                active += 1
            elif kind == END:
                active -= 1
        j = after
        if active > 0:
            busy_s += t1 - cursor
        interval.busy_s = busy_s
        interval.edges = j - first
        interval.busy_changes = changes
        return j, active

    def _lookahead(self, first: int) -> list[Interval]:
        """Busy fractions of the buffered intervals from ``first`` on, without sweeping."""
        out = []
        j, active = 0, self._shares.active
        for i in range(first, len(self._samples) - 1):
            (t0, e0), (t1, e1) = self._samples[i], self._samples[i + 1]
            interval = Interval(t0, t1, e1 - e0)
            j, active = self._scan(interval, j, active)
            out.append(interval)
        return out

    def _apply(
        self,
        interval: Interval,
        end_index: int,
        estimate: IdleEstimate | None,
        neighbour: Interval | None,
        done: dict[Hashable, SpanShare],
    ) -> None:
        """Hand ``interval`` out: its busy energy to the spans running in it (``end_index``
        events inside it), the rest to idle; learn idle power from it."""
        t0, t1 = interval.start_s, interval.end_s
        busy_j, bound_j = self._busy.split(interval, estimate, neighbour)
        extrapolated_until_s = self._busy.extrapolated_until_s
        events = self._events
        shares = self._shares
        if isinstance(shares, TokenShares):
            self._sweep_tokens(shares, interval, busy_j, bound_j, end_index, estimate, done)
        else:
            shares.sweep(interval, busy_j, bound_j, events, end_index, extrapolated_until_s, done)
        del events[:end_index]
        self.measured.append(EnergyPiece(t0, t1, interval.energy_j))
        idle_j = interval.energy_j - busy_j
        if idle_j:
            self.idle.append(EnergyPiece(t0, t1, idle_j))
        if interval.energy_j >= 0 and t1 > extrapolated_until_s:
            # Extrapolated intervals are guesses: they never teach the idle power.
            self.estimator.observe(interval.busy_fraction, interval.power_w, t1 - t0)
        self._busy.handed_out(interval, busy_j)
        self.resolved_until_s = t1

    def _sweep_tokens(
        self,
        shares: TokenShares,
        interval: Interval,
        busy_j: float,
        bound_j: float,
        end_index: int,
        estimate: IdleEstimate | None,
        done: dict[Hashable, SpanShare],
    ) -> None:
        """The token rule's sweep of ``interval``; a measured one teaches the weights."""
        theta = self.weights.theta
        shares.fallback = self.weights.fallback
        shares.step_time = self.weights.step_time
        events = self._events
        held = shares.sweep(
            interval,
            busy_j,
            bound_j,
            events,  # type: ignore[arg-type]
            end_index,
            self._busy.extrapolated_until_s,
            done,
            theta,
        )
        # Busy throughout, its energy is all busy energy whatever the idle power: a
        # server busy from the first sample teaches the weights.
        measured = (
            (estimate is not None or interval.busy_throughout)
            and interval.energy_j >= 0
            and interval.end_s > self._busy.extrapolated_until_s
        )
        t0, t1 = interval.start_s, interval.end_s
        if measured and held.busy_s > 0:
            self.weights.observe(held, busy_j, t0, t1)
        elif held.busy_s > 0:
            self.weights.observe(held._replace(unweighed_s=math.inf), busy_j, t0, t1)
        self.oddities["token_equal_intervals"] = shares.equal_intervals

    def expire(self, ended_by_s: float) -> dict[Hashable, SpanShare]:
        """The device stopped reporting: release the spans that ended by ``ended_by_s``.

        They get what they had received (flagged partial) and leave the sweep, so the
        records of a call that also ran on other devices are not held back by this one.
        """
        self._merge_new_events()
        shares = self._shares
        if isinstance(shares, TokenShares):
            done: dict[Hashable, SpanShare] = {}
            released = shares.release(ended_by_s, done)
        else:
            done = shares.release(ended_by_s)
            released = len(done)
        if done:
            self._events = [e for e in self._events if e[3].key not in done]
            self.oddities["expired_spans"] += released
        return done
