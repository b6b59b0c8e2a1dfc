"""Device-minutes measured whole by several processes of one host (a report's note)."""

from __future__ import annotations

import datetime as dt

from footprint.reporting import overlap


def _idle_row(uuid: str, minute: dt.datetime, host: str, pid: int) -> dict:
    return {
        "device_uuid": uuid,
        "minute": minute,
        "idle_energy_j": 1.0,
        "measured_energy_j": 2.0,
        "lost_energy_j": 0.0,
        "host": host,
        "pid": pid,
    }


def test_overlapping_measurements_finds_device_minutes_measured_twice(db_url):
    from footprint.storage.store import Store

    m0 = dt.datetime(2025, 3, 1, 12, 0, tzinfo=dt.timezone.utc)
    m1 = m0 + dt.timedelta(minutes=1)
    store = Store(db_url)
    try:
        store.insert(
            [],
            [
                _idle_row("GPU-a", m0, "h1", 11),
                _idle_row("GPU-a", m0, "h1", 12),  # twice
                _idle_row("GPU-a", m0, "h1", 13),
                _idle_row("GPU-a", m1, "h1", 11),  # once: fine
                _idle_row("GPU-b", m0, "h1", 11),
                _idle_row("GPU-b", m0, "h2", 12),  # two hosts
                _idle_row("GPU-c", m1, "h1", 11),
                _idle_row("GPU-c", m1, "h1", 14),
            ],
        )
        with store.engine.connect() as conn:
            found = overlap.overlapping_measurements(conn)
            assert found == [
                ("GPU-a", m0, (("h1", 11), ("h1", 12), ("h1", 13))),
                ("GPU-c", m1, (("h1", 11), ("h1", 14))),
            ]
            assert overlap.overlapping_measurements(conn, since=m1) == [found[1]]
            assert overlap.overlapping_measurements(conn, until=m1) == [found[0]]
            assert "up to 3 processes" in overlap.overlap_note(conn)
            assert overlap.overlap_note(conn, since=m1 + dt.timedelta(minutes=1)) is None
    finally:
        store.close()
