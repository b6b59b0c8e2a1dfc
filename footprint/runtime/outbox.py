"""What a daemon client has still to tell the daemon: the calls that ended, as the entries
of a batch (``ends``), and which running calls it was told about (``starts``).

Names, tags and token counts are cleaned here, off the hot path, as the in-process runtime
cleans them before storing, so that the daemon never refuses a batch for one odd value.
"""

from __future__ import annotations

import itertools
import math
import time
from collections import deque
from collections.abc import Callable
from typing import Any, NamedTuple

from footprint._sanitize import Cleaner
from footprint._tracing import hex_ids
from footprint.runtime.protocol import STATUSES
from footprint.runtime.spans import EndedSpan

MAX_ERROR_TYPE_CHARS = 200
MAX_GPU_ID_CHARS = 128
MAX_CACHED_GPU_SETS = 4096  # GPU id tuples checked once each; forgotten all at once past this
MAX_ENDS_PER_BATCH = 2_000  # also split further to stay under MAX_BATCH_BYTES
MAX_STARTS_PER_BATCH = 5_000
RECENTLY_ENDED_S = 1.0  # an ended call still seen in ``inflight`` this long is not started


class Batch(NamedTuple):
    """An encoded batch: the first ``n_starts`` starts given and the ends ``ends``."""

    data: bytes
    n_starts: int
    ends: list[dict[str, Any]]


# A batch's bytes from its starts and ends; None: too big, or not JSON.
Encoder = Callable[[list[dict[str, Any]], list[dict[str, Any]]], "bytes | None"]


class SpanEntries:
    """Makes the entries of a batch; replaced values are counted (``count_bad``), and
    dropped GPU ids warned about once (``warn_once``)."""

    def __init__(
        self, count_bad: Callable[[str, int], None], warn_once: Callable[[str, str], None]
    ) -> None:
        self._clean = Cleaner(count_bad)
        self._warn_once = warn_once
        self._gpus_cache: dict[tuple, list] = {}

    def end(self, span: EndedSpan) -> dict[str, Any]:
        """The ``ends`` entry of ``span``, with every value one the daemon takes."""
        start_s, end_s, ttft_s = span.start_s, span.end_s, span.ttft_s
        if ttft_s is not None and not (math.isfinite(ttft_s) and ttft_s >= 0):
            ttft_s = None
        status = span.status if span.status in STATUSES else "error"
        error_type = span.error_type
        if error_type is not None:
            error_type = str(error_type)[:MAX_ERROR_TYPE_CHARS]
        entry = {
            "id": span.span_id,
            "start_s": start_s,
            "end_s": end_s if end_s >= start_s else start_s,
            "model": self._clean.model(span.model),
            "tags": self._clean.tags_object(span.tags),
            "status": status,
            "error_type": error_type,
            "input_tokens": self._clean.tokens(span.input_tokens),
            "output_tokens": self._clean.tokens(span.output_tokens),
            "ttft_s": ttft_s,
            "gpus": self.gpus(span.gpus),
        }
        trace = hex_ids(span.trace)
        if trace is not None:  # only then: batches stay small
            entry["trace_id"], entry["span_id"] = trace
        return entry

    def gpus(self, gpus: tuple | None) -> list | None:
        """The ids in ``gpus`` the daemon takes (indices >= 0, UUIDs); None: every GPU."""
        if gpus is None:
            return None
        known = self._gpus_cache.get(gpus)
        if known is None:
            known = [
                g
                for g in gpus
                if (g.__class__ is int and g >= 0)
                or (isinstance(g, str) and 0 < len(g) <= MAX_GPU_ID_CHARS)
            ]
            if len(known) != len(gpus):
                self._warn_once(
                    "gpu-ids",
                    f"footprint: a call named GPU ids the daemon cannot take ({list(gpus)!r}: "
                    f"indices >= 0 or UUIDs of at most {MAX_GPU_ID_CHARS} characters); they "
                    "are left out of its span",
                )
            if len(self._gpus_cache) >= MAX_CACHED_GPU_SETS:
                self._gpus_cache.clear()
            self._gpus_cache[gpus] = known
        return known


class Outbox:
    """The ends not sent yet (``unsent``, cleaned, oldest first) and the running calls whose
    start was sent (``started_sent``: cleared on a new connection, to send them again)."""

    def __init__(
        self, count_bad: Callable[[str, int], None], warn_once: Callable[[str, str], None]
    ) -> None:
        self.unsent: deque[dict[str, Any]] = deque()
        self.started_sent: set[int] = set()
        self._recently_ended: dict[int, float] = {}  # id -> when taken (in order)
        self._entries = SpanEntries(count_bad, warn_once)
        self._count_bad = count_bad
        self._warn_once = warn_once

    def take(self, ended: deque[EndedSpan], room: int) -> int:
        """Up to ``room`` ended calls -> ``unsent`` entries; returns how many of them could
        not be made (counted in ``record_failed``, lost)."""
        recent = self._recently_ended
        now_s = time.monotonic()
        while recent:  # oldest first: forget those seen long ago
            first = next(iter(recent))
            if now_s - recent[first] < RECENTLY_ENDED_S:
                break
            del recent[first]
        failed = 0
        while ended and room > 0:
            span = ended.popleft()
            recent[span.span_id] = now_s
            self.started_sent.discard(span.span_id)
            try:
                self.unsent.append(self._entries.end(span))
                room -= 1
            except Exception as exc:  # one odd span never takes the others with it
                failed += 1
                self._count_bad("record_failed", 1)
                self._warn_once("record", f"footprint: could not encode a span: {exc!r}")
        return failed

    def new_starts(self, inflight: dict[int, tuple[float, tuple | None]]) -> list[dict[str, Any]]:
        """Running calls the daemon has not been told about (in start order)."""
        inflight = dict(inflight)  # one C-level copy: consistent under the GIL
        sent, recent = self.started_sent, self._recently_ended
        if len(sent) > len(inflight):
            sent.intersection_update(inflight)
        return [
            {"id": span_id, "start_s": start_s, "gpus": self._entries.gpus(gpus)}
            for span_id, (start_s, gpus) in inflight.items()
            if span_id not in sent and span_id not in recent
        ]

    def next_batch(self, starts: list[dict[str, Any]], encode: Encoder) -> Batch | None:
        """The first of ``starts`` and of the unsent ends that ``encode`` takes (halving
        until one span alone); None when that one alone does not."""
        n_starts = min(len(starts), MAX_STARTS_PER_BATCH)
        n_ends = min(len(self.unsent), MAX_ENDS_PER_BATCH)
        while True:
            ends = list(itertools.islice(self.unsent, n_ends))
            data = encode(starts[:n_starts], ends)
            if data is not None:
                return Batch(data, n_starts, ends)
            if n_starts + n_ends <= 1:
                return None
            if n_ends > 1:  # too big (or not JSON): halve, until one span alone
                n_ends //= 2
            elif n_starts > 1:
                n_starts //= 2
            else:
                n_starts = 0
