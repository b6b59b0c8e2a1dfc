"""Inside a tracked process when a daemon measures the host: queue spans, send batches.

``DaemonClient`` stands where a ``Runtime`` would (``footprint.runtime.lifecycle``), with the same
surface the hot path uses (``ids``, ``now``, ``inflight``, ``ended``, ``max_pending``,
``dropped_spans``, ``drives_simulator``, ``warn_once``), so ``footprint.tracking`` has no
branch: a call costs a dict insert and a deque append, whichever measures.

A thread ("footprint-daemon-client") sends one batch (``footprint.runtime.protocol``)
every ``SEND_PERIOD_S``, or at once on ``flush()``: the starts of the calls running now
that the daemon has not been told about, and the calls that ended (a call that started
and ended between two batches is only sent as an end). Names, tags and token counts are
cleaned here, off the hot path, as the in-process runtime cleans them before storing.

A daemon that is down never blocks or raises in the tracked code: ended calls are kept
(at most ``max_pending_spans``, the ``ended`` queue included; what overflows is counted
in ``stats()["dropped_spans"]``), and the thread reconnects with exponential backoff
(``BACKOFF_MIN_S`` to ``BACKOFF_MAX_S``, reset by an acknowledgement or a connection
that lasted ``STABLE_CONNECTION_S``, not by a connect alone). On every new connection
it sends the starts of all the calls still running, since a daemon that lost the
connection may have closed them. A batch the daemon refuses (it answers ``{"error":
"..."}``) is counted and warned about once. ``shutdown()`` (and the exit flush of a
signal) sends what is left within ``exit_deadline_s``, without waiting for the
acknowledgements (the daemon acknowledges after its next write, 1.4-1.7 s later: every
exit would wait that long); what was not sent is counted in
``stats()["daemon_lost_spans"]`` and logged.

On the Unix socket a sent end is kept until the daemon acknowledges it (``{"acked":
[ids]}``: its record is written or its loss counted), so a daemon killed before it wrote
it gets it again from the next connection, marked ``resent``: a daemon that had it
ignores it, and one that finds its key (``<session>:<id>``, the session drawn once per
process) stored by an earlier daemon acknowledges it without storing it again. Ends of a
batch it refuses (``"refused": [ids]``) are dropped and counted in ``daemon_lost_spans``. Kept
ends count against ``max_pending_spans``. Ends sent but not yet acknowledged when the
process exits are most likely written (the daemon writes every ``flush_interval_s``):
``stats()["daemon_unconfirmed_at_exit"]``. What this process had to drop or clean is
reported in the batches (``lost``) for the daemon's ``losses``.

Over HTTP every batch carries ``Authorization: Bearer TOKEN`` (the daemon refuses spans
without it): ``FOOTPRINT_DAEMON_TOKEN``, else the file ``FOOTPRINT_DAEMON_TOKEN_FILE``
names, else, for a loopback address, the file the daemon writes beside the default socket
(``<socket>.token``), read again at each connection and after a 401.

Locks: the hot path takes none; ``request_flush`` and ``flush_before_exit`` (called from
signal handlers) take none either. A forked child never uses its parent's client
(``footprint.runtime.lifecycle`` drops it); it closes the copy of its socket at once, so the
daemon sees the parent's connection end when the parent's does.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import logging
import math
import os
import secrets
import select
import socket
import stat
import sys
import threading
import time
import weakref
from collections import deque
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from footprint._clock import SYSTEM_CLOCK, Clock
from footprint._sanitize import Cleaner
from footprint.config import Settings
from footprint.runtime import lifecycle
from footprint.runtime.protocol import (
    MAX_BATCH_BYTES,
    MAX_LOSS_COUNT,
    STATUSES,
    default_socket_path,
    encode_batch,
)
from footprint.runtime.spans import BAD_VALUES, EndedSpan, SpanQueue

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
    "record_failed", "invalid_tokens", "sanitized_models", "unserializable_tags", "invalid_ttft",
)  # fmt: skip

log = logging.getLogger("footprint")

SEND_PERIOD_S = 0.02  # a batch this often (starts reach the daemon within one period)
BACKOFF_MIN_S = 0.05  # first retry after a failed connection; doubles up to the max
BACKOFF_MAX_S = 2.0
# The backoff starts again from the minimum once a connection has proved itself: the
# daemon acknowledged something on it, or it lasted this long. A daemon that accepts and
# then closes at once (over its connection cap: "overloaded") so gets ever rarer retries.
STABLE_CONNECTION_S = 5.0
# A connect or send that takes longer: the daemon is stuck, reconnect (it may hold a
# reader up to 2 s for room in its queue: back-pressure, not a failure).
IO_TIMEOUT_S = 5.0
MAX_ENDS_PER_BATCH = 2_000  # also split further to stay under MAX_BATCH_BYTES
MAX_STARTS_PER_BATCH = 5_000
MAX_ERROR_TYPE_CHARS = 200
MAX_GPU_ID_CHARS = 128
RECENTLY_ENDED_S = 1.0  # an ended call still seen in ``inflight`` this long is not started
HTTP_PATH = "/v1/spans"
TOKEN_ENV = "FOOTPRINT_DAEMON_TOKEN"  # sent as "Authorization: Bearer <token>" over HTTP
TOKEN_FILE_ENV = "FOOTPRINT_DAEMON_TOKEN_FILE"  # else the token read from this file
MAX_TOKEN_BYTES = 4096
BUSY = "busy"  # ``probe``: a daemon listens, its backlog is full for now

_clients: weakref.WeakSet[DaemonClient] = weakref.WeakSet()


class Target(NamedTuple):
    """Where spans go: ``kind`` "unix" (``address`` a socket path) or "http" (a URL)."""

    kind: str
    address: str

    @classmethod
    def of(cls, setting: str) -> Target:
        return cls("http" if setting.startswith("http://") else "unix", setting)


class Choice(NamedTuple):
    """What ``choose`` decided: a target (None: measure in-process), the connection the
    probe opened (kept), and why a daemon that seems to be there is not used."""

    target: Target | None
    sock: socket.socket | None = None
    note: str | None = None


def choose(settings: Settings, environ: dict[str, str] | None = None) -> Choice:
    """Where this process's spans go, from the ``daemon`` setting.

    ``off``: in-process. A socket path or URL: the daemon, always (one that is down is
    retried; spans are kept meanwhile, within bounds). ``auto``: the daemon if one
    accepts connections at ``default_socket_path()`` (a non-blocking connect, tens of
    µs), else in-process; simulated GPUs are always measured in-process under ``auto``,
    since the tracked calls drive them.
    """
    daemon = settings.daemon or "auto"
    if daemon == "off":
        return Choice(None)
    if daemon != "auto":
        return Choice(Target.of(daemon))
    if settings.sensor.partition(":")[0] == "simulated":
        return Choice(None)
    path = str(default_socket_path(environ))
    sock, note = probe(path)
    if sock is not None or note == BUSY:
        return Choice(Target("unix", path), sock)
    return Choice(None, note=note)


def probe(path: str) -> tuple[socket.socket | None, str | None]:
    """A non-blocking connect to a Unix socket: (the connected socket, None) when a
    daemon accepts; (None, "busy") when one listens with a full backlog; (None, None)
    when nothing listens; (None, reason) when one listens that this process may not use.
    """
    if not hasattr(socket, "AF_UNIX"):
        return None, None
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    except OSError:
        return None, None
    try:
        sock.setblocking(False)
        err = sock.connect_ex(path)
    except (OSError, ValueError):
        sock.close()
        return None, None
    if err == 0:
        sock.setblocking(True)
        return sock, None
    sock.close()
    if err in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINPROGRESS):
        return None, BUSY
    if err in (errno.EACCES, errno.EPERM):
        return None, (
            f"footprint: a footprint daemon listens at {path} but this process may not "
            f"connect to it ({os.strerror(err)}); measuring in-process, so this GPU's "
            "energy is counted by both. Fix the socket's permissions or set daemon=off."
        )
    return None, None  # ENOENT, ECONNREFUSED (a stale socket), ENOTDIR, ...


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
    ) -> None:
        # One id space per process: a new client (configure()) goes on from the last id.
        # No journal: the daemon acknowledges what it stored.
        super().__init__(clock, settings.max_pending_spans, ids=_SPAN_IDS)
        self.settings = settings
        self._limit = settings.max_pending_spans  # ``max_pending``: lowered while ends wait
        if target is None:  # auto or off given: the default socket
            daemon = settings.daemon
            explicit = daemon not in ("auto", "off")
            target = Target.of(daemon) if explicit else Target("unix", str(default_socket_path()))
        self.target = target
        self.pid = os.getpid()
        self.host = (socket.gethostname() or "localhost")[:255]
        self.session = _SESSION
        # Sender state (its thread only).
        self._unsent: deque[dict[str, Any]] = deque()  # cleaned ends, oldest first
        self._unacked: dict[int, dict[str, Any]] = {}  # sent, not acknowledged (sent order)
        self._losses_sent: dict[str, int] = {}  # loss counts the daemon was sent
        self._started_sent: set[int] = set()  # running calls whose start was sent
        self._recently_ended: dict[int, float] = {}  # id -> when drained (in order)
        self._sock: socket.socket | None = sock
        self._http: Any = None  # an http.client.HTTPConnection (imported when needed)
        self._headers = {"Content-Type": "application/json"}
        self._token_path: str | None = None  # read at each connection (HTTP)
        if self.target.kind == "http":
            import http.client  # noqa: F401  (here: the sender thread never imports)

            self._token_path = token_file(self.target.address)
        if sock is not None:
            sock.settimeout(IO_TIMEOUT_S)
        self._connected = sock is not None
        self._was_connected = self._connected
        self._backoff_s = BACKOFF_MIN_S
        self._next_attempt_s = 0.0
        self._connected_at_s = time.monotonic()
        self._down_since_s: float | None = None  # unreachable since (monotonic)
        self._replies = b""
        self._poller: Any = None  # readable replies on the Unix socket
        self._final_end_s: float | None = None  # set by shutdown: every I/O ends by then
        if sock is not None:
            self._watch(sock)
        self._gpus_cache: dict[tuple, list] = {}
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
        self._clean = Cleaner(self._count_bad)
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
            if done and not self.ended and not self._unsent:
                return True
        return not self.ended and not self._unsent

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
        self._final_end_s = end_s
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
            "pending_spans": len(self.ended) + len(self._unsent),
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
            "daemon_connected": int(self._connected),
            "spans_confirmed": self.confirmed_spans,
            "spans_unconfirmed": len(self._unacked),
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
        if not self._connected:
            if not self._unsent and (final or not self.inflight):
                return  # nothing to tell the daemon
            if not self._connect(connect_now):
                return
        starts = [] if final else self._new_starts()
        if starts or self._unsent or (self._connected and self._loss_delta()):
            self._send(starts)
        if self._connected and self.target.kind == "unix":
            self._read_replies()

    def _final(self, end_s: float) -> None:
        """At shutdown: send every ended span, retrying until ``end_s``, unless the daemon
        has been unreachable for longer than that already: then one more try, so that a
        process whose daemon is gone does not wait at every exit."""
        if self._finished:
            return
        down_s = self._down_since_s
        retry = down_s is None or time.monotonic() - down_s < self.settings.exit_deadline_s
        try:
            while True:
                self._rounds_begun += 1
                try:
                    self._round(connect_now=True, final=True)
                finally:
                    self._rounds_done = self._rounds_begun
                if not self._unsent and not self.ended:
                    break
                now_s = time.monotonic()
                if now_s >= end_s or not retry:
                    break
                time.sleep(max(0.001, min(self._next_attempt_s, end_s) - now_s))
        except Exception as exc:  # at exit: say so, never raise into atexit
            log.warning("footprint: could not send the last spans to the daemon: %r", exc)
        finally:
            self._finished = True
            self._close()

    def _account_exit(self, gave_up: bool) -> None:
        running = len(self.inflight)
        self.running_at_exit += running
        self.unconfirmed_at_exit = len(self._unacked)
        unsent = len(self._unsent) + len(self.ended)
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
        """Ended calls -> cleaned ``_unsent`` entries, within ``max_pending_spans``."""
        ended, unsent, recent = self.ended, self._unsent, self._recently_ended
        now_s = time.monotonic()
        while recent:  # oldest first: forget those seen long ago
            first = next(iter(recent))
            if now_s - recent[first] < RECENTLY_ENDED_S:
                break
            del recent[first]
        room = self._limit - len(unsent) - len(self._unacked)
        while ended and room > 0:
            span = ended.popleft()
            recent[span.span_id] = now_s
            self._started_sent.discard(span.span_id)
            try:
                unsent.append(self._end_entry(span))
                room -= 1
            except Exception as exc:  # one odd span never takes the others with it
                self.lost_spans += 1
                self._count_bad("record_failed", 1)
                self.warn_once("record", f"footprint: could not encode a span: {exc!r}")
        self._set_max_pending()

    def _set_max_pending(self) -> None:
        self.max_pending = max(0, self._limit - len(self._unsent) - len(self._unacked))

    def _new_starts(self) -> list[dict[str, Any]]:
        """Running calls the daemon has not been told about (in start order)."""
        inflight = dict(self.inflight)  # one C-level copy: consistent under the GIL
        sent, recent = self._started_sent, self._recently_ended
        if len(sent) > len(inflight):
            sent.intersection_update(inflight)
        return [
            {"id": span_id, "start_s": start_s, "gpus": self._gpus(gpus)}
            for span_id, (start_s, gpus) in inflight.items()
            if span_id not in sent and span_id not in recent
        ]

    def _end_entry(self, span: EndedSpan) -> dict[str, Any]:
        start_s, end_s, ttft_s = span.start_s, span.end_s, span.ttft_s
        if ttft_s is not None and not (math.isfinite(ttft_s) and ttft_s >= 0):
            ttft_s = None
        status = span.status if span.status in STATUSES else "error"
        error_type = span.error_type
        if error_type is not None:
            error_type = str(error_type)[:MAX_ERROR_TYPE_CHARS]
        return {
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
            "gpus": self._gpus(span.gpus),
        }

    def _gpus(self, gpus: tuple | None) -> list | None:
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
                self.warn_once(
                    "gpu-ids",
                    f"footprint: a call named GPU ids the daemon cannot take ({list(gpus)!r}: "
                    f"indices >= 0 or UUIDs of at most {MAX_GPU_ID_CHARS} characters); they "
                    "are left out of its span",
                )
            if len(self._gpus_cache) >= 4096:
                self._gpus_cache.clear()
            self._gpus_cache[gpus] = known
        return known

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
        unsent = self._unsent
        acked = self.target.kind == "unix"  # HTTP: a 2xx answer is the acknowledgement
        lost = self._loss_delta()
        while starts or unsent or lost:
            n_starts = min(len(starts), MAX_STARTS_PER_BATCH)
            n_ends = min(len(unsent), MAX_ENDS_PER_BATCH)
            while True:
                ends = list(itertools.islice(unsent, n_ends))
                data = self._encode(starts[:n_starts], ends, acked, lost)
                if data is not None or n_starts + n_ends <= 1:
                    break
                if n_ends > 1:  # too big (or not JSON): halve, until one span alone
                    n_ends //= 2
                elif n_starts > 1:
                    n_starts //= 2
                else:
                    n_starts = 0
            if data is None:  # one span alone cannot be sent (over 1 MiB of tags?)
                if n_ends:
                    unsent.popleft()
                    self.lost_spans += 1
                    self._count_bad("record_failed", 1)
                    self.warn_once(
                        "oversized",
                        "footprint: a span too large to send to the daemon was dropped "
                        "(counted in stats()['daemon_lost_spans'])",
                    )
                else:
                    starts = starts[1:]  # its end is sent when it ends
                continue
            if not self._write(data):
                # Disconnected: what was not sent stays, for the next connection. A
                # response lost over HTTP may follow a batch the daemon took: its ends
                # go as sent before (the daemon looks them up before storing them).
                for end in ends:
                    end["resent"] = True
                break
            self.sent_batches += 1
            for _ in range(n_ends):
                unsent.popleft()
            for kind, count in lost.items():
                self._losses_sent[kind] = self._losses_sent.get(kind, 0) + count
            if acked:
                for end in ends:
                    self._unacked[end["id"]] = end
            self.sent_spans += n_ends
            self._started_sent.update(start["id"] for start in starts[:n_starts])
            starts = starts[n_starts:]
            lost = {}
        self._set_max_pending()

    def _encode(
        self, starts: list, ends: list, ack: bool = False, lost: dict | None = None
    ) -> bytes | None:
        batch = {"pid": self.pid, "host": self.host, "monotonic_s": self.now(),
                 "session": self.session, "starts": starts, "ends": ends}  # fmt: skip
        if ack and ends:
            batch["ack"] = True
        if lost:
            batch["lost"] = lost
        try:
            data = encode_batch(batch)
        except (TypeError, ValueError, RecursionError):
            return None
        return data if len(data) <= MAX_BATCH_BYTES else None

    def _write(self, data: bytes) -> bool:
        """One batch to the daemon; False (and disconnected) when it did not go."""
        try:
            if self.target.kind == "unix":
                assert self._sock is not None
                self._sock.settimeout(self._io_timeout_s())
                self._sock.sendall(data)
                return True
            return self._post(data)
        except (OSError, _http_error()) as exc:
            self._lost_connection(exc)
            return False

    def _post(self, data: bytes) -> bool:
        conn = self._http
        assert conn is not None
        conn.timeout = self._io_timeout_s()
        if conn.sock is not None:
            conn.sock.settimeout(conn.timeout)
        conn.request("POST", HTTP_PATH, body=data, headers=self._headers)
        response = conn.getresponse()
        body = response.read()  # a closing response closes it; the next request reopens
        if response.status >= 500:
            raise OSError(f"HTTP {response.status} from the daemon")
        if response.status >= 400:
            if response.status == 401:  # a token made since, or changed: read it again
                self._load_token()
            self._refused(body)
        else:
            self._backoff_s = BACKOFF_MIN_S  # the daemon took a batch
        return True

    def _load_token(self) -> None:
        """The bearer token for HTTP: ``FOOTPRINT_DAEMON_TOKEN``, else the token file."""
        token = os.environ.get(TOKEN_ENV) or (
            read_token(self._token_path) if self._token_path else None
        )
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        else:
            self._headers.pop("Authorization", None)

    def _read_replies(self) -> None:
        """Lines the daemon wrote back (non-blocking); EOF: it went away."""
        sock, poller = self._sock, self._poller
        if sock is None or poller is None:
            return
        while True:
            try:
                if not poller.poll(0):  # recv on a socket with a timeout would wait
                    return
                chunk = sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._lost_connection(exc)
                return
            if not chunk:
                self._lost_connection(ConnectionResetError("the daemon closed the connection"))
                return
            self._take_replies(chunk)

    def _take_replies(self, chunk: bytes) -> None:
        """Apply the complete reply lines: acknowledgements and refusals."""
        self._replies += chunk
        *lines, self._replies = self._replies.split(b"\n")
        if len(self._replies) > 65536:
            self._replies = b""
        for line in lines:
            if line.startswith(b'{"acked":'):
                self._acknowledged(line)
            elif line.strip():
                self._refused(line)

    def _acknowledged(self, line: bytes) -> None:
        """``{"acked": [ids]}``: the daemon wrote these ends (or counted them lost)."""
        try:
            ids = json.loads(line)["acked"]
        except (ValueError, KeyError, TypeError):
            return
        unacked = self._unacked
        for span_id in ids if isinstance(ids, list) else ():
            if unacked.pop(span_id, None) is not None:
                self.confirmed_spans += 1
                self._backoff_s = BACKOFF_MIN_S
        self._set_max_pending()

    def _requeue_unacked(self) -> None:
        """The connection is gone: what it did not acknowledge goes again, first, marked
        ``resent``: the daemon may have stored it before it went (its acknowledgement
        lost), so the next one looks it up before storing it."""
        if self._unacked:
            for end in self._unacked.values():
                end["resent"] = True
            self._unsent.extendleft(reversed(self._unacked.values()))
            self.resent_spans += len(self._unacked)
            self._unacked.clear()

    def _read_last_replies(self) -> None:
        """Acknowledgements a daemon sent before it went away (still in our buffer)."""
        sock = self._sock
        if sock is None:
            return
        with contextlib.suppress(OSError):
            sock.setblocking(False)
            while chunk := sock.recv(65536):
                self._take_replies(chunk)

    def _refused(self, body: bytes) -> None:
        self.refused_batches += 1
        try:
            reply = json.loads(body)
            message = str(reply.get("error"))[:500]
            if reply.get("reason"):
                message += f" [{reply['reason']}]"
            refused = reply.get("refused")
            for span_id in refused if isinstance(refused, list) else ():
                if self._unacked.pop(span_id, None) is not None:
                    self.lost_spans += 1  # the daemon counted them too
            self._set_max_pending()
        except Exception:
            message = body[:200].decode("utf-8", "replace")
        self.warn_once(
            "daemon-refused",
            f"footprint: the footprint daemon at {self.target.address} refused a batch of "
            f"spans: {message} (counted in stats()['daemon_refused_batches'])",
        )

    # -- the connection ---------------------------------------------------------------
    def _connect(self, now: bool) -> bool:
        mono = time.monotonic()
        if not now and mono < self._next_attempt_s:
            return False
        try:
            if self.target.kind == "unix":
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(self._io_timeout_s())
                try:
                    sock.connect(self.target.address)
                except BaseException:
                    sock.close()
                    raise
                self._sock = sock
                self._watch(sock)
            else:
                self._load_token()
                parts = urlsplit(self.target.address)
                conn = sys.modules["http.client"].HTTPConnection(
                    parts.hostname or "localhost", parts.port or 80, timeout=self._io_timeout_s()
                )
                conn.connect()
                self._http = conn
        except (OSError, ValueError, _http_error()) as exc:
            self.connect_failures += 1
            if self._down_since_s is None:
                self._down_since_s = mono
            self._next_attempt_s = mono + self._backoff_s
            self._backoff_s = min(self._backoff_s * 2, BACKOFF_MAX_S)
            self.warn_once(
                "daemon-down",
                f"footprint: cannot reach the footprint daemon at {self.target.address} "
                f"({exc}); keeping up to {self._limit:,} ended calls and retrying (every "
                f"{BACKOFF_MAX_S:g} s at most); what overflows is counted in "
                "stats()['dropped_spans']",
            )
            return False
        self._connected = True
        self._down_since_s = None
        if self._was_connected:
            self.reconnects += 1
        self._was_connected = True
        self._connected_at_s = mono
        self._started_sent.clear()  # tell the daemon about every running call again
        self._replies = b""
        return True

    def _watch(self, sock: socket.socket) -> None:
        self._poller = select.poll()
        self._poller.register(sock, select.POLLIN)

    def _io_timeout_s(self) -> float:
        """``IO_TIMEOUT_S``, or what is left before the exit deadline when shutting down."""
        end_s = self._final_end_s
        if end_s is None:
            return IO_TIMEOUT_S
        return max(0.01, min(IO_TIMEOUT_S, end_s - time.monotonic()))

    def _lost_connection(self, exc: BaseException) -> None:
        if self._unacked:
            self._read_last_replies()
        self._close()
        self._requeue_unacked()
        now_s = time.monotonic()
        if self._connected and now_s - self._connected_at_s >= STABLE_CONNECTION_S:
            self._backoff_s = BACKOFF_MIN_S
        self._connected = False
        self._started_sent.clear()
        if self._down_since_s is None:
            self._down_since_s = now_s
        self._next_attempt_s = now_s + self._backoff_s
        self._backoff_s = min(self._backoff_s * 2, BACKOFF_MAX_S)
        self.warn_once(
            "daemon-lost",
            f"footprint: lost the connection to the footprint daemon at {self.target.address} "
            f"({exc}); keeping ended calls and reconnecting",
        )

    def _close(self) -> None:
        sock, self._sock = self._sock, None
        self._poller = None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()
        conn, self._http = self._http, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()


def token_file(url: str, environ: dict[str, str] | None = None) -> str | None:
    """Where a client posting to ``url`` reads the daemon's token: the file named by
    ``FOOTPRINT_DAEMON_TOKEN_FILE``, else, for a loopback address, the one the daemon
    writes beside the default socket (``<socket>.token``); None: no file (a remote daemon's
    token is only sent when given, never this host's)."""
    env = os.environ if environ is None else environ
    named = env.get(TOKEN_FILE_ENV)
    if named:
        return named
    host = urlsplit(url).hostname or ""
    if host != "localhost":
        import ipaddress

        try:
            if not ipaddress.ip_address(host).is_loopback:
                return None
        except ValueError:
            return None
    return f"{default_socket_path(env)}.token"


def read_token(path: str) -> str | None:
    """The token in ``path`` (a regular file: never waits on a FIFO); None when there is
    none, or what is there is not a token (empty, too long, spaces, not ASCII)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        data = os.read(fd, MAX_TOKEN_BYTES + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    text = data.decode("ascii", "replace").strip()
    if not text or len(data) > MAX_TOKEN_BYTES or not all(" " < c < "\x7f" for c in text):
        return None
    return text


def _http_error() -> type[Exception]:
    """``http.client.HTTPException`` once http.client is in use (imported lazily: it
    costs ~10 ms at ``import footprint``), else an exception nothing raises."""
    module = sys.modules.get("http.client")
    return module.HTTPException if module is not None else _NeverRaised


class _NeverRaised(Exception):
    pass


def _after_fork_in_child() -> None:
    """Close the child's copies of its parent's connections (never used here), so the
    daemon sees a connection end when the process that made it ends; draw the child's own
    session (it goes on with its parent's span ids: its keys must differ)."""
    global _SESSION
    _SESSION = secrets.token_hex(16)
    for client in list(_clients):
        for sock in (client._sock, getattr(client._http, "sock", None)):
            if sock is None:
                continue
            with contextlib.suppress(Exception):
                fd = sock.detach()
                if fd >= 0:
                    os.close(fd)


lifecycle.at_fork_child(_after_fork_in_child)
