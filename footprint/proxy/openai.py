"""What the proxy knows of the OpenAI wire format: which paths are inference endpoints, where
a request body names its model and asks for a stream, and how a stream is asked for its usage.

Kept apart from the HTTP plumbing so that a new endpoint or field is a change here only.
"""

from __future__ import annotations

import json

ENDPOINTS = {
    "/v1/chat/completions": "chat.completions",
    "/v1/completions": "completions",
    "/v1/embeddings": "embeddings",
    "/v1/responses": "responses",
}
INJECTABLE = frozenset({"chat.completions", "completions"})  # accept stream_options
MAX_MODEL_CHARS = 256
UNKNOWN_MODEL = "unknown"


def parse_body(body: bytes) -> dict | None:
    """A request body's JSON object; None if it is not one."""
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


def model_of(obj: dict | None) -> str:
    """The model a request body names (cut to ``MAX_MODEL_CHARS``), else ``unknown``."""
    model = obj.get("model") if obj is not None else None
    if not isinstance(model, str) or not model.strip():
        return UNKNOWN_MODEL
    return model[:MAX_MODEL_CHARS]


def stream_without_usage(obj: dict, kind: str) -> bool:
    """A stream of an endpoint that takes ``stream_options``, not asking for usage."""
    return obj.get("stream") is True and kind in INJECTABLE and not _asks_usage(obj)


def _asks_usage(obj: dict) -> bool:
    options = obj.get("stream_options")
    return isinstance(options, dict) and bool(options.get("include_usage"))


def plain_stream_options(obj: dict) -> bool:
    """No stream option but ``include_usage``: adding it changes nothing else (vLLM's
    ``continuous_usage_stats``, for one, would put usage in every chunk once it is on)."""
    options = obj.get("stream_options")
    return options is None or (isinstance(options, dict) and options.keys() <= {"include_usage"})


def with_include_usage(body: bytes, obj: dict) -> bytes:
    """The body with ``stream_options.include_usage`` true; untouched bytes otherwise."""
    options = obj.get("stream_options")
    if options is None and "stream_options" not in obj:
        start = body.index(b"{") + 1
        return body[:start] + b'"stream_options":{"include_usage":true},' + body[start:]
    merged = dict(obj)
    merged["stream_options"] = {
        **(options if isinstance(options, dict) else {}),
        "include_usage": True,
    }
    return json.dumps(merged, ensure_ascii=False, separators=(",", ":")).encode()


def refuses_stream_options(error_body: bytes) -> bool:
    """Whether (the start of) a 4xx body names the option: the upstream refuses it."""
    return b"stream_options" in error_body or b"include_usage" in error_body


def is_event_stream(content_type: str) -> bool:
    """A streamed (server-sent events) response, by its ``Content-Type``."""
    return content_type.startswith("text/event-stream")
