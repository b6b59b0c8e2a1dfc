"""The daemon client against a scripted daemon (``MemoryTransport``): what it keeps, sends
again and drops as the daemon acknowledges, refuses or goes away; the backoff rules; and
how the Unix transport reads the daemon's reply lines.

No thread: each ``flush()`` runs one send round in the test's thread.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from footprint.config import resolve_settings
from footprint.runtime.discovery import Target
from footprint.runtime.remote import DaemonClient
from footprint.runtime.spans import FootprintWarning
from footprint.runtime.transport import (
    BACKOFF_MAX_S,
    BACKOFF_MIN_S,
    STABLE_CONNECTION_S,
    MemoryTransport,
    UnixTransport,
)


@pytest.fixture
def daemon() -> MemoryTransport:
    return MemoryTransport()


@pytest.fixture
def client(daemon: MemoryTransport) -> Iterator[DaemonClient]:
    settings = resolve_settings({"sensor": "none", "max_pending_spans": 10})
    yield DaemonClient(settings, transport=daemon)


def call(client: DaemonClient, model: str = "m") -> int:
    """One call that started and ended: its span id."""
    span_id, start_s = client.begin(None)
    client.end(span_id, start_s, model, {"k": "v"}, "ok", None, 3, 4, None, None)
    return span_id


def test_sent_ends_wait_for_their_acknowledgement_then_leave_the_ledger(client, daemon):
    ids = [call(client) for _ in range(3)]
    assert client.flush() == 3
    assert [end["id"] for end in daemon.ends()] == ids
    assert daemon.batches[0]["ack"] is True  # it asks the daemon to acknowledge them
    stats = client.stats()
    assert stats["spans_unconfirmed"] == 3 and stats["records_written"] == 0
    assert client.max_pending == 10 - 3  # kept ends count against the bound

    daemon.ack(ids[:2])
    client.flush()
    stats = client.stats()
    assert stats["spans_confirmed"] == stats["records_written"] == 2
    assert stats["spans_unconfirmed"] == 1 and client.max_pending == 10 - 1

    daemon.ack(ids[:2])  # acknowledged again: counted once
    client.flush()
    assert client.stats()["spans_confirmed"] == 2


def test_a_disconnect_sends_the_unacknowledged_ends_again_marked_resent(client, daemon):
    first, second = call(client), call(client)
    client.flush()
    daemon.ack([first])
    daemon.disconnect()
    with pytest.warns(FootprintWarning, match="lost the connection .* at memory"):
        client.flush()  # reads the acknowledgement, then finds the connection gone
    stats = client.stats()
    assert stats["spans_confirmed"] == 1 and stats["spans_unconfirmed"] == 0
    assert stats["daemon_resent_spans"] == 1 and stats["pending_spans"] == 1
    assert stats["daemon_connected"] == 0

    client.flush()  # a new connection
    resent = daemon.batches[-1]["ends"]
    assert [(end["id"], end.get("resent")) for end in resent] == [(second, True)]
    assert client.stats()["daemon_reconnects"] == 1
    assert [end["id"] for end in daemon.ends()] == [first, second, second]


def test_acknowledgements_read_as_the_connection_fails_are_not_sent_again(client, daemon):
    first, second = call(client), call(client)
    client.flush()
    third = call(client)
    daemon.ack([first, second])
    daemon.disconnect()
    with pytest.warns(FootprintWarning, match="lost the connection .* at memory"):
        client.flush()  # the send fails; the acknowledgements still waiting are read first
    stats = client.stats()
    assert stats["spans_confirmed"] == 2 and stats["daemon_resent_spans"] == 0
    client.flush()
    assert [(end["id"], end.get("resent")) for end in daemon.batches[-1]["ends"]] == [
        (third, True)  # its batch may have reached the daemon: it looks it up first
    ]


def test_a_refused_batch_drops_its_ends_and_counts_them(client, daemon):
    ids = [call(client) for _ in range(2)]
    client.flush()
    daemon.refuse(ids, error="not for you", reason="overloaded")
    with pytest.warns(FootprintWarning, match=r"refused a batch .*not for you \[overloaded\]"):
        client.flush()
    stats = client.stats()
    assert stats["daemon_refused_batches"] == 1 and client.refused_batches == 1
    assert stats["lost_spans"] == stats["daemon_lost_spans"] == 2
    assert stats["spans_unconfirmed"] == 0 and stats["spans_confirmed"] == 0
    assert client.max_pending == 10

    daemon.disconnect()
    with pytest.warns(FootprintWarning, match="lost the connection .* at memory"):
        client.flush()
    assert client.stats()["daemon_resent_spans"] == 0  # nothing refused goes again


def test_a_daemon_that_is_down_keeps_the_ends_until_it_is_back(client, daemon):
    daemon.down = True
    span_id = call(client)
    with pytest.warns(FootprintWarning, match="cannot reach the footprint daemon at memory"):
        assert client.flush() == 0
    stats = client.stats()
    assert stats["daemon_connect_failures"] == 1 and stats["pending_spans"] == 1
    assert daemon.backoff.down_since_s is not None
    daemon.down = False
    assert client.flush() == 1
    assert [end["id"] for end in daemon.ends()] == [span_id]
    assert daemon.backoff.down_since_s is None
    assert client.stats()["daemon_reconnects"] == 0  # its first connection


def test_failed_connects_back_off_doubling_up_to_the_maximum():
    transport = MemoryTransport()
    transport.down = True
    delays = []
    for _ in range(8):
        attempt = transport.connect(now=True)
        assert not attempt.connected and isinstance(attempt.error, ConnectionRefusedError)
        delays.append(transport.backoff.next_attempt_s - transport.backoff.down_since_s)
    assert delays[0] == pytest.approx(BACKOFF_MIN_S)
    assert transport.backoff.delay_s == BACKOFF_MAX_S
    # Not yet time: no attempt, no failure.
    assert transport.connect(now=False) == (False, None)
    transport.down = False
    assert transport.connect(now=True).connected


def test_a_connection_resets_the_backoff_only_once_it_proved_itself():
    transport = MemoryTransport()
    transport.down = True
    for _ in range(3):
        transport.connect(now=True)
    transport.down = False
    assert transport.connect(now=True).connected
    assert transport.backoff.delay_s == 8 * BACKOFF_MIN_S  # a connect alone proves nothing
    transport.drop()  # closed at once ("overloaded"): the next retry is rarer still
    assert transport.backoff.delay_s == 16 * BACKOFF_MIN_S

    assert transport.connect(now=True).connected
    transport.connected_at_s -= STABLE_CONNECTION_S  # it lasted
    transport.drop()
    assert transport.backoff.delay_s == 2 * BACKOFF_MIN_S  # from the minimum again

    assert transport.connect(now=True).connected
    transport.proven()  # the daemon acknowledged something
    assert transport.backoff.delay_s == BACKOFF_MIN_S


def test_an_acknowledgement_resets_the_clients_backoff(client, daemon):
    daemon.down = True
    call(client)
    with pytest.warns(FootprintWarning, match="cannot reach the footprint daemon at memory"):
        for _ in range(3):
            client.flush()
    daemon.down = False
    call(client)
    assert client.flush() == 2
    assert daemon.backoff.delay_s == 8 * BACKOFF_MIN_S  # connected, not proven yet
    daemon.ack(end["id"] for end in daemon.ends())
    client.flush()
    assert daemon.backoff.delay_s == BACKOFF_MIN_S


def test_the_unix_transport_reads_whole_reply_lines_then_the_end_of_the_connection():
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with theirs:
        transport = UnixTransport(Target("unix", "/none"), ours)
        assert transport.connected and transport.acknowledges
        assert transport.send(b'{"x": 1}\n').error is None
        assert theirs.recv(100) == b'{"x": 1}\n'
        assert transport.receive() == ((), None)  # nothing yet: it does not wait
        theirs.sendall(b'{"acked":[1,2]}\n{"error": "no", "reason": "inval')
        replies, error = transport.receive()
        assert error is None and [(r.body, r.acked) for r in replies] == [
            (b'{"acked":[1,2]}', True)
        ]
        theirs.sendall(b'id"}\n\n')
        replies, error = transport.receive()
        assert [(r.body, r.acked) for r in replies] == [
            (b'{"error": "no", "reason": "invalid"}', False)
        ]
        theirs.sendall(b'{"acked":[3]}\n')
        theirs.shutdown(socket.SHUT_WR)
        replies, error = transport.receive()
    assert [r.body for r in replies] == [b'{"acked":[3]}']
    assert isinstance(error, ConnectionResetError)
    transport.drop()
    assert not transport.connected and transport.backoff.down_since_s is not None
