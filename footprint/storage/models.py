"""The tables: one row per query, hourly rollups of them, idle energy per device per
minute, losses, schema metadata.

Pricing and carbon columns are nullable: they are filled by the pricing step when a
zone is known, and a report can re-apply other factors later from the energy columns.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Column, DateTime, Index, Table, UniqueConstraint, inspect, text
from sqlmodel import Field, SQLModel

from footprint.storage.columns import PRICING_COLUMNS

__all__ = [
    "PRICING_COLUMNS",
    "IdleEnergy",
    "Device",
    "Loss",
    "Meta",
    "QueryRecord",
    "QueryRollup",
    "SCHEMA_VERSION",
    "table_of",
]

# 2: energy_uncertainty_j (queries, query_rollups); 3: lost_energy_j, and ownership and
# gpu_price_source (queries, query_rollups); 4: span_key (queries), indexed; 5: trace_id
# (indexed) and span_id (queries); 6: devices; 7: prefill_energy_j and decode_energy_j
# (queries), their sums and the token counts of the queries carrying them (query_rollups)
SCHEMA_VERSION = 7


def _utc_column(index: bool = False) -> Column:
    return Column(DateTime(timezone=True), nullable=False, index=index)


class QueryRecord(SQLModel, table=True):
    """One tracked inference call. Never holds prompts or responses: counts only.

    Money (all nullable; NULL means not known, never 0):

    - ``energy_cost`` = energy_j / 3.6e6 x ``pue`` x ``price_per_kwh``, in ``currency``;
      ``energy_cost_usd`` the same in USD (NULL without a price or an exchange rate).
    - ``compute_cost`` (USD) = ``gpu_seconds`` x ``usd_per_gpu_hour`` / 3600; NULL when
      ``usd_per_gpu_hour`` is.
    - ``usd_per_gpu_hour`` depends on ``ownership``, and ``gpu_price_source`` says where
      it came from (or, when it is NULL, why it is not known):

      - ``rented`` (default in a cloud region): the on-demand price of that provider for
        that exact GPU model (``regions/gpu_prices.csv``). It already pays for the
        electricity, so the query's cost is ``compute_cost`` alone: ``energy_cost`` is
        shown beside it, never added to it. A rented GPU outside aws/gcp/azure has no
        shipped price (NULL unless the user sets ``usd_per_gpu_hour``).
      - ``owned`` (default elsewhere): the GPU's purchase price amortised per hour
        (``regions/gpu_capex.csv``: purchase_usd / (lifetime_years x 8760 h); the source
        says whether that price is the GPU alone or a system's share per GPU). The
        query's cost is ``compute_cost`` + ``energy_cost_usd`` (``energy_cost`` in
        ``currency`` when no exchange rate is known).
      - the user's ``usd_per_gpu_hour`` wins in both cases (source ``user override``).

    A total adds ``compute_cost`` for every record and ``energy_cost_usd`` only for
    ``ownership = 'owned'``; a record whose term is NULL is counted as unknown, not 0.
    ``ownership`` is NULL on records that were not priced and on those written before
    schema version 3.

    ``span_key`` (schema version 4) names the call a daemon stored, as its client named
    it: ``<session>:<span id>``, where the session is a random token of the client
    process. A client that lost its connection before the daemon acknowledged an end
    sends it again; the next daemon looks its key up (``ix_queries_span_key``) and stores
    it only if it is not there. NULL on records written in-process, and before version 4.

    ``trace_id`` and ``span_id`` (schema version 5) are the caller's OpenTelemetry trace
    context when the call began: the span current then, or the W3C ``traceparent`` an
    HTTP request came with (middleware, proxy), in lowercase hex (32 and 16 digits), to
    join a record with its trace (``ix_queries_trace_id``). NULL when the call had none,
    and before version 5.

    ``prefill_energy_j`` and ``decode_energy_j`` (schema version 7) split ``energy_j`` at
    the call's first token: what its GPUs gave it before (the prefill: reading the
    prompt) and after (the decode: writing the answer); they sum to ``energy_j``. NULL
    when the call has no time to first token or token counts (the attribution is told
    both with the call's end), when part of it was not measured, and before version 7.
    """

    __tablename__ = "queries"
    __table_args__ = (
        Index("ix_queries_model_started_at", "model", "started_at"),
        Index("ix_queries_span_key", "span_key"),
        Index("ix_queries_trace_id", "trace_id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    model: str  # indexed with started_at (ix_queries_model_started_at)
    tags: str = "{}"  # JSON object of the tags given to track()/query()
    started_at: datetime = Field(sa_column=_utc_column(index=True))
    ended_at: datetime = Field(sa_column=_utc_column())
    duration_s: float
    time_to_first_token_s: float | None = None
    status: str = "ok"  # ok | error
    error_type: str | None = None  # exception class name, never its message
    input_tokens: int | None = Field(default=None, sa_type=BigInteger)  # 64-bit everywhere
    output_tokens: int | None = Field(default=None, sa_type=BigInteger)
    gpus: str = "[]"  # JSON list of GPU UUIDs the query was attributed on
    gpu_seconds: float | None = None  # Σ over its GPUs of its time share of each interval
    energy_j: float | None = None  # attributed GPU energy; None when energy_source=missing
    energy_source: str = "missing"  # counter | power | simulated | estimated | missing
    # Upper bound on |error| of energy_j, in joules: None when energy_j is None or not
    # fully measured (estimated), and on records written before schema version 2.
    energy_uncertainty_j: float | None = None
    cpu_energy_j: float | None = None
    cpu_energy_source: str = "missing"
    host: str
    pid: int
    # Filled by pricing (nullable until a zone and factors are applied).
    zone: str | None = None
    intensity_g_per_kwh: float | None = None
    intensity_source: str | None = None
    market_intensity_g_per_kwh: float | None = None
    pue: float | None = None
    price_per_kwh: float | None = None
    currency: str | None = None
    usd_per_gpu_hour: float | None = None
    co2e_g: float | None = None
    market_co2e_g: float | None = None
    embodied_co2e_g: float | None = None
    energy_cost: float | None = None  # in ``currency``
    energy_cost_usd: float | None = None
    compute_cost: float | None = None  # USD: GPU-seconds x $/GPU-hour
    # Schema version 3, last so that fresh and migrated tables keep one column order.
    ownership: str | None = None  # rented | owned (see above); NULL: not priced
    gpu_price_source: str | None = None  # where usd_per_gpu_hour came from, or why NULL
    # Schema version 4, last for the same reason: the daemon's id of the call (see above).
    span_key: str | None = None
    # Schema version 5, last for the same reason: the caller's trace context (see above).
    trace_id: str | None = None
    span_id: str | None = None
    # Schema version 7, last for the same reason: energy_j split at the first token.
    prefill_energy_j: float | None = None
    decode_energy_j: float | None = None


class IdleEnergy(SQLModel, table=True):
    """Per device per minute: idle energy, lost energy and the whole counter delta.

    One row per (device, minute, host, process): each flush adds to it. Reports sum the
    processes. Σ queries.energy_j + Σ idle_energy_j + Σ lost_energy_j = Σ measured_energy_j.
    ``lost_energy_j`` is what calls that are never stored received: still running at
    exit, or closed as abandoned after ``max_span_age_s`` (schema version 3; 0 before).
    """

    __tablename__ = "idle_energy"
    __table_args__ = (UniqueConstraint("device_uuid", "minute", "host", "pid"),)

    id: int | None = Field(default=None, primary_key=True)
    device_uuid: str = Field(index=True)
    minute: datetime = Field(sa_column=_utc_column(index=True))
    idle_energy_j: float
    measured_energy_j: float
    lost_energy_j: float = Field(default=0.0, sa_column_kwargs={"server_default": text("0")})
    # Seconds of this minute the process measured the device (it held it): GPU-hours held
    # in reports. 0 on rows written before schema version 3 (reports count those minutes
    # as whole).
    measured_s: float = Field(default=0.0, sa_column_kwargs={"server_default": text("0")})
    host: str
    pid: int


class QueryRollup(SQLModel, table=True):
    """Sums of ``queries`` per UTC hour and per everything a report groups by.

    Kept in the same transaction as the rows it sums (``footprint.storage.rollups``), so
    reports over millions of queries read thousands of rollup rows instead.
    ``group_key`` joins the key columns into one unique text (NULLs included).
    """

    __tablename__ = "query_rollups"
    __table_args__ = (UniqueConstraint("hour", "group_key"),)

    id: int | None = Field(default=None, primary_key=True)
    hour: datetime = Field(sa_column=_utc_column(index=True))
    group_key: str
    model: str = Field(index=True)
    host: str
    gpus: str
    zone: str | None = None
    currency: str | None = None
    intensity_source: str | None = None
    pue: float | None = None
    price_per_kwh: float | None = None
    usd_per_gpu_hour: float | None = None
    market_intensity_g_per_kwh: float | None = None
    energy_source: str
    queries: int = Field(default=0, sa_type=BigInteger)
    errors: int = Field(default=0, sa_type=BigInteger)
    input_tokens: int = Field(default=0, sa_type=BigInteger)
    output_tokens: int = Field(default=0, sa_type=BigInteger)
    gpu_seconds: float = 0.0
    energy_j: float = 0.0
    measured_queries: int = Field(default=0, sa_type=BigInteger)  # with energy_j not NULL
    # Σ energy_uncertainty_j and the count of records carrying one (schema version 2;
    # rollup rows older than that hold 0 and 0, exactly the sums of their records).
    energy_uncertainty_j: float = Field(default=0.0, sa_column_kwargs={"server_default": text("0")})
    uncertainty_queries: int = Field(
        default=0, sa_type=BigInteger, sa_column_kwargs={"server_default": text("0")}
    )
    facility_energy_j: float = 0.0  # Σ energy_j × PUE
    co2e_g: float = 0.0
    market_co2e_g: float = 0.0
    market_queries: int = Field(default=0, sa_type=BigInteger)
    embodied_co2e_g: float = 0.0
    energy_cost_usd: float = 0.0
    unconverted_energy_cost: float = 0.0  # energy cost in ``currency`` with no USD rate
    unconverted_queries: int = Field(default=0, sa_type=BigInteger)
    compute_cost_usd: float = 0.0
    duration_s: float = 0.0
    intensity_min: float | None = None
    intensity_max: float | None = None
    # Key columns of schema version 3 (NULL on older rollup rows), last like in queries.
    ownership: str | None = None
    gpu_price_source: str | None = None
    # Schema version 7: over the queries carrying both phase energies and both token
    # counts (``phase_queries``), Σ prefill_energy_j, Σ decode_energy_j, Σ input_tokens
    # and Σ output_tokens (what per-1M-token figures divide). 0 on older rollup rows:
    # exactly the sums of their records, which carry no phase energy.
    phase_queries: int = Field(
        default=0, sa_type=BigInteger, sa_column_kwargs={"server_default": text("0")}
    )
    prefill_energy_j: float = Field(default=0.0, sa_column_kwargs={"server_default": text("0")})
    decode_energy_j: float = Field(default=0.0, sa_column_kwargs={"server_default": text("0")})
    phase_input_tokens: int = Field(
        default=0, sa_type=BigInteger, sa_column_kwargs={"server_default": text("0")}
    )
    phase_output_tokens: int = Field(
        default=0, sa_type=BigInteger, sa_column_kwargs={"server_default": text("0")}
    )


class Loss(SQLModel, table=True):
    """What could not be measured or stored, counted when it happened (never silent).

    ``kind``: ``span_queue_full`` (spans dropped at the hot path), ``write_failed``
    (records dropped after the writer's buffer overflowed), ``idle_rows_overflow``,
    ``samples_overflow``, ``running_at_exit`` and ``abandoned_spans`` (calls never stored;
    their energy is in ``idle_energy.lost_energy_j``), ``rejected:<error>`` and
    ``rejected_idle:<error>`` (rows the database refused; the rest of their batch was
    written), ``database_replaced`` (the SQLite file was removed or replaced while open),
    ``unsaved_at_exit`` and ``unsaved_idle_rows`` (not stored before exit; moved here from
    ``<db>.losses`` by the next process that could write), ``record_failed``, and values
    stored replaced: ``invalid_tokens``, ``sanitized_models``, ``unserializable_tags``.
    """

    __tablename__ = "losses"

    id: int | None = Field(default=None, primary_key=True)
    recorded_at: datetime = Field(sa_column=_utc_column())
    kind: str
    count: int
    host: str
    pid: int


class Device(SQLModel, table=True):
    """A device a process measured, as its sensor described it (schema version 6).

    One row per (host, uuid), written when a store is opened: which GPU a UUID is (its
    index as that process saw it, its model, its vendor), so reports can name GPUs
    instead of listing UUIDs. ``device_index`` is the CUDA (or HIP) index, which can differ
    between processes with different ``CUDA_VISIBLE_DEVICES``: the last one seen is kept.
    """

    __tablename__ = "devices"
    __table_args__ = (UniqueConstraint("host", "uuid"),)

    id: int | None = Field(default=None, primary_key=True)
    host: str
    uuid: str
    kind: str  # gpu | cpu
    device_index: int | None = None
    name: str | None = None
    vendor: str | None = None
    energy_method: str | None = None
    first_seen_at: datetime = Field(sa_column=_utc_column())
    last_seen_at: datetime = Field(sa_column=_utc_column())


class Meta(SQLModel, table=True):
    """Key/value facts about the database (schema_version)."""

    __tablename__ = "footprint_meta"

    key: str = Field(primary_key=True)
    value: str


def table_of(model: type[SQLModel]) -> Table:
    """The ``Table`` of a ``table=True`` model: its ``__table__``, which SQLModel sets when
    the class is made but does not declare to type checkers."""
    table = inspect(model).local_table
    if not isinstance(table, Table):
        raise TypeError(f"{model.__name__} is not mapped to a table")
    return table
