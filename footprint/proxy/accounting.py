"""Token counts and time to first token, read from OpenAI-style responses as they stream.

Nothing here holds a whole response. A JSON body keeps its first and last 64 KiB (an
OpenAI response carries ``usage`` at its end); an SSE stream is cut into events as it
arrives and only the event being received is held (at most ``MAX_EVENT`` bytes; a longer
one is forwarded as it comes and only its last 64 KiB are looked at). No JSON document is
parsed whole on the hot path: ``usage`` objects are decoded where they are found, and
content is recognised by a pattern (a JSON string value's quotes are escaped, so the
patterns below cannot match inside one).

When the proxy added ``stream_options.include_usage`` to a stream the client did not ask
usage of, :class:`SSEAccountant` gives back the events to forward: every event unchanged
except the extra usage chunk (``"choices":[]`` with a ``usage``), which is dropped, and the
``"usage":null`` member that the option adds to every other chunk, which is removed, so
the client gets the stream it would have had without the option.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Callable
from typing import Any

WINDOW = 64 * 1024  # bytes of a body (head and tail) or of an oversized event kept
MAX_EVENT = 1024 * 1024  # an SSE event longer than this is forwarded unparsed

_DECODER = json.JSONDecoder()
_USAGE_KEY = re.compile(rb'"usage"\s*:\s*\{')
_USAGE_NULL = re.compile(rb'"usage"\s*:\s*null')
# The member the include_usage option adds to every chunk, with its comma.
_STRIP_USAGE_NULL = (
    re.compile(rb',\s*"usage"\s*:\s*null(?=\s*[,}])'),
    re.compile(rb'"usage"\s*:\s*null\s*,'),
)
_EMPTY_CHOICES = re.compile(rb'"choices"\s*:\s*\[\s*\]')
# A chunk that carries generated output: a non-empty text, or a tool call.
_CONTENT = re.compile(
    rb'"(?:content|text|reasoning_content|reasoning|refusal)"\s*:\s*"[^"]'
    rb'|"(?:tool_calls|function_call)"\s*:\s*[\[{]\s*[{"]'
)
_TYPE = re.compile(rb'"type"\s*:\s*"([^"]{1,100})"')
_USAGE_EVENTS = (b"response.completed", b"response.incomplete", b"response.failed")


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def tokens_of(usage: dict, kind: str) -> tuple[int | None, int | None]:
    """(input, output) tokens of a ``usage`` object, whichever API's names it uses."""
    tokens_in = _count(usage.get("prompt_tokens"))
    if tokens_in is None:
        tokens_in = _count(usage.get("input_tokens"))
    if kind == "embeddings":
        return tokens_in, None
    tokens_out = _count(usage.get("completion_tokens"))
    if tokens_out is None:
        tokens_out = _count(usage.get("output_tokens"))
    return tokens_in, tokens_out


def find_usage(data: bytes | bytearray, last: bool = True) -> dict | None:
    """The ``usage`` object found in ``data`` (the last one, or the first), decoded alone."""
    matches = list(_USAGE_KEY.finditer(data))
    if last:
        matches.reverse()
    for match in matches:
        start = match.end() - 1
        text = bytes(data[start : start + 16384]).decode("utf-8", "ignore")
        try:
            value, _ = _DECODER.raw_decode(text)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


class Inflater:
    """Decodes a gzip or deflate body for reading only (what is forwarded stays encoded)."""

    def __init__(self, encoding: str) -> None:
        self._raw = encoding == "deflate"
        self._d = zlib.decompressobj(47 if not self._raw else 15)
        self._started = False
        self.failed = False

    def decode(self, data: bytes) -> bytes:
        if self.failed:
            return b""
        try:
            if not self._started and self._raw and data and (data[0] & 0x0F) != 8:
                self._d = zlib.decompressobj(-15)  # "deflate" sent without the zlib header
            self._started = True
            return self._d.decompress(data, 4 * WINDOW) + self._drain()
        except zlib.error:
            self.failed = True
            return b""

    def _drain(self) -> bytes:
        out = []
        while self._d.unconsumed_tail:  # bounded pieces: a small body may inflate hugely
            out.append(self._d.decompress(self._d.unconsumed_tail, 4 * WINDOW))
            if len(out) > 64:  # more than 16 MiB out of one network read: stop reading
                self.failed = True
                break
        return b"".join(out)


TokensReader = Callable[[bytes | bytearray, str], tuple[int | None, int | None] | None]


class BodyAccountant:
    """Usage from a JSON body, keeping only its first and last ``WINDOW`` bytes.

    ``read_tokens(data, kind)``, when given, reads the tokens of another API than
    OpenAI's (whose ``usage`` object is read otherwise) out of what was kept.
    """

    __slots__ = ("kind", "_read_tokens", "_head", "_tail", "_dropped")

    def __init__(self, kind: str, read_tokens: TokensReader | None = None) -> None:
        self.kind = kind
        self._read_tokens = read_tokens
        self._head = bytearray()
        self._tail = bytearray()
        self._dropped = False

    def feed(self, data: bytes) -> None:
        room = WINDOW - len(self._head)
        if room > 0:
            self._head += data[:room]
            data = data[room:]
        if data:
            self._tail += data
            if len(self._tail) > 2 * WINDOW:
                del self._tail[: len(self._tail) - WINDOW]
                self._dropped = True

    def tokens(self) -> tuple[int | None, int | None] | None:
        read = self._read_tokens
        if read is not None:
            if not self._dropped:
                return read(self._head + self._tail, self.kind)
            return read(self._tail, self.kind) or read(self._head, self.kind)
        if not self._dropped:
            usage = find_usage(self._head + self._tail)
        else:
            usage = find_usage(self._tail) or find_usage(self._head, last=False)
        return tokens_of(usage, self.kind) if usage is not None else None


class SSEAccountant:
    """Usage, first content and content chunks of a server-sent-event stream, incrementally.

    ``feed`` returns the bytes to forward when ``strip_usage`` is set (complete events;
    a partial one waits for its end), else ``b""`` (the caller forwards what it received).
    """

    __slots__ = (
        "kind",
        "strip_usage",
        "count_chunks",
        "on_first_content",
        "usage",
        "content_chunks",
        "first_seen",
        "stream_error",
        "oversized_events",
        "_buf",
        "_scan",
        "_sep",
        "_oversized",
        "_tail",
    )

    def __init__(
        self,
        kind: str,
        *,
        strip_usage: bool = False,
        count_chunks: bool = False,
        on_first_content: Any = None,
    ) -> None:
        self.kind = kind
        self.strip_usage = strip_usage
        self.count_chunks = count_chunks
        self.on_first_content = on_first_content
        self.usage: dict | None = None
        self.content_chunks = 0
        self.first_seen = False
        self.stream_error = False
        self.oversized_events = 0
        self._buf = bytearray()
        self._scan = 0  # where to look for the next event end in _buf
        self._sep: bytes | None = None  # b"\n\n" or b"\r\n\r\n", from the first line end
        self._oversized = False  # inside an event longer than MAX_EVENT
        self._tail = bytearray()

    def tokens(self) -> tuple[int | None, int | None] | None:
        if self.usage is not None:
            return tokens_of(self.usage, self.kind)
        return None

    def feed(self, data: bytes) -> bytes:
        buf = self._buf
        buf += data
        sep = self._sep
        if sep is None:
            newline = buf.find(b"\n")
            if newline < 0:
                return self._overflow() if len(buf) > MAX_EVENT else b""
            sep = self._sep = b"\r\n\r\n" if newline > 0 and buf[newline - 1] == 13 else b"\n\n"
        out: list[bytes] = []
        pos = 0
        scan = self._scan
        while True:
            end = buf.find(sep, scan)
            if end < 0:
                break
            end += len(sep)
            raw = bytes(buf[pos:end])
            pos = scan = end
            if self._oversized:
                self._oversized_end(raw)
                if self.strip_usage:
                    out.append(raw)
                continue
            keep = self._event(raw)
            if self.strip_usage and keep:
                out.append(keep)
        if pos:
            del buf[:pos]
        self._scan = max(0, len(buf) - len(sep) + 1)
        if self._oversized or len(buf) > MAX_EVENT:
            out.append(self._overflow())
        return b"".join(out) if self.strip_usage else b""

    def pending(self) -> bytes:
        """The bytes received and not yet given back (when stripping)."""
        return bytes(self._buf)

    def close(self) -> bytes:
        """The end of the stream: what is left of an unterminated last event, unchanged."""
        rest = bytes(self._buf)
        if rest and not self._oversized:
            self._event(rest)  # a last event without its blank line still counts
        elif rest:
            self._oversized_end(rest)
        self._buf.clear()
        return rest if self.strip_usage else b""

    # -- events ------------------------------------------------------------------------

    def _overflow(self) -> bytes:
        """The event being received is too long to hold: pass it on, keep its tail."""
        if not self._oversized:
            self._oversized = True
            self.oversized_events += 1
            self._first()
        # Keep the bytes that may begin the blank line ending the event.
        cut = max(0, len(self._buf) - 3)
        chunk = bytes(self._buf[:cut])
        self._tail += chunk
        if len(self._tail) > WINDOW:
            del self._tail[: len(self._tail) - WINDOW]
        del self._buf[:cut]
        self._scan = 0
        return chunk if self.strip_usage else b""

    def _oversized_end(self, raw: bytes) -> None:
        self._tail += raw
        usage = find_usage(self._tail)
        if usage is not None:
            self.usage = usage
        self._tail.clear()
        self._oversized = False
        if self.count_chunks:
            self.content_chunks += 1

    def _first(self) -> None:
        if not self.first_seen:
            self.first_seen = True
            if self.on_first_content is not None:
                self.on_first_content()

    def _event(self, raw: bytes) -> bytes:
        """Account for one event; the bytes to forward for it (b"" to drop it)."""
        data = None
        event_type = None
        for line in raw.splitlines():
            if line.startswith(b"data:"):
                value = line[6:] if line[5:6] == b" " else line[5:]
                data = value if data is None else data + b"\n" + value
            elif line.startswith(b"event:"):
                event_type = line[6:].strip()
        if data is None or data == b"[DONE]":
            return raw
        if data.startswith(b'{"error"') or b'"object":"error"' in data[:64]:
            self.stream_error = True
        if self.kind == "responses":
            self._responses_event(data, event_type)
            return raw
        if b'"usage"' in data:
            if _USAGE_NULL.search(data):
                if self.strip_usage:
                    for pattern in _STRIP_USAGE_NULL:
                        stripped = pattern.sub(b"", raw, count=1)
                        if len(stripped) != len(raw):
                            raw = stripped
                            break
            else:
                usage = find_usage(data)
                if usage is not None:
                    self.usage = usage
                    if self.strip_usage and _EMPTY_CHOICES.search(data):
                        return b""  # the chunk the proxy asked for: not the client's
        if (not self.first_seen or self.count_chunks) and _CONTENT.search(data):
            self.content_chunks += 1
            self._first()
        return raw

    def _responses_event(self, data: bytes, event_type: bytes | None) -> None:
        if event_type is None:
            match = _TYPE.search(data, 0, 200)
            event_type = match.group(1) if match else b""
        if event_type.endswith(b".delta"):
            self.content_chunks += 1
            self._first()
        elif event_type in _USAGE_EVENTS:
            usage = find_usage(data)
            if usage is not None:
                self.usage = usage
            if event_type == b"response.failed":
                self.stream_error = True
        elif event_type == b"error":
            self.stream_error = True
