"""The caller's trace context: the OpenTelemetry span current when a tracked call begins,
or a W3C ``traceparent`` header, as the (trace id, span id) its record carries.

footprint never imports OpenTelemetry: ``current_ids`` looks its API up in
``sys.modules``, so a process that did not import ``opentelemetry.trace`` pays one dict
lookup per call (the hot path tests ``OTEL_TRACE_MODULE in sys.modules`` itself) and
one that did pays for reading the current span. Ids are lowercase hex, as W3C Trace
Context and OTLP's JSON write them: a trace id of 32 digits, a span id of 16, neither all
zeros.
"""

from __future__ import annotations

import re
import sys

OTEL_TRACE_MODULE = "opentelemetry.trace"
TraceIds = tuple[str, str]  # (trace id: 32 hex digits, span id: 16 hex digits)

TRACE_ID_CHARS = 32
SPAN_ID_CHARS = 16
_TRACE_ID = re.compile(r"[0-9a-f]{32}")
_SPAN_ID = re.compile(r"[0-9a-f]{16}")
# W3C Trace Context, version 00: exactly version-traceid-parentid-flags, lowercase hex.
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}")
_MAX_TRACE_ID = 1 << 128
_MAX_SPAN_ID = 1 << 64
MAX_TRACEPARENT_CHARS = 55  # version 00's exact length; anything longer is refused


def current_ids() -> TraceIds | None:
    """The ids of the OpenTelemetry span current in this context; None when OTel's API is
    not imported, no valid span is current, or reading it fails (never raises)."""
    module = sys.modules.get(OTEL_TRACE_MODULE)
    if module is None:
        return None
    try:
        context = module.get_current_span().get_span_context()
        trace_id = context.trace_id
        span_id = context.span_id
        if not (0 < trace_id < _MAX_TRACE_ID and 0 < span_id < _MAX_SPAN_ID):
            return None  # INVALID_SPAN (no span current), or not OTel's ids at all
        return f"{trace_id:032x}", f"{span_id:016x}"
    except Exception:  # a half-imported or replaced module: no ids, never an error
        return None


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
