"""``build_report``: every figure of a report as plain data (the JSON report).

The steps, each in its own module:

1. open the database (``database``: read-only where it may not be written) and bring the
   hourly rollups up to date;
2. idle energy and GPU time held per GPU, day and host (``capacity``);
3. the grouped sums, from the rollups or a scan, folded per model, group, day and in total
   (``grouped``, ``sums``), then the idle energy and idle GPU-hours spread over them
   (``Fold.settle``);
4. with ``--by tag:NAME``, one scan of the queries grouped by that tag (``tags``);
5. per-query percentiles (``percentiles``);
6. the figures, the what-if table and the notes (``figures``, ``whatif``, ``notes``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from footprint.reporting import notes as report_notes
from footprint.reporting.accuracy import published_accuracy
from footprint.reporting.capacity import Capacity, device_names, idle_rows
from footprint.reporting.database import open_report_engine, prepare_rollups, read_error
from footprint.reporting.figures import (
    TOP_MODELS,
    daily,
    factor_list,
    figures,
    kwh,
)
from footprint.reporting.grouped import first_last, read_sums
from footprint.reporting.overlap import overlap_note
from footprint.reporting.percentiles import percentiles
from footprint.reporting.references import references
from footprint.reporting.request import (
    ReportError,
    ReportRequest,
    as_utc,
    check_by,
    group_key,
    period_words,
    tag_name,
)
from footprint.reporting.sums import Fold, add, zero
from footprint.reporting.tags import TagScan, reconcile
from footprint.reporting.whatif import resolve_compare, what_if
from footprint.storage.models import QueryRecord, table_of

REPORT_SCHEMA = "footprint.report/1"
ProgressFn = Callable[[str], None]


def build_report(
    request: ReportRequest, progress: ProgressFn | None = None, *, use_rollups: bool = True
) -> dict[str, Any]:
    """Every figure of the report as plain data (the JSON output, and what renderers use).

    ``use_rollups=False`` reads every sum from a scan of ``queries`` (what the report
    falls back to by itself when the rollups cannot be used): for checks.
    """
    step = progress or (lambda _name: None)
    check_by(request.by)
    request = replace(request, since=as_utc(request.since), until=as_utc(request.until))
    if request.since and request.until and request.since >= request.until:
        raise ReportError(
            f"--since {request.since.isoformat()} is not before --until {request.until.isoformat()}"
        )
    compare_zones = resolve_compare(request.compare)
    engine = open_report_engine(request.db)
    notes: list[str] = []
    tagged = None
    scan: TagScan | None = None
    try:
        step("updating rollups")
        problem = prepare_rollups(engine) if use_rollups else "not asked for"
        with engine.connect() as conn:
            step("checking models")
            _check_models(conn, request.models)
            step("aggregating idle energy")
            capacity = Capacity(idle_rows(conn, engine, request))
            capacity.device_names = device_names(conn)
            step("aggregating queries")
            fold, note = read_sums(conn, engine, request, problem)
            if note and use_rollups:
                notes.append(note)
            unallocated = _settle(fold, capacity, request)
            if tag_name(request.by) is not None:
                # In the background, on connections of its own, while the rest is read.
                scan = TagScan(engine, request, fold)
            period = first_last(conn, request)
            step("computing percentiles")
            found = percentiles(conn, request, fold.measured, fold.rates)
            step("checking for GPUs measured by several processes")
            twice = overlap_note(conn, request.since, request.until)
            if twice:
                notes.append(twice)
            if scan is not None:
                step("grouping by tag")
                tagged, scan = scan.result(), None
    except SQLAlchemyError as exc:
        raise ReportError(read_error(request.db, exc)) from None
    finally:
        if scan is not None:
            scan.close()
        engine.dispose()
    if not fold.rows and not request.allow_empty:
        raise ReportError(
            f"no queries in {period_words(request)}"
            + (f" for {', '.join(request.models)}" if request.models else "")
            + " (use --allow-empty for an explicit empty report)"
        )
    step("rolling up")
    return assemble(
        request, fold, capacity, unallocated, found, compare_zones, period, notes, tagged
    )


def _check_models(conn: Any, models: list[str] | None) -> None:
    if not models:
        return
    q = table_of(QueryRecord).c
    known = {r[0] for r in conn.execute(select(q.model).distinct())}
    unknown = [m for m in models if m not in known]
    if unknown:
        listed = ", ".join(sorted(known)[:12]) or "none: the database has no queries"
        raise ReportError(f"unknown model {', '.join(map(repr, unknown))}; known: {listed}")


def _settle(fold: Fold, capacity: Capacity, request: ReportRequest) -> tuple[float, float]:
    """Spread each GPU's idle energy and idle GPU-seconds over the sums; the idle energy
    and seconds held of GPUs no query of the period ran on go into the totals (without
    --model). Returns those two."""
    busy = fold.denominators()
    fold.settle(capacity.idle_j, capacity.idle_seconds(busy))
    if request.models:
        return 0.0, 0.0
    joules, seconds = capacity.unallocated(busy)
    fold.total["idle_j"] += joules
    fold.total["idle_gpu_s"] += seconds
    return joules, seconds


def assemble(
    request: ReportRequest,
    fold: Fold,
    capacity: Capacity,
    unallocated: tuple[float, float],
    found: dict[str, dict[str, Any]],
    compare_zones: list[str],
    period: tuple[Any, Any] = (None, None),
    notes: list[str] | None = None,
    tagged: list[tuple[Any, dict[str, Any]]] | None = None,
) -> dict[str, Any]:
    """The report's data from the settled sums."""
    held_known = capacity.known
    ranked = sorted(fold.by_model.items(), key=lambda kv: (-kv[1]["co2e_g"], kv[0]))
    models = [figures({"model": name}, acc, found.get(name), held_known) for name, acc in ranked]
    for row in models:  # where each model's energy comes from (cpu: a CPU-only host)
        row["energy_sources"] = dict(sorted(fold.sources_by_model[row["model"]].items()))
    others = None
    if len(ranked) > TOP_MODELS + 1:
        rest = zero()
        for _, acc in ranked[TOP_MODELS:]:
            add(rest, acc)
        count = len(ranked) - TOP_MODELS
        head = {"model": None, "label": f"all others ({count:,} models)", "models": count}
        others = figures(head, rest, {}, held_known)
        del others["per_query"]["percentile_sample"]
    totals = figures({}, fold.total, None, held_known)
    unallocated_j, unallocated_s = unallocated
    totals["unallocated_idle_energy_kwh"] = kwh(unallocated_j)
    totals["unallocated_gpu_hours_held"] = unallocated_s / 3600.0 if held_known else None
    totals["models"] = len(models)

    groups = None
    if tagged is not None:
        key = group_key(request.by)
        tagged = reconcile(tagged, fold.total)
        groups = [figures({key: value}, sums, None, held_known) for value, sums in tagged]
    elif request.by != "model":
        key = group_key(request.by)
        groups = []
        for name, acc in sorted(fold.by_group.items()):
            if request.by in ("day", "host") and not request.models:
                acc.update(capacity.group_idle(request.by, name, fold))
            groups.append(figures({key: name}, acc, None, held_known))

    first, last = period
    days = sorted(set(fold.by_day) | set(capacity.day_idle_j))
    series = daily(
        days,
        fold.by_day,
        capacity.day_idle_j,
        capacity.day_held_s,
        [name for name, _ in ranked],
        held_known,
    )

    bounded, measured_n = int(fold.total["uncertainty_n"]), int(fold.total["energy_n"])
    notes = list(notes or [])
    notes += report_notes.currency_notes(fold)
    notes += report_notes.unknown_notes(totals, fold)
    notes += report_notes.capacity_notes(totals, held_known, unallocated_s)
    notes += report_notes.sample_notes(found)
    notes += report_notes.measurement_notes(fold, capacity.lost_j, bounded, measured_n)

    sources: dict[str, set[str]] = {}
    for entry in fold.factor_sets.values():
        if entry["zone"]:
            sources.setdefault(entry["zone"], set()).add(entry["intensity_source"] or "static")
    device_gs = fold.denominators()
    report: dict[str, Any] = {
        "schema": REPORT_SCHEMA,
        "period": {
            "since": request.since.isoformat() if request.since else None,
            "until": request.until.isoformat() if request.until else None,
            "first_query": first.isoformat() if first else None,
            "last_query": last.isoformat() if last else None,
            "days": len(fold.by_day),
        },
        "filters": {"models": request.models or None, "by": request.by},
        "totals": totals,
        "models": models,
        # the models after the first TOP_MODELS by CO2e, added up (None when all are shown)
        "others": others,
        "daily": series,
        "capacity": _capacity(capacity, device_gs, fold),
        "measurement": {
            "energy_sources": dict(sorted(fold.by_source.items())),
            "gpus": len(set(capacity.held_s) | {d for d, s in device_gs.items() if s > 0}),
            "measured_energy_kwh": kwh(sum(capacity.measured_j.values())),
            "measured_queries": measured_n,  # with GPU energy (energy_j not NULL)
            "uncertainty_queries": bounded,  # of them, with an energy uncertainty bound
            "accuracy": published_accuracy(),
        },
        # published prices and energy per 1M tokens of the models that have some
        "references": references([m["model"] for m in models]),
        "factors": factor_list(fold.factor_sets),
        "what_if": what_if(totals, fold.zones, sources, compare_zones),
        "notes": notes,
    }
    if groups is not None:
        report["by"] = request.by
        report["groups"] = groups
    return report


def _capacity(capacity: Capacity, busy: dict[str, float], fold: Fold) -> dict[str, Any]:
    """GPU-hours held and busy per GPU (every GPU measured or used in the period), with
    the hosts it was measured on and the models that ran on it."""
    hosts: dict[str, set[str]] = {u: set(h) for u, h in fold.device_hosts.items()}
    for host, uuid in capacity.group_held_s["host"]:
        hosts.setdefault(uuid, set()).add(host)
    gpus = []
    for uuid in sorted(
        set(capacity.held_s) | {d for d, s in busy.items() if s > 0},
        key=lambda u: (sorted(hosts.get(u, ())), u),
    ):
        held = capacity.held_s.get(uuid)
        busy_h = busy.get(uuid, 0.0) / 3600.0
        held_h = None if held is None else max(held / 3600.0, busy_h)
        named = capacity.device_names.get(uuid, {})
        gpus.append(
            {
                "gpu": uuid,
                "index": named.get("index"),
                "name": named.get("name"),
                "hosts": sorted(hosts.get(uuid, ())),
                "models": sorted(fold.device_models.get(uuid, ())),
                "gpu_hours_held": held_h,
                "gpu_hours_busy": busy_h,
                "utilisation": busy_h / held_h if held_h else None,
                "idle_energy_kwh": kwh(capacity.idle_j[uuid]) if held is not None else None,
            }
        )
    return {"gpus": gpus}
