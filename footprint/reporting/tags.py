"""Chargeback: ``--by tag:NAME`` groups the period's queries by one of their tags.

Tags are stored as JSON text in ``queries.tags``; the hourly rollups do not carry them, so
this scans the period's queries, grouped by the tag's value (SQLite
``json_extract(tags, '$."NAME"')``, PostgreSQL ``json_extract_path_text(tags::json,
NAME)``; NAME is checked to be a simple identifier by ``request.check_by`` and is passed
as a bound parameter). Values are text on both databases (``true``, ``42``); queries
without the tag form one group whose value is null.

Each group's figures are the same sums as a model's (``footprint.reporting.sums``), read
from its queries directly: counts of the queries that carry each figure, the energy cost
converted at the rates the rest of the report uses, the part of it that is billed (not
rented). Its idle shares use the factors of ``Fold.settle`` (idle joules and idle
GPU-seconds per GPU-second, per set of GPUs), so the groups add up to the totals; idle
CO2e and energy cost are shared in proportion to each query's idle share times its own
CO2e per joule (PUE × grid intensity) and energy cost per joule, then scaled to the
totals' idle CO2e and cost (``reconcile``): the totals price a rollup row's idle share
at the row's average per joule, which differs where a factor changed within the hour.
Counts the whole period shows to be none or all of its queries (``_uniform``: no market
factor, every GPU rented, …) are not counted again.
Tags that are not JSON (a row written around footprint's store) count as without the tag
on both databases: SQLite tests ``json_valid``; PostgreSQL 15 has no such test, so when
its cast fails the scan runs again with those rows' ids, found by reading the period's
tags in Python (``_unreadable_ids``), left out of the cast.

Speed (a million queries): each row is read once, in a subquery the database evaluates
once per row (``OFFSET 0`` keeps SQLite from flattening it into the grouped query, which
would evaluate the tag and the factor lookups once per sum). Grouping sorts every row,
so on large periods the id range is cut into ``workers`` slices scanned at once, each on
its own connection (SQLite works outside Python's lock), and the slices' sums added up.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Engine,
    Float,
    Text,
    any_,
    case,
    cast,
    func,
    literal,
    select,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSON
from sqlalchemy.exc import DataError

from footprint.reporting.percentiles import energy_cost_usd_expr, is_rented
from footprint.reporting.request import ReportRequest, query_filters, tag_name
from footprint.reporting.sums import Fold
from footprint.storage.models import QueryRecord, table_of

JOULES_PER_KWH = 3_600_000.0
PARALLEL_ROWS = 200_000  # ids in the period from which the scan is cut into slices
MAX_WORKERS = 4
ERROR, NO_PRICE, NO_GPU_PRICE, RENTED, OWNED = 1, 2, 4, 8, 16  # bits of ``flags``
_COUNTS = frozenset(
    {
        "queries",
        "errors",
        "input_tokens",
        "output_tokens",
        "energy_n",
        "uncertainty_n",
        "co2e_n",
        "market_n",
        "embodied_n",
        "energy_cost_n",
        "billed_energy_cost_n",
        "compute_n",
        "no_energy",
        "no_electricity_price",
        "no_gpu_price",
        "rented_queries",
        "owned_queries",
    }
)


def tag_expr(dialect: str, name: str, unreadable: tuple[int, ...] = ()) -> Any:
    """The text value of tag ``name`` of a query (NULL without it, or with tags that are
    not JSON: on PostgreSQL those queries' ids are given as ``unreadable``)."""
    q = table_of(QueryRecord).c
    if dialect == "sqlite":
        path = literal(f'$."{name}"')  # a member name in double quotes: any identifier
        # Booleans come back from json_extract as 1 and 0: spelled as JSON instead. Tags
        # that are not JSON (written around footprint's store) count as without the tag.
        value: ColumnElement[Any] = case(
            {"true": "true", "false": "false"},
            value=func.json_type(q.tags, path),
            else_=cast(func.json_extract(q.tags, path), Text),
        )
        return case((func.json_valid(q.tags) != 0, value), else_=None)
    value = func.json_extract_path_text(cast(q.tags, JSON), literal(name))
    if not unreadable:
        return value
    # CASE does not evaluate the branch it does not take: those rows are never cast.
    skipped = q.id == any_(literal(list(unreadable), ARRAY(BigInteger)))
    return case((skipped, None), else_=value)


def _unreadable_ids(engine: Engine, request: ReportRequest) -> tuple[int, ...]:
    """Ids of the period's queries whose tags are not a JSON text (read in Python)."""
    q = table_of(QueryRecord).c
    bad = []
    with engine.connect() as conn:
        rows = conn.execution_options(yield_per=10_000).execute(
            select(q.id, q.tags).where(*query_filters(request))
        )
        for query_id, tags_text in rows:
            try:
                json.loads(tags_text)
            except (TypeError, ValueError):
                bad.append(query_id)
    return tuple(bad)


def _factor_case(factors: dict[str | None, float]) -> Any:
    """A query's factor by its set of GPUs (``CASE gpus WHEN … END``), 0 for the others."""
    q = table_of(QueryRecord).c
    known = {g: f for g, f in factors.items() if g is not None and f}
    if not known:
        return literal(0.0, Float)
    whens = {g: literal(f, Float) for g, f in sorted(known.items())}
    return case(whens, value=q.gpus, else_=literal(0.0, Float))


# Bits of ``flags`` and the sums that count them.
FLAG_SUMS = (
    (ERROR, "errors"),
    (NO_PRICE, "no_electricity_price"),
    (NO_GPU_PRICE, "no_gpu_price"),
    (RENTED, "rented_queries"),
    (OWNED, "owned_queries"),
)


def _uniform(fold: Fold) -> dict[str, str]:
    """Counts the whole period shows to be none or all of its queries (``"none"`` or
    ``"all"``): the same holds in every group, so the scan need not count them."""
    total = fold.total
    out = {}
    for _, key in FLAG_SUMS:
        if total[key] == 0:
            out[key] = "none"
        elif total[key] == total["queries"]:
            out[key] = "all"
    for key in ("market_n", "uncertainty_n"):
        if total[key] == 0:
            out[key] = "none"
    return out


def _statement(
    dialect: str,
    request: ReportRequest,
    fold: Fold,
    ids: tuple | None,
    unreadable: tuple[int, ...] = (),
) -> Any:
    """The grouped sums of one slice of the period's queries (``ids``: [a, b), or all)."""
    name = tag_name(request.by)
    assert name is not None
    uniform = _uniform(fold)
    q = table_of(QueryRecord).c
    energy_cost = energy_cost_usd_expr(fold.rates)
    rented = is_rented()
    where = query_filters(request)
    if ids is not None:
        where += [q.id >= ids[0], q.id < ids[1]]
    owned = (q.ownership == "owned") if "ownership" in q else literal(False)
    tests = {
        ERROR: q.status != "ok",
        NO_PRICE: q.price_per_kwh.is_(None),
        NO_GPU_PRICE: q.usd_per_gpu_hour.is_(None),
        RENTED: rented,
        OWNED: owned,
    }
    # One small integer for the yes/no facts of a query (fewer columns to sort), of those
    # that differ between its queries.
    counted = [(bit, key) for bit, key in FLAG_SUMS if key not in uniform]
    flags: Any = literal(0)
    for bit, _ in counted:
        flags = flags + case((tests[bit], bit), else_=0)
    columns = [
        tag_expr(dialect, name, unreadable).label("t"),
        flags.label("flags"),
        q.input_tokens.label("input_tokens"),
        q.output_tokens.label("output_tokens"),
        q.gpu_seconds.label("s"),
        q.duration_s.label("duration_s"),
        q.energy_j.label("e"),
        q.energy_uncertainty_j.label("u"),
        (q.energy_j * q.pue).label("fe"),
        q.co2e_g.label("c"),
        q.market_co2e_g.label("mk"),
        q.embodied_co2e_g.label("m"),
        energy_cost.label("k"),
        q.compute_cost.label("p"),
        # CO2e per joule, what the query's share of idle energy is priced at: PUE ×
        # grid intensity (its CO2e / energy, and known where it has no energy too).
        (q.pue * q.intensity_g_per_kwh / JOULES_PER_KWH).label("c_per_j"),
        _factor_case({g: f[0] for g, f in fold.factors.items()}).label("per_j"),
        _factor_case({g: f[1] for g, f in fold.factors.items()}).label("per_s"),
    ]
    inner = select(*columns).where(*where).offset(0).subquery()
    c = inner.c
    total = func.sum
    positive = func.nullif(c.e, 0.0)
    idle_j = c.s * c.per_j
    sums = [
        func.count().label("queries"),
        total(c.input_tokens).label("input_tokens"),
        total(c.output_tokens).label("output_tokens"),
        total(c.s).label("gpu_seconds"),
        total(c.duration_s).label("duration_s"),
        total(c.e).label("energy_j"),
        func.count(c.e).label("energy_n"),
        total(c.fe).label("facility_energy_j"),
        total(c.c).label("co2e_g"),
        func.count(c.c).label("co2e_n"),
        total(c.m).label("embodied_co2e_g"),
        func.count(c.m).label("embodied_n"),
        total(c.k).label("energy_cost_usd"),
        func.count(c.k).label("energy_cost_n"),
        total(c.p).label("compute_cost_usd"),
        func.count(c.p).label("compute_n"),
        (func.count() - func.count(c.e)).label("no_energy"),
        total(idle_j).label("idle_j"),
        total(idle_j * c.c_per_j).label("idle_co2e_g"),
        total((idle_j * c.k).op("/")(positive)).label("idle_energy_cost_usd"),
        total(c.s * c.per_s).label("idle_gpu_s"),
        total(c.p * c.per_s).label("idle_compute_cost_usd"),
        total(c.m * c.per_s).label("idle_embodied_co2e_g"),
    ]
    sums += [(total(c.flags.op("&")(bit)) / bit).label(key) for bit, key in counted]
    if "uncertainty_n" not in uniform:
        sums += [total(c.u).label("energy_uncertainty_j"), func.count(c.u).label("uncertainty_n")]
    if "market_n" not in uniform:
        sums += [total(c.mk).label("market_co2e_g"), func.count(c.mk).label("market_n")]
    if "rented_queries" not in uniform:  # some rented, some not: the billed part differs
        billed = case((c.flags.op("&")(RENTED) != 0, None), else_=c.k)
        sums += [
            total(billed).label("billed_energy_cost_usd"),
            func.count(billed).label("billed_energy_cost_n"),
            total((idle_j * billed).op("/")(positive)).label("idle_billed_energy_cost_usd"),
        ]
    return select(c.t, *sums).group_by(c.t)


def _complete(sums: dict[str, Any], uniform: dict[str, str]) -> None:
    """The sums the scan left out, from what the whole period shows (``_uniform``)."""
    for key, how in uniform.items():
        sums[key] = sums["queries"] if how == "all" else 0
    if "uncertainty_n" in uniform:
        sums["energy_uncertainty_j"] = 0.0
    if "market_n" in uniform:
        sums["market_co2e_g"] = 0.0
    if "billed_energy_cost_usd" not in sums:
        everything = uniform.get("rented_queries") == "none"  # none rented: all billed
        sums["billed_energy_cost_usd"] = sums["energy_cost_usd"] if everything else 0.0
        sums["billed_energy_cost_n"] = sums["energy_cost_n"] if everything else 0
        sums["idle_billed_energy_cost_usd"] = sums["idle_energy_cost_usd"] if everything else 0.0


def _slices(conn: Any, request: ReportRequest, workers: int) -> list[tuple | None]:
    """Id ranges [a, b) covering the period's queries, one per worker (one: no range)."""
    if workers <= 1:
        return [None]
    q = table_of(QueryRecord).c
    low, high = conn.execute(
        select(func.min(q.id), func.max(q.id)).where(*query_filters(request))
    ).one()
    if low is None or high - low < PARALLEL_ROWS:
        return [None]
    step = (high - low) // workers + 1
    return [(low + i * step, low + (i + 1) * step) for i in range(workers)]


def _read(engine: Engine, statement: Any) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(row) for row in conn.execute(statement).mappings()]


class TagScan:
    """The scan of ``tag_groups`` running in the background (``result`` waits for it), on
    connections of its own, while the report reads the rest."""

    def __init__(
        self, engine: Engine, request: ReportRequest, fold: Fold, workers: int | None = None
    ) -> None:
        if workers is None:
            workers = min(MAX_WORKERS, os.cpu_count() or 1)
        with engine.connect() as conn:
            self._dialect = conn.dialect.name
            self._slices = _slices(conn, request, workers)
        self._engine, self._request, self._fold = engine, request, fold
        self._uniform = _uniform(fold)
        self._pool = ThreadPoolExecutor(len(self._slices), thread_name_prefix="footprint-tags")
        self._parts = self._submit(())

    def _submit(self, unreadable: tuple[int, ...]) -> list[Any]:
        return [
            self._pool.submit(
                _read,
                self._engine,
                _statement(self._dialect, self._request, self._fold, ids, unreadable),
            )
            for ids in self._slices
        ]

    def result(self) -> list[tuple[Any, dict[str, Any]]]:
        """(tag value, accumulator sums) per value of the tag, value order (null first)."""
        try:
            try:
                parts = [part.result() for part in self._parts]
            except DataError:  # PostgreSQL: tags that are not JSON
                if self._dialect == "sqlite":
                    raise
                for part in self._parts:
                    part.cancel()
                self._parts = self._submit(_unreadable_ids(self._engine, self._request))
                parts = [part.result() for part in self._parts]
            return _merge(parts, self._uniform)
        finally:
            self.close()

    def close(self) -> None:
        for part in self._parts:
            part.cancel()
        self._pool.shutdown(wait=True)


def tag_groups(
    engine: Engine, request: ReportRequest, fold: Fold, workers: int | None = None
) -> list[tuple[Any, dict[str, Any]]]:
    """(tag value, accumulator sums) per value of the tag, value order (null first).

    A large period is scanned in ``workers`` slices at once (default: the CPUs, at most
    ``MAX_WORKERS``), each on a connection of its own.
    """
    return TagScan(engine, request, fold, workers).result()


_PRICED_IDLE = ("idle_co2e_g", "idle_energy_cost_usd", "idle_billed_energy_cost_usd")


def reconcile(
    tagged: list[tuple[Any, dict[str, Any]]], total: dict[str, Any]
) -> list[tuple[Any, dict[str, Any]]]:
    """Scale the groups' idle CO2e and energy costs to add up to ``total``'s (see the
    module doc); their split among the groups is kept."""
    for key in _PRICED_IDLE:
        summed = sum(sums[key] for _, sums in tagged)
        if summed > 0:
            factor = total[key] / summed
            for _, sums in tagged:
                sums[key] *= factor
    return tagged


def _merge(
    parts: list[list[dict[str, Any]]], uniform: dict[str, str]
) -> list[tuple[Any, dict[str, Any]]]:
    merged: dict[Any, dict[str, Any]] = {}
    for rows in parts:
        for row in rows:
            value = row.pop("t")
            sums = {
                key: int(item or 0) if key in _COUNTS else float(item or 0.0)
                for key, item in row.items()
            }
            _complete(sums, uniform)
            into = merged.get(value)
            if into is None:
                merged[value] = sums
            else:
                for key, item in sums.items():
                    into[key] += item
    return sorted(merged.items(), key=lambda pair: (pair[0] is not None, str(pair[0] or "")))
