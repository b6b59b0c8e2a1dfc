"""The token rule's weights, learned online from the counter like the idle power.

Each handed-out interval's busy energy is, by the model of ``tokens``,

    busy J ≈ F·steps + α·prefill tokens + β·decode tokens + γ·decode tokens × context

summed over the interval. Consecutive intervals are gathered into blocks of about
``BLOCK_S`` busy seconds (a counter that ticks more slowly than the sampler makes one
interval's delta noisy; a block's sum telescopes), and the weights are the non-negative,
exponentially weighted least squares fit over the blocks (older blocks count less, so
the weights follow a server whose work changes). Until the fit is determined (too few
blocks, or blocks too alike to tell the terms apart) there are no weights: the resolver
splits equally and counts it. The parameters' covariance says how far the weights may be
off; the resolver widens each record's bound by what that moves its share.
"""

from __future__ import annotations

import math
from collections import deque
from itertools import combinations

from footprint.attribution.tokens import IntervalTokens, SpanTokens, Theta, context_of

BLOCK_S = 2.0  # busy seconds per block of intervals
SPAN_BLOCKS = 15  # each fitted row sums this many consecutive blocks (overlapping rows)
MIN_BLOCKS = 30  # rows (effective, after forgetting) before the fit is used
FORGET = 0.998  # weight kept by the blocks so far each time a block is added
REFIT_ROWS = 5  # once determined, the weights are fitted again every this many rows
_DIM = 4


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


def _inverse(matrix: list[list[float]]) -> list[list[float]] | None:
    n = len(matrix)
    columns = []
    for j in range(n):
        column = _solve(matrix, [1.0 if i == j else 0.0 for i in range(n)])
        if column is None:
            return None
        columns.append(column)
    return [[columns[j][i] for j in range(n)] for i in range(n)]


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

    def observe(self, held: IntervalTokens, busy_j: float) -> None:
        """One handed-out interval; intervals that cannot teach (a span whose tokens
        were unknown in it, or none busy) break the block being gathered."""
        block = self._block
        if held.unweighed_s > 0.0 or not math.isfinite(busy_j):
            self._block = [0.0] * (_DIM + 1)
            self._block_s = 0.0
            self._recent.clear()
            return
        block[0] += held.steps
        block[1] += held.prefill
        block[2] += held.decode
        block[3] += held.context
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
        if self.blocks >= MIN_BLOCKS and (self.theta is None or self._rows % REFIT_ROWS == 0):
            self._fit()

    def _fit(self) -> None:
        """The best non-negative fit: all terms if none comes out below 0, else the best
        over the subsets of terms (the others 0)."""
        xx = self._xx
        scale = [math.sqrt(xx[i][i]) if xx[i][i] > 0 else 0.0 for i in range(_DIM)]
        full = self._solve_terms(list(range(_DIM)), scale)
        best = None if full is None else (0.0, list(range(_DIM)), full)
        if best is None:
            for size in range(1, _DIM):
                for terms in combinations(range(_DIM), size):
                    theta = self._solve_terms(list(terms), scale)
                    if theta is None:
                        continue
                    sse = self._sse(theta)
                    if best is None or sse < best[0]:
                        best = (sse, list(terms), theta)
        if best is None:
            return
        _, free, theta = best
        self.theta = (theta[0], theta[1], theta[2], theta[3])
        self.covariance = self._covariance(free, self._sse(theta))

    def _solve_terms(self, free: list[int], scale: list[float]) -> list[float] | None:
        """Least squares on the terms ``free`` (the others 0); None when singular or a
        weight comes out below 0."""
        if any(scale[t] <= 0 for t in free):
            return None
        xx, xy = self._xx, self._xy
        m = [[xx[i][j] / (scale[i] * scale[j]) for j in free] for i in free]
        solved = _solve(m, [xy[i] / scale[i] for i in free])
        if solved is None or any(v < 0.0 for v in solved):
            return None
        theta = [0.0] * _DIM
        for i, v in zip(free, solved, strict=True):
            theta[i] = v / scale[i]
        return theta

    def _sse(self, theta: list[float]) -> float:
        xx, xy = self._xx, self._xy
        quad = sum(theta[i] * xx[i][j] * theta[j] for i in range(_DIM) for j in range(_DIM))
        return max(self._yy - 2.0 * sum(t * v for t, v in zip(theta, xy, strict=True)) + quad, 0.0)

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
        the token energy of a span with ``tokens``; 0 before the fit is determined."""
        theta, cov = self.theta, self.covariance
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
