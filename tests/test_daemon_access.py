"""Who may write to the daemon, and which files it writes (a security issue, measured
from outside).

Before: on loopback, ``POST /v1/spans`` needed no token, so any local user (``nobody``)
posted a fake record and a loss count of 2^31-1 (``footprint db info``: lost_total
2,147,483,647), where the 0600 Unix socket refused the same user; and a symlink planted
at ``<socket>.lock`` (or at a GPU presence lock) made the daemon (root) overwrite the
link's target with its pid.

Now: the HTTP intake always wants a bearer token: the one given with ``--token``, else
one the daemon generates at its first start into ``<socket>.token`` (0600, beside the
socket, reused by the next start); local clients that post over HTTP read it from there
(``FOOTPRINT_DAEMON_TOKEN`` / ``FOOTPRINT_DAEMON_TOKEN_FILE`` first). ``/metrics`` and
``/healthz`` stay open on loopback. A loss count over ``MAX_LOSS_COUNT`` is refused
(400). The lock, token and presence files are never opened through a symlink: a daemon
that finds one there refuses to start, in one line naming it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from test_daemon_server import (
    START_TIMEOUT_S,
    Client,
    batch,
    end,
    http_get,
    http_post,
    query_rows,
    records_of,
    spawn,
    wait_for,
)

from footprint.runtime import presence
from footprint.runtime.protocol import MAX_LOSS_COUNT
from footprint.storage.info import database_info


def token_path(sock: Path) -> Path:
    return sock.with_name(sock.name + ".token")


@pytest.fixture(scope="module")
def home():
    # Short (a Unix socket path has at most 107 bytes); the daemon's socket is at the
    # default place for XDG_RUNTIME_DIR=home, where local clients look for its token.
    path = Path(tempfile.mkdtemp(prefix="fpa-", dir="/tmp"))
    (path / "footprint").mkdir(mode=0o700)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def daemon(home):
    proc = spawn(home, name="footprint/daemon")
    yield proc
    proc.stop()


def lost_total(db: Path) -> int:
    return database_info(str(db))["lost_total"]


# -- the HTTP intake ---------------------------------------------------------------------
def test_the_http_intake_wants_the_token_of_the_token_file(daemon):
    path = token_path(daemon.sock)
    info = os.lstat(path)
    assert stat.S_ISREG(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o600
    assert info.st_uid == os.getuid() and info.st_nlink == 1
    token = path.read_text().strip()
    assert len(token) >= 32

    t = time.monotonic()
    forged = json.dumps(
        batch(97001, ends=[end(1, t - 0.1, t, "forged-record")], lost={"span_queue_full": 5})
    ).encode()
    status, reply = http_post(daemon.url("/v1/spans"), forged)
    assert status == 401 and reply["reason"] == "unauthorized", reply
    assert http_post(daemon.url("/v1/spans"), forged, token="not-the-token")[0] == 401
    assert http_post(daemon.url("/v1/spans"), forged, headers={"Authorization": token})[0] == 401

    t = time.monotonic()
    allowed = json.dumps(batch(97002, ends=[end(1, t - 0.1, t, "allowed-record")])).encode()
    status, reply = http_post(daemon.url("/v1/spans"), allowed, token=token)
    assert status == 202, reply
    assert wait_for(lambda: records_of(daemon.db, "allowed-record"))
    assert records_of(daemon.db, "forged-record") == []
    assert query_rows(daemon.db, "SELECT COUNT(*) FROM losses WHERE kind = 'span_queue_full'") == [
        (0,)
    ]

    # Metrics and health stay open on loopback (no --token given).
    assert http_get(daemon.url("/metrics"))[0] == 200
    assert http_get(daemon.url("/healthz"))[0] == 200


def test_a_loss_count_over_the_bound_is_refused_and_not_stored(daemon):
    token = token_path(daemon.sock).read_text().strip()
    before = lost_total(daemon.db)
    for count in (2**31 - 1, MAX_LOSS_COUNT):
        absurd = json.dumps(batch(97101, lost={"record_failed": count})).encode()
        status, reply = http_post(daemon.url("/v1/spans"), absurd, token=token)
        assert status == 400 and reply["reason"] == "invalid", reply
        assert "lost" in reply["error"]
    client = Client(daemon.sock)
    try:
        client.send(batch(97102, lost={"record_failed": 2**31 - 1}))
        reply = client.reply()
        assert reply is not None and reply["reason"] == "invalid", reply
        # Something written after it: the writer has flushed since the refusals.
        t = time.monotonic()
        client.send(batch(97102, ends=[end(1, t - 0.1, t, "after-absurd")], ack=True))
        assert client.reply(timeout=30) == {"acked": [1]}
    finally:
        client.close()
    assert records_of(daemon.db, "after-absurd")
    assert lost_total(daemon.db) == before
    assert before < 2**20


def test_a_clients_loss_counts_are_stored_under_its_pid_and_host(daemon):
    # Before: stored under the daemon's own pid and host, so a client's losses looked
    # like the daemon's and no one could tell which process lost what.
    client = Client(daemon.sock)
    try:
        t = time.monotonic()
        client.send(
            batch(
                97201,
                ends=[end(1, t - 0.1, t, "with-losses")],
                ack=True,
                host="client-host-7",
                lost={"record_failed": 3},
            )
        )
        assert client.reply(timeout=30) == {"acked": [1]}
    finally:
        client.close()
    rows = query_rows(daemon.db, "SELECT host, pid, count FROM losses WHERE kind = 'record_failed'")
    assert ("client-host-7", 97201, 3) in rows, rows
    assert not [row for row in rows if row[1] == daemon.proc.pid], rows


CLIENT = """
import sys
import footprint
footprint.configure(db=sys.argv[1], sensor="none", cpu=False, region="FRA", daemon=sys.argv[2])
with footprint.query(model=sys.argv[3]) as q:
    q.set_tokens(input=3, output=5)
footprint.flush()
stats = footprint.stats()
footprint.shutdown()
print(stats["daemon_refused_batches"], stats["spans_sent"])
"""


def run_client(daemon, folder: Path, model: str, **env: str) -> tuple[int, int]:
    """The real client, in a process of its own, posting one call to the daemon's HTTP
    address: (batches refused, spans sent)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("FOOTPRINT_")}
    environ.update(env)
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            CLIENT,
            str(folder / "client.db"),
            f"http://127.0.0.1:{daemon.port}",
            model,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=folder,
        env=environ,
    )
    assert result.returncode == 0, result.stderr
    refused, sent = result.stdout.split()
    return int(refused), int(sent)


def test_the_real_client_posts_over_http_with_the_token_file(daemon, home, tmp_path):
    # The token beside the default socket ($XDG_RUNTIME_DIR/footprint/daemon.sock).
    assert run_client(daemon, tmp_path, "client-default", XDG_RUNTIME_DIR=str(home)) == (0, 1)
    assert wait_for(lambda: records_of(daemon.db, "client-default"))

    # A daemon elsewhere: FOOTPRINT_DAEMON_TOKEN_FILE names its token file.
    named = {
        "XDG_RUNTIME_DIR": str(tmp_path),
        "FOOTPRINT_DAEMON_TOKEN_FILE": str(token_path(daemon.sock)),
    }
    assert run_client(daemon, tmp_path, "client-token-file", **named) == (0, 1)
    assert wait_for(lambda: records_of(daemon.db, "client-token-file"))

    # No token at all (nor one in FOOTPRINT_DAEMON_TOKEN): refused (401), counted.
    refused, _ = run_client(daemon, tmp_path, "client-no-token", XDG_RUNTIME_DIR=str(tmp_path))
    assert refused == 1
    wrong = {"XDG_RUNTIME_DIR": str(home), "FOOTPRINT_DAEMON_TOKEN": "not-the-token"}
    assert run_client(daemon, tmp_path, "client-wrong-token", **wrong)[0] == 1
    assert records_of(daemon.db, "client-no-token") == []
    assert records_of(daemon.db, "client-wrong-token") == []


def test_the_token_is_a_setting_of_a_tracker_or_of_footprint_toml(daemon, tmp_path):
    """Before: only the FOOTPRINT_DAEMON_TOKEN variable (read by the transport, beside
    Settings) could give it; now ``daemon_token`` is a setting like the others."""
    from footprint import Tracker

    token = token_path(daemon.sock).read_text().strip()
    url = f"http://127.0.0.1:{daemon.port}"
    with Tracker(
        db=str(tmp_path / "t.db"),
        sensor="none",
        cpu=False,
        region="FRA",
        daemon=url,
        daemon_token=token,
    ) as tracker:
        with tracker.query(model="token-setting"):
            pass
        tracker.flush()
        assert tracker.stats()["daemon_refused_batches"] == 0
    assert wait_for(lambda: records_of(daemon.db, "token-setting"))
    (tmp_path / "footprint.toml").write_text(f'daemon_token = "{token}"\n')
    environ = {k: v for k, v in os.environ.items() if not k.startswith("FOOTPRINT_")}
    result = subprocess.run(
        [sys.executable, "-c", CLIENT, str(tmp_path / "client.db"), url, "token-in-toml"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**environ, "XDG_RUNTIME_DIR": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0", "1"]
    assert wait_for(lambda: records_of(daemon.db, "token-in-toml"))


# -- the token file, in-process ------------------------------------------------------------
def _claim(folder: Path, token: str | None = None):
    from footprint.daemon.claim import SocketClaim

    claim = SocketClaim(folder / "d.sock", None, token=token, token_file=True)
    claim.claim()
    claim.release()
    return claim


def test_the_token_file_is_made_once_reused_and_replaced_when_unsafe(tmp_path):
    folder = tmp_path / "run"
    first = _claim(folder).token
    path = token_path(folder / "d.sock")
    info = os.lstat(path)
    assert stat.S_IMODE(info.st_mode) == 0o600 and stat.S_IMODE(os.lstat(folder).st_mode) == 0o700
    assert path.read_text() == first + "\n" and len(first) >= 43
    assert _claim(folder).token == first  # reused
    path.chmod(0o644)  # others may have read it: a new one
    second = _claim(folder).token
    assert second != first and path.read_text() == second + "\n"
    assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600
    path.write_text("short\n")
    assert _claim(folder).token not in (second, "short")
    given = _claim(folder, token="given-token-123").token
    assert given == "given-token-123" and path.read_text() == "given-token-123\n"
    assert not [p for p in folder.iterdir() if ".tmp" in p.name]


@pytest.mark.parametrize("name", ["d.sock.lock", "d.sock.token"])
def test_a_symlink_at_the_lock_or_token_path_is_refused_in_process(tmp_path, name):
    from footprint.daemon.config import StartError

    folder = tmp_path / "run"
    folder.mkdir(mode=0o700)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (folder / name).symlink_to(victim)
    with pytest.raises(StartError) as caught:
        _claim(folder)
    message = str(caught.value)
    assert "symbolic link" in message and name in message and "\n" not in message
    assert victim.read_text() == "precious\n"
    assert not (folder / "d.sock").exists()


def test_the_socket_folder_must_be_a_real_folder_of_the_daemons_user(tmp_path, monkeypatch):
    from footprint.daemon.config import StartError

    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(StartError, match="symbolic link"):
        _claim(tmp_path / "link")
    assert list(real.iterdir()) == []
    if os.geteuid() == 0:  # root's own folders (/run, /tmp) are trusted: another user's
        os.chown(real, 4242, -1)
    else:
        monkeypatch.setattr(os, "geteuid", lambda: os.getuid() + 4242)
    with pytest.raises(StartError, match="belongs to uid"):
        _claim(real)
    assert list(real.iterdir()) == []


# -- symlinks, end to end -----------------------------------------------------------------
def _start_expecting_refusal(folder: Path, name: str) -> tuple[int, str]:
    daemon = spawn(folder, name=name, wait=False)
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while daemon.proc.poll() is None and time.monotonic() < deadline:
            assert daemon.proc.stdout is not None
            line = daemon.proc.stdout.readline().decode()
            if line.startswith("footprint daemon: listening"):
                daemon.proc.send_signal(signal.SIGTERM)
                daemon.proc.wait(10)
                return 0, daemon.stderr
        if daemon.proc.poll() is None:
            daemon.proc.kill()
        return daemon.proc.wait(10), daemon.stderr
    finally:
        daemon.close()


def test_a_symlinked_lock_file_leaves_its_target_alone(tmp_path):
    folder = Path(tempfile.mkdtemp(prefix="fpl-", dir="/tmp"))
    try:
        victim = tmp_path / "victim.txt"
        victim.write_text("precious\n")
        (folder / "v.sock.lock").symlink_to(victim)
        code, stderr = _start_expecting_refusal(folder, "v")
        assert victim.read_text() == "precious\n"
        assert code == 1, stderr
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and "symbolic link" in lines[0], stderr
        assert str(folder / "v.sock.lock") in lines[0]
        assert not (folder / "v.sock").exists()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_a_symlinked_gpu_presence_lock_leaves_its_target_alone(tmp_path):
    folder = tmp_path / "presence"
    folder.mkdir(mode=0o700)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    presence.lock_path("GPU-planted", folder).symlink_to(victim)
    claims = presence.claim_gpus(["GPU-planted"], directory=folder)
    try:
        assert claims.claimed == [] and claims.others == []
        assert victim.read_text() == "precious\n"
    finally:
        claims.release()
    # A hard link to another file of this user is not written either.
    other = tmp_path / "other.txt"
    other.write_text("mine\n")
    os.link(other, presence.lock_path("GPU-linked", folder))
    claims = presence.claim_gpus(["GPU-linked"], directory=folder)
    claims.release()
    assert other.read_text() == "mine\n" and claims.claimed == []
    # A symlinked presence folder is not used at all.
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    (tmp_path / "linked").symlink_to(tmp_path / "elsewhere")
    claims = presence.claim_gpus(["GPU-x"], directory=tmp_path / "linked")
    claims.release()
    assert claims.claimed == [] and list((tmp_path / "elsewhere").iterdir()) == []


def test_a_daemon_with_a_symlinked_gpu_lock_still_starts_and_leaves_the_target(tmp_path):
    """The presence check is advisory: a planted link is skipped (not written through),
    and the daemon measures all the same."""
    folder = Path(tempfile.mkdtemp(prefix="fpg-", dir="/tmp"))
    try:
        (folder / "footprint").mkdir(mode=0o700)  # runtime_dir() of XDG_RUNTIME_DIR=folder
        victim = tmp_path / "victim.txt"
        victim.write_text("precious\n")
        uuid = "GPU-sim0000-0000-4000-8000-000000000000"
        presence.lock_path(uuid, folder / "footprint").symlink_to(victim)
        daemon = spawn(folder, name="g", http="off")
        try:
            assert victim.read_text() == "precious\n"
        finally:
            assert daemon.stop() == 0, daemon.stderr
        assert victim.read_text() == "precious\n"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_the_client_splits_a_large_loss_count_under_the_bound():
    from footprint.config import resolve_settings
    from footprint.runtime.discovery import Target
    from footprint.runtime.protocol import decode_batch
    from footprint.runtime.remote import DaemonClient

    client = DaemonClient(resolve_settings({"sensor": "none"}), target=Target("unix", "/none"))
    client.dropped_spans = 2 * MAX_LOSS_COUNT + 5
    sent = 0
    for expected in (MAX_LOSS_COUNT - 1, MAX_LOSS_COUNT - 1, 7):
        delta = client._loss_delta()
        assert delta == {"span_queue_full": expected}
        data = client._encode([], [], lost=delta)
        assert data is not None and decode_batch(data).lost == delta
        client._losses_sent["span_queue_full"] = sent = sent + expected
    assert client._loss_delta() == {} and sent == client.dropped_spans
