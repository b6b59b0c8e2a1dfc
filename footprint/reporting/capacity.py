"""Capacity: the GPU-hours held against the GPU-hours busy, and the idle time spread.

``idle_energy`` has a row per GPU, minute, host and process for every minute a GPU was
measured (held), with the energy it spent while no query ran. From it, per GPU:

- GPU-hours held = Σ over its minutes of the seconds it was measured (``measured_s``; the
  longest of the processes measuring it in that minute: they held it once) / 3600; rows
  written before schema version 3 count as whole minutes;
- idle energy = Σ idle + lost energy (lost: calls never stored);
- idle GPU-hours = held − busy, where busy = Σ GPU-seconds / 3600 of the queries on it
  (a query on n GPUs counts 1/n on each), at least 0.

Both are spread over the queries of that GPU and period in proportion to their GPU-seconds
(``Fold.settle``): the fully loaded figures. Idle GPU-hours are charged at the $/GPU-hour
of that GPU's queries (their compute cost per GPU-second) and carry its embodied carbon
per GPU-second. With --by day or host, each group takes the idle time measured in it
instead (``group_idle``), priced the same way.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sqlalchemy import ColumnElement, Engine, case, func, inspect, select

from footprint.reporting.database import day_expr
from footprint.reporting.request import ReportRequest
from footprint.reporting.sums import Fold
from footprint.storage.models import Device, IdleEnergy, table_of


def idle_rows(conn: Any, engine: Engine, request: ReportRequest) -> list[dict[str, Any]]:
    """Idle and lost energy, measured energy and seconds held, per day, GPU and host."""
    i = table_of(IdleEnergy).c
    day = day_expr(engine, i.minute).label("day")
    filters: list[ColumnElement[bool]] = [~i.device_uuid.like("cpu-%")]
    if request.since is not None:
        filters.append(i.minute >= request.since)
    if request.until is not None:
        filters.append(i.minute < request.until)
    # The day first: no index serves this order, so SQLite scans the table in its own
    # order (sequential reads) rather than walking the device_uuid index.
    keys = [day, i.device_uuid, i.host]
    stmt = (
        select(
            *keys,
            # Energy of calls never stored (running at exit, abandoned) has no query to
            # carry it: it is spread with the idle energy in the fully loaded figures.
            func.sum(i.idle_energy_j + i.lost_energy_j).label("idle_j"),
            func.sum(i.lost_energy_j).label("lost_j"),
            func.sum(i.measured_energy_j).label("measured_j"),
        )
        .where(*filters)
        .group_by(*keys)
    )
    rows = {(r["day"], r["device_uuid"], r["host"]): dict(r) for r in conn.execute(stmt).mappings()}
    # Seconds held: per device and minute the longest any process of the host measured
    # it (processes measuring it at once held it once); rows from before schema 3 carry
    # no seconds and count as whole minutes.
    per_minute = (
        select(
            i.minute,
            i.device_uuid,
            i.host,
            func.max(case((i.measured_s > 0, i.measured_s), else_=60.0)).label("held_s"),
        )
        .where(*filters)
        .group_by(i.minute, i.device_uuid, i.host)
        .subquery()
    )
    m = per_minute.c
    minute_day = day_expr(engine, m.minute).label("day")
    held = select(minute_day, m.device_uuid, m.host, func.sum(m.held_s)).group_by(
        minute_day, m.device_uuid, m.host
    )
    for day, uuid, host, held_s in conn.execute(held):
        row = rows.get((day, uuid, host))
        if row is not None:
            row["held_s"] = min(held_s or 0.0, 86_400.0)
    return list(rows.values())


class Capacity:
    """The GPUs' idle energy and time held, per GPU and per day and host."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.idle_j: dict[str, float] = defaultdict(float)
        self.measured_j: dict[str, float] = defaultdict(float)
        self.held_s: dict[str, float] = defaultdict(float)
        self.lost_j = 0.0
        # GPU UUID -> its index and model as the processes that measured it saw them
        # (the ``devices`` table, schema version 6; empty for older databases).
        self.device_names: dict[str, dict[str, Any]] = {}
        self.day_idle_j: dict[str, float] = defaultdict(float)
        self.day_held_s: dict[str, float] = defaultdict(float)
        # (group, GPU) -> idle J and seconds held, for --by day and --by host
        self.group_idle_j: dict[str, dict[tuple[Any, str], float]] = {
            "day": defaultdict(float),
            "host": defaultdict(float),
        }
        self.group_held_s: dict[str, dict[tuple[Any, str], float]] = {
            "day": defaultdict(float),
            "host": defaultdict(float),
        }
        for r in rows:
            uuid, idle, held = r["device_uuid"], r["idle_j"] or 0.0, r.get("held_s") or 0.0
            self.idle_j[uuid] += idle
            self.measured_j[uuid] += r["measured_j"] or 0.0
            self.held_s[uuid] += held
            self.lost_j += r["lost_j"] or 0.0
            self.day_idle_j[r["day"]] += idle
            self.day_held_s[r["day"]] += held
            for by in ("day", "host"):
                key = (r[by], uuid)
                self.group_idle_j[by][key] += idle
                self.group_held_s[by][key] += held

    @property
    def known(self) -> bool:
        """Whether any GPU time held was measured in the period (else held is unknown)."""
        return bool(self.held_s)

    def idle_seconds(self, busy: dict[str, float]) -> dict[str, float]:
        """Per GPU, the seconds it was held and not busy (at least 0)."""
        return {u: max(0.0, held - busy.get(u, 0.0)) for u, held in self.held_s.items()}

    def unallocated(self, busy: dict[str, float]) -> tuple[float, float]:
        """Idle energy and seconds held of the GPUs that served no query of the period."""
        idle = [u for u in self.held_s if busy.get(u, 0.0) <= 0]
        return sum(self.idle_j[u] for u in idle), sum(self.held_s[u] for u in idle)

    def group_idle(self, by: str, name: Any, fold: Fold) -> dict[str, float]:
        """The idle figures of one day or host from what was measured in it: its idle
        energy, and its idle GPU-seconds (held − busy per GPU), priced with each GPU's
        rates (``Fold.device_rates``)."""
        out = dict.fromkeys(
            (
                "idle_j",
                "idle_co2e_g",
                "idle_energy_cost_usd",
                "idle_billed_energy_cost_usd",
                "idle_gpu_s",
                "idle_compute_cost_usd",
                "idle_embodied_co2e_g",
            ),
            0.0,
        )
        held = self.group_held_s[by]
        idle_j = self.group_idle_j[by]
        for (group, uuid), seconds in held.items():
            if group != name:
                continue
            joules = idle_j.get((group, uuid), 0.0)
            idle_s = max(0.0, seconds - fold.group_device_gs.get((group, uuid), 0.0))
            out["idle_j"] += joules
            out["idle_gpu_s"] += idle_s
            rates = fold.device_rates(uuid)
            if rates is not None:
                out["idle_co2e_g"] += joules * rates[0]
                out["idle_energy_cost_usd"] += joules * rates[1]
                out["idle_billed_energy_cost_usd"] += joules * rates[2]
                out["idle_compute_cost_usd"] += idle_s * rates[3]
                out["idle_embodied_co2e_g"] += idle_s * rates[4]
        return out


def device_names(conn: Any) -> dict[str, dict[str, Any]]:
    """GPU UUID -> ``index``, ``name`` (the GPU model) and ``vendor``, from the ``devices``
    table (the last process to see a GPU wins); {} where the database has none."""
    if not inspect(conn).has_table("devices"):
        return {}
    d = table_of(Device).c
    rows = conn.execute(
        select(d.uuid, d.device_index, d.name, d.vendor)
        .where(d.kind == "gpu")
        .order_by(d.last_seen_at, d.id)
    )
    return {
        uuid: {"index": index, "name": name, "vendor": vendor} for uuid, index, name, vendor in rows
    }
