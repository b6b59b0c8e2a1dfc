"""Where a span's tokens go in time: its token counts, its phases and their rates.

A span with token counts waits in the server's queue, has a prefill phase that makes its
first token (its input tokens, in the steps just before that token) and a decode phase
that makes the rest (its output tokens, one a server step, each read against the prompt
and the answer so far), each at constant rates over the phase (``placement``). The
server's step rate follows from its step time (``step_rate``). The token rule
(``footprint.attribution.tokens``) shares each interval's busy energy by these rates.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

MIN_PHASE_S = 1e-3  # a phase shorter than this is folded into the other one
# The server's step rate by its step time: the least share of a busy second left to
# decoding by the prompts run beside it
MIN_WORK_SHARE = 0.05


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


def step_rate(
    tau: Sequence[float], prefill_per_s: float, decoders: float, contexts: float
) -> float:
    """The server's steps per second by its step time ``tau`` (τF, τb, τc, τa) with
    ``decoders`` spans decoding, their contexts summing to ``contexts`` tokens, and
    ``prefill_per_s`` prompt tokens a second sharing the steps."""
    work = 1.0 - tau[3] * prefill_per_s
    return (work if work > MIN_WORK_SHARE else MIN_WORK_SHARE) / (
        tau[0] + tau[1] * decoders + tau[2] * contexts
    )


def context_of(tokens: SpanTokens) -> float:
    """The mean context a decoded token is read against: the prompt and half the answer."""
    return tokens.input_tokens + tokens.output_tokens / 2.0


# prefill tokens/s, decode tokens/s, decode tokens × context/s, server steps/s
Rates = tuple[float, float, float, float]
NO_RATES: Rates = (0.0, 0.0, 0.0, 0.0)  # a span waiting in the queue, or gone


class Placement(NamedTuple):
    """Where a span's tokens are placed in time: it waits until ``serve_s``, then runs
    at ``first`` rates until ``first_s``, then at ``second`` rates (None: one phase)."""

    serve_s: float
    first: Rates
    first_s: float
    second: Rates | None


def phases(
    start_s: float,
    end_s: float,
    tokens: SpanTokens,
    step_s: float | None = None,
    prefill_s_per_token: float = 0.0,
) -> Placement | None:
    """Where the span's tokens go, or None for a span shorter than ``MIN_PHASE_S`` (its
    tokens cannot be placed in time: it is charged as a span with no tokens).

    The first token is made by the prefill, in the steps before it: one step
    (``step_s``, its own when it decoded, else the server's last known; without one, the
    whole time to first token) and the time its prompt takes the server
    (``prefill_s_per_token``, the step time's ``τa``: a long prompt is run in chunks over
    several steps); the decode phase makes the rest, each read against a context of the prompt
    and the answer so far (``input + output/2`` on average). Without a time to first
    token inside the span, one phase carries all the tokens at constant rates over all
    of it.
    """
    return placement(start_s, end_s, tokens, step_s, prefill_s_per_token)[0]


_new_tuple = tuple.__new__  # a named tuple without its ``__new__``'s Python frame


def placement(
    start_s: float,
    end_s: float,
    tokens: SpanTokens,
    step_s: float | None,
    prefill_s_per_token: float = 0.0,
) -> tuple[Placement | None, float | None]:
    """``phases`` and the span's own step time (its decode time over its decode tokens;
    None without a decode phase), in one pass: the resolver
    places every span that ends with tokens (the same operations, in the same order,
    as the two)."""
    input_tokens, output_tokens, ttft_s = tokens
    decode = output_tokens - 1
    duration_s = end_s - start_s
    own_step_s = None
    if ttft_s is not None and decode >= 1:
        decode_s = duration_s - ttft_s
        if decode_s >= MIN_PHASE_S:
            own_step_s = decode_s / decode
    if duration_s < MIN_PHASE_S:
        return None, own_step_s
    if decode < 0:
        decode = 0
    context = input_tokens + output_tokens / 2.0  # ``context_of``
    if ttft_s is None or ttft_s < MIN_PHASE_S:
        rate = decode / duration_s
        steps = (decode + 1) / duration_s
        whole = (input_tokens / duration_s, rate, rate * context, steps)
        return _new_tuple(Placement, (start_s, whole, end_s, None)), own_step_s
    if own_step_s is not None:
        step_s = own_step_s
    first_s = start_s + ttft_s
    if end_s < first_s:
        first_s = end_s
    serve_s = start_s
    if step_s is not None:  # the prefill's steps: at least ``MIN_PHASE_S``
        prefill_s = step_s + prefill_s_per_token * input_tokens
        queued_until_s = first_s - (MIN_PHASE_S if prefill_s < MIN_PHASE_S else prefill_s)
        if queued_until_s > start_s:
            serve_s = queued_until_s
    if end_s - first_s < MIN_PHASE_S:  # no decode phase: the prefill made all it answered
        served_s = end_s - serve_s
        rate = decode / served_s
        whole = (input_tokens / served_s, rate, rate * context, (decode + 1) / served_s)
        return _new_tuple(Placement, (serve_s, whole, end_s, None)), own_step_s
    rate = decode / (end_s - first_s)
    prefill_s = first_s - serve_s
    prefill = (input_tokens / prefill_s, 0.0, 0.0, 1.0 / prefill_s)
    second = (0.0, rate, rate * context, rate)
    return _new_tuple(Placement, (serve_s, prefill, first_s, second)), own_step_s
