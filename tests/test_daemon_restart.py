"""A daemon restarted with SIGTERM while its clients call: every call stored once.

On main the daemon closed its clients' connections before its final write, so the
acknowledgements of that write never reached them and they sent those spans again to the
next daemon: 3,500 rows for 3,000 calls (issue 19). Now the final write happens while the
connections are still open, and its acknowledgements are sent before they close.
"""

from __future__ import annotations

import json
import sqlite3
import time

from test_daemon_e2e import _workers, folder  # noqa: F401 (a fixture)
from test_daemon_server import spawn

CALLS = 400


def test_sigterm_restart_mid_run_stores_every_call_once(folder):  # noqa: F811
    daemon = spawn(folder, http="off", name="a")
    workers = _workers(folder, daemon.sock, n=3, calls=CALLS, kind="numbered")
    try:
        time.sleep(2.0)
        assert daemon.stop(timeout=30) == 0  # SIGTERM
        second = spawn(folder, http="off", name="a")  # same socket, same database
        for w in workers:
            _, err = w.communicate(timeout=120)
            assert w.returncode == 0, err
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.communicate()  # its pipes closed
    assert second.stop(timeout=15) == 0, second.stderr
    con = sqlite3.connect(second.db)
    rows = con.execute("SELECT model, tags FROM queries").fetchall()
    con.close()
    calls: dict[str, list[int]] = {}
    for model, tags in rows:
        calls.setdefault(model, []).append(json.loads(tags)["call"])
    assert sorted(calls) == ["w0", "w1", "w2"]
    for model, stored in calls.items():
        assert sorted(stored) == list(range(CALLS)), (model, len(stored), len(set(stored)))


RECONFIGURED = """
import sys, footprint
with footprint.query(model="before"):
    pass
footprint.configure(daemon=sys.argv[1])  # a new client of the same process
with footprint.query(model="after"):
    pass
footprint.shutdown()
"""


def test_a_client_configured_again_keeps_its_span_ids_apart(folder):  # noqa: F811
    """On main the new client numbered its spans from 0 again, and the daemon ignored its
    first ones for a minute as duplicates of the old client's: silently lost."""
    import os
    import subprocess
    import sys

    daemon = spawn(folder, http="off", name="c")
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FOOTPRINT_")}
        env.update(FOOTPRINT_DAEMON=str(daemon.sock), XDG_RUNTIME_DIR=str(folder))
        done = subprocess.run(
            [sys.executable, "-c", RECONFIGURED, str(daemon.sock)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
    finally:
        assert daemon.stop(timeout=15) == 0, daemon.stderr
    con = sqlite3.connect(daemon.db)
    models = sorted(m for (m,) in con.execute("SELECT model FROM queries"))
    con.close()
    assert models == ["after", "before"]
