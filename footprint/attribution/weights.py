"""The token rule's weights, learned online from the counter like the idle power.

Each handed-out interval's busy energy is, by the model of ``tokens``,

    busy J ≈ F·steps + α·prefill tokens + β·decode tokens + γ·decode tokens × context

summed over the interval. Consecutive intervals are gathered into blocks of about
``BLOCK_S`` busy seconds (a counter that ticks more slowly than the sampler makes one
interval's delta noisy; a block's sum telescopes), and the weights are the non-negative,
exponentially weighted least squares fit over the blocks (older blocks count less, so
the weights follow a server whose work changes).

The server's steps in an interval, and so its decode tokens (the decoders times the
steps) and their context term, come from its step time (``StepTimes``, learned from the
spans' decode phases), not from each span's mean decode rate: a mean rate smears a
span's tokens evenly over its life, and the fit, which cannot tell the decoders' term
from their contexts' but by where the work was, traded one for the other. Where the
spans' step times do not follow a batching server's, the mean rates are used.

Until the fit is determined (too few blocks, or blocks too alike to tell the terms
apart: ``_determined``) there are no weights: the resolver holds its windows (up to
``tokens.HOLD_S``), then shares them by the last fit (``tentative``), or, before any
fit, by the step time alone (``prior``), or splits equally where neither is known. The
parameters' covariance says how far the weights may be off; the resolver widens each
record's bound by what that moves its share.
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections import deque
from collections.abc import Sequence
from itertools import combinations

from footprint.attribution.placement import SpanTokens, context_of, step_rate
from footprint.attribution.tokens import IntervalTokens, Theta

BLOCK_S = 2.0  # busy seconds per block of intervals
SPAN_BLOCKS = 4  # each fitted row sums this many consecutive blocks (overlapping rows)
MIN_BLOCKS = 30  # rows (effective, after forgetting) before the fit is used
FORGET = 0.998  # weight kept by the blocks so far each time a block is added
# An interval in which spans without token counts (a caller's error path) held at most
# this share of the span-seconds still teaches, as if they had done the mean work of the
# others: in a batch of a hundred, one such span is almost always running.
MAX_UNTOLD_SHARE = 0.05
REFIT_ROWS = 5  # once determined, the weights are fitted again every this many rows
# The first weights: no term's spread (2 standard errors) moves a typical row's energy
# by more than this share
DETERMINED = 0.02
# ... and the last this many fits (``REFIT_ROWS`` rows apart) agree that closely: a fit
# on features that are still off (the step time not learned yet) can be tight and wrong
STABLE_FITS = 10
_DIM = 4
_BLOCK = 8  # what a block gathers (``TokenWeights._block``)
# The server's step time (``StepTimes``)
STEP_FORGET = 0.999  # weight kept by the spans so far each time a span is added
MIN_SPANS = 50  # spans (effective) before the step time is used
REFIT_SPANS = 20  # it is fitted again every this many spans
# ... twice as many (up to this) each time a fit moved it by at most this share
MAX_REFIT_SPANS = 640
STEADY_STEP_SHARE = 0.005
# ... or this many where it misfits (calls at their own pace: not used, so rarely refitted;
# a fit solves up to 15 small systems)
MISFIT_REFIT_SPANS = 500
# A fit whose τ moves a typical step by more than this share learns its spans again
RESTEP_SHARE = 0.1
# ... and the weights' rows are counted again once τ moved this far from what they were
REBUILD_SHARE = 0.02
STEP_MISFIT = 0.15  # the most misfit (root mean square share) of a step time to use
# A term moves by its own part of a typical prediction, or this share of the whole for a
# smaller term (``_moved``)
MOVED_FLOOR = 0.1
MIN_DECODE_S = 0.05  # a shorter decode phase says too little about its steps
HISTORY_BLOCKS = 2_000  # the most blocks kept to count the rows again by a new step time
MAX_PENDING = 10_000  # spans waiting for the intervals up to their end
# The spans kept to learn again after a far move: by the oldest, what they taught is
# forgotten to 5 % (``STEP_FORGET`` ** 3,000)
MAX_LEARNED = 3_000
HISTORY_S = 900.0  # how far back the intervals are kept (s): longer spans do not teach


def _solve(matrix: list[list[float]], rhs: list[float]) -> list[float] | None:
    """Cholesky solve of a small symmetric system; None when not positive definite."""
    n = len(rhs)
    low = [[0.0] * n for _ in range(n)]
    for i in range(n):
        for j in range(i + 1):
            s = matrix[i][j] - sum(low[i][k] * low[j][k] for k in range(j))
            if i == j:
                if s <= 1e-12 * max(matrix[i][i], 1e-300):
                    return None
                low[i][i] = math.sqrt(s)
            else:
                low[i][j] = s / low[j][j]
    y = [0.0] * n
    for i in range(n):
        y[i] = (rhs[i] - sum(low[i][k] * y[k] for k in range(i))) / low[i][i]
    x = [0.0] * n
    for i in reversed(range(n)):
        x[i] = (y[i] - sum(low[k][i] * x[k] for k in range(i + 1, n))) / low[i][i]
    return x


def _nonnegative(
    xx: list[list[float]], xy: list[float], yy: float
) -> tuple[list[float], list[int], float] | None:
    """The non-negative least squares fit of the normal equations ``xx``, ``xy`` (``yy``
    the targets' sum of squares): all terms if none comes out below 0, else the best
    over the subsets of terms (the others 0). (parameters, terms fitted, residual sum of
    squares), or None when no subset is determined."""
    dim = len(xy)
    scale = [math.sqrt(xx[i][i]) if xx[i][i] > 0 else 0.0 for i in range(dim)]
    full = _solve_terms(xx, xy, list(range(dim)), scale)
    if full is not None:
        return full, list(range(dim)), _sse(xx, xy, yy, full)
    best = None
    for size in range(1, dim):
        for terms in combinations(range(dim), size):
            theta = _solve_terms(xx, xy, list(terms), scale)
            if theta is None:
                continue
            sse = _sse(xx, xy, yy, theta)
            if best is None or sse < best[2]:
                best = (theta, list(terms), sse)
    return best


def _solve_terms(
    xx: list[list[float]], xy: list[float], free: list[int], scale: list[float]
) -> list[float] | None:
    """Least squares on the terms ``free`` (the others 0); None when singular or a
    parameter comes out below 0."""
    if any(scale[t] <= 0 for t in free):
        return None
    m = [[xx[i][j] / (scale[i] * scale[j]) for j in free] for i in free]
    solved = _solve(m, [xy[i] / scale[i] for i in free])
    if solved is None or any(v < 0.0 for v in solved):
        return None
    theta = [0.0] * len(xy)
    for i, v in zip(free, solved, strict=True):
        theta[i] = v / scale[i]
    return theta


def _sse(xx: list[list[float]], xy: list[float], yy: float, theta: list[float]) -> float:
    dim = len(xy)
    quad = sum(theta[i] * xx[i][j] * theta[j] for i in range(dim) for j in range(dim))
    return max(yy - 2.0 * sum(t * v for t, v in zip(theta, xy, strict=True)) + quad, 0.0)


def _determined(
    theta: list[float],
    free: list[int],
    covariance: list[list[float]] | None,
    xx: list[list[float]],
) -> bool:
    """Whether a first fit tells the terms apart: all of them fitted, and none whose
    spread (two standard errors) moves a typical row's energy (each term at its root
    mean square over the rows) by more than ``DETERMINED`` of it. The decoders and
    their contexts grow together; early on, the fit may trade one for the other (a
    context weight near 0 and a decode weight several times too large), which would
    move whole kinds of calls: the windows are held a while longer instead."""
    if covariance is None or len(free) < len(theta):
        return False
    typical = [math.sqrt(max(xx[i][i], 0.0)) for i in range(len(theta))]
    energy = sum(t * x for t, x in zip(theta, typical, strict=True))
    return all(
        2.0 * math.sqrt(max(covariance[i][i], 0.0)) * typical[i] <= DETERMINED * energy
        for i in free
    )


def _forget_update(
    xx: list[list[float]],
    xy: list[float],
    x: Sequence[float],
    y: float,
    forget: float,
    weight: float,
) -> None:
    """Add the row ``x`` → ``y`` (weighing ``weight``) to the normal equations ``xx``,
    ``xy`` (4 terms) in place, after scaling what they held by ``forget``."""
    x0, x1, x2, x3 = x
    w0, w1, w2, w3 = weight * x0, weight * x1, weight * x2, weight * x3
    xy[0] = forget * xy[0] + w0 * y
    xy[1] = forget * xy[1] + w1 * y
    xy[2] = forget * xy[2] + w2 * y
    xy[3] = forget * xy[3] + w3 * y
    r0, r1, r2, r3 = xx
    r0[0] = forget * r0[0] + w0 * x0
    r1[1] = forget * r1[1] + w1 * x1
    r2[2] = forget * r2[2] + w2 * x2
    r3[3] = forget * r3[3] + w3 * x3
    r0[1] = r1[0] = forget * r0[1] + w0 * x1
    r0[2] = r2[0] = forget * r0[2] + w0 * x2
    r0[3] = r3[0] = forget * r0[3] + w0 * x3
    r1[2] = r2[1] = forget * r1[2] + w1 * x2
    r1[3] = r3[1] = forget * r1[3] + w1 * x3
    r2[3] = r3[2] = forget * r2[3] + w2 * x3


def _step_count(
    tau: Sequence[float], busy_s: float, prefill: float, decoders_s: float, contexts_s: float
) -> float:
    """The server's steps in ``busy_s`` busy seconds by the step time ``tau`` (τF, τb,
    τc, τa), with ``prefill`` prompt tokens sharing them and ``decoders_s`` decoders'
    and ``contexts_s`` contexts' seconds (per step: their means over the busy time)."""
    return busy_s * step_rate(tau, prefill / busy_s, decoders_s / busy_s, contexts_s / busy_s)


def _counted(
    total: tuple[float, float, float, float],
    raw: tuple[float, float, float, float],
    tau: Sequence[float] | None,
) -> tuple[float, float, float, float]:
    """``total`` (steps, Σ decoders and Σ contexts over them, prefill tokens) after an
    interval that held ``raw`` (busy s, prefill, decoders' and contexts' seconds): its
    steps by ``tau``, its seconds while none is known (the means are over time then)."""
    steps, n, c, p = total
    busy_s, prefill, decoders_s, contexts_s = raw
    if busy_s > 0.0:
        weight = (
            busy_s if tau is None else _step_count(tau, busy_s, prefill, decoders_s, contexts_s)
        )
        steps += weight
        n += decoders_s / busy_s * weight
        c += contexts_s / busy_s * weight
    return (steps, n, c, p + prefill)


def _empty_normal_equations() -> tuple[list[list[float]], list[float], float]:
    """Normal equations (``xx``, ``xy``, ``yy``) that have seen no row."""
    return [[0.0] * _DIM for _ in range(_DIM)], [0.0] * _DIM, 0.0


def _moved(old: Sequence[float], new: Sequence[float], xx: list[list[float]]) -> float:
    """How far ``new`` parameters moved from ``old``: the most one term's change moves
    its own part of a typical row's prediction (each term at its root mean square), as
    a share of that part, or of ``MOVED_FLOOR`` of the prediction for a smaller one. A
    share of the whole prediction would hide a small term's moves behind a large one
    (the prompt time of a step behind its per-decoder time), and each term decides
    whole kinds of calls' shares."""
    typical = [math.sqrt(max(xx[i][i], 0.0) / xx[0][0]) for i in range(len(new))]
    predicted = sum(v * x for v, x in zip(new, typical, strict=True))
    if predicted <= 0.0:
        return math.inf
    floor = MOVED_FLOOR * predicted
    return max(
        abs(a - b) * x / max(b * x, floor) for a, b, x in zip(new, old, typical, strict=True)
    )


def _inverse(matrix: list[list[float]]) -> list[list[float]] | None:
    n = len(matrix)
    columns = []
    for j in range(n):
        column = _solve(matrix, [1.0 if i == j else 0.0 for i in range(n)])
        if column is None:
            return None
        columns.append(column)
    return [[columns[j][i] for j in range(n)] for i in range(n)]


class StepTimes:
    """The server's step time, learned from the spans' decode phases.

    A decoding span makes one token a step, so its decode time over its decode tokens
    is the mean time of the steps it was in: exactly, whatever ran beside it. A step's
    time is taken as ``τF + τb·decoders + τc·Σ contexts`` of the spans decoding in it,
    stretched by the prefill that shares it (``τa`` s per prompt token:
    ``steps/s = (1 − τa·prefill tokens/s) / (τF + τb·decoders + τc·Σ contexts)``), so a
    span's mean step time is ``τF + τb·n̄ + τc·C̄ + τa·P/m`` with ``n̄`` and ``C̄`` the
    means over the steps of its decode phase of what the intervals held, ``P`` the prompt
    tokens run beside it and ``m`` its decode tokens (its steps). The means are over
    steps, not time: a long step (a big batch) counts once, as it does in the span's
    decode time; each interval's steps come from the last τ (the time while none is
    known). The non-negative, forgetting least squares over the spans gives τ; the
    server's steps in an interval follow from what it held, not from the spans' mean
    rates, which smear each span's tokens over its whole decode phase (the fit of the
    weights needs the steps, and the decode tokens, which are the decoders times the
    steps, where they were).
    """

    def __init__(self) -> None:
        # The intervals seen, as cumulative sums at their edges: time (s), and the steps
        # (by the last τ), Σ decoders and Σ contexts over those steps, prefill tokens
        self._t: list[float] = []
        self._cum: list[tuple[float, float, float, float]] = []
        # ... and what each edge's interval held (busy s, prefill, decoders' and
        # contexts' seconds; None at the start of a run of intervals): to count its
        # steps again by a new τ
        self._held: list[tuple[float, float, float, float] | None] = []
        self._total = (0.0, 0.0, 0.0, 0.0)
        self._pending: list[tuple[float, float, int]] = []  # (end, first token, decode)
        # Where the last interval whose calls were not all known ended (s): a span
        # decoding over it was averaged over a batch that lacked some of its calls
        self._blind_until_s = -math.inf
        # The spans learned from (first token, end, decode), to learn them again
        self._learned: deque[tuple[float, float, int]] = deque(maxlen=MAX_LEARNED)
        self._xx, self._xy, self._yy = _empty_normal_equations()
        self.spans = 0.0  # effective number of spans learned from
        self._count = 0
        self._next_fit = 0  # ``_count`` at which τ is fitted next
        self._gap = REFIT_SPANS  # spans between fits
        self.tau: tuple[float, float, float, float] | None = None  # τF, τb, τc, τa
        self.misfit = math.inf  # root mean square of its misfit, share of the mean step time

    def add_span(self, first_s: float, end_s: float, decode_tokens: int) -> None:
        """A span decoded ``decode_tokens`` tokens (after its first) from ``first_s`` to
        ``end_s``: it teaches once the intervals up to its end have been seen."""
        if decode_tokens >= 2 and end_s - first_s >= MIN_DECODE_S:
            heapq.heappush(self._pending, (end_s, first_s, decode_tokens))
            if len(self._pending) > MAX_PENDING:  # intervals stopped coming: forget
                heapq.heappop(self._pending)

    def observe(self, start_s: float, end_s: float, held: IntervalTokens) -> None:
        """An interval handed out (``start_s``..``end_s``) and what its busy time held."""
        times, cum, kept = self._t, self._cum, self._held
        if not times or start_s > times[-1]:
            times.append(start_s)
            cum.append(self._total)
            kept.append(None)
        elif start_s < times[-1]:  # out of order: start over
            times.clear()
            cum.clear()
            kept.clear()
            self._learned.clear()
            times.append(start_s)
            cum.append(self._total)
            kept.append(None)
        if held.unweighed_s > 0.0:
            self._blind_until_s = end_s
        raw = (held.busy_s, held.prefill, held.decoders_s, held.contexts_s)
        self._total = _counted(self._total, raw, self.tau)
        times.append(end_s)
        cum.append(self._total)
        kept.append(raw)
        pending = self._pending
        while pending and pending[0][0] <= end_s:
            span_end_s, first_s, decode = heapq.heappop(pending)
            if first_s >= self._blind_until_s:  # else taught until the next far move only
                self._learned.append((first_s, span_end_s, decode))
            self._learn(first_s, span_end_s, decode)
        if times[-1] - times[0] > 2 * HISTORY_S:  # forget what no span reaches back to
            cut = bisect.bisect_left(times, times[-1] - HISTORY_S)
            del times[:cut]
            del cum[:cut]
            del kept[:cut]
            kept[0] = None

    def _at(self, t_s: float) -> tuple[float, float, float, float] | None:
        times, cum = self._t, self._cum
        i = bisect.bisect_left(times, t_s)
        if i >= len(times) or (i == 0 and times[0] > t_s):
            return None
        if times[i] == t_s or i == 0:
            return cum[i]
        t0, t1 = times[i - 1], times[i]
        w = (t_s - t0) / (t1 - t0)
        a, b = cum[i - 1], cum[i]
        return (
            a[0] + w * (b[0] - a[0]),
            a[1] + w * (b[1] - a[1]),
            a[2] + w * (b[2] - a[2]),
            a[3] + w * (b[3] - a[3]),
        )

    def _recount(self) -> None:
        """The intervals' steps counted again by the last τ, and the spans learned again
        from them: a fit that moved τ far was made on means over steps it counted wrong
        (a fresh start would leave the next fits too few spans to tell the per-decoder
        term from the per-context one, and τ would swing between them)."""
        tau, cum = self.tau, self._cum
        total = (0.0, 0.0, 0.0, 0.0)
        for i, raw in enumerate(self._held):
            if raw is not None:
                total = _counted(total, raw, tau)
            cum[i] = total
        self._total = total
        self._xx, self._xy, self._yy = _empty_normal_equations()
        self.spans = 0.0
        for first_s, end_s, decode in self._learned:
            self._learn(first_s, end_s, decode, fit=False)

    def _learn(self, first_s: float, end_s: float, decode: int, fit: bool = True) -> None:
        lo, hi = self._at(first_s), self._at(end_s)
        if lo is None or hi is None:
            return
        steps = hi[0] - lo[0]
        if steps <= 0.0:
            return
        step_s = (end_s - first_s) / decode
        x = (
            1.0,
            (hi[1] - lo[1]) / steps,
            (hi[2] - lo[2]) / steps,
            (hi[3] - lo[3]) / decode,
        )
        # A span weighs its steps: its mean is over that many, and a long decode phase's
        # composition is the less off for where its edges' prompts were placed
        _forget_update(self._xx, self._xy, x, step_s, STEP_FORGET, float(decode))
        self._yy = STEP_FORGET * self._yy + decode * step_s * step_s
        self.spans = STEP_FORGET * self.spans + 1.0
        if not fit:
            return
        self._count += 1
        if self.spans >= MIN_SPANS and self._count >= self._next_fit:
            self._refit()

    def _fitted(self) -> tuple[tuple[float, float, float, float], float] | None:
        """τ fitted on the spans learned so far, and its misfit (root mean square, share
        of the mean step time); None where no fit with a positive fixed term comes out."""
        xx, xy = self._xx, self._xy
        fitted = _nonnegative(xx, xy, self._yy)
        if fitted is None or fitted[0][0] <= 0.0:
            return None
        tau, _, sse = fitted
        misfit = math.sqrt(sse * xx[0][0]) / xy[0]  # xx[0][0]: Σ weights
        return (tau[0], tau[1], tau[2], tau[3]), misfit

    def _refit(self) -> None:
        """Fit τ; the spans are learned again where it moved far. The next fit comes
        soon while τ moves, less and less often once it holds still, rarely where it
        does not follow the spans (or no fit comes out: calls at their own pace, no
        batching server)."""
        fitted = self._fitted()
        if fitted is None:
            self._gap = min(2 * self._gap, MISFIT_REFIT_SPANS)
            self._next_fit = self._count + self._gap
            return
        old = self.tau
        self.tau, self.misfit = fitted
        moved = math.inf if old is None else _moved(old, self.tau, self._xx)
        if moved > RESTEP_SHARE:
            # The spans so far were averaged over steps counted by a τ this far off
            # (over time, before the first): they are learned again, and τ fitted on them
            self._recount()
            fitted = self._fitted()
            if fitted is not None:
                self.tau, self.misfit = fitted
        if self.misfit > STEP_MISFIT:
            self._gap = MISFIT_REFIT_SPANS
        elif moved <= STEADY_STEP_SHARE:
            self._gap = min(2 * self._gap, MAX_REFIT_SPANS)
        else:
            self._gap = REFIT_SPANS
        self._next_fit = self._count + self._gap

    @property
    def prefill_s_per_token(self) -> float:
        """How long the server takes per prompt token (``τa``, s), where its step time
        is known; else 0."""
        tau = self.usable_tau
        return tau[3] if tau is not None else 0.0

    @property
    def usable_tau(self) -> tuple[float, float, float, float] | None:
        """τ where the spans' step times follow it; else None."""
        return self.tau if self.misfit <= STEP_MISFIT else None

    def moved(self, old: Sequence[float]) -> float:
        """How far τ moved from ``old``: the most one term's change moves a typical
        span's step, as a share of it."""
        if self.tau is None:
            return math.inf
        return _moved(old, self.tau, self._xx) if self._xx[0][0] > 0.0 else math.inf

    def steps(
        self, held: IntervalTokens, tau: Sequence[float] | None = None
    ) -> tuple[float, float, float] | None:
        """The server's steps in an interval that held ``held``, its decode tokens and
        decode tokens × context, by ``tau`` (default: the one learned); None before τ
        is known, where the spans' step times do not follow it (calls that each go at
        their own pace: no batching server), or without busy time."""
        if tau is None:
            tau = self.usable_tau
        busy_s = held.busy_s
        if tau is None or busy_s <= 0.0:
            return None
        steps = _step_count(tau, busy_s, held.prefill, held.decoders_s, held.contexts_s)
        return steps, held.decoders_s / busy_s * steps, held.contexts_s / busy_s * steps


def as_if_told(held: IntervalTokens) -> IntervalTokens:
    """``held`` as if its spans without token counts had done the mean work of the
    others (their span-seconds scale the prefill, decode and decoders' terms), where
    they held at most ``MAX_UNTOLD_SHARE`` of its span-seconds; else ``held`` as it is
    (it cannot teach). The server's steps are the server's: not scaled."""
    untold_s, told_s = held.unweighed_s, held.weighed_s
    if (
        untold_s <= 0.0
        or told_s <= 0.0
        or not math.isfinite(untold_s)
        or untold_s > MAX_UNTOLD_SHARE * (told_s + untold_s)
    ):
        return held
    scale = (told_s + untold_s) / told_s
    return held._replace(
        prefill=held.prefill * scale,
        decode=held.decode * scale,
        context=held.context * scale,
        unweighed_s=0.0,
        decoders_s=held.decoders_s * scale,
        contexts_s=held.contexts_s * scale,
        weighed_s=told_s + untold_s,
    )


class TokenWeights:
    """Online non-negative least squares of busy energy on the token work (see above)."""

    def __init__(self) -> None:
        self._xx, self._xy, self._yy = _empty_normal_equations()
        self.blocks = 0.0  # effective number of blocks
        # The block being gathered: sums of its intervals' busy s, steps (the spans'
        # rates), prefill, decode, context, decoders' and contexts' seconds, then J
        self._block = [0.0] * _BLOCK
        # The last blocks (steps, prefill, decode, context, J): a row sums them
        self._recent: deque[tuple[float, ...]] = deque(maxlen=SPAN_BLOCKS)
        self._rows = 0
        self.theta: Theta | None = None  # F (J/step), α, β, γ; None: not determined yet
        self.covariance: list[list[float]] | None = None  # of theta, 4x4
        # The last fit, determined or not: what windows held past ``HOLD_S`` (or at a
        # flush) are shared by rather than the equal split; and its covariance
        self.tentative: Theta | None = None
        self._tentative_covariance: list[list[float]] | None = None
        self.step_times = StepTimes()
        self._rows_tau: tuple[float, float, float, float] | None = None  # the rows' last
        # The last blocks (``_block``; None: a break), to count the rows again by
        self._history: deque[list[float] | None] = deque(maxlen=HISTORY_BLOCKS)
        self._fits: deque[Theta] = deque(maxlen=STABLE_FITS)  # the last fits, first weights
        self._busy_j = 0.0  # what the intervals that taught drew while busy (J) ...
        self._busy_s = 0.0  # ... and in how long (s): the busy power, for ``prior``

    def observe(
        self,
        held: IntervalTokens,
        busy_j: float,
        start_s: float | None = None,
        end_s: float | None = None,
    ) -> None:
        """One handed-out interval (``start_s``..``end_s``: it teaches the step time
        too); intervals that cannot teach (a span whose tokens were unknown in it, or
        none busy) break the block being gathered."""
        held = as_if_told(held)
        if start_s is not None and end_s is not None:
            self.step_times.observe(start_s, end_s, held)
        history = self._history
        if held.unweighed_s > 0.0 or not math.isfinite(busy_j):
            self._block = [0.0] * _BLOCK
            self._recent.clear()
            if history and history[-1] is not None:
                history.append(None)
            return
        self._busy_j += busy_j
        self._busy_s += held.busy_s
        block = self._block
        block[0] += held.busy_s
        block[1] += held.steps
        block[2] += held.prefill
        block[3] += held.decode
        block[4] += held.context
        block[5] += held.decoders_s
        block[6] += held.contexts_s
        block[7] += busy_j
        if block[0] < BLOCK_S:
            return
        self._block = [0.0] * _BLOCK
        history.append(block)
        tau, rows_tau = self.step_times.usable_tau, self._rows_tau
        if tau != rows_tau and (
            rows_tau is None or tau is None or self.step_times.moved(rows_tau) > REBUILD_SHARE
        ):
            self._rows_tau = tau
            self._rebuild(tau)
            return
        self._gather(block, tau, fit=True)

    def _gather(self, block: list[float], tau: Sequence[float] | None, fit: bool) -> None:
        """A full block's row terms: its steps, decode tokens and their context from the
        step time over the whole block (where it is known), not interval by interval (a
        prompt placed a step off moves a short interval's steps, hardly a block's); else
        the spans' mean rates. Every ``SPAN_BLOCKS`` in a row make a row."""
        busy_s, steps, prefill, decode, context, decoders_s, contexts_s, block_j = block
        if tau is not None:
            steps = _step_count(tau, busy_s, prefill, decoders_s, contexts_s)
            decode = decoders_s / busy_s * steps
            context = contexts_s / busy_s * steps
        recent = self._recent
        recent.append((steps, prefill, decode, context, block_j))
        if len(recent) == SPAN_BLOCKS:
            row = [sum(b[i] for b in recent) for i in range(_DIM + 1)]
            self._add(row[:_DIM], row[_DIM], fit)

    def _rebuild(self, tau: Sequence[float] | None) -> None:
        """The rows again from the blocks kept, under the step time now known (it moved
        far from the one they were counted by, or there was none): the weights fitted
        on the old rows stay until the new ones determine the fit."""
        self._xx, self._xy, self._yy = _empty_normal_equations()
        self.blocks = 0.0
        self._rows = 0
        self._recent.clear()
        for block in self._history:
            if block is None:
                self._recent.clear()
            else:
                self._gather(block, tau, fit=False)
        if self.blocks >= MIN_BLOCKS:
            self._fit()

    @property
    def prior(self) -> Theta | None:
        """Weights before any fit, from the step time alone: the busy power times each
        part of the step (a call's energy follows the time its work takes in the
        step), where the step time is known; else None."""
        tau = self.step_times.usable_tau
        if tau is None or self._busy_s <= 0.0:
            return None
        power_w = self._busy_j / self._busy_s
        return (power_w * tau[0], power_w * tau[3], power_w * tau[1], power_w * tau[2])

    @property
    def fallback(self) -> Theta | None:
        """What windows are shared by where no weights are determined: the last fit,
        else ``prior``."""
        return self.tentative if self.tentative is not None else self.prior

    @property
    def step_time(self) -> tuple[float, float, float, float] | None:
        """The server's step time (τF, τb, τc, τa: ``StepTimes``) where the spans' step
        times follow it; else None: where the shares place each span's steps."""
        return self.step_times.usable_tau

    @property
    def prefill_s_per_token(self) -> float:
        """How long the server takes per prompt token (s; 0 where not known): where a
        span's prompt is placed (``placement.placement``)."""
        return self.step_times.prefill_s_per_token

    def add_span(self, first_s: float, end_s: float, decode_tokens: int) -> None:
        """A span with a decode phase ended: see ``StepTimes.add_span``."""
        self.step_times.add_span(first_s, end_s, decode_tokens)

    def _add(self, x: list[float], y: float, fit: bool) -> None:
        _forget_update(self._xx, self._xy, x, y, FORGET, 1.0)
        self._yy = FORGET * self._yy + y * y
        self.blocks = FORGET * self.blocks + 1.0
        self._rows += 1
        if (
            fit
            and self.blocks >= MIN_BLOCKS
            and (self.tentative is None or self._rows % REFIT_ROWS == 0)
        ):
            self._fit()

    def _fit(self) -> None:
        """The best non-negative fit (see ``_nonnegative``)."""
        fitted = _nonnegative(self._xx, self._xy, self._yy)
        if fitted is None:
            return
        theta, free, sse = fitted
        covariance = self._covariance(free, sse)
        self.tentative = (theta[0], theta[1], theta[2], theta[3])
        self._tentative_covariance = covariance
        fits = self._fits
        fits.append(self.tentative)
        if self.theta is None and not (
            _determined(theta, free, covariance, self._xx)
            and len(fits) == STABLE_FITS
            and all(_moved(old, theta, self._xx) <= DETERMINED for old in fits)
        ):
            return
        self.theta = self.tentative
        self.covariance = covariance

    def _covariance(self, free: list[int], sse: float) -> list[list[float]] | None:
        dof = self.blocks / SPAN_BLOCKS - len(free)  # the rows overlap
        scale = [math.sqrt(self._xx[i][i]) for i in free]
        inverse = _inverse(
            [
                [self._xx[i][j] / (scale[a] * scale[b]) for b, j in enumerate(free)]
                for a, i in enumerate(free)
            ]
        )
        if inverse is None or dof <= 0:
            return None
        sigma2 = sse / dof
        out = [[0.0] * _DIM for _ in range(_DIM)]
        for a, i in enumerate(free):
            for b, j in enumerate(free):
                out[i][j] = sigma2 * inverse[a][b] / (scale[a] * scale[b])
        return out

    def relative_spread(self, tokens: SpanTokens) -> float:
        """How far (two standard errors, as a share of it) the weights' spread may move
        the token energy of a span with ``tokens`` (under the tentative fit where none is
        determined yet); 0 without a fit."""
        theta, cov = self.theta, self.covariance
        if theta is None:
            theta, cov = self.tentative, self._tentative_covariance
        if theta is None or cov is None:
            return 0.0
        decode = max(tokens.output_tokens - 1, 0)
        x1 = float(tokens.input_tokens)
        x2 = float(decode)
        x3 = decode * context_of(tokens)
        own = theta[1] * x1 + theta[2] * x2 + theta[3] * x3
        if own <= 0.0:
            return 0.0
        # x[0] is 0: the fixed term is shared, not the span's own
        c1, c2, c3 = cov[1], cov[2], cov[3]
        var = (
            x1 * (c1[1] * x1 + c1[2] * x2 + c1[3] * x3)
            + x2 * (c2[1] * x1 + c2[2] * x2 + c2[3] * x3)
            + x3 * (c3[1] * x1 + c3[2] * x2 + c3[3] * x3)
        )
        return 2.0 * math.sqrt(max(var, 0.0)) / own
