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

Optional fields: ``"ack": true`` asks for acknowledgements on the socket: the daemon
answers ``{"acked": [6, 9]}`` (``encode_acks``) once those ends are settled, that is,
written to the database or counted in its ``losses``. A client keeps its ends until
then and sends them again on a new connection; the daemon ignores an end it already
has. ``lost`` carries counts of what the client itself could not send or had to clean
(``{"span_queue_full": 3}``: kinds in ``CLIENT_LOSS_KINDS``), new since its previous
batch, for the daemon's ``losses`` table.

Everything is validated here, before it reaches the resolver: a batch is taken whole or
refused whole with a ``ProtocolError`` that says what is wrong.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from footprint._sanitize import MAX_TOKENS

MAX_BATCH_BYTES = 1 << 20  # 1 MiB per line or request body
MAX_SPANS_PER_BATCH = 20_000
MAX_MODEL_CHARS = 256
STATUSES = ("ok", "error", "cancelled")
CLOCK_TOLERANCE_S = 1.0  # sender and daemon monotonic clocks may differ by this much

_BATCH_KEYS = {"pid", "host", "monotonic_s", "starts", "ends", "ack", "lost"}
# What a client counts on its side and reports in ``lost``: the same kinds an in-process
# runtime writes to ``losses``.
CLIENT_LOSS_KINDS = frozenset(
    {"span_queue_full", "record_failed", "invalid_tokens", "sanitized_models",
     "unserializable_tags"}
)  # fmt: skip
MAX_LOSS_COUNT = 2**31
_START_KEYS = {"id", "start_s", "gpus"}
_END_KEYS = {"id", "start_s", "end_s", "model", "tags", "status", "error_type",
             "input_tokens", "output_tokens", "ttft_s", "gpus"}  # fmt: skip
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
class SpanEnd:
    id: int
    start_s: float
    end_s: float
    model: str
    tags: dict
    status: str
    error_type: str | None
    input_tokens: int | None
    output_tokens: int | None
    ttft_s: float | None
    gpus: tuple | None


@dataclass(frozen=True)
class Batch:
    pid: int
    host: str
    monotonic_s: float | None
    starts: list[SpanStart]
    ends: list[SpanEnd]
    ack: bool = False  # acknowledge its ends (on the socket)
    lost: dict[str, int] | None = None  # the client's own loss counts since its last batch


def default_socket_path(environ: dict[str, str] | None = None) -> Path:
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
    if not _is_int(pid) or pid <= 0:
        raise ProtocolError("batch.pid must be a positive integer")
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
    return Batch(pid, host, monotonic_s, starts, ends, ack, _lost(raw.get("lost")))


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
            raise ProtocolError(f"batch.lost.{kind} must be a non-negative integer")
    return value


def _start(item: Any, n: int) -> SpanStart:
    where = f"starts[{n}]"
    if not isinstance(item, dict):
        raise ProtocolError(f"{where} must be an object")
    _no_unknown(item, _START_KEYS, where)
    return SpanStart(_id(item.get("id"), where), _time(item.get("start_s"), f"{where}.start_s"),
                     _gpus(item.get("gpus"), where))  # fmt: skip


def _end(item: Any, n: int) -> SpanEnd:
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
        if ttft_s < 0:
            raise ProtocolError(f"{where}.ttft_s must not be negative")
    return SpanEnd(
        _id(item["id"], where), start_s, end_s, model, tags, status, error_type,
        _tokens(item.get("input_tokens"), f"{where}.input_tokens"),
        _tokens(item.get("output_tokens"), f"{where}.output_tokens"),
        ttft_s, _gpus(item.get("gpus"), where),
    )  # fmt: skip


def _no_unknown(item: dict, known: set[str], where: str) -> None:
    unknown = item.keys() - known
    if unknown:
        raise ProtocolError(f"{where}: unknown field(s) {', '.join(sorted(map(str, unknown)))}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _id(value: Any, where: str) -> int:
    if not _is_int(value) or not 0 <= value < 2**63:
        raise ProtocolError(f"{where}.id must be a non-negative integer")
    return value


def _time(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ProtocolError(f"{where} must be a number of seconds")
    if not math.isfinite(value):
        raise ProtocolError(f"{where} must be finite")
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
    if not isinstance(value, list) or not all(
        (_is_int(g) and g >= 0) or (isinstance(g, str) and 0 < len(g) <= 128) for g in value
    ):
        raise ProtocolError(f"{where}.gpus must be a list of GPU indices or UUIDs, or null")
    return tuple(value)
