"""The ends a daemon client sent and the daemon has not acknowledged yet.

On the Unix socket a sent end is kept until the daemon acknowledges it (``{"acked":
[ids]}``: its record is written or its loss counted), so that a daemon killed before it
wrote it gets it again from the next connection, marked ``resent`` (``requeue``). Ends of
a batch the daemon refuses (``"refused": [ids]``) are dropped (``drop``).
"""

from __future__ import annotations

import contextlib
import json
from collections import deque
from collections.abc import Iterable
from typing import Any, NamedTuple

from footprint.runtime.transport import Reply

MAX_REFUSAL_CHARS = 500  # of the daemon's error message, in the warning
MAX_UNREADABLE_BYTES = 200  # of a refusal that is not the daemon's JSON


class Refusal(NamedTuple):
    """A refused batch, as the daemon explained it: its message (with the reason) and
    the ids of its ends, which it counted lost."""

    message: str
    ids: list[Any]


def read_refusal(body: bytes) -> Refusal:
    """The daemon's ``{"error": ..., "reason": ..., "refused": [ids]}``; a body that is not
    that is the message itself (cut short)."""
    try:
        reply = json.loads(body)
        message = str(reply.get("error"))[:MAX_REFUSAL_CHARS]
        if reply.get("reason"):
            message += f" [{reply['reason']}]"
        refused = reply.get("refused")
    except Exception:
        return Refusal(body[:MAX_UNREADABLE_BYTES].decode("utf-8", "replace"), [])
    return Refusal(message, refused if isinstance(refused, list) else [])


def read_acked(body: bytes) -> list[Any]:
    """The ids of ``{"acked": [ids]}``; none when the line is not that."""
    try:
        ids = json.loads(body)["acked"]
    except (ValueError, KeyError, TypeError):
        return []
    return ids if isinstance(ids, list) else []


class Answer(NamedTuple):
    """What a reply did: ends ``confirmed`` (acknowledged), ends ``dropped`` (refused), and
    the daemon's message when it refused a batch."""

    confirmed: int = 0
    dropped: int = 0
    refusal: str | None = None


class AckLedger:
    """Ends sent and not yet acknowledged, by span id, in the order they were sent."""

    def __init__(self) -> None:
        self._unacked: dict[int, dict[str, Any]] = {}

    def __len__(self) -> int:
        return len(self._unacked)

    def __contains__(self, span_id: object) -> bool:
        return span_id in self._unacked

    def sent(self, ends: Iterable[dict[str, Any]]) -> None:
        """These ends went to the daemon: keep them until it acknowledges them."""
        for end in ends:
            self._unacked[end["id"]] = end

    def take(self, reply: Reply) -> Answer:
        """Apply one reply of the daemon: an acknowledgement, or a refusal."""
        if reply.acked:
            return Answer(confirmed=self.acknowledged(read_acked(reply.body)))
        refusal = read_refusal(reply.body)
        return Answer(dropped=self.drop(refusal.ids), refusal=refusal.message)

    def acknowledged(self, ids: Iterable[Any]) -> int:
        """The daemon wrote these ends (or counted them lost): forget them; returns how
        many were waiting (an id acknowledged twice, or unknown, counts once or never)."""
        return self._forget(ids)

    def drop(self, ids: Iterable[Any]) -> int:
        """The daemon refused these ends (and counted them lost): forget them; returns how
        many were waiting."""
        return self._forget(ids)

    def _forget(self, ids: Iterable[Any]) -> int:
        unacked = self._unacked
        forgotten = 0
        for span_id in ids:
            with contextlib.suppress(TypeError):  # not an id (unhashable): nothing of ours
                if unacked.pop(span_id, None) is not None:
                    forgotten += 1
        return forgotten

    def requeue(self, unsent: deque[dict[str, Any]]) -> int:
        """The connection is gone: what it did not acknowledge goes again, first, marked
        ``resent``: the daemon may have stored it before it went (its acknowledgement
        lost), so the next one looks it up before storing it. Returns how many."""
        unacked = self._unacked
        if not unacked:
            return 0
        for end in unacked.values():
            end["resent"] = True
        unsent.extendleft(reversed(unacked.values()))
        count = len(unacked)
        unacked.clear()
        return count
