"""The daemon's intake: batches of span starts and ends from its clients, into its runtime.

Each client process is known by ``(host, pid)``; its span ids are its own, mapped here to
the runtime's ids, so a client that reconnects (a new connection, the same process) goes
on where it left off. A span's start puts it in the runtime's in-flight dict, its end in
the ended queue, exactly what ``footprint.tracking`` does in a process that measures
itself; an end whose start was never seen is announced and ended at once.

Ends of batches that ask for it (``ack``) are acknowledged: each end taken is remembered
with its connection and client span id until the runtime says it is settled
(``Runtime.on_settled``: its record written, or counted as lost); the ids are then
queued for the socket thread to send (``take_acks``). An end not taken (one this daemon
already has, one dropped and counted) is settled at once. A client sends unacknowledged
ends again on a new connection; an end this daemon already has (a client's span id seen
in the last ``REMEMBER_ENDED_S``) is ignored, so a reconnection makes no second record.
Across daemons (one restarted, or killed between writing a record and acknowledging it),
the client marks the ends it sends again ``resent``: their keys (``<session>:<id>``,
``queries.span_key``) are looked up in the database, one query per batch, and those
stored already are acknowledged and not applied (``duplicate_end_stored``). Where the
lookup cannot be made (no store open, the database fails), the ends are applied: stored,
perhaps twice, never dropped (counted in ``oddities["resent_unchecked"]``).

When the last connection of a client closes with spans still running, the client is
checked: a process that no longer exists has its spans closed as abandoned (their energy
goes to the lost bucket, counted). Whether it exists is asked of the pid the kernel gives
for the peer of the Unix socket (``SO_PEERCRED``, in the daemon's pid namespace); where
the kernel cannot name it (a client in a pid namespace the daemon cannot see), the
spans wait ``RECONNECT_GRACE_S`` for the client to come back, then are abandoned.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from footprint.runtime.local import Runtime
from footprint.runtime.protocol import CLOCK_TOLERANCE_S, Batch, ProtocolError
from footprint.runtime.spans import EndedSpan

log = logging.getLogger("footprint")

# A client whose liveness cannot be checked gets this long to reconnect before its
# running spans are abandoned.
RECONNECT_GRACE_S = 60.0
# A client with nothing running and no connection is forgotten after this long (its
# memory of abandoned span ids, which keeps a late end from making a second record).
FORGET_CLIENT_AFTER_S = 600.0
MAX_ABANDONED_IDS = 10_000  # per client
# A client's ended span ids are remembered this long (and at most max_pending_spans of
# them) to recognise ends sent again after a reconnection.
REMEMBER_ENDED_S = 60.0
# How long one batch may wait for room in a full ended queue before its ends are dropped
# (counted): the reading thread waits, so the client's socket fills and the client slows.
BACKPRESSURE_WAIT_S = 2.0


class ClockMismatch(ProtocolError):
    """The sender's monotonic clock is not the daemon's: its times mean nothing here."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "clock")


@dataclass(eq=False)
class Connection:
    """One client connection (a Unix socket): who is on the other end."""

    id: int
    peer_pid: int | None  # the peer's pid in the daemon's pid namespace (None: unknown)
    keys: set[tuple[str, int]] = field(default_factory=set)
    clock_checked: bool = False
    clock_refused: str | None = None
    awaiting: int = 0  # its ends taken and not settled yet


class _Client:
    """A client process (``host``, ``pid``) and its spans still running."""

    __slots__ = (
        "key",
        "spans",
        "connections",
        "liveness_pid",
        "idle_since_s",
        "abandoned",
        "last_seen_s",
        "spans_checked_s",
        "ended",
    )

    def __init__(self, key: tuple[str, int], now_s: float) -> None:
        self.key = key
        # client span id -> (daemon span id, start_s, gpus)
        self.spans: dict[int, tuple[int, float, tuple | None]] = {}
        self.connections: set[int] = set()
        self.liveness_pid: int | None = None  # a pid to check in our namespace
        self.idle_since_s: float | None = None  # since when it has had no connection
        self.abandoned: dict[int, None] = {}  # client span ids closed as abandoned
        self.last_seen_s = now_s  # its latest batch
        self.spans_checked_s = now_s  # its spans were last looked at for their age
        self.ended: dict[int, float] = {}  # client span id -> when its end came (oldest first)

    def seen_end(self, cid: int, now_s: float, limit: int) -> bool:
        """Whether this end came before (sent again after a reconnection); remembers it."""
        ended = self.ended
        if cid in ended:
            return True
        ended[cid] = now_s
        while ended:
            first = next(iter(ended))
            if len(ended) <= limit and now_s - ended[first] < REMEMBER_ENDED_S:
                break
            del ended[first]
        return False


class SpanIntake:
    """Applies decoded batches to ``runtime``; counts what it refuses or cannot keep."""

    def __init__(self, runtime: Runtime, host: str | None = None) -> None:
        self.runtime = runtime
        self.host = host or runtime.host
        self._lock = threading.Lock()
        self._clients: dict[tuple[str, int], _Client] = {}
        self._conn_ids = itertools.count(1)
        self.connections: dict[int, Connection] = {}
        self.protocol_errors: Counter[str] = Counter()
        self.lost: Counter[str] = Counter()  # spans refused or closed, by reason
        self.oddities: Counter[str] = Counter()  # handled, not lost
        self.received: Counter[str] = Counter()  # "starts", "ends", "batches"
        self.abandoned_clients = 0
        self._ack_of: dict[int, tuple[Connection, int]] = {}  # runtime id -> (conn, its id)
        self._acks_due: dict[int, tuple[Connection, list[int]]] = {}  # conn id -> client ids
        self.on_ack_due: Callable[[], None] | None = None  # wakes the socket thread
        self._lookup_failed = False  # a lookup of resent ends failed (logged once)
        runtime.on_settled = self.settled

    # -- connections -----------------------------------------------------------------
    def connect(self, peer_pid: int | None) -> Connection:
        conn = Connection(next(self._conn_ids), peer_pid or None)
        with self._lock:
            self.connections[conn.id] = conn
        return conn

    def disconnect(self, conn: Connection, now_s: float | None = None) -> None:
        """The connection closed: its clients with no other connection are checked now."""
        now_s = time.monotonic() if now_s is None else now_s
        with self._lock:
            self.connections.pop(conn.id, None)
            self._acks_due.pop(conn.id, None)
            if conn.awaiting:
                for sid in [sid for sid, (c, _) in self._ack_of.items() if c is conn]:
                    del self._ack_of[sid]
                conn.awaiting = 0
            for key in conn.keys:
                client = self._clients.get(key)
                if client is None:
                    continue
                client.connections.discard(conn.id)
                if not client.connections:
                    client.idle_since_s = now_s
        self.sweep(now_s)

    def sweep(self, now_s: float | None = None) -> None:
        """Abandon the running spans of clients that went away; forget old idle clients.

        Called when a connection closes and about once a second by the daemon. Spans of
        a client that only sends over HTTP (no connection to lose) wait for their ends,
        or ``max_span_age_s``, after which the runtime closes them."""
        now_s = time.monotonic() if now_s is None else now_s
        too_old_s = now_s - self.runtime.settings.max_span_age_s - 60.0
        with self._lock:
            for key, client in list(self._clients.items()):
                if client.spans and not client.connections and client.idle_since_s is not None:
                    gone = _process_gone(client.liveness_pid)
                    if gone or (gone is None and now_s - client.idle_since_s > RECONNECT_GRACE_S):
                        self._abandon_client(client, now_s, "client_gone")
                if client.spans and now_s - client.spans_checked_s > 60.0:
                    # Running past max_span_age: the runtime closed them; forget them.
                    client.spans_checked_s = now_s
                    for cid in [
                        cid for cid, (_, start_s, _) in client.spans.items() if start_s < too_old_s
                    ]:
                        _, _, gpus = client.spans.pop(cid)
                        if self.runtime.drives_simulator:
                            self.runtime.end_simulated_load(gpus, now_s)
                        self._remember_abandoned(client, cid)
                if (
                    not client.spans
                    and not client.connections
                    and now_s - client.last_seen_s > FORGET_CLIENT_AFTER_S
                ):
                    del self._clients[key]

    def _abandon_client(self, client: _Client, now_s: float, reason: str) -> None:
        runtime = self.runtime
        for cid, (sid, _start_s, gpus) in client.spans.items():
            runtime.abandon(sid)
            if runtime.drives_simulator:
                runtime.end_simulated_load(gpus, now_s)
            self._remember_abandoned(client, cid)
        self.lost[reason] += len(client.spans)
        client.spans.clear()
        self.abandoned_clients += 1

    @staticmethod
    def _remember_abandoned(client: _Client, cid: int) -> None:
        """A late start or end of this span is ignored: it is counted as lost already."""
        client.abandoned[cid] = None
        if len(client.abandoned) > MAX_ABANDONED_IDS:
            del client.abandoned[next(iter(client.abandoned))]

    # -- batches ---------------------------------------------------------------------
    def check_clock(
        self, batch: Batch, conn: Connection | None, now_s: float, transit_s: float = 0.0
    ) -> None:
        """Refuse a batch whose times are not the daemon's monotonic clock.

        ``monotonic_s`` (the sender's clock when it sent the batch) may not be ahead of
        the daemon's clock, nor behind it by more than ``CLOCK_TOLERANCE_S`` plus
        ``transit_s``; on a connection, the lag is only checked on its first batch (later
        ones may wait in a busy daemon's socket). Span times may not be in the future.
        """
        if conn is not None and conn.clock_refused is not None:
            raise ClockMismatch(conn.clock_refused)
        sent_s = batch.monotonic_s
        latest_s = max(
            itertools.chain((s.start_s for s in batch.starts), (e.end_s for e in batch.ends)),
            default=None,
        )
        newest_s = max(t for t in (sent_s, latest_s, -math.inf) if t is not None)
        ahead_s = newest_s - now_s
        behind_s = now_s - sent_s if sent_s is not None else 0.0
        check_lag = conn is None or not conn.clock_checked
        if ahead_s > CLOCK_TOLERANCE_S or (check_lag and behind_s > CLOCK_TOLERANCE_S + transit_s):
            off_s = ahead_s if ahead_s > CLOCK_TOLERANCE_S else -behind_s
            message = (
                f"the sender's monotonic clock is {off_s:+.3f} s from the daemon's: it runs "
                "in another time namespace (or on another host), so its span times mean "
                "nothing here; its spans are refused. Measure in that process instead "
                "(FOOTPRINT_DAEMON=off) or run the daemon in the same time namespace"
            )
            if conn is not None and sent_s is not None:
                conn.clock_refused = message
            raise ClockMismatch(message)
        if conn is not None and sent_s is not None:
            conn.clock_checked = True

    def refused(self, reason: str, batch: Batch | None = None) -> None:
        """Count a refused batch (and, when it was decoded, its spans as lost)."""
        with self._lock:
            self.protocol_errors[reason] += 1
            if batch is not None and reason == "clock":
                self.lost["clock_mismatch"] += len(batch.starts) + len(batch.ends)

    def apply(self, batch: Batch, conn: Connection | None = None, transit_s: float = 0.0) -> None:
        """Check the clock, then start and end the batch's spans in the runtime.

        ``ClockMismatch`` (counted) when the sender's clock is not the daemon's."""
        try:
            self.check_clock(batch, conn, time.monotonic(), transit_s)
        except ClockMismatch:
            self.refused("clock", batch)
            raise
        stored = self._stored_keys(batch) if batch.session is not None else None
        if batch.ends:
            self._wait_for_room(len(batch.ends))
        if batch.lost:
            for kind, count in batch.lost.items():
                self.runtime.writer.count_loss(kind, count, batch.host, batch.pid)
        acking = conn if batch.ack else None  # the connection its ends are acknowledged on
        now_s = time.monotonic()
        with self._lock:
            client = self._client_of(batch, conn, now_s)
            self.received["batches"] += 1
            self.received["starts"] += len(batch.starts)
            self.received["ends"] += len(batch.ends)
            self._start_spans(client, batch)
            settled_now = self._end_spans(client, batch, stored, acking, now_s)
            if settled_now:
                assert conn is not None
                self._queue_acks(conn, settled_now)
        if settled_now and self.on_ack_due is not None:
            self.on_ack_due()

    def _client_of(self, batch: Batch, conn: Connection | None, now_s: float) -> _Client:
        """(Under ``_lock``.) The batch's client, known from now on on ``conn``."""
        key = (batch.host, batch.pid)
        client = self._clients.get(key)
        if client is None:
            client = self._clients[key] = _Client(key, now_s)
        client.last_seen_s = now_s
        if conn is not None and key not in conn.keys:
            conn.keys.add(key)
            client.connections.add(conn.id)
            client.idle_since_s = None
            # The peer as our pid namespace sees it (None where the kernel cannot
            # name it): the process whose exit closes the connection.
            client.liveness_pid = conn.peer_pid
        return client

    def _start_spans(self, client: _Client, batch: Batch) -> None:
        """(Under ``_lock``.) The batch's starts, into the runtime's in-flight spans."""
        runtime = self.runtime
        spans = client.spans
        for start in batch.starts:
            if start.id in spans:  # sent again after a reconnection: already known
                self.oddities["duplicate_start"] += 1
                continue
            if client.abandoned and start.id in client.abandoned:
                self.oddities["started_after_abandoned"] += 1  # counted as lost already
                continue
            sid = runtime.begin_at(start.start_s, start.gpus)
            if sid is None:  # in flight already at the limit: its end still makes a record
                self.oddities["start_not_tracked"] += 1
                continue
            spans[start.id] = (sid, start.start_s, start.gpus)
            if runtime.drives_simulator:
                runtime.begin_simulated_load(start.gpus, start.start_s)

    def _end_spans(
        self,
        client: _Client,
        batch: Batch,
        stored: set[str] | None,
        acking: Connection | None,
        now_s: float,
    ) -> list[int]:
        """(Under ``_lock``.) The batch's ends, into the runtime's ended queue; the client
        span ids to acknowledge at once (``acking``: ends not taken, settled already)."""
        settled_now: list[int] = []
        for end in batch.ends:
            span_key = None if batch.session is None else f"{batch.session}:{end.span_id}"
            if not self._end_span(client, batch, end, span_key, stored, acking, now_s) and acking:
                settled_now.append(end.span_id)
        return settled_now

    def _end_span(
        self,
        client: _Client,
        batch: Batch,
        end: EndedSpan,
        span_key: str | None,
        stored: set[str] | None,
        acking: Connection | None,
        now_s: float,
    ) -> bool:
        """(Under ``_lock``.) One end: True if taken (its acknowledgement waits for its
        record), False if settled now (one this daemon or a former one has, a late end
        of an abandoned span, or one dropped for want of room: counted)."""
        if client.seen_end(end.span_id, now_s, self.runtime.max_pending):
            self.oddities["duplicate_end"] += 1  # sent again: it has its record
            return False
        if stored and span_key in stored:  # a daemon before this one stored it
            self.oddities["duplicate_end_stored"] += 1
            self._close_stored(client, end)
            return False
        sid = self._span_id_of_end(client, end)
        if sid is None:
            return False
        return self._take_end(sid, batch, end, span_key, acking)

    def _close_stored(self, client: _Client, end: EndedSpan) -> None:
        """A span whose record a former daemon stored: started here too, it is closed,
        never a record."""
        runtime = self.runtime
        entry = client.spans.pop(end.span_id, None)
        if entry is not None:
            runtime.abandon(entry[0])
            if runtime.drives_simulator:
                runtime.end_simulated_load(entry[2], end.end_s)

    def _span_id_of_end(self, client: _Client, end: EndedSpan) -> int | None:
        """The runtime's id of the span ``end`` ends: the one its start was given, or a
        new one (its start never seen); None for a span closed as abandoned (counted)."""
        runtime = self.runtime
        drives = runtime.drives_simulator
        entry = client.spans.pop(end.span_id, None)
        if entry is not None:
            if drives:
                runtime.end_simulated_load(entry[2], end.end_s)
            return entry[0]
        if client.abandoned and end.span_id in client.abandoned:
            del client.abandoned[end.span_id]  # closed as abandoned: counted there
            self.oddities["ended_after_abandoned"] += 1
            return None
        sid = runtime.new_span_id()
        if drives:
            runtime.begin_simulated_load(end.gpus, end.start_s)
            runtime.end_simulated_load(end.gpus, end.end_s)
        return sid

    def _take_end(
        self,
        sid: int,
        batch: Batch,
        end: EndedSpan,
        span_key: str | None,
        acking: Connection | None,
    ) -> bool:
        """Queue the ended span for the runtime's resolver (True), or drop it when the
        queue is full (False: counted, settled)."""
        span = end._replace(span_id=sid, pid=batch.pid, host=batch.host, key=span_key, resent=False)
        taken = self.runtime.queue(span)  # full: counted in dropped_spans, settled
        if taken and acking is not None:
            self._ack_of[sid] = (acking, end.span_id)
            acking.awaiting += 1
        return taken

    def _stored_keys(self, batch: Batch) -> set[str] | None:
        """The keys of the batch's ``resent`` ends that are stored already (one query on
        the runtime's open store, outside the intake's lock); None when there is nothing
        to look up, or the lookup failed (counted: those ends are applied)."""
        keys = [f"{batch.session}:{end.span_id}" for end in batch.ends if end.resent]
        if not keys:
            return None
        store = getattr(self.runtime.writer, "store", None)  # never opened here: the writer's
        try:
            if store is None:
                raise RuntimeError("the database is not open")
            return store.stored_span_keys(keys)
        except Exception as exc:
            with self._lock:
                self.oddities["resent_unchecked"] += len(keys)
                first = not self._lookup_failed
                self._lookup_failed = True
            if first:
                log.warning(
                    "footprint daemon: could not look up whether ends sent again are stored "
                    "already (%s); they are stored, perhaps twice (counted in "
                    "resent_unchecked)",
                    f"{type(exc).__name__}: {exc}".splitlines()[0],
                )
            return None

    def settled(self, span_ids: list[int]) -> None:
        """The runtime's ``on_settled`` (its writer thread): these spans' records are
        written or their loss counted; queue the acknowledgements this makes possible."""
        due = False
        with self._lock:
            ack_of = self._ack_of
            for sid in span_ids:
                entry = ack_of.pop(sid, None)
                if entry is None:
                    continue
                conn, cid = entry
                conn.awaiting -= 1
                self._queue_acks(conn, (cid,))
                due = True
        if due and self.on_ack_due is not None:
            self.on_ack_due()

    def _queue_acks(self, conn: Connection, ids: list[int] | tuple[int, ...]) -> None:
        """(Under ``_lock``.) Client span ids to acknowledge on ``conn``."""
        if conn.id not in self.connections:
            return
        due = self._acks_due.get(conn.id)
        if due is None:
            self._acks_due[conn.id] = (conn, list(ids))
        else:
            due[1].extend(ids)

    def take_acks(self) -> list[tuple[Connection, list[int]]]:
        """The acknowledgements to send now: (connection, its client span ids)."""
        with self._lock:
            due = list(self._acks_due.values())
            self._acks_due.clear()
        return due

    def _wait_for_room(self, count: int) -> None:
        runtime = self.runtime
        if runtime.has_room(count):
            return
        deadline_s = time.monotonic() + BACKPRESSURE_WAIT_S
        self.oddities["backpressure_waits"] += 1
        while not runtime.has_room(count):
            if time.monotonic() >= deadline_s:
                return  # what does not fit is dropped and counted (dropped_spans)
            runtime.request_flush()
            time.sleep(0.01)

    # -- what the metrics and /healthz show -----------------------------------------
    def spans_in_flight(self) -> int:
        return len(self.runtime.inflight)

    def client_count(self) -> int:
        return len(self._clients)


def _process_gone(pid: int | None) -> bool | None:
    """True if no process has ``pid`` (in our namespace), False if one does, None if
    there is no pid to ask about."""
    if not pid:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # exists, another user's
        return False
    except OSError:
        return None
    return False
