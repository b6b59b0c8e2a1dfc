"""The caller's trace context: the OpenTelemetry span current when a tracked call begins,
or a W3C ``traceparent`` header, as the (trace id, span id) its record carries.

footprint never imports OpenTelemetry: ``current_ids`` looks its API up in
``sys.modules``, so a process that did not import ``opentelemetry.trace`` pays one dict
lookup per call (the hot path tests ``OTEL_TRACE_MODULE in sys.modules`` itself) and
one that did pays for reading the current span's two integers. Records, the daemon's
protocol and the public API write ids in lowercase hex, as W3C Trace Context and OTLP's
JSON do: a trace id of 32 digits, a span id of 16, neither all zeros.
"""

from __future__ import annotations

import re
import sys

OTEL_TRACE_MODULE = "opentelemetry.trace"
TraceIds = tuple[str, str]  # (trace id: 32 hex digits, span id: 16 hex digits)
# What a call carries from its begin to its record: OTel's own integers (trace id, span
# id), formatted as hex off the hot path (``hex_ids``).
RawIds = tuple[int, int]

TRACE_ID_CHARS = 32
SPAN_ID_CHARS = 16
_TRACE_ID = re.compile(r"[0-9a-f]{32}")
_SPAN_ID = re.compile(r"[0-9a-f]{16}")
# W3C Trace Context, version 00: exactly version-traceid-parentid-flags, lowercase hex.
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}")
_MAX_TRACE_ID = 1 << 128
_MAX_SPAN_ID = 1 << 64
MAX_TRACEPARENT_CHARS = 55  # version 00's exact length; anything longer is refused


def current_ids() -> RawIds | None:
    """The ids of the OpenTelemetry span current in this context, as OTel's integers;
    None when OTel's API is not imported, no valid span is current (its ids are 0), or
    reading it fails (never raises). The hot path's part: nothing is formatted here."""
    module = sys.modules.get(OTEL_TRACE_MODULE)
    if module is None:
        return None
    try:
        context = module.get_current_span().get_span_context()
        trace_id = context.trace_id
        span_id = context.span_id
    except Exception:  # a half-imported or replaced module: no ids, never an error
        return None
    if trace_id and span_id:  # INVALID_SPAN (no span current) has 0 and 0
        return trace_id, span_id
    return None


def hex_ids(ids: RawIds | None) -> TraceIds | None:
    """``ids`` as 32 and 16 lowercase hex digits; None for None or integers that are not
    valid ids (not ints, 0, or too large: a span context that is not OTel's)."""
    if ids is None:
        return None
    trace_id, span_id = ids
    if (
        trace_id.__class__ is not int
        or span_id.__class__ is not int
        or not (0 < trace_id < _MAX_TRACE_ID and 0 < span_id < _MAX_SPAN_ID)
    ):
        return None
    return trace_id.to_bytes(16, "big").hex(), span_id.to_bytes(8, "big").hex()


def raw_ids(ids: TraceIds) -> RawIds:
    """Hex ids (checked with ``valid_ids`` first) as integers."""
    return int(ids[0], 16), int(ids[1], 16)


def valid_ids(trace_id: object, span_id: object) -> bool:
    """Whether the pair is a trace id (32 lowercase hex digits) and a span id (16), neither
    all zeros (W3C's invalid ids)."""
    return (
        isinstance(trace_id, str)
        and isinstance(span_id, str)
        and _TRACE_ID.fullmatch(trace_id) is not None
        and _SPAN_ID.fullmatch(span_id) is not None
        and trace_id != "0" * TRACE_ID_CHARS
        and span_id != "0" * SPAN_ID_CHARS
    )


def parse_traceparent(value: object) -> TraceIds | None:
    """The (trace id, parent span id) of a W3C ``traceparent`` header value, or None for
    anything but a valid version-00 header (strict: lowercase hex, exact length, ids not
    all zeros; surrounding spaces allowed, as HTTP allows around field values)."""
    if not isinstance(value, str) or len(value) > MAX_TRACEPARENT_CHARS + 8:
        return None
    match = _TRACEPARENT.fullmatch(value.strip(" \t"))
    if match is None:
        return None
    trace_id, span_id = match.group(1), match.group(2)
    if trace_id == "0" * TRACE_ID_CHARS or span_id == "0" * SPAN_ID_CHARS:
        return None
    return trace_id, span_id
