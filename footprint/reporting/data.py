"""The report's figures: SQL aggregation in the database, small rollups in Python.

One grouped scan of ``queries`` (GROUP BY model, day, GPUs, zone and the factors used)
gives every sum the report needs; its few hundred or thousand result rows are rolled up
here into models, totals, days, regions and factors. ``idle_energy`` is summed per GPU
and day in a second query, and per-query percentiles come from a third, one window query
over at most ``PERCENTILE_SAMPLE`` queries per model (all of them below that; above, a
deterministic hash sample of the record ids, stated in the report). Works on SQLite and
PostgreSQL through SQLAlchemy Core.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    BigInteger,
    Engine,
    Float,
    and_,
    case,
    func,
    literal,
    literal_column,
    or_,
    select,
)
from sqlalchemy.engine import make_url

from footprint.storage.models import IdleEnergy, QueryRecord
from footprint.storage.store import StoreError, normalize_db_url, open_engine

REPORT_SCHEMA = "footprint.report/1"
BY_CHOICES = ("model", "day", "region", "host")
PERCENTILE_SAMPLE = 20_000  # queries per model above which percentiles use a sample
_HASH_MULTIPLIER = 2654435761  # Knuth's multiplicative hash: coprime to 10**6
_HASH_MODULUS = 1_000_000
JOULES_PER_KWH = 3_600_000.0
CLEANEST_COUNT = 5

ProgressFn = Callable[[str], None]


class ReportError(ValueError):
    """Bad input or nothing to report: one line saying why (the CLI exits 2)."""


@dataclass
class ReportRequest:
    """What to report on. ``until`` is exclusive; dates are UTC."""

    db: str
    since: _dt.datetime | None = None
    until: _dt.datetime | None = None
    models: list[str] | None = None
    by: str = "model"
    compare: list[str] = field(default_factory=list)
    allow_empty: bool = False


# --- input ---------------------------------------------------------------------------

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def parse_when(text: str, *, option: str, end: bool = False) -> _dt.datetime:
    """``YYYY-MM-DD`` or an ISO 8601 date-time (UTC unless it says otherwise).

    With ``end=True`` a bare date means the end of that day (``--until 2026-03-08``
    includes the 8th).
    """
    raw = text.strip()
    try:
        if _DATE.match(raw):
            day = _dt.date.fromisoformat(raw)
            when = _dt.datetime(day.year, day.month, day.day, tzinfo=_dt.timezone.utc)
            return when + _dt.timedelta(days=1) if end else when
        when = _dt.datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise ReportError(
            f"{option}: not a date: {text!r} (use YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS][+HH:MM])"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=_dt.timezone.utc)
    return when.astimezone(_dt.timezone.utc)


def split_names(values: Iterable[str] | None) -> list[str]:
    """``--model a --model b,c`` -> ``[a, b, c]`` (order kept, duplicates dropped)."""
    out: list[str] = []
    for value in values or ():
        for name in value.split(","):
            name = name.strip()
            if name and name not in out:
                out.append(name)
    return out


# --- database --------------------------------------------------------------------------


def open_report_engine(db: str) -> Engine:
    """Open an existing database for reading; a missing SQLite file is an error."""
    try:
        url = normalize_db_url(db)
    except StoreError as exc:
        raise ReportError(str(exc)) from None
    if url.startswith("sqlite"):
        path = make_url(url).database
        if path and path != ":memory:":
            from pathlib import Path

            if not Path(path).is_file():
                raise ReportError(f"no database at {path} (give --db or set FOOTPRINT_DB)")
    try:
        try:
            engine = open_engine(url, create=False)  # a report writes nothing
        except TypeError:  # a store without the read-only option
            engine = open_engine(url)
    except StoreError as exc:
        raise ReportError(str(exc)) from None
    if engine.dialect.name == "sqlite":
        from sqlalchemy import event

        @event.listens_for(engine, "connect")
        def _read_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA temp_store=MEMORY")  # sorts of GROUP BY stay in memory
            cursor.execute("PRAGMA cache_size=-262144")  # 256 MiB
            cursor.close()

        engine.dispose()  # the pragmas apply to connections opened from now on
    return engine


def _day_expr(engine: Engine, column: Any) -> Any:
    if engine.dialect.name == "sqlite":  # constants inline: SELECT and GROUP BY match
        return func.substr(column, literal_column("1"), literal_column("10"))
    return func.to_char(func.timezone("UTC", column), literal_column("'YYYY-MM-DD'"))


# --- accumulation ------------------------------------------------------------------------

SUM_KEYS = (
    "queries", "errors", "input_tokens", "output_tokens", "gpu_seconds", "energy_j",
    "measured_queries", "facility_energy_j", "co2e_g", "market_co2e_g", "market_queries",
    "embodied_co2e_g", "energy_cost_usd", "unconverted_queries", "compute_cost_usd",
    "duration_s", "idle_j", "idle_co2e_g", "idle_cost_usd",
)  # fmt: skip


def _zero() -> dict[str, float]:
    return dict.fromkeys(SUM_KEYS, 0)


def _add(into: dict[str, float], row: dict[str, float], scale: float = 1.0) -> None:
    for key in SUM_KEYS:
        into[key] += row[key] * scale if scale != 1.0 else row[key]


# --- the report ------------------------------------------------------------------------


def build_report(request: ReportRequest, progress: ProgressFn | None = None) -> dict[str, Any]:
    """Every figure of the report as plain data (the JSON output, and what renderers use)."""
    step = progress or (lambda _name: None)
    if request.by not in BY_CHOICES:
        raise ReportError(f"--by must be one of {', '.join(BY_CHOICES)}, got {request.by!r}")
    if request.since and request.until and request.since >= request.until:
        raise ReportError(
            f"--since {request.since.isoformat()} is not before --until {request.until.isoformat()}"
        )
    compare_zones = _resolve_compare(request.compare)
    engine = open_report_engine(request.db)
    try:
        with engine.connect() as conn:
            step("checking models")
            _check_models(conn, request.models)
            step("aggregating queries")
            rows = _grouped_rows(conn, engine, request)
            first_last = _first_last(conn, request)
            step("aggregating idle energy")
            idle = _idle_rows(conn, engine, request)
            device_gs = None
            if request.models:
                device_gs = _device_gpu_seconds(conn, request)
            models_n = _model_counts(rows)
            step("computing percentiles")
            percentiles = _percentiles(conn, request, models_n, _rates(rows))
    finally:
        engine.dispose()
    if not rows and not request.allow_empty:
        raise ReportError(
            f"no queries in {_period_words(request)}"
            + (f" for {', '.join(request.models)}" if request.models else "")
            + " (use --allow-empty for an explicit empty report)"
        )
    step("rolling up")
    return _assemble(request, rows, idle, device_gs, percentiles, compare_zones, first_last)


def _period_words(request: ReportRequest) -> str:
    since = request.since.isoformat() if request.since else "the beginning"
    until = request.until.isoformat() if request.until else "now"
    return f"the period {since} .. {until}"


def _resolve_compare(names: list[str]) -> list[str]:
    from footprint.pricing import lookup_zone

    out = []
    for name in names:
        try:
            out.append(lookup_zone(name).id)
        except ValueError as exc:
            raise ReportError(f"--compare {name!r}: {exc}") from None
    return out


def _filters(request: ReportRequest, with_models: bool = True) -> list[Any]:
    q = QueryRecord.__table__.c
    out = []
    if request.since is not None:
        out.append(q.started_at >= request.since)
    if request.until is not None:
        out.append(q.started_at < request.until)
    if with_models and request.models:
        out.append(q.model.in_(request.models))
    return out


def _check_models(conn: Any, models: list[str] | None) -> None:
    if not models:
        return
    q = QueryRecord.__table__.c
    known = {r[0] for r in conn.execute(select(q.model).distinct())}
    unknown = [m for m in models if m not in known]
    if unknown:
        listed = ", ".join(sorted(known)[:12]) or "none: the database has no queries"
        raise ReportError(f"unknown model {', '.join(map(repr, unknown))}; known: {listed}")


def _grouped_rows(conn: Any, engine: Engine, request: ReportRequest) -> list[dict[str, Any]]:
    q = QueryRecord.__table__.c
    day = _day_expr(engine, q.started_at).label("day")
    keys = [
        q.model, day, q.gpus, q.zone, q.currency, q.intensity_source, q.pue,
        q.price_per_kwh, q.usd_per_gpu_hour, q.market_intensity_g_per_kwh, q.energy_source,
    ]  # fmt: skip
    if request.by == "host":
        keys.append(q.host)
    unconverted = and_(q.energy_cost_usd.is_(None), q.energy_cost.is_not(None))
    sums = [
        func.count().label("queries"),
        func.sum(case((q.status != "ok", 1), else_=0)).label("errors"),
        func.coalesce(func.sum(q.input_tokens), 0).label("input_tokens"),
        func.coalesce(func.sum(q.output_tokens), 0).label("output_tokens"),
        func.coalesce(func.sum(q.gpu_seconds), 0.0).label("gpu_seconds"),
        func.coalesce(func.sum(q.energy_j), 0.0).label("energy_j"),
        func.count(q.energy_j).label("measured_queries"),
        func.coalesce(func.sum(q.energy_j * q.pue), 0.0).label("facility_energy_j"),
        func.coalesce(func.sum(q.co2e_g), 0.0).label("co2e_g"),
        func.coalesce(func.sum(q.market_co2e_g), 0.0).label("market_co2e_g"),
        func.count(q.market_co2e_g).label("market_queries"),
        func.coalesce(func.sum(q.embodied_co2e_g), 0.0).label("embodied_co2e_g"),
        func.coalesce(func.sum(q.energy_cost_usd), 0.0).label("energy_cost_usd"),
        func.coalesce(func.sum(case((unconverted, q.energy_cost))), 0.0).label("unconverted"),
        func.count(case((unconverted, 1))).label("unconverted_queries"),
        func.coalesce(func.sum(q.compute_cost), 0.0).label("compute_cost_usd"),
        func.coalesce(func.sum(q.duration_s), 0.0).label("duration_s"),
        func.min(q.intensity_g_per_kwh).label("intensity_min"),
        func.max(q.intensity_g_per_kwh).label("intensity_max"),
    ]
    stmt = select(*keys, *sums).where(*_filters(request)).group_by(*keys)
    return [dict(row) for row in conn.execute(stmt).mappings()]


def _first_last(conn: Any, request: ReportRequest) -> tuple[Any, Any]:
    """Start times of the first and last query of the period (index lookups)."""
    q = QueryRecord.__table__.c
    stmt = select(func.min(q.started_at), func.max(q.started_at)).where(*_filters(request))
    first, last = conn.execute(stmt).one()
    return _as_utc(first), _as_utc(last)


def _as_utc(value: Any) -> _dt.datetime | None:
    if value is None:
        return None
    if isinstance(value, str):  # SQLite text from an aggregate
        value = _dt.datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=_dt.timezone.utc)
    return value.astimezone(_dt.timezone.utc)


def _idle_rows(conn: Any, engine: Engine, request: ReportRequest) -> list[dict[str, Any]]:
    i = IdleEnergy.__table__.c
    day = _day_expr(engine, i.minute).label("day")
    filters = [~i.device_uuid.like("cpu-%")]
    if request.since is not None:
        filters.append(i.minute >= request.since)
    if request.until is not None:
        filters.append(i.minute < request.until)
    keys = [i.device_uuid, day, i.host]
    stmt = (
        select(
            *keys,
            func.sum(i.idle_energy_j).label("idle_j"),
            func.sum(i.measured_energy_j).label("measured_j"),
        )
        .where(*filters)
        .group_by(*keys)
    )
    return [dict(r) for r in conn.execute(stmt).mappings()]


def _device_gpu_seconds(conn: Any, request: ReportRequest) -> dict[str, float]:
    """GPU-seconds per GPU of every model (the denominator of the idle split)."""
    q = QueryRecord.__table__.c
    stmt = (
        select(q.gpus, func.coalesce(func.sum(q.gpu_seconds), 0.0))
        .where(*_filters(request, with_models=False))
        .group_by(q.gpus)
    )
    out: dict[str, float] = defaultdict(float)
    for gpus, seconds in conn.execute(stmt):
        for uuid, share in _split_gpus(gpus, seconds):
            out[uuid] += share
    return out


def _split_gpus(gpus: str | None, seconds: float) -> list[tuple[str, float]]:
    """A query's GPU-seconds split evenly over the GPUs it ran on."""
    try:
        uuids = json.loads(gpus or "[]")
    except ValueError:
        uuids = []
    if not uuids:
        return []
    return [(str(u), seconds / len(uuids)) for u in uuids]


def _model_counts(rows: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for row in rows:
        out[row["model"]] += row["measured_queries"]
    return dict(out)


def _rates(rows: list[dict[str, Any]]) -> dict[str, float]:
    """USD per unit of each currency whose energy cost has no USD figure in the records."""
    from footprint.pricing import usd_per_unit

    rates: dict[str, float] = {}
    for row in rows:
        currency = row["currency"]
        if row["unconverted_queries"] and currency and currency not in rates:
            found = usd_per_unit(currency)
            if found is not None:
                rates[currency] = found[0]
    return rates


def _cost_expr(rates: dict[str, float]) -> Any:
    """Per-query USD cost in SQL: energy (converted where needed) + compute."""
    q = QueryRecord.__table__.c
    whens = [(q.currency == "USD", q.energy_cost)]
    whens += [
        (q.currency == c, q.energy_cost * literal(r, Float)) for c, r in sorted(rates.items())
    ]
    converted = case(*whens, else_=None)
    return func.coalesce(q.energy_cost_usd, converted, 0.0) + func.coalesce(q.compute_cost, 0.0)


def _percentiles(
    conn: Any, request: ReportRequest, counts: dict[str, int], rates: dict[str, float]
) -> dict[str, dict[str, Any]]:
    """Nearest-rank p50 and p95 of energy, CO2e and cost per query, per model."""
    if not counts:
        return {}
    q = QueryRecord.__table__.c
    thresholds = {
        m: min(_HASH_MODULUS, -(-PERCENTILE_SAMPLE * _HASH_MODULUS // n)) if n else 0
        for m, n in counts.items()
    }
    filters = [*_filters(request), q.energy_j.is_not(None)]
    sampled = {m for m, t in thresholds.items() if t < _HASH_MODULUS}
    if sampled:
        bucket = (q.id * literal(_HASH_MULTIPLIER, BigInteger)) % _HASH_MODULUS
        limit = case(*[(q.model == m, thresholds[m]) for m in sorted(sampled)], else_=_HASH_MODULUS)
        filters.append(bucket < limit)
    metrics = {"energy": q.energy_j, "co2e": q.co2e_g, "cost": _cost_expr(rates)}
    inner_cols = [q.model] + [expr.label(name) for name, expr in metrics.items()]
    inner = select(*inner_cols).where(*filters).subquery("s")
    ranked_cols = [inner.c.model, func.count().over(partition_by=inner.c.model).label("n")]
    for name in metrics:
        ranked_cols.append(inner.c[name])
        ranked_cols.append(
            func.row_number()
            .over(partition_by=inner.c.model, order_by=inner.c[name])
            .label(f"r_{name}")
        )
    ranked = select(*ranked_cols).subquery("r")
    # Nearest rank: ceil(p * n) = (p100 * n + 99) // 100 in integer arithmetic.
    ranks = []
    for p in (50, 95):
        target = (ranked.c.n * p + 99) // 100
        ranks += [ranked.c[f"r_{name}"] == target for name in metrics]
    stmt = select(ranked).where(or_(*ranks))
    out: dict[str, dict[str, Any]] = {}
    for row in conn.execute(stmt).mappings():
        model = row["model"]
        n = row["n"]
        entry = out.setdefault(
            model,
            {"sample": n, "sampled": model in sampled, **{f"{k}_p50": None for k in metrics}},
        )
        for p in (50, 95):
            target = (n * p + 99) // 100
            for name in metrics:
                if row[f"r_{name}"] == target:
                    entry[f"{name}_p{p}"] = row[name]
    return out


# --- rollups ---------------------------------------------------------------------------


def _kwh(joules: float) -> float:
    return joules / JOULES_PER_KWH


def _div(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def _assemble(
    request: ReportRequest,
    rows: list[dict[str, Any]],
    idle: list[dict[str, Any]],
    device_gs: dict[str, float] | None,
    percentiles: dict[str, dict[str, Any]],
    compare_zones: list[str],
    first_last: tuple[Any, Any] = (None, None),
) -> dict[str, Any]:
    from footprint.pricing import usd_per_unit

    notes: list[str] = []
    rate_refs: dict[str, tuple[float, str] | None] = {}
    unpriced = 0
    for row in rows:
        extra = row.pop("unconverted")
        currency = row["currency"]
        if row["unconverted_queries"]:
            if currency not in rate_refs:
                rate_refs[currency] = usd_per_unit(currency) if currency else None
            rate = rate_refs[currency]
            if rate is None:
                unpriced += row["unconverted_queries"]
                row["unconverted_queries"] = 0
            else:
                row["energy_cost_usd"] += extra * rate[0]
        row["idle_j"] = row["idle_co2e_g"] = row["idle_cost_usd"] = 0.0
    for currency, rate in sorted(rate_refs.items(), key=lambda kv: kv[0] or ""):
        if rate is not None and currency != "USD":
            converted = sum(r["unconverted_queries"] for r in rows if r["currency"] == currency)
            notes.append(
                f"{converted:,} queries priced in {currency} had no USD figure stored; their "
                f"energy cost was converted here at {rate[1]}."
            )
    if unpriced:
        notes.append(
            f"{unpriced:,} queries have an energy cost in a currency with no known exchange "
            "rate; it is left out of the USD totals."
        )

    # Idle energy per GPU over the period, spread over that GPU's queries by GPU-seconds.
    idle_by_device: dict[str, float] = defaultdict(float)
    idle_by_day: dict[str, float] = defaultdict(float)
    idle_by_host: dict[str, float] = defaultdict(float)
    measured_by_device: dict[str, float] = defaultdict(float)
    for r in idle:
        idle_by_device[r["device_uuid"]] += r["idle_j"] or 0.0
        measured_by_device[r["device_uuid"]] += r["measured_j"] or 0.0
        idle_by_day[r["day"]] += r["idle_j"] or 0.0
        idle_by_host[r["host"]] += r["idle_j"] or 0.0
    if device_gs is None:
        device_gs = defaultdict(float)
        for row in rows:
            for uuid, share in _split_gpus(row["gpus"], row["gpu_seconds"]):
                device_gs[uuid] += share
    for row in rows:
        idle_j = 0.0
        for uuid, share in _split_gpus(row["gpus"], row["gpu_seconds"]):
            total = device_gs.get(uuid, 0.0)
            if total > 0:
                idle_j += idle_by_device.get(uuid, 0.0) * share / total
        row["idle_j"] = idle_j
        if idle_j:
            if row["energy_j"] > 0:
                row["idle_co2e_g"] = idle_j * row["co2e_g"] / row["energy_j"]
                row["idle_cost_usd"] = idle_j * row["energy_cost_usd"] / row["energy_j"]
            elif row["pue"] and row["intensity_min"] is not None:
                mid = (row["intensity_min"] + row["intensity_max"]) / 2
                row["idle_co2e_g"] = _kwh(idle_j) * row["pue"] * mid
    unallocated_j = 0.0
    if not request.models:
        unallocated_j = sum(j for d, j in idle_by_device.items() if device_gs.get(d, 0.0) <= 0)

    by_model: dict[str, dict[str, float]] = defaultdict(_zero)
    by_day_model: dict[tuple[str, str], dict[str, float]] = defaultdict(_zero)
    by_group: dict[str, dict[str, float]] = defaultdict(_zero)
    by_source: dict[str, int] = defaultdict(int)
    total = _zero()
    for row in rows:
        _add(by_model[row["model"]], row)
        _add(by_day_model[(row["day"], row["model"])], row)
        _add(total, row)
        by_source[row["energy_source"] or "missing"] += row["queries"]
        if request.by == "day":
            _add(by_group[row["day"]], row)
        elif request.by == "region":
            _add(by_group[row["zone"] or "(no zone)"], row)
        elif request.by == "host":
            _add(by_group[row["host"]], row)
    total["idle_j"] += unallocated_j

    models = [
        _figures({"model": name}, acc, percentiles.get(name))
        for name, acc in sorted(by_model.items(), key=lambda kv: (-kv[1]["co2e_g"], kv[0]))
    ]
    totals = _figures({}, total, None)
    totals["unallocated_idle_energy_kwh"] = _kwh(unallocated_j)
    totals["models"] = len(models)

    groups = None
    if request.by != "model":
        key = {"day": "day", "region": "zone", "host": "host"}[request.by]
        groups = []
        for name, acc in sorted(by_group.items()):
            entry = _figures({key: name}, acc, None)
            if request.by == "day" and not request.models:
                _replace_idle(entry, acc, idle_by_day.get(name, 0.0))
            elif request.by == "host" and not request.models:
                _replace_idle(entry, acc, idle_by_host.get(name, 0.0))
            groups.append(entry)

    first, last = first_last
    days = sorted({r["day"] for r in rows} | set(idle_by_day))
    daily = _daily(days, by_day_model, idle_by_day, [m["model"] for m in models])

    sampled = sorted(m for m, p in percentiles.items() if p.get("sampled"))
    if sampled:
        notes.append(
            f"Per-query percentiles of {', '.join(sampled)} are computed on a deterministic "
            f"sample of {PERCENTILE_SAMPLE:,} queries per model (hash of the record id); "
            "totals and means use every query."
        )
    if not rows:
        notes.append("No queries were recorded in this period.")
    missing = by_source.get("missing", 0)
    if missing:
        notes.append(
            f"{missing:,} queries have no GPU energy (energy_source=missing): they count as "
            "queries but add no energy, CO2e or energy cost."
        )
    if by_source.get("simulated"):
        notes.append(
            f"{by_source['simulated']:,} queries were measured on simulated GPUs: their "
            "figures illustrate the method and are not measurements of real hardware."
        )

    report: dict[str, Any] = {
        "schema": REPORT_SCHEMA,
        "period": {
            "since": request.since.isoformat() if request.since else None,
            "until": request.until.isoformat() if request.until else None,
            "first_query": first.isoformat() if first else None,
            "last_query": last.isoformat() if last else None,
            "days": len({r["day"] for r in rows}),
        },
        "filters": {"models": request.models or None, "by": request.by},
        "totals": totals,
        "models": models,
        "daily": daily,
        "measurement": {
            "energy_sources": dict(sorted(by_source.items())),
            "gpus": len(set(idle_by_device) | {d for d, s in device_gs.items() if s > 0}),
            "measured_energy_kwh": _kwh(sum(measured_by_device.values())),
        },
        "factors": _factors(rows),
        "what_if": _what_if(totals, rows, compare_zones),
        "notes": notes,
    }
    if groups is not None:
        report["by"] = request.by
        report["groups"] = groups
    return report


def _replace_idle(entry: dict[str, Any], acc: dict[str, float], idle_j: float) -> None:
    """Use the idle energy measured in this group (a day, a host) instead of shares."""
    ratio = acc["co2e_g"] / acc["energy_j"] if acc["energy_j"] else 0.0
    cost_ratio = acc["energy_cost_usd"] / acc["energy_j"] if acc["energy_j"] else 0.0
    entry["idle_energy_kwh"] = _kwh(idle_j)
    entry["fully_loaded_energy_kwh"] = _kwh(acc["energy_j"] + idle_j)
    entry["fully_loaded_co2e_g"] = acc["co2e_g"] + idle_j * ratio
    entry["fully_loaded_energy_cost_usd"] = acc["energy_cost_usd"] + idle_j * cost_ratio


def _figures(
    head: dict[str, Any], acc: dict[str, float], pct: dict[str, Any] | None
) -> dict[str, Any]:
    """The figures of one model, group or the totals, from its sums."""
    n = int(acc["queries"])
    measured = int(acc["measured_queries"])
    out_tokens = int(acc["output_tokens"])
    energy_kwh = _kwh(acc["energy_j"])
    idle_kwh = _kwh(acc["idle_j"])
    co2e = acc["co2e_g"]
    fl_co2e = co2e + acc["idle_co2e_g"]
    energy_cost = acc["energy_cost_usd"]
    compute = acc["compute_cost_usd"]
    cost = energy_cost + compute
    embodied = acc["embodied_co2e_g"]
    out = {
        **head,
        "queries": n,
        "errors": int(acc["errors"]),
        "input_tokens": int(acc["input_tokens"]),
        "output_tokens": out_tokens,
        "gpu_seconds": acc["gpu_seconds"],
        "energy_kwh": energy_kwh,
        "facility_energy_kwh": _kwh(acc["facility_energy_j"]),
        "idle_energy_kwh": idle_kwh,
        "fully_loaded_energy_kwh": energy_kwh + idle_kwh,
        "co2e_g": co2e,
        "fully_loaded_co2e_g": fl_co2e,
        "market_co2e_g": acc["market_co2e_g"] if acc["market_queries"] else None,
        "embodied_co2e_g": embodied,
        "energy_cost_usd": energy_cost,
        "fully_loaded_energy_cost_usd": energy_cost + acc["idle_cost_usd"],
        "compute_cost_usd": compute,
        "cost_usd": cost,
        "mean_duration_s": _div(acc["duration_s"], n),
        "j_per_output_token": _div(acc["energy_j"], out_tokens),
        "per_1k_output_tokens": {
            "energy_wh": _div(energy_kwh * 1e6, out_tokens),
            "co2e_g": _div(co2e * 1000, out_tokens),
            "cost_usd": _div(cost * 1000, out_tokens),
        },
        "sci": {
            "per_query_g": _div(fl_co2e + embodied, n),
            "per_1k_output_tokens_g": _div((fl_co2e + embodied) * 1000, out_tokens),
        },
    }
    if pct is not None or head.get("model"):
        pct = pct or {}
        out["per_query"] = {
            "energy_wh": {
                "mean": _div(energy_kwh * 1000, measured),
                "p50": _wh(pct.get("energy_p50")),
                "p95": _wh(pct.get("energy_p95")),
            },
            "co2e_g": {
                "mean": _div(co2e, measured),
                "p50": pct.get("co2e_p50"),
                "p95": pct.get("co2e_p95"),
            },
            "cost_usd": {
                "mean": _div(cost, measured),
                "p50": pct.get("cost_p50"),
                "p95": pct.get("cost_p95"),
            },
            "percentile_sample": pct.get("sample", 0),
        }
    return out


def _wh(joules: float | None) -> float | None:
    return None if joules is None else joules / 3600.0


def _daily(
    days: list[str],
    by_day_model: dict[tuple[str, str], dict[str, float]],
    idle_by_day: dict[str, float],
    models: list[str],
) -> list[dict[str, Any]]:
    """Every day from the first to the last (days with nothing included), per model."""
    if not days:
        return []
    start = _dt.date.fromisoformat(days[0])
    end = _dt.date.fromisoformat(days[-1])
    out = []
    day = start
    while day <= end:
        key = day.isoformat()
        per_model = {}
        for model in models:
            acc = by_day_model.get((key, model))
            per_model[model] = {
                "queries": int(acc["queries"]) if acc else 0,
                "energy_kwh": _kwh(acc["energy_j"]) if acc else 0.0,
                "co2e_g": acc["co2e_g"] if acc else 0.0,
                "cost_usd": (acc["energy_cost_usd"] + acc["compute_cost_usd"]) if acc else 0.0,
            }
        out.append(
            {"day": key, "idle_energy_kwh": _kwh(idle_by_day.get(key, 0.0)), "models": per_model}
        )
        day += _dt.timedelta(days=1)
    return out


def _factors(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The distinct factor sets the records were priced with, with their sources."""
    from footprint.pricing import build_factors, embodied_for

    sets: dict[tuple, dict[str, Any]] = {}
    for row in rows:
        key = (
            row["zone"], row["intensity_source"], row["pue"], row["price_per_kwh"],
            row["currency"], row["usd_per_gpu_hour"], row["market_intensity_g_per_kwh"],
        )  # fmt: skip
        entry = sets.get(key)
        if entry is None:
            entry = sets[key] = {
                "zone": row["zone"],
                "intensity_source": row["intensity_source"],
                "intensity_g_per_kwh_min": row["intensity_min"],
                "intensity_g_per_kwh_max": row["intensity_max"],
                "market_intensity_g_per_kwh": row["market_intensity_g_per_kwh"],
                "pue": row["pue"],
                "price_per_kwh": row["price_per_kwh"],
                "currency": row["currency"],
                "usd_per_gpu_hour": row["usd_per_gpu_hour"],
                "queries": 0,
            }
        entry["queries"] += row["queries"]
        for bound, pick in (("intensity_g_per_kwh_min", min), ("intensity_g_per_kwh_max", max)):
            value = row["intensity_min" if pick is min else "intensity_max"]
            if value is not None:
                current = entry[bound]
                entry[bound] = value if current is None else pick(current, value)
    out = sorted(sets.values(), key=lambda e: (-e["queries"], e["zone"] or ""))
    refs: dict[str, dict[str, str]] = {}
    for entry in out:
        zone = entry["zone"]
        if zone and zone not in refs:
            try:
                f = build_factors(zone, env={})
                refs[zone] = {
                    "intensity_ref": f.intensity_ref,
                    "pue_ref": f.pue_ref,
                    "price_ref": f.price_ref,
                    "exchange_rate_ref": f.exchange_rate_ref,
                }
            except Exception as exc:  # a zone from a newer data set
                refs[zone] = {"intensity_ref": f"unknown zone here: {exc}"}
        entry["sources"] = refs.get(zone, {}) if zone else {}
    embodied = embodied_for("gpu")
    if out and embodied:
        for entry in out:
            entry["embodied_kgco2e_per_gpu"] = embodied[0]
            entry["gpu_lifetime_years"] = embodied[1]
            entry["sources"]["embodied_ref"] = embodied[2]
    return out


def cleanest_zones(count: int = CLEANEST_COUNT) -> list[str]:
    """The public cloud regions with the lowest static grid intensity, one per grid zone."""
    from footprint.pricing import list_zones

    zones = [
        z for z in list_zones() if z["kind"] == "cloud" and z.get("status") in (None, "public")
    ]
    zones.sort(key=lambda z: (z["intensity_g_per_kwh"], z["zone"]))
    picked: list[str] = []
    grids: set[str] = set()
    for z in zones:
        grid = z.get("grid_zone") or z["zone"]
        if grid not in grids:
            grids.add(grid)
            picked.append(z["zone"])
        if len(picked) == count:
            break
    return picked


def _what_if(
    totals: dict[str, Any], rows: list[dict[str, Any]], compare: list[str]
) -> dict[str, Any]:
    """The same fully loaded GPU energy priced with other zones' static factors."""
    from footprint.pricing import build_factors, lookup_zone

    basis_kwh = totals["fully_loaded_energy_kwh"]
    as_run_co2e = totals["fully_loaded_co2e_g"]
    as_run_cost = totals["fully_loaded_energy_cost_usd"]
    zones_run = sorted({r["zone"] for r in rows if r["zone"]})
    candidates = [("cleanest", z) for z in cleanest_zones()]
    candidates += [("compare", z) for z in compare]
    out_rows = []
    seen: set[str] = set()
    for reason, zone_id in candidates:
        if zone_id in seen:
            continue
        seen.add(zone_id)
        zone = lookup_zone(zone_id)
        f = build_factors(zone, env={})
        usd_kwh = f.usd_per_kwh
        if usd_kwh is None and f.currency == "USD":
            usd_kwh = f.price_per_kwh
        co2e = basis_kwh * f.pue * f.intensity_g_per_kwh
        cost = None if usd_kwh is None else basis_kwh * f.pue * usd_kwh
        out_rows.append(
            {
                "zone": zone.id,
                "name": zone.name,
                "why": reason,
                "intensity_g_per_kwh": f.intensity_g_per_kwh,
                "pue": f.pue,
                "usd_per_kwh": usd_kwh,
                "co2e_g": co2e,
                "energy_cost_usd": cost,
                "co2e_change": _div(co2e - as_run_co2e, as_run_co2e) if as_run_co2e else None,
                "cost_change": _div(cost - as_run_cost, as_run_cost)
                if cost is not None and as_run_cost
                else None,
            }
        )
    return {
        "basis": "fully loaded GPU energy of the period, priced with each zone's static "
        "grid intensity, its provider's PUE and its electricity price",
        "energy_kwh": basis_kwh,
        "as_run": {"zones": zones_run, "co2e_g": as_run_co2e, "energy_cost_usd": as_run_cost},
        "zones": out_rows,
    }
