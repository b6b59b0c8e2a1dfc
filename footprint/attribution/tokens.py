"""The token-aware rule's running integrals: each interval's busy energy shared by the
spans' predicted powers instead of equally.

A span with token counts has a prefill phase (start to first token) that carries its
input tokens and a decode phase (first token to end) that carries its output tokens, each
at a constant rate over its phase. The running set's predicted busy power is

    P(t) = F·steps/s + α·Σ prefill rate + β·Σ decode rate + γ·Σ decode rate × context

(``TokenWeights`` learns F, α, β, γ from the counter; ``steps/s``, the server's step
rate, is the mean decode rate of the spans decoding: each makes a token a step), and
span ``i``'s own part of it is ``p_i = F·steps/s / N + (its α, β, γ terms)``: the fixed
energy of a step shared equally among the ``N`` spans running (the Shapley value of the
additive model), the rest its own. A span with no token counts (or whose counts are not
known when its time is handed out) is charged the mean ``p`` of the spans with counts in
the window before: where no span has counts, or the weights are not known yet, the rule
is the equal split. Each stretch's busy energy is shared in
proportion to ``p_i / P``, so the shares of an instant sum to its busy energy exactly.

The busy energy is shared over windows of consecutive intervals (about ``WINDOW_S`` busy
seconds, or up to a moment with no span running), not interval by interval: a span's
share is ``K · ∫ p_i dt`` with ``K`` the window's busy energy over its predicted energy
``∫ P dt``. Locally the predicted power is a poor guide (a prompt's tokens are spread
over its time to first token, queueing included, and a GPU at its power cap draws the
same power whatever it runs), and normalising each short interval by it would charge a
call's own prompt against itself; over a window the prediction holds, and a call alone
in its window still gets exactly what the counter measured. The shares of a window sum
to its busy energy, so energy stays conserved exactly.

Each phase's rates are constant, so a span's share is its rates times differences of
running integrals (time, ``∫ dt/N``, ``∫ M dt``: ``M`` the mean token term) between its
phase edges, each scaled by its window's ``K`` once the window closes: O(1) per start,
first token and end, whatever the number of spans running, like ``RunningShares``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from typing import NamedTuple

from footprint.attribution.energy import Interval
from footprint.attribution.shares import END, START, SpanShare

WINDOW_S = 5.0  # busy seconds per window
MIN_PHASE_S = 1e-3  # a phase shorter than this is folded into the other one
FLOOR_W = 1e-6  # predicted power of any span with tokens, on top of its work (W)
PHASE = 2  # event kind: a span's first token (sorts after starts and ends at an instant)

Theta = tuple[float, float, float, float]  # F (J per step), α, β (J per token), γ (J/token²)


class SpanTokens(NamedTuple):
    """What a span says about its work: token counts and time to first token (s)."""

    input_tokens: int
    output_tokens: int
    ttft_s: float | None


def _count(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0 or value >= 2**40:
        return None
    return value


def span_tokens(input_tokens: object, output_tokens: object, ttft_s: object) -> SpanTokens | None:
    """The tokens a span's record would carry, or None where it has none (a count that is
    missing is 0 when the other is given: an embedding call answers no tokens)."""
    n_in, n_out = _count(input_tokens), _count(output_tokens)
    if n_in is None and n_out is None:
        return None
    ttft = ttft_s if isinstance(ttft_s, (int, float)) and math.isfinite(ttft_s) else None
    return SpanTokens(n_in or 0, n_out or 0, None if ttft is None or ttft < 0 else float(ttft))


def context_of(tokens: SpanTokens) -> float:
    """The mean context a decoded token is read against: the prompt and half the answer."""
    return tokens.input_tokens + tokens.output_tokens / 2.0


Rates = tuple[float, float, float]  # prefill tokens/s, decode tokens/s, decode tokens·ctx/s


def phases(start_s: float, end_s: float, tokens: SpanTokens) -> tuple[Rates, float, Rates] | None:
    """(rates of the first phase, time of the first token, rates of the second phase),
    or None for a span shorter than ``MIN_PHASE_S`` (its tokens cannot be placed in time:
    it is charged as a span with no tokens).

    The first token is made by the prefill; the decode phase makes the rest, each read
    against a context of the prompt and the answer so far (``input + output/2`` on
    average). Without a time to first token strictly inside the span, one phase carries
    all the tokens at constant rates (the first token time is then ``end_s``).
    """
    decode = max(tokens.output_tokens - 1, 0)
    context = context_of(tokens)
    duration_s = end_s - start_s
    ttft_s = tokens.ttft_s
    if duration_s < MIN_PHASE_S:
        return None
    first_s = start_s + ttft_s if ttft_s is not None else end_s
    if first_s - start_s >= MIN_PHASE_S and end_s - first_s >= MIN_PHASE_S:
        rate = decode / (end_s - first_s)
        prefill = (tokens.input_tokens / (first_s - start_s), 0.0, 0.0)
        return prefill, first_s, (0.0, rate, rate * context)
    rate = decode / duration_s
    return (tokens.input_tokens / duration_s, rate, rate * context), end_s, (0.0, 0.0, 0.0)


# (window, and within it: ∫ dt, ∫ steps/s / N dt, ∫ dt/N, ∫ k/N dt and ∫ k_bound/N dt of
# the equal split while the weights are not known, k an interval's busy power)
Snap = tuple[int, float, float, float, float, float]
# A stretch of a span's life: its rates (None: no known tokens), from and to snapshots.
Piece = tuple["Rates | None", Snap, Snap]


_ORIGIN: Snap = (0, 0.0, 0.0, 0.0, 0.0, 0.0)
# Which of a snapshot's integrals each running total grows with (1: ∫ dt, 2: ∫ steps/s /
# N dt, 3: ∫ dt/N, 4 and 5: the equal split's energy and bound).
_BY = (1, 1, 1, 2, 1, 1, 1, 1, 1, 2, 1, 1, 3, 4, 5)


class TokenSpan:
    """A span the token rule knows of: its phases, and the stretches of its life."""

    __slots__ = (
        "key",
        "start_s",
        "end_s",
        "partial",
        "started",
        "tokens",
        "placed",  # its phases (``phases``), once it ended with tokens
        "second",  # rates of the phase after its first token
        "weighed",  # its rates are in the running sums (known when it started)
        "rates",  # its current phase's rates
        "at",  # snapshot at its last edge
        "first",  # snapshot at its start
        "pieces",  # its past stretches
        "carried",  # (energy, gpu-s, bound) received under the equal split before
    )

    def __init__(self, key: Hashable, start_s: float) -> None:
        self.key = key
        self.start_s = start_s
        self.end_s = math.inf
        self.partial = False
        self.started = False
        self.tokens: SpanTokens | None = None
        self.placed: tuple[Rates, float, Rates] | None = None
        self.second: Rates = (0.0, 0.0, 0.0)
        self.weighed = False
        self.rates: Rates = (0.0, 0.0, 0.0)
        self.at: Snap = _ORIGIN
        self.first: Snap = _ORIGIN
        self.pieces: list[Piece] = []
        self.carried: tuple[float, float, float] | None = None


Event = tuple[float, int, int, TokenSpan]

# Per window, the running totals at its start and its scale factors, in the order: the
# α, β, γ terms (per unit rate), the fixed term, the no-token term, the floor of the
# spans with tokens; energy, then bound; then, unscaled, GPU-seconds per span and the
# equal split's energy and bound per span.
_TERMS = 6
_ZERO = (0.0,) * (2 * _TERMS + 3)


class IntervalTokens(NamedTuple):
    """What an interval's busy time held, for learning the weights: busy seconds,
    server steps, prefill tokens, decode tokens, decode tokens × context, and seconds of
    spans whose tokens were not known (span-seconds)."""

    busy_s: float
    steps: float
    prefill: float
    decode: float
    context: float
    unweighed_s: float


class TokenShares:
    """The spans open on one device under the token rule (see the module's docstring)."""

    def __init__(self) -> None:
        self.spans: dict[Hashable, TokenSpan] = {}
        self.active = 0  # spans running at the sweep position
        self.weighed = 0  # of which with known rates
        self.decoding = 0  # of which decoding (a decode rate above 0)
        self.sums = [0.0, 0.0, 0.0]  # their rates, summed
        self.theta: Theta = (0.0, 0.0, 0.0, 0.0)  # the window's weights
        self.equal = True  # the window is split equally (no weights yet)
        self.unweighed_w = 1.0  # the last window's power per span with no tokens
        self.window = 0
        self._raw = [0.0] * 5  # within the window: see ``Snap``
        self._k = self._kb = 0.0  # the interval's busy power and its bound's, per s
        self._weighed_j = 0.0  # predicted energy of the spans with tokens in the window
        self._weighed_s = 0.0  # and their span-seconds; those of the spans with none
        self._unweighed_s = 0.0
        self._held = [0.0, 0.0, 0.0, 0.0]  # ∫ steps/s and the three ∫ Σ rates, in the window
        self._busy_j = 0.0  # what the window's intervals measured busy, and its bound
        self._bound_j = 0.0
        self._base: dict[int, tuple[float, ...]] = {0: _ZERO}
        self._coef: dict[int, tuple[float, ...]] = {}
        self._ending: list[tuple[TokenSpan, bool]] = []  # ended in the open window
        self._fresh = True  # the open window has seen no interval yet
        # The share of a span's token energy the weights' spread may move (its bound).
        self.relative_spread: Callable[[SpanTokens], float] = lambda _tokens: 0.0

    # -- snapshots -------------------------------------------------------------------
    def snap(self) -> Snap:
        """Where the sweep is, in the open window's own terms."""
        raw = self._raw
        return (self.window, raw[0], raw[1], raw[2], raw[3], raw[4])

    def _share(self, span: TokenSpan, partial: bool, estimated: bool = False) -> SpanShare:
        """What ``span`` received over its stretches (their windows closed): each
        running total (``_base``, scaled by ``_coef``, grown with the snapshot's integral
        ``_BY`` names) at a stretch's end less at its start, times the span's rates."""
        base, coef = self._base, self._coef
        energy_j = bound_j = 0.0
        for rates, lo, hi in span.pieces:
            b0, c0, b1, c1 = base[lo[0]], coef[lo[0]], base[hi[0]], coef[hi[0]]
            t0, t1 = lo[1], hi[1]
            if rates is None:
                energy_j += b1[4] + c1[4] * t1 - b0[4] - c0[4] * t0
                bound_j += b1[10] + c1[10] * t1 - b0[10] - c0[10] * t0
                continue
            f0, f1 = lo[2], hi[2]
            energy_j += (
                b1[3] + c1[3] * f1 - b0[3] - c0[3] * f0 + b1[5] + c1[5] * t1 - b0[5] - c0[5] * t0
            )
            bound_j += (
                b1[9]
                + c1[9] * f1
                - b0[9]
                - c0[9] * f0
                + b1[11]
                + c1[11] * t1
                - b0[11]
                - c0[11] * t0
            )
            x, y, z = rates
            if x:
                energy_j += x * (b1[0] + c1[0] * t1 - b0[0] - c0[0] * t0)
                bound_j += x * (b1[6] + c1[6] * t1 - b0[6] - c0[6] * t0)
            if y:
                energy_j += y * (b1[1] + c1[1] * t1 - b0[1] - c0[1] * t0)
                energy_j += z * (b1[2] + c1[2] * t1 - b0[2] - c0[2] * t0)
                bound_j += y * (b1[7] + c1[7] * t1 - b0[7] - c0[7] * t0)
                bound_j += z * (b1[8] + c1[8] * t1 - b0[8] - c0[8] * t0)
        if span.weighed and span.tokens is not None:
            bound_j += energy_j * self.relative_spread(span.tokens)
        gpu_s = 0.0
        if span.pieces:  # per span over its life: GPU-seconds, and the equal split's
            lo, hi = span.first, span.pieces[-1][2]
            b0, c0, b1, c1 = base[lo[0]], coef[lo[0]], base[hi[0]], coef[hi[0]]
            gpu_s = b1[12] + c1[12] * hi[3] - b0[12] - c0[12] * lo[3]
            energy_j += b1[13] + c1[13] * hi[4] - b0[13] - c0[13] * lo[4]
            bound_j += b1[14] + c1[14] * hi[5] - b0[14] - c0[14] * lo[5]
        if span.carried is not None:
            energy_j += span.carried[0]
            gpu_s += span.carried[1]
            bound_j += span.carried[2]
        return SpanShare(energy_j, gpu_s, bound_j, partial, estimated)

    def _close_piece(self, span: TokenSpan) -> None:
        now = self.snap()
        span.pieces.append((span.rates if span.weighed else None, span.at, now))
        span.at = now

    def _set_rates(self, span: TokenSpan, rates: Rates) -> None:
        sums = self.sums
        old = span.rates
        self.decoding += (rates[1] > 0.0) - (old[1] > 0.0)
        sums[0] += rates[0] - old[0]
        sums[1] += rates[1] - old[1]
        sums[2] += rates[2] - old[2]
        span.rates = rates

    # -- sweeping --------------------------------------------------------------------
    def sweep(
        self,
        interval: Interval,
        busy_j: float,
        bound_j: float,
        events: list[Event],
        end_index: int,
        estimated_before_s: float,
        done: dict[Hashable, SpanShare],
        theta: Theta | None,
    ) -> IntervalTokens:
        """Add ``interval``'s busy energy ``busy_j`` (bound ``bound_j``) to the open
        window; ``events[:end_index]`` are the starts, first tokens and ends inside it.
        ``theta``: the weights (None: not known, the equal split), taken when a window
        opens. The window closes after this interval when it is long enough or nothing
        runs at its end; the spans that ended in it then go to ``done``. Returns the
        token work the interval held."""
        if self._fresh:
            self._open(theta)
        busy_s = interval.busy_s
        self._k = busy_j / busy_s if busy_s > 0 else 0.0
        self._kb = bound_j / busy_s if busy_s > 0 else 0.0
        t0, t1 = interval.start_s, interval.end_s
        held = [0.0, 0.0, 0.0, 0.0, 0.0]  # ∫ steps/s, ∫ Σ rates (three), ∫ unweighed
        cursor = t0
        for j in range(end_index):
            t, kind, _, span = events[j]
            if self.active > 0 and t > cursor:
                self._segment(t - cursor, held)
            cursor = t
            if kind == START:
                self._start(span)
            elif kind == END:
                self._end(span, estimated_before_s)
            elif span.weighed and self.spans.get(span.key) is span:
                self._close_piece(span)  # the first token: the decode phase from here
                self._set_rates(span, span.second)
        if self.active > 0 and t1 > cursor:
            self._segment(t1 - cursor, held)
        self._busy_j += busy_j
        self._bound_j += bound_j
        window_held = self._held
        for i in range(4):
            window_held[i] += held[i]
        if self.active == 0 or self._raw[0] >= WINDOW_S:
            self.close_window(done)
        return IntervalTokens(interval.busy_s, *held)

    def _open(self, theta: Theta | None) -> None:
        """A new window under ``theta`` (None: the equal split)."""
        self._fresh = False
        self.equal = theta is None
        self.theta = (0.0, 0.0, 0.0, 0.0) if theta is None else theta

    def _segment(self, dt: float, held: list[float]) -> None:
        """A stretch of ``dt`` s with the same spans in the same phases."""
        f_j, alpha, beta, gamma = self.theta
        s0, s1, s2 = self.sums
        n = self.active
        known = self.weighed
        step_rate = s1 / self.decoding if self.decoding else 0.0
        raw = self._raw
        raw[0] += dt
        raw[1] += step_rate * dt / n
        raw[2] += dt / n
        raw[3] += self._k * dt / n
        raw[4] += self._kb * dt / n
        if not self.equal:
            # A floor, so that calls with no work predicted still share what ran.
            self._weighed_j += (
                f_j * step_rate * known / n + alpha * s0 + beta * s1 + gamma * s2 + FLOOR_W * known
            ) * dt
            self._weighed_s += known * dt
            self._unweighed_s += (n - known) * dt
        held[0] += step_rate * dt
        held[1] += s0 * dt
        held[2] += s1 * dt
        held[3] += s2 * dt
        held[4] += (n - known) * dt

    def close_window(self, done: dict[Hashable, SpanShare]) -> None:
        """Close the open window: its scale factors, then the spans that ended in it."""
        w = self.window
        f_j, alpha, beta, gamma = self.theta
        if self._weighed_s > 0:  # spans with no tokens: the mean power of those with
            self.unweighed_w = self._weighed_j / self._weighed_s
        unweighed_w = self.unweighed_w
        predicted_j = self._weighed_j + unweighed_w * self._unweighed_s
        # Split equally, instant by instant: with no weights, or no span with tokens.
        equal = self.equal or not self._weighed_s
        k = self._busy_j / predicted_j if predicted_j > 0 and not equal else 0.0
        kb = self._bound_j / predicted_j if predicted_j > 0 and not equal else 0.0
        # A term nobody ran in this window moves no share: 0 (not a scale factor that
        # may be huge where little was predicted, and would cost the totals precision).
        used = self._held
        terms = (
            alpha if used[1] else 0.0,
            beta if used[2] else 0.0,
            gamma if used[3] else 0.0,
            f_j if used[0] else 0.0,
            unweighed_w if self._unweighed_s else 0.0,
            FLOOR_W if self._weighed_s else 0.0,
        )
        co = (*(k * v for v in terms), *(kb * v for v in terms), 1.0, float(equal), float(equal))
        self._coef[w] = co
        self._base[w + 1] = _advance(self._base[w], co, self._raw)
        for span, estimated in self._ending:
            done[span.key] = self._share(span, span.partial, estimated)
        self._ending.clear()
        self.window = w + 1
        self._raw = [0.0] * 5
        self._busy_j = self._bound_j = 0.0
        self._weighed_j = self._weighed_s = self._unweighed_s = 0.0
        self._held = [0.0, 0.0, 0.0, 0.0]
        self._fresh = True
        if self.active == 0:  # nobody holds a snapshot: rebase (precision, memory)
            self.sums = [0.0, 0.0, 0.0]
            self.decoding = 0
            self._base = {w + 1: _ZERO}
            self._coef = {}
        elif self.window % 256 == 0:
            self._prune()

    def _prune(self) -> None:
        """Forget the windows no running span's snapshot is in."""
        oldest = min(
            (span.first[0] for span in self.spans.values() if span.started),
            default=self.window,
        )
        for w in [w for w in self._base if w < oldest]:
            del self._base[w]
            self._coef.pop(w, None)

    def _start(self, span: TokenSpan) -> None:
        now = self.snap()
        span.started = True
        span.at = span.first = now
        self.active += 1
        tokens = span.tokens
        placed = span.placed if tokens is not None and span.end_s != math.inf else None
        if placed is not None:
            first, _, second = placed
            span.weighed = True
            span.second = second
            self.weighed += 1
            self._set_rates(span, first)

    def _end(self, span: TokenSpan, estimated_before_s: float) -> None:
        self._close_piece(span)
        self._leave(span)
        del self.spans[span.key]
        self._ending.append((span, span.start_s < estimated_before_s))

    def _leave(self, span: TokenSpan) -> None:
        if span.started:
            self.active -= 1
            if span.weighed:
                self.weighed -= 1
                self._set_rates(span, (0.0, 0.0, 0.0))
                if self.weighed == 0:
                    self.sums = [0.0, 0.0, 0.0]  # nobody's rates left (precision)
                    self.decoding = 0

    # -- leaving early ---------------------------------------------------------------
    def release(self, ended_by_s: float, done: dict[Hashable, SpanShare]) -> int:
        """The window closes; the spans that ended by ``ended_by_s`` go to ``done``
        with what they have so far (partial). Returns how many."""
        gone = [span for span in self.spans.values() if span.end_s <= ended_by_s]
        self._drop(gone)
        self.close_window(done)
        return len(gone)

    def finish_open(self, done: dict[Hashable, SpanShare]) -> None:
        """At exit: spans not complete get what they have so far, flagged partial."""
        self._drop(list(self.spans.values()))
        self.close_window(done)
        self.sums = [0.0, 0.0, 0.0]
        self.decoding = 0

    def _drop(self, spans: list[TokenSpan]) -> None:
        """``spans`` leave now, partial: they complete when the window closes."""
        for span in spans:
            if span.started:
                self._close_piece(span)
            self._leave(span)
            del self.spans[span.key]
            span.partial = True
            self._ending.append((span, False))


def _advance(
    base: tuple[float, ...], co: tuple[float, ...], raw: Sequence[float]
) -> tuple[float, ...]:
    """The running totals ``base`` moved on by a window's raw integrals ``raw`` (as in
    ``Snap``, less its window) under its scale factors ``co``."""
    return tuple(base[i] + co[i] * raw[by - 1] for i, by in enumerate(_BY))
