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
``tokens.HOLD_S``), then shares them by the last fit (``tentative``), or splits equally
where there is none. The parameters' covariance says how far the weights may be off; the
resolver widens each record's bound by what that moves its share.
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections import deque
from itertools import combinations

from footprint.attribution.tokens import IntervalTokens, SpanTokens, Theta, context_of

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
_DIM = 4
# The server's step time (``StepTimes``)
STEP_FORGET = 0.999  # weight kept by the spans so far each time a span is added
MIN_SPANS = 50  # spans (effective) before the step time is used
REFIT_SPANS = 20  # it is fitted again every this many spans
# ... or this many where it misfits (calls at their own pace: not used, so rarely refitted;
# a fit solves up to 15 small systems)
MISFIT_REFIT_SPANS = 500
STEP_MISFIT = 0.15  # the most misfit (root mean square share) of a step time to use
MIN_DECODE_S = 0.05  # a shorter decode phase says too little about its steps
REPLAY = 20_000  # the most intervals kept to be gathered again once it is known
MAX_PENDING = 10_000  # spans waiting for the intervals up to their end
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
    span's mean step time is ``τF + τb·n̄ + τc·C̄ + τa·p̄·m`` with ``n̄``, ``C̄``, ``p̄`` the
    means over its decode phase of what the intervals held. The non-negative, forgetting
    least squares over the spans gives τ; the server's steps in an interval follow from
    what it held, not from the spans' mean rates, which smear each span's tokens over
    its whole decode phase (the fit of the weights needs the steps, and the decode
    tokens, which are the decoders times the steps, where they were).
    """

    def __init__(self) -> None:
        # The intervals seen, as cumulative integrals at their edges: time (s), and
        # ∫ decoders dt, ∫ Σ contexts dt, prefill tokens up to it
        self._t: list[float] = []
        self._cum: list[tuple[float, float, float]] = []
        self._total = (0.0, 0.0, 0.0)
        self._pending: list[tuple[float, float, int]] = []  # (end, first token, decode)
        self._xx = [[0.0] * _DIM for _ in range(_DIM)]
        self._xy = [0.0] * _DIM
        self._yy = 0.0
        self.spans = 0.0  # effective number of spans learned from
        self._count = 0
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
        times, cum = self._t, self._cum
        if not times or start_s > times[-1]:
            times.append(start_s)
            cum.append(self._total)
        elif start_s < times[-1]:  # out of order: start over
            times.clear()
            cum.clear()
            times.append(start_s)
            cum.append(self._total)
        n, c, p = self._total
        self._total = (n + held.decoders_s, c + held.contexts_s, p + held.prefill)
        times.append(end_s)
        cum.append(self._total)
        pending = self._pending
        while pending and pending[0][0] <= end_s:
            span_end_s, first_s, decode = heapq.heappop(pending)
            self._learn(first_s, span_end_s, decode)
        if times[-1] - times[0] > 2 * HISTORY_S:  # forget what no span reaches back to
            cut = bisect.bisect_left(times, times[-1] - HISTORY_S)
            del times[:cut]
            del cum[:cut]

    def _at(self, t_s: float) -> tuple[float, float, float] | None:
        times, cum = self._t, self._cum
        i = bisect.bisect_left(times, t_s)
        if i >= len(times) or (i == 0 and times[0] > t_s):
            return None
        if times[i] == t_s or i == 0:
            return cum[i]
        t0, t1 = times[i - 1], times[i]
        w = (t_s - t0) / (t1 - t0)
        a, b = cum[i - 1], cum[i]
        return (a[0] + w * (b[0] - a[0]), a[1] + w * (b[1] - a[1]), a[2] + w * (b[2] - a[2]))

    def _learn(self, first_s: float, end_s: float, decode: int) -> None:
        lo, hi = self._at(first_s), self._at(end_s)
        if lo is None or hi is None:
            return
        span_s = end_s - first_s
        step_s = span_s / decode
        x = (
            1.0,
            (hi[0] - lo[0]) / span_s,
            (hi[1] - lo[1]) / span_s,
            (hi[2] - lo[2]) / span_s * step_s,
        )
        xx, xy = self._xx, self._xy
        for i in range(_DIM):
            xy[i] = STEP_FORGET * xy[i] + x[i] * step_s
            row = xx[i]
            for j in range(_DIM):
                row[j] = STEP_FORGET * row[j] + x[i] * x[j]
        self._yy = STEP_FORGET * self._yy + step_s * step_s
        self.spans = STEP_FORGET * self.spans + 1.0
        self._count += 1
        every = REFIT_SPANS if self.misfit <= STEP_MISFIT else MISFIT_REFIT_SPANS
        if self.spans >= MIN_SPANS and (self.tau is None or self._count % every == 0):
            fitted = _nonnegative(xx, xy, self._yy)
            if fitted is not None and fitted[0][0] > 0.0:
                tau, _, sse = fitted
                self.misfit = math.sqrt(sse * self.spans) / xy[0]
                self.tau = (tau[0], tau[1], tau[2], tau[3])

    def steps(self, held: IntervalTokens) -> tuple[float, float, float] | None:
        """The server's steps in an interval that held ``held``, its decode tokens and
        decode tokens × context; None before τ is known, where the spans' step times
        do not follow it (calls that each go at their own pace: no batching server), or
        without busy time."""
        tau = self.tau
        busy_s = held.busy_s
        if tau is None or self.misfit > STEP_MISFIT or busy_s <= 0.0:
            return None
        decoders = held.decoders_s / busy_s
        contexts = held.contexts_s / busy_s
        steps = (busy_s - tau[3] * held.prefill) / (tau[0] + tau[1] * decoders + tau[2] * contexts)
        return steps, decoders * steps, contexts * steps


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
        self._xx = [[0.0] * _DIM for _ in range(_DIM)]
        self._xy = [0.0] * _DIM
        self._yy = 0.0
        self.blocks = 0.0  # effective number of blocks
        self._block = [0.0] * (_DIM + 1)  # the block being gathered: features and J
        self._block_s = 0.0  # its busy seconds
        self._recent: deque[list[float]] = deque(maxlen=SPAN_BLOCKS)  # blocks, in a row
        self._rows = 0
        self.theta: Theta | None = None  # F (J/step), α, β, γ; None: not determined yet
        self.covariance: list[list[float]] | None = None  # of theta, 4x4
        # The last fit, determined or not: what windows held past ``HOLD_S`` (or at a
        # flush) are shared by rather than the equal split; and its covariance
        self.tentative: Theta | None = None
        self._tentative_covariance: list[list[float]] | None = None
        self.step_times = StepTimes()
        self._timed = False  # the rows so far have the step time's steps
        # Until then, the intervals seen: gathered again once it is known
        self._early: deque[tuple[IntervalTokens, float]] = deque(maxlen=REPLAY)

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
        if not self._timed:
            if self.step_times.steps(held) is None:
                self._early.append((held, busy_j))
                self._gather(held, busy_j, None)
                return
            # From here, the step time's steps: the rows so far are gathered again
            self._timed = True
            self._restart()
            early, self._early = self._early, deque()
            for old_held, old_j in early:
                self._gather(old_held, old_j, self.step_times.steps(old_held))
        self._gather(held, busy_j, self.step_times.steps(held))

    def _gather(
        self,
        held: IntervalTokens,
        busy_j: float,
        timed: tuple[float, float, float] | None,
    ) -> None:
        """Add an interval to the block being gathered (``timed``: its steps, decode
        tokens and decode tokens × context by the step time; None: by the spans'
        rates)."""
        if held.unweighed_s > 0.0 or not math.isfinite(busy_j):
            self._block = [0.0] * (_DIM + 1)
            self._block_s = 0.0
            self._recent.clear()
            return
        block = self._block
        if timed is not None:
            block[0] += timed[0]
            block[2] += timed[1]
            block[3] += timed[2]
        else:
            block[0] += held.steps
            block[2] += held.decode
            block[3] += held.context
        block[1] += held.prefill
        block[4] += busy_j
        self._block_s += held.busy_s
        if self._block_s >= BLOCK_S:
            self._block_s = 0.0
            self._block = [0.0] * (_DIM + 1)
            recent = self._recent
            recent.append(block)
            if len(recent) == SPAN_BLOCKS:
                row = [sum(b[i] for b in recent) for i in range(_DIM + 1)]
                self._add(row[:_DIM], row[_DIM])

    def add_span(self, first_s: float, end_s: float, decode_tokens: int) -> None:
        """A span with a decode phase ended: see ``StepTimes.add_span``."""
        self.step_times.add_span(first_s, end_s, decode_tokens)

    def _restart(self) -> None:
        """Forget the rows so far (their steps were the spans' mean rates); the weights
        fitted on them stay until the new rows determine the fit."""
        self._xx = [[0.0] * _DIM for _ in range(_DIM)]
        self._xy = [0.0] * _DIM
        self._yy = 0.0
        self.blocks = 0.0
        self._rows = 0
        self._block = [0.0] * (_DIM + 1)
        self._block_s = 0.0
        self._recent.clear()

    def _add(self, x: list[float], y: float) -> None:
        xx, xy = self._xx, self._xy
        for i in range(_DIM):
            xy[i] = FORGET * xy[i] + x[i] * y
            row = xx[i]
            for j in range(_DIM):
                row[j] = FORGET * row[j] + x[i] * x[j]
        self._yy = FORGET * self._yy + y * y
        self.blocks = FORGET * self.blocks + 1.0
        self._rows += 1
        if self.blocks >= MIN_BLOCKS and (self.tentative is None or self._rows % REFIT_ROWS == 0):
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
        if self.theta is None and not _determined(theta, free, covariance, self._xx):
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
