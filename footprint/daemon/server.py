"""``footprint daemon``: the host's one sampler, resolver and store writer.

Worker processes send their span starts and ends (``footprint.runtime.protocol``) over a
Unix socket (or ``POST /v1/spans``); the daemon measures every GPU once and splits its
energy among the spans of all of them, so N processes sharing a GPU no longer count its
energy N times. It serves Prometheus metrics on ``GET /metrics`` and a health check on
``GET /healthz``.

- The Unix socket is 0600 (0660 and the group's with ``--group``), in a directory made
  0700 (0750). One daemon per socket: a lock file beside it (``PATH.lock``) is held for
  the daemon's life; a socket file left by a killed daemon is removed and reused.
- HTTP listens on loopback (``DEFAULT_HTTP``) unless told otherwise; any other address
  needs ``--token``. ``POST /v1/spans`` always wants ``Authorization: Bearer TOKEN``:
  the ``--token`` given, else one generated at the first start into ``PATH.token``
  (0600, beside the socket; reused), where local clients read it. ``/metrics`` wants it
  only when given with ``--token``; ``/healthz`` never. The lock and token files are
  never opened through a symlink (a daemon that finds one there refuses to start).
- SIGTERM/SIGINT: stop accepting, read what clients already sent, resolve and write
  everything that ended, exit 0 (within ``STOP_DEADLINE_S``). SIGHUP: read the settings
  again (footprint.toml, FOOTPRINT_* environment): pricing and the database change at
  once; a different sensor or sampling period needs a restart (logged).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from footprint.daemon.claim import SocketClaim
from footprint.daemon.config import DaemonConfig, StartError, check_config, daemon_settings
from footprint.daemon.http import DaemonHTTPServer, HttpAccess, make_http_server
from footprint.daemon.limits import ConnectionLimits
from footprint.daemon.ratelog import RateLimitedLog
from footprint.daemon.unix import Peer, PeerHandlers, UnixServer
from footprint.pricing.pricer import PRICER_SETTINGS
from footprint.runtime.protocol import (
    Batch,
    ProtocolError,
    decode_batch,
    default_socket_path,
    encode_acks,
    encode_reply,
)

log = logging.getLogger("footprint")

STOP_DEADLINE_S = 5.0  # SIGTERM to exit, at most
# Settings that change what is measured: a new value needs a restart of the daemon.
RESTART_FIELDS = ("sensor", "sampling_period_s", "cpu", "flush_interval_s", "max_pending_spans")


class Daemon:
    """A runtime, the Unix socket and the HTTP server around it."""

    def __init__(self, config: DaemonConfig) -> None:
        self.config = config
        self.http_bind = check_config(config)
        self.settings = daemon_settings(config)
        self.socket_path = Path(config.socket_path or default_socket_path()).absolute()
        self.http_address: tuple[str, int] | None = None
        self.started_s = time.monotonic()
        self.runtime: Any = None
        self.intake: Any = None
        self.limits = ConnectionLimits(config)
        self.limited_log = RateLimitedLog()
        self._claim = SocketClaim(
            self.socket_path,
            config.group,
            token=config.token,
            token_file=self.http_bind is not None,
        )
        handlers = PeerHandlers(
            on_connect=self._connected,
            on_line=self._line,
            on_disconnect=self._disconnected,
            on_refused=self.refused,
            on_wake=self._send_acks,
            on_error=self.internal_error,
        )
        self.unix = UnixServer(self._claim, handlers, self.limits, self.limited_log)
        self._peer_of_conn: dict[int, Peer] = {}  # by intake connection id
        self._http: DaemonHTTPServer | None = None
        self._http_thread: threading.Thread | None = None
        self.stopped = False
        self.internal_errors = 0

    # -- start -----------------------------------------------------------------------
    def start(self) -> None:
        """Claim the socket, bind HTTP, open the runtime, then serve. ``StartError``."""
        self._claim.claim()
        try:
            if self.http_bind is not None:
                self._http = self._make_http(*self.http_bind)
            self._open_runtime()
        except BaseException:
            if self._http is not None:
                self._http.server_close()
            self._claim.release()
            raise
        self.unix.start()
        if self._http is not None:
            self._http_thread = threading.Thread(
                target=self._http.serve_forever,
                kwargs={"poll_interval": 0.5},
                name="footprint-daemon-http",
                daemon=True,
            )
            self._http_thread.start()

    def _make_http(self, host: str, port: int) -> DaemonHTTPServer:
        access = HttpAccess(self._claim.token, self.config.token, self._claim.token_path)
        server = make_http_server(host, port, self, access, self.limits, self.limited_log)
        self.http_address = (host, server.server_address[1])
        return server

    def _open_runtime(self) -> None:
        from footprint.daemon.metrics import (
            DaemonCollector,
            PowerTracker,
            RecordTotals,
            registry,
        )
        from footprint.daemon.spans import SpanIntake
        from footprint.runtime.local import Runtime

        try:
            # Its GPUs are claimed as the daemon's: an in-process measurer is told so.
            runtime = Runtime(self.settings, presence_role="daemon")
        except Exception as exc:
            raise StartError(f"cannot start measuring: {exc}") from None
        try:  # a database that cannot be opened now is said now, not at the first write
            runtime.writer.open_store()
        except Exception as exc:
            with contextlib.suppress(Exception):
                runtime.gpu_sensor.close()
            reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
            raise StartError(f"cannot open the database {self.settings.db}: {reason}") from None
        self.runtime = runtime
        self.intake = SpanIntake(runtime)
        self.intake.on_ack_due = self.unix.wake
        gpu_labels = {d.uuid: str(d.index) for d in runtime.gpu_devices}
        self.totals = RecordTotals(gpu_labels)
        self.power = PowerTracker(len(runtime.gpu_devices))
        self._hook_runtime(runtime)
        collector = DaemonCollector(runtime, self.intake, self.totals, self.power, self.started_s)
        collector.connection_limits = self.limits.snapshot
        collector.health = self.health
        self.registry = registry(collector)
        runtime.start()
        runtime.wait_until_measuring(2.0)

    def _hook_runtime(self, runtime: Any) -> None:
        """Observe the records the runtime writes and the samples it resolves (see the
        module doc of ``footprint.daemon.metrics``) without changing either."""
        runtime.on_records.append(self.totals.observe)
        runtime.on_records.extend(self.config.record_observers)
        runtime.on_gpu_samples.append(self.power.observe)

    # -- the Unix socket's clients (``PeerHandlers``, on its thread) -----------------------
    def _connected(self, peer: Peer) -> None:
        peer.conn = self.intake.connect(peer.pid)
        self._peer_of_conn[peer.conn.id] = peer

    def _disconnected(self, peer: Peer) -> None:
        self._peer_of_conn.pop(peer.conn.id, None)
        self.intake.disconnect(peer.conn)

    def _line(self, peer: Peer, line: bytes) -> None:
        try:
            batch = decode_batch(line)
        except ProtocolError as exc:
            self.refused(exc.reason)
            self.unix.reply(peer, encode_reply(str(exc), exc.reason))
            return
        # The first batch of a connection may have waited since the client connected.
        waited_s = 0.0 if peer.conn.clock_checked else time.monotonic() - peer.connected_after_s
        try:
            self.intake.apply(batch, peer.conn, transit_s=max(0.0, waited_s))
        except ProtocolError as exc:  # counted by the intake
            refused = [e.span_id for e in batch.ends] if batch.ack else None
            self.unix.reply(peer, encode_reply(str(exc), exc.reason, refused))

    def _send_acks(self) -> None:
        for conn, ids in self.intake.take_acks():
            peer = self._peer_of_conn.get(conn.id)
            if peer is not None:
                self.unix.reply(peer, encode_acks(ids))

    # -- what the HTTP server asks (``DaemonApi``) ---------------------------------------
    def health(self) -> dict[str, Any]:
        runtime = self.runtime
        now_s = time.monotonic()
        latest = runtime.gpu_sampler.latest_sample_times_s()
        ages = [now_s - (self.started_s if t is None else t) for t in latest]
        stale_s = max(2.0, 20 * runtime.settings.sampling_period_s)
        worst = max(ages, default=None)
        # status: "ok"; "stale_samples" (alone, as before); else "degraded" (see reasons)
        reasons = [] if worst is None or worst <= stale_s else ["stale_samples"]
        no_gpu = self.no_gpu_message()
        if no_gpu is not None:
            reasons.append("no_gpu")
        reasons += self.limits.reasons(self.unix.open_connections(), now_s)
        status = "ok" if not reasons else reasons[0] if reasons == ["stale_samples"] else "degraded"
        return {
            "status": status,
            "reasons": reasons,
            "message": no_gpu,
            "pid": os.getpid(),
            "uptime_s": round(now_s - self.started_s, 3),
            "socket": str(self.socket_path),
            "connections": len(self.intake.connections),
            "max_connections": self.limits.cap(),
            "clients": self.intake.client_count(),
            "spans_in_flight": len(runtime.inflight),
            "queue_depth": len(runtime.ended) + runtime.writer.buffered,
            "last_sample_age_s": None if worst is None else round(worst, 3),
            "gpus": len(latest),
            "spans_received": dict(self.intake.received),
            "records_written": runtime.writer.written,
            "protocol_errors": sum(self.intake.protocol_errors.values()),
            "stats": runtime.stats(),
        }

    def no_gpu_message(self) -> str | None:
        """Why the daemon measures no GPU (the sensor's reason), or None when it measures
        one: its records then have no energy, which a readiness probe should see."""
        if self.runtime.gpu_devices:
            return None
        reason = getattr(self.runtime.gpu_sensor, "reason", "") or "the sensor found no GPU"
        return f"no GPU measured: {reason}"

    def metrics_text(self) -> bytes:
        from footprint.daemon.metrics import render

        return render(self.registry)

    def accept_batch(self, batch: Batch, transit_s: float) -> None:
        self.intake.apply(batch, None, transit_s=transit_s)

    def refused(self, reason: str) -> None:
        self.intake.refused(reason)

    def internal_error(self, exc: Exception) -> None:
        """A bug of the daemon's with one client or request: the first is logged with its
        traceback (call it in the ``except``), all are counted."""
        self.internal_errors += 1
        if self.internal_errors == 1:
            log.exception("footprint daemon: internal error (the client is disconnected): %r", exc)

    # -- control ---------------------------------------------------------------------
    def sweep(self) -> None:
        """Housekeeping, about once a second: clients that went away."""
        if self.intake is not None:
            self.intake.sweep()
        self.limits.restore_spare()  # taken by a /healthz request at the fd limit
        self.limited_log.flush()

    def stop(self) -> None:
        """Stop accepting, apply what clients sent, resolve and write, release the socket:
        all within ``STOP_DEADLINE_S`` (what the database did not take by then is
        counted, as the runtime counts it at exit)."""
        if self.stopped:
            return
        self.stopped = True
        deadline_s = time.monotonic() + STOP_DEADLINE_S
        self.unix.stop_accepting()
        http = self._http
        if http is not None:
            # shutdown() waits for serve_forever's loop (poll_interval): on its own thread
            closer = threading.Thread(target=http.shutdown, daemon=True)
            closer.start()
        self.unix.wait_drained()
        self._claim.close_listener()  # new clients now find no daemon (and measure themselves)
        if http is not None:
            closer.join(max(0.0, min(0.6, deadline_s - time.monotonic() - 1.0)))
            with contextlib.suppress(Exception):
                http.server_close()
        self._shutdown_runtime(deadline_s)
        self.unix.finish(deadline_s)  # the last acknowledgements; every client closed
        self._claim.release()
        self.unix.close()

    def _shutdown_runtime(self, deadline_s: float) -> None:
        runtime = self.runtime
        if runtime is None:
            return
        left_s = deadline_s - time.monotonic() - 0.3  # the interpreter's own exit
        runtime.settings = replace(
            runtime.settings,
            exit_deadline_s=max(0.5, min(runtime.settings.exit_deadline_s, left_s)),
        )
        runtime.shutdown()  # within exit_deadline_s; unsaved records are counted

    def reload(self) -> None:
        """SIGHUP: read the settings again; apply pricing and database changes now."""
        try:
            new = daemon_settings(self.config)
        except StartError as exc:
            log.warning("footprint daemon: SIGHUP: settings not reloaded: %s", exc)
            return
        runtime = self.runtime
        old = runtime.settings
        changed = [f.name for f in fields(old) if getattr(old, f.name) != getattr(new, f.name)]
        if not changed:
            log.warning("footprint daemon: SIGHUP: settings re-read, nothing changed")
            return
        later = [name for name in changed if name in RESTART_FIELDS]
        applied = {name: getattr(new, name) for name in changed if name not in RESTART_FIELDS}
        if later:
            log.warning(
                "footprint daemon: SIGHUP: %s changed; restart the daemon to apply it",
                ", ".join(later),
            )
        if not applied:
            return
        target = replace(old, **applied)
        if any(name in PRICER_SETTINGS for name in applied):
            target = self._reprice(target, old)
        if target.db != old.db:
            runtime.flush()  # what has ended goes to the database it was measured for
            runtime.writer.switch_database(
                target.db, then=lambda: setattr(runtime, "settings", target)
            )
        else:
            runtime.settings = target
        log.warning("footprint daemon: SIGHUP: applied %s", ", ".join(sorted(applied)))

    def _reprice(self, target: Any, old: Any) -> Any:
        """The runtime prices with ``target`` from now on; if it cannot, the pricing
        settings stay ``old``'s: the settings to apply."""
        from footprint.pricing.pricer import Pricer

        runtime = self.runtime
        gpu_model = runtime.gpu_devices[0].name if runtime.gpu_devices else None
        try:
            runtime.pricer = Pricer(target, gpu_model)
        except Exception as exc:
            log.warning("footprint daemon: SIGHUP: pricing kept as it was: %s", exc)
            target = replace(target, **{n: getattr(old, n) for n in PRICER_SETTINGS})
        return target
