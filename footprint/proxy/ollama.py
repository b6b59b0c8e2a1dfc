"""What the proxy knows of Ollama's native API (``/api/chat``, ``/api/generate``,
``/api/embed``, ``/api/embeddings``): tokens are ``prompt_eval_count`` (input) and
``eval_count`` (output) of the answer, or of a stream's last object (``"done": true``).

Ollama streams newline-delimited JSON (``application/x-ndjson``, and streams unless the
body says ``"stream": false``). :class:`NDJSONAccountant` reads such a stream line by line
as it is forwarded, holding at most one line (``MAX_EVENT`` bytes; of a longer one, such as
a last object with a long ``context``, only the last ``WINDOW`` bytes are looked at). The
counts are found by pattern, not by parsing the line: a JSON string's quotes are escaped,
so the patterns cannot match inside one.
"""

from __future__ import annotations

import re
from typing import Any

from footprint.proxy.accounting import MAX_EVENT, WINDOW

ENDPOINTS = {
    "/api/chat": "ollama.chat",
    "/api/generate": "ollama.generate",
    "/api/embed": "ollama.embed",
    "/api/embeddings": "ollama.embeddings",  # the older embedding API: no counts in it
}
KINDS = frozenset(ENDPOINTS.values())
_NO_OUTPUT = frozenset({"ollama.embed", "ollama.embeddings"})

_PROMPT_EVAL_COUNT = re.compile(rb'"prompt_eval_count"\s*:\s*(\d{1,18})\b')
_EVAL_COUNT = re.compile(rb'"eval_count"\s*:\s*(\d{1,18})\b')
_DONE = re.compile(rb'"done"\s*:\s*true')
_ERROR = re.compile(rb'^\s*\{\s*"error"\s*:')


def is_ndjson(content_type: str) -> bool:
    """A newline-delimited JSON stream, by its ``Content-Type``."""
    return content_type.startswith(("application/x-ndjson", "application/jsonl"))


def _last_count(pattern: re.Pattern[bytes], data: bytes | bytearray) -> int | None:
    last = None
    for match in pattern.finditer(data):
        last = match
    return int(last.group(1)) if last is not None else None


def ollama_tokens(data: bytes | bytearray, kind: str) -> tuple[int | None, int | None] | None:
    """(input, output) tokens of an Ollama answer (the last counts in ``data``); None when
    it has neither count."""
    tokens_in = _last_count(_PROMPT_EVAL_COUNT, data)
    tokens_out = None if kind in _NO_OUTPUT else _last_count(_EVAL_COUNT, data)
    if tokens_in is None and tokens_out is None:
        return None
    return tokens_in, tokens_out


class NDJSONAccountant:
    """Counts, first object and errors of an Ollama stream, incrementally.

    The first object that is neither an error nor already the last one (``"done": true``:
    nothing was generated) is the first token. ``feed`` gives back nothing to forward
    (the stream is forwarded as received).
    """

    __slots__ = (
        "kind",
        "on_first_content",
        "first_seen",
        "stream_error",
        "oversized_events",
        "content_chunks",
        "_tokens",
        "_buf",
        "_scan",
        "_oversized",
    )

    def __init__(self, kind: str, *, on_first_content: Any = None) -> None:
        self.kind = kind
        self.on_first_content = on_first_content
        self.first_seen = False
        self.stream_error = False
        self.oversized_events = 0
        self.content_chunks = 0  # objects received (no estimate is made of them)
        self._tokens: tuple[int | None, int | None] | None = None
        self._buf = bytearray()
        self._scan = 0  # where to look for the next line end in _buf
        self._oversized = False  # inside a line longer than MAX_EVENT: its head was read

    def tokens(self) -> tuple[int | None, int | None] | None:
        return self._tokens

    def feed(self, data: bytes) -> bytes:
        buf = self._buf
        buf += data
        pos = 0
        while (end := buf.find(b"\n", self._scan)) >= 0:
            self._line(buf[pos:end])
            pos = self._scan = end + 1
        if pos:
            del buf[:pos]
        self._scan = len(buf)
        if len(buf) > MAX_EVENT:
            self._overflow()
        return b""

    def pending(self) -> bytes:
        return b""

    def close(self) -> bytes:
        """The end of the stream: a last line without its line end still counts."""
        if self._buf:
            self._line(self._buf)
        self._buf.clear()
        self._scan = 0
        return b""

    def _overflow(self) -> None:
        """A line too long to hold: read its head now, keep its tail."""
        if not self._oversized:
            self._oversized = True
            self.oversized_events += 1
            self._head(self._buf)
        del self._buf[: len(self._buf) - WINDOW]
        self._scan = len(self._buf)

    def _line(self, line: bytes | bytearray) -> None:
        if self._oversized:
            self._oversized = False  # its head was read when it overflowed
        elif not line.strip():
            return
        else:
            self._head(line)
        if b'_count"' in line:
            tokens = ollama_tokens(line, self.kind)
            if tokens is not None:
                self._tokens = tokens

    def _head(self, line: bytes | bytearray) -> None:
        """An object's start (of a long one, its first ``MAX_EVENT`` bytes)."""
        self.content_chunks += 1
        if _ERROR.match(line):
            self.stream_error = True
        elif not self.first_seen and not _DONE.search(line):
            self.first_seen = True
            if self.on_first_content is not None:
                self.on_first_content()
