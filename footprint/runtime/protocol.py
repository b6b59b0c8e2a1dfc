"""What clients send the daemon: batches of span starts and ends, as JSON.

One format for both transports: on the Unix socket, one JSON object per line (a batch);
over HTTP, the body of ``POST /v1/spans``. A batch::

    {"pid": 4242, "host": "gpu-node-1", "monotonic_s": 5123.4,
     "starts": [{"id": 7, "start_s": 5123.1, "gpus": [0]}],
     "ends": [{"id": 6, "start_s": 5122.0, "end_s": 5123.2, "model": "llama-3-8b",
               "tags": {"team": "search"}, "status": "ok", "error_type": null,
               "input_tokens": 12, "output_tokens": 80, "ttft_s": 0.05, "gpus": [0]}]}

Times are the host's monotonic clock in seconds (``time.monotonic()``; CLOCK_MONOTONIC,
shared by every process and container on one kernel unless it runs in its own time
namespace: ``monotonic_s`` is the sender's clock when it sent the batch, which the daemon
compares with its own to detect that). ``id`` is unique within one sender (``pid``).
A span whose start was sent is ended by an entry in ``ends`` with the same ``id``; a span
that started and ended between two batches is only sent in ``ends``.

An end may carry its caller's trace context: ``"trace_id"`` (32 lowercase hex digits)
and ``"span_id"`` (16), both or neither, not all zeros (W3C Trace Context's ids; the
OpenTelemetry span current when the call began), stored on its record.

Optional fields: ``"ack": true`` asks for acknowledgements on the socket: the daemon
answers ``{"acked": [6, 9]}`` (``encode_acks``) once those ends are settled, that is,
written to the database or counted in its ``losses``. A client keeps its ends until
then and sends them again on a new connection; the daemon ignores an end it already
has. ``lost`` carries counts of what the client itself could not send or had to clean
(``{"span_queue_full": 3}``: kinds in ``CLIENT_LOSS_KINDS``), new since its previous
batch, for the daemon's ``losses`` table.

``session`` (1-64 characters of ``[0-9A-Za-z_-]``) is a random token the client process
draws once (a forked child draws its own): the daemon stores each end's record with the
key ``<session>:<id>`` (``queries.span_key``), unique per process life. An end marked
``"resent": true`` was sent before on a connection that went away unacknowledged, so the
daemon that had it may have stored it: the daemon looks those keys up in the database
(one query per batch) and acknowledges the ones stored already without storing them
again, even across daemon restarts.

Everything is validated here, before it reaches the resolver: a batch is taken whole or
refused whole with a ``ProtocolError`` that says what is wrong. Every number is checked
for type and range before any use (never converted first: ``float()`` of a 401-digit
integer raises OverflowError): times within ``MAX_TIME_S`` of 0 (the daemon then checks
them against its own clock), ``ttft_s`` within its span (``0 <= ttft_s <= end_s -
start_s``), ids in
``[0, 2^63)``, pids in ``(0, MAX_PID)``, token counts in ``[0, 2^40]``, GPU indices in
``[0, 2^63)`` (at most ``MAX_GPUS_PER_SPAN``), loss counts in ``[0, MAX_LOSS_COUNT)``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from footprint._sanitize import MAX_TOKENS
from footprint._tracing import raw_ids, valid_ids
from footprint.runtime.spans import EndedSpan

MAX_BATCH_BYTES = 1 << 20  # 1 MiB per line or request body
MAX_SPANS_PER_BATCH = 20_000
MAX_MODEL_CHARS = 256
STATUSES = ("ok", "error", "cancelled")
CLOCK_TOLERANCE_S = 1.0  # sender and daemon monotonic clocks may differ by this much
# Times are CLOCK_MONOTONIC seconds (since boot). Negative ones are taken here so that
# the clock check names a sender on another clock (``clock``); beyond 2^35 s (1,089
# years) a time is nonsense, and its record's dates could not be written.
MAX_TIME_S = 2**35
MAX_ID = 2**63  # span ids: exclusive bound (what SQLite and the acks can hold)
MAX_PID = 2**31  # process ids: exclusive bound (Linux's pid_max is at most 2^22)
MAX_GPUS_PER_SPAN = 1024

_BATCH_KEYS = {"pid", "host", "monotonic_s", "starts", "ends", "ack", "lost", "session"}
MAX_SESSION_CHARS = 64
_SESSION = re.compile(rf"[0-9A-Za-z_-]{{1,{MAX_SESSION_CHARS}}}")
# What a client counts on its side and reports in ``lost``: the same kinds an in-process
# runtime writes to ``losses``.
CLIENT_LOSS_KINDS = frozenset(
    {
        "span_queue_full",
        "record_failed",
        "invalid_tokens",
        "invalid_ttft",
        "sanitized_models",
        "unserializable_tags",
    }
)
# Per kind in one batch, exclusive: a client sends what it lost since its previous batch
# (every 20 ms), a larger count split over several batches; a count near 2^31 is a
# forgery, refused before it reaches the losses table.
MAX_LOSS_COUNT = 2**20
_START_KEYS = {"id", "start_s", "gpus"}
_END_KEYS = {
    "id",
    "start_s",
    "end_s",
    "model",
    "tags",
    "status",
    "error_type",
    "input_tokens",
    "output_tokens",
    "ttft_s",
    "gpus",
    "resent",
    "trace_id",
    "span_id",
}
_END_REQUIRED = {"id", "start_s", "end_s", "model"}


class ProtocolError(ValueError):
    """A batch the daemon refuses; the message says what is wrong with it.

    ``reason`` is a short code for counting (the daemon's
    ``footprint_protocol_errors_total{reason}``): one of ``REPLY_REASONS``.
    """

    def __init__(self, message: str, reason: str = "invalid") -> None:
        super().__init__(message)
        self.reason = reason


# Why the daemon refused a batch (the ``reason`` of its error reply):
REPLY_REASONS = (
    "json",  # the line or body is not JSON
    "invalid",  # JSON, but not a valid batch (types, ranges, unknown fields, end < start)
    "too_large",  # over MAX_BATCH_BYTES: on the socket the connection is then closed
    "truncated",  # the connection ended in the middle of a line
    "clock",  # the sender's monotonic clock is not the daemon's (another time namespace)
    "unauthorized",  # HTTP without the daemon's token
    "overloaded",  # the daemon has as many connections as it takes: this one is closed
    "not_found",  # HTTP: no such endpoint
    "internal",  # HTTP 500: the daemon's own failure (logged), not the batch's
)


@dataclass(frozen=True)
class SpanStart:
    id: int
    start_s: float
    gpus: tuple | None


@dataclass(frozen=True)
class Batch:
    pid: int
    host: str
    monotonic_s: float | None
    starts: list[SpanStart]
    ends: list[EndedSpan]  # span_id: the client's; pid, host and key not set yet
    ack: bool = False  # acknowledge its ends (on the socket)
    lost: dict[str, int] | None = None  # the client's own loss counts since its last batch
    session: str | None = None  # the client process's random token (its ends' span_key)


def default_socket_path(environ: Mapping[str, str] | None = None) -> Path:
    """``$XDG_RUNTIME_DIR/footprint/daemon.sock``, else ``/run/footprint/daemon.sock``."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_RUNTIME_DIR") or "/run"
    return Path(base) / "footprint" / "daemon.sock"


def encode_batch(batch: dict[str, Any]) -> bytes:
    """One line of JSON (what the client writes to the socket)."""
    return json.dumps(batch, separators=(",", ":"), allow_nan=False).encode() + b"\n"


def encode_reply(error: str, reason: str, refused_ids: list[int] | None = None) -> bytes:
    """The daemon's answer to a refused batch: one line of JSON, ``{"error", "reason"}``,
    and ``refused`` (the ids of its ends) for a batch that asked for acknowledgements.

    On the socket the daemon answers refused batches and acknowledges the ends of those
    that ask for it (``encode_acks``); a client that asks for none never has to read.
    Over HTTP it is the body of a 4xx response.
    """
    reply: dict[str, Any] = {"error": error, "reason": reason}
    if refused_ids:
        reply["refused"] = refused_ids
    return json.dumps(reply).encode() + b"\n"


MAX_ACKS_PER_LINE = 2_000  # ids per acknowledgement line (about 40 KB at most)


def encode_acks(ids: list[int]) -> bytes:
    """``{"acked": [ids]}`` lines: these ends are settled (written, or counted as lost)."""
    return b"".join(
        b'{"acked":[%s]}\n' % ",".join(map(str, ids[i : i + MAX_ACKS_PER_LINE])).encode()
        for i in range(0, len(ids), MAX_ACKS_PER_LINE)
    )


def decode_batch(data: bytes | str) -> Batch:
    """Parse and validate one batch; ``ProtocolError`` when anything is wrong."""
    if len(data) > MAX_BATCH_BYTES:
        raise ProtocolError(
            f"batch of {len(data):,} bytes; at most {MAX_BATCH_BYTES:,}", "too_large"
        )
    try:
        raw = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"not JSON: {exc}", "json") from None
    except RecursionError:
        raise ProtocolError("not JSON the daemon takes: nested too deeply", "json") from None
    if not isinstance(raw, dict):
        raise ProtocolError("a batch is a JSON object")
    _no_unknown(raw, _BATCH_KEYS, "batch")
    pid = raw.get("pid")
    if not isinstance(pid, int) or not _is_int(pid) or not 0 < pid < MAX_PID:
        raise ProtocolError("batch.pid must be a positive integer below 2^31")
    host = raw.get("host")
    if not isinstance(host, str) or not 0 < len(host) <= 255:
        raise ProtocolError("batch.host must be a non-empty string")
    monotonic_s = raw.get("monotonic_s")
    if monotonic_s is not None:
        monotonic_s = _time(monotonic_s, "batch.monotonic_s")
    starts_raw, ends_raw = raw.get("starts", []), raw.get("ends", [])
    if not isinstance(starts_raw, list) or not isinstance(ends_raw, list):
        raise ProtocolError("batch.starts and batch.ends must be lists")
    if len(starts_raw) + len(ends_raw) > MAX_SPANS_PER_BATCH:
        raise ProtocolError(f"more than {MAX_SPANS_PER_BATCH:,} spans in one batch")
    starts = [_start(item, n) for n, item in enumerate(starts_raw)]
    ends = [_end(item, n) for n, item in enumerate(ends_raw)]
    ack = raw.get("ack", False)
    if not isinstance(ack, bool):
        raise ProtocolError("batch.ack must be true or false")
    session = raw.get("session")
    if session is not None and (not isinstance(session, str) or not _SESSION.fullmatch(session)):
        raise ProtocolError(
            f"batch.session must be 1-{MAX_SESSION_CHARS} characters of [0-9A-Za-z_-] or null"
        )
    return Batch(pid, host, monotonic_s, starts, ends, ack, _lost(raw.get("lost")), session)


def _lost(value: Any) -> dict[str, int] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ProtocolError("batch.lost must be an object of counts")
    for kind, count in value.items():
        if kind not in CLIENT_LOSS_KINDS:
            raise ProtocolError(
                f"batch.lost: unknown kind {kind!r}; one of {', '.join(sorted(CLIENT_LOSS_KINDS))}"
            )
        if not _is_int(count) or not 0 <= count < MAX_LOSS_COUNT:
            raise ProtocolError(f"batch.lost.{kind} must be an integer in [0, {MAX_LOSS_COUNT:,})")
    return value


def _start(item: Any, n: int) -> SpanStart:
    where = f"starts[{n}]"
    if not isinstance(item, dict):
        raise ProtocolError(f"{where} must be an object")
    _no_unknown(item, _START_KEYS, where)
    return SpanStart(
        _id(item.get("id"), where),
        _time(item.get("start_s"), f"{where}.start_s"),
        _gpus(item.get("gpus"), where),
    )


def _end(item: Any, n: int) -> EndedSpan:
    where = f"ends[{n}]"
    if not isinstance(item, dict):
        raise ProtocolError(f"{where} must be an object")
    _no_unknown(item, _END_KEYS, where)
    missing = _END_REQUIRED - item.keys()
    if missing:
        raise ProtocolError(f"{where} lacks {', '.join(sorted(missing))}")
    start_s = _time(item["start_s"], f"{where}.start_s")
    end_s = _time(item["end_s"], f"{where}.end_s")
    if end_s < start_s:
        raise ProtocolError(f"{where} ends before it starts ({end_s} < {start_s})")
    model = item["model"]
    if not isinstance(model, str) or not 0 < len(model) <= MAX_MODEL_CHARS:
        raise ProtocolError(f"{where}.model must be a string of 1-{MAX_MODEL_CHARS} characters")
    tags = item.get("tags", {})
    if not isinstance(tags, dict):
        raise ProtocolError(f"{where}.tags must be an object")
    status = item.get("status", "ok")
    if status not in STATUSES:
        raise ProtocolError(f"{where}.status must be one of {', '.join(STATUSES)}")
    error_type = item.get("error_type")
    if error_type is not None and (not isinstance(error_type, str) or len(error_type) > 200):
        raise ProtocolError(f"{where}.error_type must be a short string or null")
    ttft_s = item.get("ttft_s")
    if ttft_s is not None:
        ttft_s = _time(ttft_s, f"{where}.ttft_s")
        if not 0 <= ttft_s <= end_s - start_s:
            raise ProtocolError(
                f"{where}.ttft_s must be in [0, the span's {end_s - start_s:g} s], got {ttft_s:g}"
            )
    resent = item.get("resent", False)
    if not isinstance(resent, bool):
        raise ProtocolError(f"{where}.resent must be true or false")
    trace = _trace(item.get("trace_id"), item.get("span_id"), where)
    return EndedSpan(
        _id(item["id"], where),
        start_s,
        end_s,
        model,
        tags,
        status,
        error_type,
        _tokens(item.get("input_tokens"), f"{where}.input_tokens"),
        _tokens(item.get("output_tokens"), f"{where}.output_tokens"),
        ttft_s,
        _gpus(item.get("gpus"), where),
        resent=resent,
        trace=trace,
    )


def _trace(trace_id: Any, span_id: Any, where: str) -> tuple[int, int] | None:
    """The end's trace context (as integers): both ids or neither (null: absent)."""
    if trace_id is None and span_id is None:
        return None
    if not valid_ids(trace_id, span_id):
        raise ProtocolError(
            f"{where}.trace_id and {where}.span_id must be 32 and 16 lowercase hex digits "
            "(not all zeros), both or neither"
        )
    return raw_ids((trace_id, span_id))


def _no_unknown(item: dict, known: set[str], where: str) -> None:
    unknown = item.keys() - known
    if unknown:
        raise ProtocolError(f"{where}: unknown field(s) {', '.join(sorted(map(str, unknown)))}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _id(value: Any, where: str) -> int:
    if not _is_int(value) or not 0 <= value < MAX_ID:
        raise ProtocolError(f"{where}.id must be an integer in [0, 2^63)")
    return value


def _time(value: Any, where: str) -> float:
    """Monotonic seconds in ``(-MAX_TIME_S, MAX_TIME_S)``: compared before ``float()``
    (which overflows on huge integers); NaN and infinities fail the comparison."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ProtocolError(f"{where} must be a number of seconds")
    if not -MAX_TIME_S < value < MAX_TIME_S:
        raise ProtocolError(f"{where} must be finite seconds within 2^35 of 0 (a monotonic clock)")
    return float(value)


def _tokens(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if not _is_int(value) or not 0 <= value <= MAX_TOKENS:
        raise ProtocolError(f"{where} must be an integer in [0, 2^40) or null")
    return value


def _gpus(value: Any, where: str) -> tuple | None:
    if value is None:
        return None
    if (
        not isinstance(value, list)
        or len(value) > MAX_GPUS_PER_SPAN
        or not all(
            (_is_int(g) and 0 <= g < MAX_ID) or (isinstance(g, str) and 0 < len(g) <= 128)
            for g in value
        )
    ):
        raise ProtocolError(
            f"{where}.gpus must be a list of at most {MAX_GPUS_PER_SPAN} GPU indices in "
            "[0, 2^63) or UUIDs, or null"
        )
    return tuple(value)
