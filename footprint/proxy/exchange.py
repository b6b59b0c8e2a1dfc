"""One measured request's record, and the proxy's counters: both updated by the server
(the request) and the pump (the response)."""

from __future__ import annotations

from typing import Any


class ProxyStats:
    """Counters, printed at shutdown."""

    def __init__(self) -> None:
        self.requests = 0
        self.measured = 0
        self.unparsed_bodies = 0  # over the cap, or not JSON: model "unknown"
        self.no_usage = 0  # measured responses in which no usage was found
        self.estimated = 0  # streams whose output tokens were counted as chunks
        self.upstream_errors = 0
        self.cancelled = 0
        self.accounting_errors = 0
        self.oversized_events = 0
        self.refused_targets = 0  # not a path (CONNECT, absolute URL, *): 400, not forwarded
        # A traceparent that is not one valid W3C version-00 header: ignored, forwarded.
        self.bad_traceparents = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class Exchange:
    """One measured request: its query and how it ended."""

    __slots__ = ("query", "kind", "error", "tokens_estimated")

    def __init__(self, query: Any, kind: str) -> None:
        self.query = query
        self.kind = kind
        self.error: BaseException | None = None
        self.tokens_estimated = False
