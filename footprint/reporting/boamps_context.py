"""What a BoAmps report needs per model beyond the report's figures, read from ``queries``.

The figures a BoAmps report shares with the JSON report (requests, tokens, energy) come
from ``build_report``; this reads only what the JSON report does not carry per model:
when its queries ran, how their GPU energy was obtained (``energy_source``), where they
ran (``zone``, ``ownership``), on which GPUs, how many carry token counts and an energy
uncertainty bound, the grid intensity they were priced with, and their ``task_family``
tag. One grouped scan of the period's queries (the report's filters), rows folded per
model in Python: a model's groups are few (sources x zones x GPU sets x families).
"""

from __future__ import annotations

import datetime as _dt
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, and_, case, func, inspect, literal, select
from sqlalchemy.exc import DataError, ProgrammingError, SQLAlchemyError

from footprint.reporting.capacity import device_names
from footprint.reporting.database import open_report_engine, read_error
from footprint.reporting.request import ReportError, ReportRequest, as_utc, query_filters
from footprint.reporting.sums import split_gpus
from footprint.reporting.tags import tag_expr
from footprint.storage.models import Device, QueryRecord, table_of

TASK_FAMILY_TAG = "task_family"


@dataclass
class ModelContext:
    """One model's queries in the period, as a BoAmps report describes them."""

    queries: int = 0
    first_started: _dt.datetime | None = None
    last_ended: _dt.datetime | None = None
    sources: Counter[str] = field(default_factory=Counter)  # energy_source: queries
    zones: Counter[str | None] = field(default_factory=Counter)  # zone (None: unpriced)
    ownerships: Counter[str | None] = field(default_factory=Counter)
    families: Counter[str | None] = field(default_factory=Counter)  # task_family tag
    gpus: set[str] = field(default_factory=set)  # GPU UUIDs the queries ran on
    # GPU UUID -> index, name (model) and vendor, where the database names it (devices)
    gpu_names: dict[str, dict[str, Any]] = field(default_factory=dict)
    hosts: set[str] = field(default_factory=set)
    cpu_packages: int = 0  # CPU packages named in the devices table on those hosts
    with_input_tokens: int = 0
    with_output_tokens: int = 0
    with_uncertainty: int = 0  # measured queries with an energy uncertainty bound
    priced_co2e_g: float = 0.0  # over queries with energy, PUE and CO2e known
    priced_facility_kwh: float = 0.0  # their energy x PUE
    intensities: set[float] = field(default_factory=set)  # their least and greatest

    def add(self, row: Any) -> None:
        """Fold one grouped row in."""
        n = int(row.n)
        self.queries += n
        first, last = as_utc(row.first_started), as_utc(row.last_ended)
        if first is not None and (self.first_started is None or first < self.first_started):
            self.first_started = first
        if last is not None and (self.last_ended is None or last > self.last_ended):
            self.last_ended = last
        self.sources[row.energy_source or "missing"] += n
        self.zones[row.zone] += n
        self.ownerships[row.ownership] += n
        self.families[row.family] += n
        self.gpus.update(split_gpus(row.gpus))
        self.hosts.add(row.host)
        self.with_input_tokens += int(row.input_n or 0)
        self.with_output_tokens += int(row.output_n or 0)
        self.with_uncertainty += int(row.bounded_n or 0)
        self.priced_co2e_g += float(row.co2e_g or 0.0)
        self.priced_facility_kwh += float(row.facility_j or 0.0) / 3_600_000.0
        self.intensities.update(
            float(v) for v in (row.intensity_min, row.intensity_max) if v is not None
        )

    @property
    def intensity_g_per_kwh(self) -> float | None:
        """The grid intensity the model's energy was priced with: the one intensity when
        all its priced queries had the same, else the mean weighted by energy (Σ CO2e /
        Σ energy x PUE: what ``co2e_g`` used); None when none was priced."""
        if self.priced_facility_kwh <= 0:
            return None
        if len(self.intensities) == 1:
            return next(iter(self.intensities))
        return self.priced_co2e_g / self.priced_facility_kwh


def _column(name: str) -> Any:
    """A ``queries`` column, or NULL where this schema has no such column."""
    q = table_of(QueryRecord).c
    return q[name] if name in q else literal(None)


def _statement(request: ReportRequest, dialect: str, with_family: bool) -> Any:
    """The grouped scan; the tag is read once per row in a subquery (its SQL holds bound
    parameters, which PostgreSQL would not match between SELECT and GROUP BY)."""
    q = table_of(QueryRecord).c
    uncertainty = _column("energy_uncertainty_j")
    family = tag_expr(dialect, TASK_FAMILY_TAG) if with_family else literal(None)
    priced = and_(q.energy_j.is_not(None), q.pue.is_not(None), q.co2e_g.is_not(None))
    rows = (
        select(
            q.model,
            q.energy_source,
            q.zone,
            _column("ownership").label("ownership"),
            q.gpus,
            q.host,
            family.label("family"),
            q.started_at,
            q.ended_at,
            q.input_tokens,
            q.output_tokens,
            case((and_(q.energy_j.is_not(None), uncertainty.is_not(None)), 1), else_=0).label(
                "bounded"
            ),
            case((priced, q.co2e_g), else_=None).label("priced_co2e_g"),
            case((priced, q.energy_j * q.pue), else_=None).label("facility_j"),
            case((priced, q.intensity_g_per_kwh), else_=None).label("intensity"),
        )
        .where(*query_filters(request))
        .subquery()
    )
    r = rows.c
    keys = [r.model, r.energy_source, r.zone, r.ownership, r.gpus, r.host, r.family]
    return select(
        *keys,
        func.count().label("n"),
        func.min(r.started_at).label("first_started"),
        func.max(r.ended_at).label("last_ended"),
        func.count(r.input_tokens).label("input_n"),
        func.count(r.output_tokens).label("output_n"),
        func.sum(r.bounded).label("bounded_n"),
        func.sum(r.priced_co2e_g).label("co2e_g"),
        func.sum(r.facility_j).label("facility_j"),
        func.min(r.intensity).label("intensity_min"),
        func.max(r.intensity).label("intensity_max"),
    ).group_by(*keys)


def _read(
    engine: Engine, request: ReportRequest, with_family: bool
) -> tuple[list[Any], dict[str, dict[str, Any]], dict[str, int]]:
    with engine.connect() as conn:
        statement = _statement(request, conn.dialect.name, with_family)
        return list(conn.execute(statement)), device_names(conn), _cpu_packages(conn)


def _cpu_packages(conn: Any) -> dict[str, int]:
    """Host -> CPU packages the devices table names there (RAPL ``cpu-package-N``)."""
    if not inspect(conn).has_table("devices"):
        return {}
    d = table_of(Device).c
    rows = conn.execute(
        select(d.host, func.count())
        .where(d.kind == "cpu", d.uuid.like("cpu-package-%"))
        .group_by(d.host)
    )
    return {host: int(n) for host, n in rows}


def read_contexts(request: ReportRequest) -> dict[str, ModelContext]:
    """Per model of the period (the report's filters), its ``ModelContext``.

    On PostgreSQL a query whose tags are not JSON makes the tag unreadable: the scan is
    then run again without the ``task_family`` tag (every family unknown).
    """
    engine = open_report_engine(request.db)
    try:
        try:
            rows, names, packages = _read(engine, request, with_family=True)
        except (DataError, ProgrammingError):
            rows, names, packages = _read(engine, request, with_family=False)
    except SQLAlchemyError as exc:
        raise ReportError(read_error(request.db, exc)) from None
    finally:
        engine.dispose()
    contexts: dict[str, ModelContext] = {}
    for row in rows:
        contexts.setdefault(row.model, ModelContext()).add(row)
    for ctx in contexts.values():
        ctx.gpu_names = {uuid: names[uuid] for uuid in ctx.gpus if uuid in names}
        ctx.cpu_packages = sum(packages.get(host, 0) for host in ctx.hosts)
    return contexts
