"""Inside a tracked process when a daemon measures the host: queue spans, send batches.

``DaemonClient`` stands where a ``Runtime`` would (``footprint.runtime.lifecycle``), with the same
surface the hot path uses (``ids``, ``now``, ``inflight``, ``ended``, ``max_pending``,
``dropped_spans``, ``drives_simulator``, ``warn_once``), so ``footprint.tracking`` has no
branch: a call costs a dict insert and a deque append, whichever measures.

A thread ("footprint-daemon-client") sends one batch (``footprint.runtime.protocol``)
every ``SEND_PERIOD_S``, or at once on ``flush()``: the starts of the calls running now
that the daemon has not been told about, and the calls that ended (a call that started
and ended between two batches is only sent as an end), cleaned off the hot path
(``footprint.runtime.outbox``), over a ``footprint.runtime.transport`` (Unix socket, HTTP).

A daemon that is down never blocks or raises in the tracked code: ended calls are kept
(at most ``max_pending_spans``, the ``ended`` queue included; what overflows is counted
in ``stats()["dropped_spans"]``), and the transport reconnects with exponential backoff.
On every new connection it sends the starts of all the calls still running, since a
daemon that lost the connection may have closed them. A batch the daemon refuses (it
answers ``{"error": "..."}``) is counted and warned about once. ``shutdown()`` (and the
exit flush of a signal) sends what is left within ``exit_deadline_s``, without waiting for
the acknowledgements (the daemon acknowledges after its next write, 1.4-1.7 s later: every
exit would wait that long); what was not sent is counted in
``stats()["daemon_lost_spans"]`` and logged.

Where the daemon acknowledges ends (the Unix socket), a sent end is kept until it does
(``footprint.runtime.acks``) and sent again, marked ``resent``, on the next connection: a
daemon that had it ignores it, and one that finds its key (``<session>:<id>``, the
session drawn once per process) stored by an earlier daemon acknowledges it without
storing it again. Ends of a batch it refuses are dropped and counted in
``daemon_lost_spans``. Kept ends count against ``max_pending_spans``. Ends sent but not
yet acknowledged when the process exits are most likely written (the daemon writes every
``flush_interval_s``): ``stats()["daemon_unconfirmed_at_exit"]``. What this process had to
drop or clean is reported in the batches (``lost``) for the daemon's ``losses``.

Locks: the hot path takes none; ``request_flush`` and ``flush_before_exit`` (called from
signal handlers) take none either. A forked child never uses its parent's client
(``footprint.runtime.lifecycle`` drops it); it closes the copy of its socket at once, so the
daemon sees the parent's connection end when the parent's does.
"""

from __future__ import annotations

import itertools
import logging
import os
import secrets
import socket
import threading
import time
import weakref
from functools import partial
from typing import Any

from footprint._clock import SYSTEM_CLOCK, Clock
from footprint.config import Settings
from footprint.runtime import lifecycle
from footprint.runtime.acks import AckLedger, Answer
from footprint.runtime.discovery import Target, default_target
from footprint.runtime.outbox import Outbox
from footprint.runtime.protocol import MAX_BATCH_BYTES, MAX_LOSS_COUNT, encode_batch
from footprint.runtime.spans import BAD_VALUES, SpanQueue
from footprint.runtime.transport import BACKOFF_MAX_S, Outcome, Reply, Transport, transport_for

__all__ = ["DaemonClient"]

# Span ids of every client of this process: a client started again by configure() must
# not reuse its predecessor's ids, which the daemon keeps (per host and pid) to ignore
# duplicates.
_SPAN_IDS = itertools.count()
# This process's session (``session`` of a batch): with a span id, the key of its record
# (``queries.span_key``), unique per process life since the ids above are; a forked child
# (which goes on counting from its parent's ids) draws its own (``_after_fork_in_child``).
_SESSION = secrets.token_hex(16)

# stats() counters reported to the daemon's ``losses`` (``lost`` of a batch), by kind.
_LOSS_COUNTERS = (
    "record_failed",
    "invalid_tokens",
    "sanitized_models",
    "unserializable_tags",
    "invalid_ttft",
)

log = logging.getLogger("footprint")

SEND_PERIOD_S = 0.02  # a batch this often (starts reach the daemon within one period)

_clients: weakref.WeakSet[DaemonClient] = weakref.WeakSet()


class DaemonClient(SpanQueue):
    """Queues this process's spans and sends them to the daemon in batches."""

    drives_simulator = False  # the daemon's sensors measure; nothing to drive here

    def __init__(
        self,
        settings: Settings,
        clock: Clock = SYSTEM_CLOCK,
        target: Target | None = None,
        *,
        sock: socket.socket | None = None,
        transport: Transport | None = None,
    ) -> None:
        """``target`` None: the ``daemon`` setting's, else the default socket; ``sock``: a
        connection to it ``choose`` opened; ``transport``: one made already (tests)."""
        # One id space per process: a new client (configure()) goes on from the last id.
        # No journal: the daemon acknowledges what it stored.
        super().__init__(clock, settings.max_pending_spans, ids=_SPAN_IDS)
        self.settings = settings
        self._limit = settings.max_pending_spans  # ``max_pending``: lowered while ends wait
        if transport is None:
            transport = transport_for(target or default_target(settings), sock, settings)
        self.transport = transport
        self.target = transport.target
        self.pid = os.getpid()
        self.host = (socket.gethostname() or "localhost")[:255]
        self.session = _SESSION
        # Sender state (its thread only).
        self._outbox = Outbox(self._count_bad, self.warn_once)  # ends unsent, starts sent
        self._acks = AckLedger()  # sent, not acknowledged
        self._losses_sent: dict[str, int] = {}  # loss counts the daemon was sent
        self._was_connected = transport.connected
        self._final_end_s: float | None = None  # set by shutdown: every I/O ends by then
        # Counters.
        self.sent_spans = 0
        self.sent_batches = 0
        self.refused_batches = 0
        self.lost_spans = 0
        self.confirmed_spans = 0
        self.resent_spans = 0
        self.unconfirmed_at_exit = 0
        self.connect_failures = 0
        self.reconnects = 0
        self.running_at_exit = 0
        # Control, lock-free for signal handlers: see ``request_flush``.
        self._urgent_until_s = 0.0
        self._rounds_begun = 0
        self._rounds_done = 0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._finished = False
        self._exit_flush_started = False
        _clients.add(self)

    # -- the surface the life cycle uses ---------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name="footprint-daemon-client", daemon=True
        )
        self._thread.start()

    def request_flush(self) -> None:
        """Send everything now (within one send period), without waiting. Lock-free:
        called from signal handlers."""
        self._urgent_until_s = time.monotonic() + self.settings.exit_deadline_s

    def flush(self) -> int:
        """Send every span that has ended; returns how many the daemon was sent.

        Waits for one full send (bounded by ``exit_deadline_s``). The daemon writes the
        records on its own schedule: they are in the database after its next flush.
        """
        before = self.sent_spans
        if self._thread is None or not self._thread.is_alive():
            if not self._finished:
                self._round(connect_now=True)
            return self.sent_spans - before
        self._wait_for_round(self.settings.exit_deadline_s, wake=True)
        return self.sent_spans - before

    def flush_before_exit(self, deadline_s: float) -> bool:
        """Send what has ended, waiting up to ``deadline_s``; True if nothing is left.

        For a signal whose default action ends the process (lock-free). A second call
        while the first waits returns at once."""
        if self._exit_flush_started:
            return False
        self._exit_flush_started = True
        if self._thread is None or not self._thread.is_alive():
            return False
        end_s = time.monotonic() + deadline_s
        self.request_flush()
        while time.monotonic() < end_s:
            done = self._wait_for_round(end_s - time.monotonic(), wake=False)
            if done and not self.ended and not self._outbox.unsent:
                return True
        return not self.ended and not self._outbox.unsent

    def _wait_for_round(self, timeout_s: float, wake: bool) -> bool:
        """Wait until a send round that began after now has completed (polling)."""
        self._urgent_until_s = time.monotonic() + max(timeout_s, 0.0)
        target = self._rounds_begun + 1
        if wake:
            self._wake.set()
        end_s = time.monotonic() + timeout_s
        while self._rounds_done < target:
            if time.monotonic() >= end_s or self._stop.is_set():
                return False
            time.sleep(0.001)
        return True

    def shutdown(self) -> None:
        """Send what is left within ``exit_deadline_s``; count the rest as lost (logged).

        Calls still running are not sent (the daemon closes those it was told about
        when the connection ends); they are counted in ``running_at_exit``."""
        if self._stop.is_set():
            return
        deadline_s = self.settings.exit_deadline_s
        end_s = time.monotonic() + deadline_s
        self._final_end_s = self.transport.deadline_s = end_s
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread.is_alive():
            thread.join(deadline_s + 0.5)  # its I/O is bounded by the deadline too
            if thread.is_alive():
                self._account_exit(gave_up=True)
                return
        else:
            self._final(end_s)
        self._account_exit(gave_up=False)

    def stats(self) -> dict[str, int]:
        """Counters a user can check: nothing is dropped silently. ``records_written``:
        the ends the daemon acknowledged as stored (or counted lost); ``lost_spans``:
        those not sent, or refused by it."""
        return {
            # The core every mode has (``footprint.runtime.spans.CORE_STATS``):
            "records_written": self.confirmed_spans,
            "pending_spans": len(self.ended) + len(self._outbox.unsent),
            "running_spans": len(self.inflight),
            "dropped_spans": self.dropped_spans,
            "lost_spans": self.lost_spans,
            "running_at_exit": self.running_at_exit,
            "record_failed": self.bad_values.get("record_failed", 0),
            **{kind: self.bad_values.get(kind, 0) for kind in BAD_VALUES},
            # This mode's own:
            "spans_sent": self.sent_spans,
            "batches_sent": self.sent_batches,
            "daemon_lost_spans": self.lost_spans,
            "daemon_refused_batches": self.refused_batches,
            "daemon_connect_failures": self.connect_failures,
            "daemon_reconnects": self.reconnects,
            "daemon_connected": int(self.transport.connected),
            "spans_confirmed": self.confirmed_spans,
            "spans_unconfirmed": len(self._acks),
            "daemon_resent_spans": self.resent_spans,
            "daemon_unconfirmed_at_exit": self.unconfirmed_at_exit,
        }

    # -- the sender thread ------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(SEND_PERIOD_S)
            self._wake.clear()
            if self._stop.is_set():
                break
            self._rounds_begun += 1
            try:
                self._round(connect_now=time.monotonic() < self._urgent_until_s)
            except Exception as exc:  # never let the sender die silently
                self.warn_once("client", f"footprint: internal error in the daemon client: {exc!r}")
            finally:
                self._rounds_done = self._rounds_begun
        end_s = self._final_end_s
        self._final(end_s if end_s is not None else time.monotonic() + 1.0)

    def _round(self, connect_now: bool = False, final: bool = False) -> None:
        self._drain()
        transport = self.transport
        if not transport.connected:
            if not self._outbox.unsent and (final or not self.inflight):
                return  # nothing to tell the daemon
            if not self._connect(connect_now):
                return
        starts = [] if final else self._outbox.new_starts(self.inflight)
        if starts or self._outbox.unsent or (transport.connected and self._loss_delta()):
            self._send(starts)
        if transport.connected:
            self._take(transport.receive())

    def _final(self, end_s: float) -> None:
        """At shutdown: send every ended span, retrying until ``end_s``, unless the daemon
        has been unreachable for longer than that already: then one more try, so that a
        process whose daemon is gone does not wait at every exit."""
        if self._finished:
            return
        backoff = self.transport.backoff
        down_s = backoff.down_since_s
        retry = down_s is None or time.monotonic() - down_s < self.settings.exit_deadline_s
        try:
            while True:
                self._rounds_begun += 1
                try:
                    self._round(connect_now=True, final=True)
                finally:
                    self._rounds_done = self._rounds_begun
                if not self._outbox.unsent and not self.ended:
                    break
                now_s = time.monotonic()
                if now_s >= end_s or not retry:
                    break
                time.sleep(max(0.001, min(backoff.next_attempt_s, end_s) - now_s))
        except Exception as exc:  # at exit: say so, never raise into atexit
            log.warning("footprint: could not send the last spans to the daemon: %r", exc)
        finally:
            self._finished = True
            self.transport.close()

    def _account_exit(self, gave_up: bool) -> None:
        running = len(self.inflight)
        self.running_at_exit += running
        self.unconfirmed_at_exit = len(self._acks)
        unsent = len(self._outbox.unsent) + len(self.ended)
        self.lost_spans += unsent
        if unsent or self.dropped_spans:
            log.warning(
                "footprint: %d spans were not sent to the footprint daemon at %s before the "
                "exit deadline of %g s%s, and %d were dropped while it could not take them; "
                "they are lost (stats()['daemon_lost_spans'], stats()['dropped_spans'])",
                unsent,
                self.target.address,
                self.settings.exit_deadline_s,
                " (a send was still stuck)" if gave_up else "",
                self.dropped_spans,
            )

    # -- what to send -----------------------------------------------------------------
    def _drain(self) -> None:
        """Ended calls -> cleaned unsent entries, within ``max_pending_spans``."""
        room = self._limit - len(self._outbox.unsent) - len(self._acks)
        self.lost_spans += self._outbox.take(self.ended, room)
        self._set_max_pending()

    def _set_max_pending(self) -> None:
        self.max_pending = max(0, self._limit - len(self._outbox.unsent) - len(self._acks))

    # -- sending ----------------------------------------------------------------------
    def _loss_delta(self) -> dict[str, int]:
        """Loss counts not yet sent to the daemon."""
        counts = {"span_queue_full": self.dropped_spans}
        for kind in _LOSS_COUNTERS:
            counts[kind] = self.bad_values.get(kind, 0)
        sent = self._losses_sent
        # What is over the daemon's bound per batch goes in the next ones.
        return {
            k: min(n - sent.get(k, 0), MAX_LOSS_COUNT - 1)
            for k, n in counts.items()
            if n > sent.get(k, 0)
        }

    def _send(self, starts: list[dict[str, Any]]) -> None:
        """Every start given and every unsent end, in batches under the size limits."""
        unsent = self._outbox.unsent
        acked = self.transport.acknowledges  # else the answer is the acknowledgement
        lost = self._loss_delta()
        while starts or unsent or lost:
            batch = self._outbox.next_batch(starts, partial(self._encode, ack=acked, lost=lost))
            if batch is None:  # one span alone cannot be sent (over 1 MiB of tags?)
                if unsent:
                    self._drop_oversized()
                else:
                    starts = starts[1:]  # its end is sent when it ends
                continue
            if not self._write(batch.data, batch.ends):
                break
            self.sent_batches += 1
            for _ in batch.ends:
                unsent.popleft()
            for kind, count in lost.items():
                self._losses_sent[kind] = self._losses_sent.get(kind, 0) + count
            if acked:
                self._acks.sent(batch.ends)
            self.sent_spans += len(batch.ends)
            self._outbox.started_sent.update(start["id"] for start in starts[: batch.n_starts])
            starts = starts[batch.n_starts :]
            lost = {}
        self._set_max_pending()

    def _drop_oversized(self) -> None:
        self._outbox.unsent.popleft()
        self.lost_spans += 1
        self._count_bad("record_failed", 1)
        self.warn_once(
            "oversized",
            "footprint: a span too large to send to the daemon was dropped "
            "(counted in stats()['daemon_lost_spans'])",
        )

    def _encode(
        self, starts: list, ends: list, ack: bool = False, lost: dict | None = None
    ) -> bytes | None:
        batch = {
            "pid": self.pid,
            "host": self.host,
            "monotonic_s": self.now(),
            "session": self.session,
            "starts": starts,
            "ends": ends,
        }
        if ack and ends:
            batch["ack"] = True
        if lost:
            batch["lost"] = lost
        try:
            data = encode_batch(batch)
        except (TypeError, ValueError, RecursionError):
            return None
        return data if len(data) <= MAX_BATCH_BYTES else None

    def _write(self, data: bytes, ends: list[dict[str, Any]]) -> bool:
        """One batch to the daemon; False (and disconnected) when it did not go."""
        outcome = self.transport.send(data)
        if outcome.error is not None:
            # What was not sent stays, for the next connection. A response lost over HTTP
            # may follow a batch the daemon took: its ends go as sent before (the daemon
            # looks them up before storing them).
            for end in ends:
                end["resent"] = True
        self._take(outcome)
        return outcome.error is None

    # -- the daemon's answers ---------------------------------------------------------
    def _take(self, outcome: Outcome) -> None:
        """Apply the replies read, then the loss of the connection if there was one."""
        self._take_replies(outcome.replies)
        if outcome.error is not None:
            self._lost_connection(outcome.error)

    def _take_replies(self, replies: tuple[Reply, ...]) -> None:
        for reply in replies:
            answer = self._acks.take(reply)
            if answer.confirmed:
                self.confirmed_spans += answer.confirmed
                self.transport.proven()
            if answer.refusal is not None:
                self._refused(answer)
            self._set_max_pending()

    def _refused(self, answer: Answer) -> None:
        self.refused_batches += 1
        self.lost_spans += answer.dropped  # the daemon counted them too
        self.warn_once(
            "daemon-refused",
            f"footprint: the footprint daemon at {self.target.address} refused a batch of "
            f"spans: {answer.refusal} (counted in stats()['daemon_refused_batches'])",
        )

    # -- the connection ---------------------------------------------------------------
    def _connect(self, now: bool) -> bool:
        attempt = self.transport.connect(now)
        if attempt.error is not None:
            self.connect_failures += 1
            self.warn_once(
                "daemon-down",
                f"footprint: cannot reach the footprint daemon at {self.target.address} "
                f"({attempt.error}); keeping up to {self._limit:,} ended calls and retrying "
                f"(every {BACKOFF_MAX_S:g} s at most); what overflows is counted in "
                "stats()['dropped_spans']",
            )
        if not attempt.connected:
            return False
        if self._was_connected:
            self.reconnects += 1
        self._was_connected = True
        self._outbox.started_sent.clear()  # tell the daemon about every running call again
        return True

    def _lost_connection(self, exc: BaseException) -> None:
        if self._acks:  # acknowledgements a daemon sent before it went away
            self._take_replies(self.transport.last_replies())
        self.transport.drop()
        self.resent_spans += self._acks.requeue(self._outbox.unsent)
        self._outbox.started_sent.clear()
        self.warn_once(
            "daemon-lost",
            f"footprint: lost the connection to the footprint daemon at {self.target.address} "
            f"({exc}); keeping ended calls and reconnecting",
        )


def _after_fork_in_child() -> None:
    """Close the child's copies of its parent's connections (never used here), so the
    daemon sees a connection end when the process that made it ends; draw the child's own
    session (it goes on with its parent's span ids: its keys must differ)."""
    global _SESSION
    _SESSION = secrets.token_hex(16)
    for client in list(_clients):
        client.transport.forget_after_fork()


lifecycle.at_fork_child(_after_fork_in_child)
