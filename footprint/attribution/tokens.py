"""The token-aware rule's running integrals: each interval's busy energy shared by the
spans' predicted powers instead of equally.

A span with token counts waits (in the server's queue: no work done for it), then has a
prefill phase that carries its input tokens and ends with its first token, and a decode
phase (first token to end) that carries its output tokens, each at a constant rate over
its phase (``footprint.attribution.placement``). The prefill is placed in the last
server step before the first token (a step lasts what one of its decode tokens took: its
decode time over its decode tokens), not spread over its whole time to first token,
which includes its wait in the queue. The running set's predicted busy power is

    P(t) = F·steps/s + α·Σ prefill rate + β·Σ decode rate + γ·Σ decode rate × context

(``TokenWeights`` learns F, α, β, γ from the counter; ``steps/s``, the server's step
rate, is for the fit the mean decode rate of the spans decoding: each makes a token a
step, and each span's rate weighs 1 / the square of the seconds it is averaged over, as
a short span's rate is the more local one). Span ``i``'s own part of it is its α, β, γ
terms, and an equal share of the fixed energy ``F`` of each step that served it
(prefilling or decoding, not waiting: the Shapley value of the additive model). Its
steps are its own (a step for its prompt, one per decode token), but where they fell
in its phase is not: they are placed as the server stepped, at the step rate ``r(t)``
its step time gives for what runs (``r = (1 − τa·prompt tokens/s) / (τF + τb·decoders
+ τc·Σ contexts)``; the spans' local mean rate before the step time is known), so that
a span that ran while its batch grew and the steps slowed takes the mean of ``1/N``
over its steps, not over time. A span with no token counts (or whose counts are not
known when its time is handed out) is charged the mean power of the spans served with
counts in the window before: where no span has counts, or the weights are not known
yet, the rule is the equal split.

The busy energy is shared over windows of consecutive intervals (``WINDOW_S`` busy
seconds, longer where long calls run: ``SPAN_WINDOWS`` times their length, up to
``MAX_WINDOW_S``; or up to a moment with no span running), not interval by interval:
a call straddling a window's edge carries the error of where its tokens were placed
into ``K``, and the longer the window the less that moves it. A span's
share is ``K`` times its predicted energy in the window, with ``K`` the window's busy
energy over the predicted energy of all its spans. Locally the predicted power is a poor
guide (a GPU at its power cap draws the same power whatever it runs), and normalising
each short interval by it would charge a call's own prompt against itself; over a
window the prediction holds, and a call alone in its window still gets exactly what the
counter measured. The shares of a window sum to its busy energy, so energy stays
conserved exactly. While the weights are not known yet, closed windows are held (up to
``hold_s``: ``HOLD_S`` s, or the default rule's shorter hold of full windows only) so
that they are shared by the first settled weights; past that by the last fit
(``fallback``), or split equally where there is none.

Each phase's rates are constant, so a span's share is its rates times differences of
running integrals (time, ``∫ dt/N``) between its edges, and its steps in each window and
phase times ``∫ r/N_served dt / ∫ r dt`` over them; each scaled by its window's ``K``
once the window closes. A window's close cuts the stretches of the spans running, so
that each lies in one window and the window's fixed term is complete: O(1) per start,
service start, first token and end, whatever the number of spans running, like
``RunningShares``. A decode phase that a close cut is not at constant rates: each of
its stretches gets a token per server step (``∫ r dt``), its last the rest
(``_place_decode``), so that its tokens follow the server's pace across windows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from typing import NamedTuple

from footprint.attribution.energy import Interval
from footprint.attribution.placement import (
    MIN_PHASE_S,
    MIN_WORK_SHARE,
    NO_RATES,
    Placement,
    Rates,
    SpanTokens,
    context_of,
)
from footprint.attribution.shares import END, START, SpanShare

_new_tuple = tuple.__new__  # a named tuple without its ``__new__``'s Python frame

WINDOW_S = 120.0  # busy seconds per window, at least
# ... and at least this many times the length of the calls that ended in it (weighted by
# length: Σ L² / Σ L, the length of a call running at a random instant), up to
# ``MAX_WINDOW_S``: a call straddling its edge carries its placement's error into it
SPAN_WINDOWS = 6.0
MAX_WINDOW_S = 600.0
HOLD_S = 300.0  # the most closed windows wait for the first weights (s of intervals)
# The bound adds this share of how far the token rule moved a span's energy from the
# equal split (the model's own error: ``footprint bench batching`` measures its coverage)
MODEL_SHARE = 0.5
FLOOR_W = 1e-6  # predicted power of any span with tokens, on top of its work (W)
PHASE = 2  # event kind: a span's first token (sorts after starts and ends at an instant)
SERVE = 3  # event kind: a span's prefill begins (it waited in the queue before)

Theta = tuple[float, float, float, float]  # F (J per step), α, β (J per token), γ (J/token²)


# (window, and within it: ∫ dt, ∫ r/N_served dt with r the server's step rate, ∫ dt/N,
# ∫ k/N dt and ∫ k_bound/N dt of the equal split while the weights are not known, k an
# interval's busy power)
Snap = tuple[int, float, float, float, float, float]
# A stretch of a span's life: its rates (None: no known tokens), from and to snapshots.
Piece = tuple["Rates | None", Snap, Snap]


_ORIGIN: Snap = (0, 0.0, 0.0, 0.0, 0.0, 0.0)
# A span's stretches inside one window, summed before its first token and after it (five
# each): seconds with no known tokens, seconds with tokens (the floor), prefill rate × s,
# decode rate × s, decode rate × context × s. Its energy there is the window's scale
# factors times these, whatever the number of stretches (its fixed term: ``fixed``).
_ACC = 5
# The running totals across windows (GPU-seconds per span, the equal split's energy and
# bound where it applied, and had it applied throughout): which of a snapshot's
# integrals each grows with (3: ∫ dt/N, 4 and 5: the equal split's energy and bound),
# under which of a window's scale factors.
_BY = (3, 4, 5, 4)
_BY_COEF = (12, 13, 14, 15)


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
        "weighed",  # its rates are in the running sums (known when it started)
        "serving",  # it is served (not waiting), with its rates in the running sums
        "rates",  # its current phase's rates
        "at",  # snapshot at its last edge
        "first",  # snapshot at its start
        "split_n",  # pieces before its first token, once reached (-1: not yet)
        "mid",  # snapshot at its first token, once reached
        "first_token_s",  # time of its first token, where it said
        "pieces",  # its past stretches across windows (None: none)
        "acc",  # its stretches inside window ``acc_w``, summed (``_ACC``; None: none)
        "acc_w",
        "carried",  # (energy, gpu-s, bound) received under the equal split before
        "carried_until_s",  # up to where
        "ramp_c",  # its decode context term as it grows, constant + slope·t: for the fit
        "ramp_s",
        "ctx_c",  # its context as it grows, constant + y·t: for the step time's fit
        "ctx_y",
        "pace_w",  # how much its step rate counts in the server's (1 / its phase's s)
        # Its fixed term in the window and phase it is in (``_settle``): its own steps
        # there, and the server's over them (∫ r dt), and shared (∫ r/N_served dt) ...
        "own_steps",
        "server_steps",
        "shared_steps",
        "r_at",  # ... ∫ r dt of the window at its last edge
        "fixed",  # its fixed term, settled: window, after its first token (1.0), steps, ...
        # Its decode phase (``_place_decode``): its decode tokens, the context the first
        # is read against, and how many are not placed in a window yet
        "decode_tokens",
        "context_tokens",
        "unplaced",
    )

    def __init__(self, key: Hashable, start_s: float) -> None:
        self.key = key
        self.start_s = start_s
        self.end_s = math.inf
        self.partial = False
        self.started = False
        self.tokens: SpanTokens | None = None
        self.placed: Placement | None = None
        self.weighed = False
        self.serving = False
        self.rates: Rates = NO_RATES
        self.at: Snap = _ORIGIN
        self.first: Snap = _ORIGIN
        self.split_n = -1
        self.mid: Snap | None = None
        self.first_token_s: float | None = None
        self.pieces: list[Piece] | None = None
        self.acc: list[float] | None = None
        self.acc_w = -1
        self.carried: tuple[float, float, float] | None = None
        self.carried_until_s = -math.inf
        self.ramp_c = self.ramp_s = self.ctx_c = self.ctx_y = 0.0
        self.pace_w = 0.0
        self.own_steps = self.server_steps = self.shared_steps = self.r_at = 0.0
        self.fixed: list[float] | None = None
        self.decode_tokens = self.context_tokens = self.unplaced = 0.0


Event = tuple[float, int, int, TokenSpan]


# What a span that ended keeps until its window is shared out (``ended``): the fields of
# its ``TokenSpan`` that ``_share`` reads, flat in a plain tuple of numbers and plain
# tuples, which the garbage collector stops tracking (it never untracks an object or a
# named tuple): the tens of thousands of spans a window holds then cost none of its
# passes. key, start_s, partial, estimated, weighed, its token counts and time to first
# token (input -1: none), first, at, split_n, mid, pieces, acc_w (-1: no ``acc``),
# first_token_s, carried, carried_until_s, fixed, then ``acc``'s sums.
Ended = tuple  # (Any, ...): its fields are listed above
_NO_ACC = (0.0,) * (2 * _ACC)
_NO_TOKENS = (-1, 0, None)


def ended(span: TokenSpan, estimated: bool) -> Ended:
    """``span``'s record for ``_share``, once it left the sweep."""
    acc, tokens = span.acc, span.tokens
    return (
        span.key,
        span.start_s,
        span.partial,
        estimated,
        span.weighed,
        *(_NO_TOKENS if tokens is None else tokens),
        span.first,
        span.at,
        span.split_n,
        span.mid,
        span.pieces,
        span.acc_w if acc is not None else -1,
        span.first_token_s,
        span.carried,
        span.carried_until_s,
        None if span.fixed is None else tuple(span.fixed),
        *(_NO_ACC if acc is None else acc),
    )


# Per window, its scale factors, in the order: the α, β, γ terms (per unit rate), the
# fixed term (per step), the no-token term, the floor of the spans with tokens; energy,
# then bound; then, unscaled, GPU-seconds per span and the equal split's energy and
# bound per span (where it applied, and had it applied throughout: ``_BY_COEF``).
_TERMS = 6
_ZERO = (0.0,) * len(_BY)


class IntervalTokens(NamedTuple):
    """What an interval's busy time held, for learning the weights: busy seconds,
    server steps, prefill tokens, decode tokens, decode tokens × context, seconds of
    spans whose tokens were not known (span-seconds), and, for the server's step time,
    the decoding spans (span-seconds) and their contexts (token-seconds); last, the
    seconds of spans whose tokens were known (span-seconds)."""

    busy_s: float
    steps: float
    prefill: float
    decode: float
    context: float
    unweighed_s: float
    decoders_s: float = 0.0
    contexts_s: float = 0.0
    weighed_s: float = 0.0


class _Window:
    """A window's integrals, which do not depend on the weights: they are applied when
    it is shared out (at its close, or once the weights are known)."""

    __slots__ = (
        "index",
        "raw",
        "sums",
        "fixed_steps",
        "busy_j",
        "bound_j",
        "ending",
        "intervals",
        "from_s",
        "calls_s",
        "calls_s2",
        "placed",
    )

    def __init__(self, index: int) -> None:
        self.index = index
        # See ``Snap``; last, ∫ r dt: the server's steps by its step rate
        self.raw = [0.0] * 6
        # ∫ steps/s, ∫ Σ prefill, decode, context rates; span-seconds with tokens,
        # served, without tokens
        self.sums = [0.0] * 7
        self.fixed_steps = 0.0  # the spans' steps, each over the spans served (``_settle``)
        self.busy_j = 0.0  # what the window's intervals measured busy, and its bound
        self.bound_j = 0.0
        self.ending: list[Ended] = []  # spans that ended in it (``ended``)
        self.intervals = 0  # busy intervals in it
        self.from_s = math.nan  # where its first interval began
        self.calls_s = 0.0  # Σ L and Σ L² of the calls that ended in it (s, s²)
        self.calls_s2 = 0.0
        # The decode tokens, and decode tokens × context, placed in it as the server
        # stepped (``_place_decode``); ``sums`` has the rest's, at even rates
        self.placed = [0.0, 0.0]

    def length_s(self) -> float:
        """How many busy seconds it lasts (``WINDOW_S``, ``SPAN_WINDOWS``)."""
        if self.calls_s <= 0.0:
            return WINDOW_S
        by_calls_s = SPAN_WINDOWS * self.calls_s2 / self.calls_s
        return min(max(WINDOW_S, by_calls_s), MAX_WINDOW_S)


class TokenShares:
    """The spans open on one device under the token rule (see the module's docstring)."""

    def __init__(self) -> None:
        self.spans: dict[Hashable, TokenSpan] = {}
        self.active = 0  # spans running at the sweep position
        self.weighed = 0  # of which with known rates
        self.serving = 0  # of those, served (not waiting)
        self.sums = [0.0, 0.0, 0.0, 0.0]  # their rates, summed
        # Σ decode and Σ decode × context rates of those not in a decode phase placed
        # by the steps (``_place_decode``): what the windows' even-rate sums grow by
        self.even = [0.0, 0.0]
        # How many spans have a prefill, a decode and a step rate in ``sums``, and a
        # decode rate in ``even``: a sum nobody is in is exactly 0, not what rounding
        # left of the rates that went (a window would count a term nobody ran, and
        # scale its spans by a prediction that rounding moved)
        self.rated = [0, 0, 0, 0]
        # For the fit: the server's step rate, each served span's weighted by how local
        # its rate is (1 / the time it is averaged over): Σ w·steps/s and Σ w
        self.pace = [0.0, 0.0]
        # For the fit: Σ decode rate × context, which grows as each answer does (a + b·t)
        self.ramp = [0.0, 0.0]
        # For the fit: the decoding spans, and Σ their contexts (a + b·t)
        self.decoders = 0
        self.contexts = [0.0, 0.0]
        self._origin_s: float | None = None  # the time ``t`` counts from
        self._sweep_s = 0.0  # where the sweep is (s)
        self.unweighed_w = 1.0  # the last window's power per span with no tokens
        self.equal_intervals = 0  # busy intervals that were split equally
        self.hold_s = HOLD_S
        self.hold_full_only = False  # hold only windows closed full (``WINDOW_S``)
        self.window = 0
        self._win = _Window(0)
        self._held: list[_Window] = []  # closed, waiting for the weights
        self._theta: Theta | None = None  # the weights last seen
        # The fit not determined yet, if any: the held windows are shared by it rather
        # than split equally when they can wait no longer
        self.fallback: Theta | None = None
        # The interval's busy J, its bound's and busy s: a segment of dt s gets dt/busy_s
        # of each (a fraction, never a power: J over a tiny busy time can overflow).
        self._busy_j = self._bound_j = self._busy_s = 0.0
        # Per window, the running totals at its start (``_BY``) and its scale factors
        self._base: dict[int, tuple[float, ...]] = {0: _ZERO}
        self._coef: dict[int, tuple[float, ...]] = {}
        # The server's step time (τF, τb, τc, τa: ``weights.StepTimes``; None: not known)
        # and its last step rate: where each span's steps are placed in its phase
        self.step_time: tuple[float, float, float, float] | None = None
        self._rate = 1.0
        # The share of a span's token energy the weights' spread may move (its bound).
        self.relative_spread: Callable[[SpanTokens], float] = lambda _tokens: 0.0

    # -- snapshots -------------------------------------------------------------------
    def snap(self) -> Snap:
        """Where the sweep is, in the open window's own terms."""
        raw = self._win.raw
        return (self.window, raw[0], raw[1], raw[2], raw[3], raw[4])

    def _energy(self, pieces: Sequence[Piece]) -> tuple[float, float]:
        """(energy, bound) of ``pieces`` (their windows shared out), each inside one
        window (a window's close cuts the stretches of the spans running): its scale
        factors times the span's rates and the stretch's seconds. Not the fixed term
        (``fixed``)."""
        coef = self._coef
        energy_j = bound_j = 0.0
        for rates, lo, hi in pieces:
            c = coef[lo[0]]
            dt = hi[1] - lo[1]
            if rates is None:
                energy_j += c[4] * dt
                bound_j += c[10] * dt
                continue
            x, y, z, _ = rates
            per_s_j, per_s_bound_j = c[5], c[11]
            if x:
                per_s_j += x * c[0]
                per_s_bound_j += x * c[6]
            if y:
                per_s_j += y * c[1] + z * c[2]
                per_s_bound_j += y * c[7] + z * c[8]
            energy_j += per_s_j * dt
            bound_j += per_s_bound_j * dt
        return energy_j, bound_j

    def _equal(self, lo: Snap, hi: Snap) -> tuple[float, float, float, float]:
        """(GPU-seconds, equal split's energy where it applied, its bound, the equal
        split's energy had it applied throughout) per span from ``lo`` to ``hi``."""
        coef = self._coef
        w = lo[0]
        if w == hi[0]:  # inside one window: its own integrals
            c = coef[w]
            even_j = hi[4] - lo[4]
            return hi[3] - lo[3], c[13] * even_j, c[14] * (hi[5] - lo[5]), even_j
        base = self._base
        b0, c0, b1, c1 = base[w], coef[w], base[hi[0]], coef[hi[0]]
        return (
            b1[0] + c1[12] * hi[3] - b0[0] - c0[12] * lo[3],
            b1[1] + c1[13] * hi[4] - b0[1] - c0[13] * lo[4],
            b1[2] + c1[14] * hi[5] - b0[2] - c0[14] * lo[5],
            b1[3] + c1[15] * hi[4] - b0[3] - c0[15] * lo[4],
        )

    def _share(self, span: Ended, partial: bool, estimated: bool = False) -> SpanShare:
        """What ``span`` received over its stretches (their windows shared out), and the
        part of it before its first token."""
        (_, start_s, _, _, weighed, input_tokens, output_tokens, ttft_s) = span[:8]
        (first, last, split_n, mid, pieces, acc_w, first_s, carried, carried_until_s) = span[8:17]
        fixed = span[17]
        acc = span[18:] if acc_w >= 0 else None
        before_j = bound_j = after_j = 0.0
        if pieces is not None:
            if split_n < 0:
                before_j, bound_j = self._energy(pieces)
            else:
                before_j, bound_j = self._energy(pieces[:split_n])
                after_j, after_bound_j = self._energy(pieces[split_n:])
                bound_j += after_bound_j
        if fixed is not None:  # its share of each step's fixed energy
            coef = self._coef
            for i in range(0, len(fixed), 3):
                w, after, steps = fixed[i], fixed[i + 1], fixed[i + 2]
                c = coef[w]
                bound_j += c[9] * steps
                if after:
                    after_j += c[3] * steps
                else:
                    before_j += c[3] * steps
        if acc is not None:  # (its half after the first token is 0 before one)
            energy_j, acc_bound_j, more_j, more_bound_j = _scaled(self._coef[acc_w], acc)
            before_j += energy_j
            bound_j += acc_bound_j
            after_j += more_j
            bound_j += more_bound_j
        if weighed and input_tokens >= 0:
            tokens = _new_tuple(SpanTokens, (input_tokens, output_tokens, ttft_s))
            spread = self.relative_spread(tokens)
            bound_j += (before_j + after_j) * spread
        gpu_s = 0.0
        stretched = acc is not None or pieces is not None or fixed is not None
        if stretched:  # per span over its life: GPU-seconds, and the equal split's
            if mid is None:
                mid = last
            gpu_s, equal_j, equal_bound_j, even_j = self._equal(first, mid)
            before_j += equal_j
            bound_j += equal_bound_j
            if split_n >= 0:
                more_s, equal_j, equal_bound_j, more_j = self._equal(mid, last)
                gpu_s += more_s
                after_j += equal_j
                bound_j += equal_bound_j
                even_j += more_j
            # The model's own error: a share of how far it moved the span from the
            # equal split (0 where the equal split applied).
            bound_j += MODEL_SHARE * abs(before_j + after_j - even_j)
        if carried is not None:
            before_j += carried[0]
            gpu_s += carried[1]
            bound_j += carried[2]
        share = SpanShare(before_j + after_j, gpu_s, bound_j, partial, estimated)
        if first_s is not None and not partial and (split_n >= 0 or stretched):
            if carried is not None and first_s < carried_until_s:
                return share  # the equal split before does not say which part was which
            if split_n < 0 and first_s <= start_s + MIN_PHASE_S:
                before_j, after_j = 0.0, before_j  # no stretch before its first token
            share.prefill_energy_j = before_j
            share.decode_energy_j = after_j
        return share

    def _close_piece(self, span: TokenSpan) -> None:
        """The stretch since its last edge ends (inside the open window: a window's close
        cuts the stretches of the spans running): summed into ``acc`` where it is
        ``acc``'s window, kept as a piece where it is a later one; while it is served,
        its steps and the server's over them grow its fixed term (``_settle``)."""
        raw = self._win.raw
        window = self.window
        t, f = raw[0], raw[1]
        now = (window, t, f, raw[2], raw[3], raw[4])
        at = span.at
        rates = span.rates
        if span.decode_tokens and t > at[1]:  # decoding (weighed: only then has it any)
            rates = self._place_decode(span, t - at[1], raw[5] - span.r_at)
        if span.weighed and rates[3]:
            span.own_steps += rates[3] * (t - at[1])
            span.server_steps += raw[5] - span.r_at
            span.shared_steps += f - at[2]
        span.r_at = raw[5]
        acc = span.acc
        if acc is None or span.acc_w == window:
            if acc is None:
                acc = span.acc = [0.0] * (2 * _ACC)
                span.acc_w = window
            half = 0 if span.split_n < 0 else _ACC
            dt = t - at[1]
            if not span.weighed:
                acc[half] += dt
            elif rates is NO_RATES:  # waiting in the queue: its floor only
                acc[half + 1] += dt
            else:
                x, y, z, _ = rates
                acc[half + 1] += dt
                if x:
                    acc[half + 2] += x * dt
                if y:
                    acc[half + 3] += y * dt
                    acc[half + 4] += z * dt
        else:
            piece = (rates if span.weighed else None, at, now)
            if span.pieces is None:
                span.pieces = [piece]
            else:
                span.pieces.append(piece)
        span.at = now

    def _place_decode(self, span: TokenSpan, dt: float, server_steps: float) -> Rates:
        """The rates of a stretch of ``span``'s decode phase (``dt`` s, in which the
        server made ``server_steps`` steps: ``∫ r dt``) once placed as the server
        stepped: a decoding call makes a token a step, so the stretch gets as many of
        its tokens as the server made steps, read against its context there, and its
        last stretch the rest (its tokens stay its own, whatever the error of ``r``).
        Placed evenly over its phase instead, a call straddling a window's edge put its
        tokens where the server ran slower (a batch that grew) as where it ran faster,
        and moved the scale factor of each window by the error."""
        unplaced = span.unplaced
        placed = unplaced
        if span.end_s > self._sweep_s and server_steps < unplaced:
            placed = server_steps
        span.unplaced = unplaced - placed
        context = span.context_tokens + span.decode_tokens - unplaced + placed / 2.0
        placed_sums = self._win.placed
        placed_sums[0] += placed
        placed_sums[1] += placed * context
        rate = placed / dt
        return (0.0, rate, rate * context, rate)

    def _settle(self, span: TokenSpan) -> None:
        """Its fixed term in the open window, for the phase it is in (before its first
        token or after it), is settled: its own steps there (exact, but spread evenly
        over the phase by its mean rate), placed in time as the server's steps were
        (its step rate ``r``), each with an equal share of that step's fixed energy
        (``∫ r/N_served dt`` over its steps: the Shapley value), i.e. its steps times
        the mean of ``1/N_served`` over the server's steps while it was served, not
        over time (a batch that grew slowed its steps)."""
        own, server = span.own_steps, span.server_steps
        if own > 0.0 and server > 0.0:
            steps = own / server * span.shared_steps
            self._win.fixed_steps += steps
            # flat: a tuple of numbers is one the garbage collector stops tracking
            entry = (self.window, 1.0 if span.split_n >= 0 else 0.0, steps)
            if span.fixed is None:
                span.fixed = list(entry)
            else:
                span.fixed.extend(entry)
        span.own_steps = span.server_steps = span.shared_steps = 0.0

    def _set_rates(self, span: TokenSpan, rates: Rates) -> None:
        x, y, z, steps = rates
        was_x, was_y, was_z, was_steps = span.rates
        sums = self.sums
        sums[0] += x - was_x
        sums[1] += y - was_y
        sums[2] += z - was_z
        sums[3] += steps - was_steps
        rated = self.rated
        decoding = y != 0.0 or z != 0.0
        was_decoding = was_y != 0.0 or was_z != 0.0
        rated[0] += (x != 0.0) - (was_x != 0.0)
        rated[1] += decoding - was_decoding
        rated[2] += (steps != 0.0) - (was_steps != 0.0)
        if not rated[0]:
            sums[0] = 0.0
        if not rated[1]:
            sums[1] = sums[2] = 0.0
        if not rated[2]:
            sums[3] = 0.0
        if not span.decode_tokens:
            even = self.even
            even[0] += y - was_y
            even[1] += z - was_z
            rated[3] += decoding - was_decoding
            if not rated[3]:
                even[0] = even[1] = 0.0
        span.rates = rates
        w = span.pace_w
        if w:
            pace = self.pace
            pace[0] += w * (steps - was_steps)
            pace[1] += w * ((steps > 0.0) - (was_steps > 0.0))
            if not pace[1]:
                pace[0] = 0.0

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
        window; ``events[:end_index]`` are the starts, service starts, first tokens and
        ends inside it. ``theta``: the weights (None: not known yet). The window closes
        after this interval when it is long enough or nothing runs at its end; it is
        shared out then (or, while the weights are not known, once they are or after
        ``hold_s``), and the spans that ended in it go to ``done``. Returns the token
        work the interval held."""
        self._theta = theta
        win = self._win
        busy_s = interval.busy_s
        self._busy_j, self._bound_j, self._busy_s = busy_j, bound_j, busy_s
        t0, t1 = interval.start_s, interval.end_s
        if win.from_s != win.from_s:  # NaN: its first interval
            win.from_s = t0
        held = self._sweep_events(events, end_index, t0, t1, estimated_before_s)
        win.busy_j += busy_j
        win.bound_j += bound_j
        win.intervals += busy_s > 0
        if self.active == 0 or win.raw[0] >= win.length_s():
            self._close(done)
        if self._held and t1 - self._held[0].from_s >= self.hold_s:
            self.share_out(done)  # held as long as they may be
        return IntervalTokens(busy_s, *held)

    def _sweep_events(
        self, events: list[Event], end_index: int, t0: float, t1: float, estimated_before_s: float
    ) -> tuple[float, float, float, float, float, float, float, float]:
        """The interval from ``t0`` to ``t1`` and its events ``events[:end_index]``, in
        order: each stretch between two of them (the same spans in the same phases) grows
        the window's integrals, then the event changes who runs at what rates. Returns
        the interval's ∫ steps/s, ∫ Σ rates (prefill, decode, decode × context), ∫
        spans with no tokens, ∫ decoders and ∫ Σ their contexts, ∫ spans with tokens,
        for the fit (``IntervalTokens`` less its busy seconds).

        The hot path of the token rule: the window's and the interval's sums are locals
        for the interval (each the same sum, in the same order, as one ``+=`` a stretch);
        the snapshots read ``raw``, which grows in place."""
        win = self._win
        raw = win.raw
        w0, w1, w2, w3, w5, w6, w7 = win.sums
        h0 = h1 = h2 = h3 = h4 = h5 = h6 = h7 = 0.0
        busy_s, busy_j, bound_j = self._busy_s, self._busy_j, self._bound_j
        tau = self.step_time
        start, end, serve, first_token = self._start, self._end, self._serve, self._first_token
        spans = self.spans
        cursor = t0
        for j in range(end_index + 1):
            if j < end_index:
                t, kind, _, span = events[j]
            else:  # the stretch from the last event to the interval's end
                t, kind, span = t1, -1, None
            n = self.active
            if t > cursor and n > 0:
                dt = t - cursor
                s0, s1, s2, s3 = self.sums
                known = self.weighed
                serving = self.serving
                unknown = n - known
                served = serving + unknown  # spans with no tokens count as served
                raw[0] += dt
                raw[2] += dt / n
                if busy_s > 0:
                    fraction = dt / busy_s / n
                    raw[3] += busy_j * fraction
                    raw[4] += bound_j * fraction
                steps = s3 * dt / serving if serving else 0.0  # the server's: their mean
                prefill = s0 * dt
                decode = s1 * dt
                unknown_s = unknown * dt
                w0 += steps
                w1 += prefill
                e1, e2 = self.even
                w2 += e1 * dt
                w3 += e2 * dt
                w5 += known * dt
                w6 += serving * dt
                w7 += unknown_s
                pace_w, pace = self.pace
                local = pace_w / pace if pace > 0.0 else steps / dt
                h0 += local * dt
                h1 += prefill
                h2 += decode
                ramp, slope = self.ramp
                contexts = 0.0
                if slope:  # each decoded token read against its context so far
                    mid_s = cursor + dt / 2 - self._origin_s  # type: ignore[operator]
                    h3 += (ramp + slope * mid_s) * dt
                    c0, c1 = self.contexts
                    contexts = c0 + c1 * mid_s
                    h5 += self.decoders * dt
                    h6 += contexts * dt
                if serving:  # the server's step rate: by its step time, else the spans'
                    if tau is not None:  # ``step_rate``, inline: the hot path
                        work = 1.0 - tau[3] * s0
                        rate = (work if work > MIN_WORK_SHARE else MIN_WORK_SHARE) / (
                            tau[0] + tau[1] * self.decoders + tau[2] * contexts
                        )
                    else:
                        rate = local
                    self._rate = rate
                else:
                    rate = self._rate
                raw[5] += rate * dt
                if served:
                    raw[1] += rate * dt / served
                h4 += unknown_s
                h7 += known * dt
            cursor = t
            self._sweep_s = t
            if kind == START:
                start(span)  # type: ignore[arg-type]
            elif kind == END:
                end(span, estimated_before_s)  # type: ignore[arg-type]
            elif span is not None and span.started and spans.get(span.key) is span:
                if kind == SERVE:
                    serve(span)
                else:
                    first_token(span)
        win.sums = [w0, w1, w2, w3, w5, w6, w7]
        return h0, h1, h2, h3, h4, h5, h6, h7

    def _close(self, done: dict[Hashable, SpanShare]) -> None:
        """The open window closes: shared out now, or held for the weights (``sweep``
        shares the held windows out once their hold is over)."""
        self._next_window()
        if self._theta is not None or (
            self.hold_full_only and not any(win.raw[0] >= WINDOW_S for win in self._held)
        ):
            self.share_out(done)

    def close_window(self, done: dict[Hashable, SpanShare]) -> None:
        """Close the open window and share out every window closed: a flush or an exit
        (split equally where the weights are not known yet); the spans that ended in
        them go to ``done``."""
        if self._win.from_s == self._win.from_s or self._win.ending:
            self._next_window()
        self.share_out(done)

    def _next_window(self) -> None:
        """The open window is held and the next one opens. The stretches of the spans
        running are cut at the edge, and their fixed terms in it settled: a window's
        factors then cover all its spans' work (energy stays conserved), and each
        stretch lies inside one window."""
        running = [span for span in self.spans.values() if span.started]
        for span in running:
            self._close_piece(span)
            self._settle(span)
        self._held.append(self._win)
        self.window += 1
        self._win = _Window(self.window)
        edge = (self.window, 0.0, 0.0, 0.0, 0.0, 0.0)
        for span in running:
            span.at = edge
            span.r_at = 0.0

    def share_out(self, done: dict[Hashable, SpanShare]) -> None:
        """Share out the windows held, in order, under the weights last seen (the
        tentative ones, ``fallback``, where none are determined yet)."""
        theta = self._theta if self._theta is not None else self.fallback
        for win in self._held:
            self._share_window(win, theta, done)
        self._held.clear()
        if self.active == 0:  # nobody holds a snapshot: rebase (precision, memory)
            self._base = {self.window: _ZERO}
            self._coef = {}
        elif len(self._base) > 512:
            self._prune()

    def _share_window(
        self, win: _Window, theta: Theta | None, done: dict[Hashable, SpanShare]
    ) -> None:
        """Window ``win``'s scale factors under ``theta``, then the spans that ended in it."""
        w = win.index
        sums = win.sums
        known_s, served_s, unweighed_s = sums[4], sums[5], sums[6]
        placed = win.placed
        decode, context = sums[2] + placed[0], sums[3] + placed[1]
        # Split equally, instant by instant: with no weights, or no span with tokens.
        equal = theta is None or not known_s
        if equal:
            self.equal_intervals += win.intervals
            terms = (0.0,) * _TERMS
            k = kb = 0.0
        else:
            assert theta is not None
            f_j, alpha, beta, gamma = theta
            weighed_j = (
                f_j * win.fixed_steps
                + alpha * sums[1]
                + beta * decode
                + gamma * context
                + FLOOR_W * known_s
            )
            if served_s > 0:  # spans with no tokens: the mean power of those served
                self.unweighed_w = weighed_j / served_s
            unweighed_w = self.unweighed_w
            predicted_j = weighed_j + unweighed_w * unweighed_s
            k = win.busy_j / predicted_j if predicted_j > 0 else 0.0
            kb = win.bound_j / predicted_j if predicted_j > 0 else 0.0
            # A term nobody ran in this window moves no share: 0 (not a scale factor
            # that may be huge where little was predicted, and would cost the totals
            # precision).
            terms = (
                alpha if sums[1] else 0.0,
                beta if decode else 0.0,
                gamma if context else 0.0,
                f_j if win.fixed_steps else 0.0,
                unweighed_w if unweighed_s else 0.0,
                FLOOR_W,
            )
        co = (
            *(k * v for v in terms),
            *(kb * v for v in terms),
            1.0,
            float(equal),
            float(equal),
            1.0,
        )
        self._coef[w] = co
        self._base[w + 1] = _advance(self._base[w], co, win.raw)
        for span in win.ending:
            done[span[0]] = self._share(span, span[2], span[3])

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
        raw = self._win.raw
        span.at = span.first = (self.window, raw[0], raw[1], raw[2], raw[3], raw[4])
        span.r_at = raw[5]
        span.started = True
        self.active += 1
        placed = span.placed
        if placed is not None and span.tokens is not None and span.end_s != math.inf:
            span.weighed = True
            self.weighed += 1
            span.pace_w = _pace_weight(span.end_s, placed)
            if placed.serve_s <= span.start_s:
                self._serve(span, piece=False)

    def weigh_started(self, span: TokenSpan) -> None:
        """``span`` ran before its tokens were known (it was running when the default
        rule switched from the equal split, or past the wait for tokens) and has ended
        with them: from the sweep's position on it runs at its own rates, not the mean
        of the others (its phase events behind the sweep come at once)."""
        placed = span.placed
        if (
            span.weighed
            or not span.started
            or placed is None
            or span.tokens is None
            or span.end_s == math.inf
            or self.spans.get(span.key) is not span
        ):
            return
        span.weighed = True
        self.weighed += 1
        span.pace_w = _pace_weight(span.end_s, placed)
        if placed.serve_s <= span.start_s:
            self._serve(span)

    def _serve(self, span: TokenSpan, piece: bool = True) -> None:
        """Its prefill begins: it is served from here, at its first phase's rates."""
        placed = span.placed
        if not span.weighed or span.serving or placed is None:
            return
        if piece:
            self._close_piece(span)
        span.serving = True
        self.serving += 1
        self._set_rates(span, placed.first)

    def _first_token(self, span: TokenSpan) -> None:
        """Its first token: the decode phase from here."""
        self._close_piece(span)
        self._settle(span)
        span.split_n = len(span.pieces) if span.pieces is not None else 0
        span.mid = span.at
        placed = span.placed
        if span.weighed and placed is not None and placed.second is not None:
            if not span.serving:
                span.serving = True
                self.serving += 1
            tokens = span.tokens
            if tokens is not None:  # (weighed: it is) before its rates: not in ``even``
                decode_tokens = placed.second[1] * (span.end_s - placed.first_s)
                span.decode_tokens = span.unplaced = decode_tokens
                # its mean token is read against ``context_of``: its first against this
                span.context_tokens = context_of(tokens) - decode_tokens / 2.0
            self._set_rates(span, placed.second)
            self._set_ramp(span, placed)

    def _end(self, span: TokenSpan, estimated_before_s: float) -> None:
        self._close_piece(span)
        self._settle(span)
        self._leave(span)
        del self.spans[span.key]
        win = self._win
        length_s = span.end_s - span.start_s
        win.calls_s += length_s
        win.calls_s2 += length_s * length_s
        win.ending.append(ended(span, span.start_s < estimated_before_s))

    def _set_ramp(self, span: TokenSpan, placed: Placement) -> None:
        """Its decode context term, for the fit: ``y·(input + y·(t − first))``."""
        tokens = span.tokens
        if tokens is None or placed.second is None:
            return
        if self._origin_s is None:
            self._origin_s = placed.first_s
        y = placed.second[1]
        slope = y * y
        since_s = placed.first_s - self._origin_s
        constant = y * tokens.input_tokens - slope * since_s
        context = tokens.input_tokens - y * since_s  # its context: input + y·(t − first)
        span.ramp_c, span.ramp_s = constant, slope
        span.ctx_c, span.ctx_y = context, y
        self.ramp[0] += constant
        self.ramp[1] += slope
        if slope:
            self.decoders += 1
            self.contexts[0] += context
            self.contexts[1] += y

    def _leave(self, span: TokenSpan) -> None:
        if span.started:
            self.active -= 1
            if span.weighed:
                self.weighed -= 1
                if span.serving:
                    self.serving -= 1
                self._set_rates(span, NO_RATES)  # its rates leave the sums
                if span.ramp_s:
                    self.ramp[0] -= span.ramp_c
                    self.ramp[1] -= span.ramp_s
                    self.decoders -= 1
                    self.contexts[0] -= span.ctx_c
                    self.contexts[1] -= span.ctx_y
                    if not self.decoders:  # nobody decoding: exactly 0 (precision)
                        self.ramp = [0.0, 0.0]
                        self.contexts = [0.0, 0.0]

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

    def _drop(self, spans: list[TokenSpan]) -> None:
        """``spans`` leave now, partial: they complete when the window closes."""
        for span in spans:
            if span.started:
                self._close_piece(span)
                self._settle(span)
            self._leave(span)
            del self.spans[span.key]
            span.partial = True
            self._win.ending.append(ended(span, False))


def _scaled(co: tuple[float, ...], acc: Sequence[float]) -> tuple[float, float, float, float]:
    """(energy, bound) of a span's stretches summed in ``acc`` under their window's scale
    factors ``co``: before its first token, then after it."""
    energy_j, bound_j = _scaled_half(co, acc[:_ACC])
    after_j, after_bound_j = _scaled_half(co, acc[_ACC:])
    return energy_j, bound_j, after_j, after_bound_j


def _scaled_half(co: tuple[float, ...], sums: Sequence[float]) -> tuple[float, float]:
    """(energy, bound) of one half of ``acc`` (``_ACC`` sums); a sum that is 0 adds
    nothing, whatever its factor."""
    unweighed_s, floor_s, prefill, decode, context = sums
    energy_j = bound_j = 0.0
    if unweighed_s:
        energy_j += co[4] * unweighed_s
        bound_j += co[10] * unweighed_s
    if floor_s:
        energy_j += co[5] * floor_s
        bound_j += co[11] * floor_s
    if prefill:
        energy_j += co[0] * prefill
        bound_j += co[6] * prefill
    if decode:
        energy_j += co[1] * decode + co[2] * context
        bound_j += co[7] * decode + co[8] * context
    return energy_j, bound_j


def _pace_weight(end_s: float, placed: Placement) -> float:
    """How much a span's step rate counts in the server's: 1 / the seconds its decode
    rate is averaged over (a short call's rate says more about its moment than a long
    one's), the same in its prefill step."""
    span_s = end_s - placed.first_s if placed.second is not None else end_s - placed.serve_s
    return 1.0 / (span_s * span_s) if span_s > 0.0 else 0.0


def _advance(
    base: tuple[float, ...], co: tuple[float, ...], raw: Sequence[float]
) -> tuple[float, ...]:
    """The running totals ``base`` moved on by a window's raw integrals ``raw`` (as in
    ``Snap``, less its window) under its scale factors ``co``."""
    return tuple(
        base[i] + co[c] * raw[by - 1] for i, (by, c) in enumerate(zip(_BY, _BY_COEF, strict=True))
    )
