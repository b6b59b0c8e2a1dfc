"""Per-query percentiles (nearest rank) of energy, CO2e, cost, latency and time to first
token, per model.

A model with at most ``PERCENTILE_SAMPLE`` measured queries gets them exactly from all of
its queries, read together with other such models' (a few statements for thousands of
models). Above that, from a deterministic hash sample of the model's record ids, stated
in the report. A query's cost is the cost of its ownership (``footprint.reporting.sums``);
a query with no known cost is not in the cost percentiles. Latency (``duration_s``) and
time to first token come from the same queries (those with measured energy or CO2e,
failed ones included); a query that recorded no first token is not in the latter.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import BigInteger, ColumnElement, Float, and_, case, func, literal, or_, select

from footprint.reporting.request import ReportRequest, query_filters
from footprint.storage.models import QueryRecord, table_of

PERCENTILE_SAMPLE = 10_000  # queries per model above which percentiles use a sample
PERCENTILES = (50, 95)
METRICS = ("energy", "co2e", "cost", "latency", "ttft")
_HASH_MULTIPLIER = 2654435761  # Knuth's multiplicative hash: coprime to 10**6
HASH_MODULUS = 1_000_000
SQLITE_MODEL_CHUNK = 500  # models per statement (bound parameters: SQLite allows 999+)
OTHER_MODEL_CHUNK = 10_000  # PostgreSQL: one scan per chunk; 65,535 parameters at most


def energy_cost_usd_expr(rates: dict[str, float]) -> Any:
    """A query's energy cost in USD: its USD figure, else its cost converted at ``rates``
    (USD per unit of each currency whose energy cost has no USD figure); NULL if neither."""
    q = table_of(QueryRecord).c
    if not rates:
        return q.energy_cost_usd
    whens: list[tuple[ColumnElement[bool], ColumnElement[Any]]]
    whens = [(q.currency == "USD", q.energy_cost)]
    whens += [
        (q.currency == c, q.energy_cost * literal(r, Float)) for c, r in sorted(rates.items())
    ]
    return func.coalesce(q.energy_cost_usd, case(*whens, else_=None))


def is_rented() -> Any:
    """``ownership = 'rented'`` (false where the column is absent or NULL)."""
    q = table_of(QueryRecord).c
    if "ownership" not in q:
        return literal(False)
    return func.coalesce(q.ownership, "") == "rented"


def cost_expr(rates: dict[str, float]) -> Any:
    """A query's cost in USD: compute cost, plus its energy cost unless it is rented (the
    GPU-hour price includes the electricity). NULL when no term of it is known."""
    q = table_of(QueryRecord).c
    energy = energy_cost_usd_expr(rates)
    billed = case((is_rented(), None), else_=energy)
    unknown = and_(q.compute_cost.is_(None), billed.is_(None))
    return case(
        (unknown, None),
        else_=func.coalesce(q.compute_cost, 0.0) + func.coalesce(billed, 0.0),
    )


def _rank(n: int, p: int) -> int:
    """Nearest rank (1-based): ceil(p / 100 × n) in integer arithmetic."""
    return (n * p + 99) // 100


def percentiles(
    conn: Any,
    request: ReportRequest,
    measured: dict[str, int],
    rates: dict[str, float],
    sample: int | None = None,
) -> dict[str, dict[str, Any]]:
    """Nearest-rank p50 and p95 of energy, CO2e and cost per query, per model.

    Exact from every measured query of a model with at most ``sample`` (default
    ``PERCENTILE_SAMPLE``) of them; else from a deterministic sample of about that many.
    """
    limit = PERCENTILE_SAMPLE if sample is None else sample
    out: dict[str, dict[str, Any]] = {}
    models = sorted(m for m, n in measured.items() if n)
    for model in models:
        out[model] = {"sample": measured[model], "of": measured[model], "sampled": []}
    if models:
        _read(conn, request, models, measured, rates, limit, out)
    return out


def _read(
    conn: Any,
    request: ReportRequest,
    models: list[str],
    measured: dict[str, int],
    rates: dict[str, float],
    limit: int,
    out: dict[str, dict[str, Any]],
) -> None:
    """Every measured query's figures, or a hash sample of them, a few models at a time.

    SQLite: a sampled model has its own statement through the (model, started_at) index,
    the sample test on the record id evaluated on the index entries, so that only sampled
    rows are read; the other models go through the same index ``SQLITE_MODEL_CHUNK`` at a
    time. Other databases: one statement (one scan) per ``OTHER_MODEL_CHUNK`` models.
    Values are held for one statement's models at a time.
    """
    q = table_of(QueryRecord).c
    thresholds = {m: min(HASH_MODULUS, -(-limit * HASH_MODULUS // measured[m])) for m in models}
    sampled = {m for m, t in thresholds.items() if t < HASH_MODULUS}
    bucket = (q.id * literal(_HASH_MULTIPLIER, BigInteger)) % HASH_MODULUS
    filters = [
        *query_filters(request, with_models=False),
        or_(q.energy_j.is_not(None), q.co2e_g.is_not(None)),
    ]
    columns = (
        q.model,
        q.energy_j,
        q.co2e_g,
        cost_expr(rates),
        q.duration_s,
        q.time_to_first_token_s,
    )
    if conn.dialect.name == "sqlite":
        batches = [[m] for m in models if m in sampled]
        whole = [m for m in models if m not in sampled]
        size = SQLITE_MODEL_CHUNK
    else:
        batches, whole, size = [], models, OTHER_MODEL_CHUNK
    batches += [whole[i : i + size] for i in range(0, len(whole), size)]
    for batch in batches:
        sample = []
        picked = [m for m in batch if m in sampled]
        if len(batch) == 1:
            where_model = q.model == batch[0]
            if picked:
                sample.append(bucket < thresholds[batch[0]])
        else:
            where_model = q.model.in_(batch)
            if picked:
                cut = case(*[(q.model == m, thresholds[m]) for m in picked], else_=HASH_MODULUS)
                sample.append(bucket < cut)
        stmt = select(*columns).where(where_model, *filters, *sample)
        values: dict[str, dict[str, list[float]]] = {m: {k: [] for k in METRICS} for m in batch}
        for model, energy, co2e, cost, latency, first in conn.execute(stmt).all():
            lists = values[model]
            lists["latency"].append(latency)
            if first is not None:
                lists["ttft"].append(first)
            if energy is not None:
                lists["energy"].append(energy)
                if cost is not None:
                    lists["cost"].append(cost)
            if co2e is not None:
                lists["co2e"].append(co2e)
        for model in batch:
            entry = out[model]
            if model in sampled:
                entry["sampled"] = list(METRICS)
                entry["sample"] = len(values[model]["energy"])
            for name in METRICS:
                ordered = sorted(values[model][name])
                for p in PERCENTILES:
                    entry[f"{name}_p{p}"] = ordered[_rank(len(ordered), p) - 1] if ordered else None
