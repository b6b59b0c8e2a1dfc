"""Device-minutes that several processes measured whole (in-process, without the daemon).

Each in-process runtime of a host writes the idle energy of the GPUs it sees, per minute;
two of them on one GPU both count its whole energy. A report says so (``overlap_note``).
"""

from __future__ import annotations

import datetime as _dt
from typing import Any, NamedTuple


class Overlap(NamedTuple):
    """One device and minute measured by several processes of one host."""

    device_uuid: str
    minute: _dt.datetime
    processes: tuple[tuple[str, int], ...]  # (host, pid), sorted


def overlapping_measurements(
    conn: Any, since: _dt.datetime | None = None, until: _dt.datetime | None = None
) -> list[Overlap]:
    """Device-minutes whose energy several processes of one host measured, each whole.

    ``conn``: a SQLAlchemy ``Connection`` (SQLite or PostgreSQL); ``since``/``until``
    (aware datetimes) bound the minutes, ``until`` excluded. Each result is
    ``(device_uuid, minute, processes)``, ``processes`` the ``(host, pid)`` pairs that
    wrote a row for it: their measured (and idle) energy for that minute counts the same
    joules more than once. A process that exited and another that started within the same
    minute also show here, so a note should say "up to". With the daemon there is one
    measuring process per host, and nothing shows.
    """
    rows = _overlap_rows(conn, since, until)
    grouped: dict[tuple[str, Any], set[tuple[str, int]]] = {}
    for device_uuid, minute, host, pid in rows:
        grouped.setdefault((device_uuid, minute), set()).add((host, int(pid)))
    return [
        Overlap(uuid, _as_datetime(minute), tuple(sorted(procs)))
        for (uuid, minute), procs in grouped.items()
    ]


def _overlap_rows(conn: Any, since: Any, until: Any) -> list[Any]:
    from sqlalchemy import and_, func, select

    from footprint.storage.models import IdleEnergy, table_of

    table = table_of(IdleEnergy)
    c = table.c
    period = [c.minute >= since] if since is not None else []
    period += [c.minute < until] if until is not None else []
    shared = (
        select(c.device_uuid, c.minute, c.host)
        .where(*period)
        .group_by(c.device_uuid, c.minute, c.host)
        .having(func.count(c.pid.distinct()) > 1)
        .subquery()
    )
    stmt = (
        select(c.device_uuid, c.minute, c.host, c.pid)
        .join(
            shared,
            and_(
                c.device_uuid == shared.c.device_uuid,
                c.minute == shared.c.minute,
                c.host == shared.c.host,
            ),
        )
        .order_by(c.device_uuid, c.minute, c.host, c.pid)
    )
    return list(conn.execute(stmt))


def overlap_note(
    conn: Any, since: _dt.datetime | None = None, until: _dt.datetime | None = None
) -> str | None:
    """A sentence for a report when some device-minutes were measured twice, else None."""
    overlaps = overlapping_measurements(conn, since, until)
    if not overlaps:
        return None
    devices = sorted({o.device_uuid for o in overlaps})
    most = max(len(o.processes) for o in overlaps)
    return (
        f"{len(overlaps)} GPU-minute(s) on {len(devices)} GPU(s) were measured in-process "
        f"by up to {most} processes of one host at once: each counted the GPU's whole "
        "energy, so these totals count it up to that many times. Run `footprint daemon` "
        "on those hosts so that one process measures each GPU."
    )


def _as_datetime(value: Any) -> _dt.datetime:
    if isinstance(value, _dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=_dt.timezone.utc)
    text = str(value).replace(" ", "T")
    parsed = _dt.datetime.fromisoformat(text)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=_dt.timezone.utc)
