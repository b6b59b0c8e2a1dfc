"""The schema's tables and versions: the version a database records, and the migrations
that bring an older database up to this footprint's ``SCHEMA_VERSION`` in place."""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy import (
    Column,
    Connection,
    DateTime,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    UniqueConstraint,
    insert,
    select,
)

from footprint.storage.errors import StoreError
from footprint.storage.models import (
    SCHEMA_VERSION,
    Device,
    IdleEnergy,
    Loss,
    Meta,
    QueryRecord,
    QueryRollup,
    table_of,
)

log = logging.getLogger("footprint")

TABLES = [
    table_of(QueryRecord),
    table_of(IdleEnergy),
    table_of(Loss),
    table_of(QueryRollup),
    table_of(Meta),
    table_of(Device),
]

# Migrations: MIGRATIONS[v] takes a database at schema version v to v + 1, in the same
# transaction that records the new version. Each is written out in SQL, frozen: it must
# not follow later changes of the models. Each is idempotent (it adds only what is
# missing), so that several processes opening an old database at once all succeed, and
# because SQLite's driver commits DDL statements by themselves.


def _add_columns(conn: Connection, table: str, columns: list[tuple[str, str, str]]) -> None:
    """``ALTER TABLE table ADD COLUMN`` each (name, SQLite DDL, PostgreSQL DDL) missing."""
    if conn.dialect.name == "postgresql":
        for name, _, ddl in columns:
            conn.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {name} {ddl}")
        return
    present = {row[1] for row in conn.exec_driver_sql(f"PRAGMA table_info({table})")}
    for name, ddl, _ in columns:
        if name not in present:
            conn.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN {name} {ddl}")


def _v1_to_v2(conn: Connection) -> None:
    """Version 2: each record's energy uncertainty bound, and its sums in the rollups.

    Records written before have no bound (NULL). Their rollup rows get a sum of 0 over 0
    records that carry one: exactly the sums of those records, so no rollup is rebuilt,
    and rows not yet rolled up (SQLite) are summed the same way when they are.
    """
    _add_columns(conn, "queries", [("energy_uncertainty_j", "FLOAT", "DOUBLE PRECISION")])
    _add_columns(
        conn,
        "query_rollups",
        [
            (
                "energy_uncertainty_j",
                "FLOAT NOT NULL DEFAULT 0",
                "DOUBLE PRECISION NOT NULL DEFAULT 0",
            ),
            ("uncertainty_queries", "BIGINT NOT NULL DEFAULT 0", "BIGINT NOT NULL DEFAULT 0"),
        ],
    )


def _v2_to_v3(conn: Connection) -> None:
    """Version 3: energy of calls never stored (running at exit, abandoned) per device and
    minute, so that stored queries + idle + lost = measured. Older rows lost none they knew
    of: 0. And 64-bit token counts on PostgreSQL (``integer`` before: a count over 2^31
    refused its whole batch); SQLite's INTEGER is 64-bit already.

    And who owns the GPU (``ownership``: rented | owned) with where its $/GPU-hour came
    from (``gpu_price_source``), on records and as rollup key columns. Older records and
    rollup rows get NULL (not known); their rollup rows keep their ``group_key`` (reports
    group by the key columns, so a later row of the same key under the longer group_key
    adds up with them)."""
    _add_columns(
        conn,
        "idle_energy",
        [
            ("lost_energy_j", "FLOAT NOT NULL DEFAULT 0", "DOUBLE PRECISION NOT NULL DEFAULT 0"),
            ("measured_s", "FLOAT NOT NULL DEFAULT 0", "DOUBLE PRECISION NOT NULL DEFAULT 0"),
        ],
    )
    for table in ("queries", "query_rollups"):
        _add_columns(
            conn,
            table,
            [("ownership", "VARCHAR", "VARCHAR"), ("gpu_price_source", "VARCHAR", "VARCHAR")],
        )
    if conn.dialect.name == "postgresql":
        columns = conn.exec_driver_sql(
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_schema = current_schema() AND table_name = 'queries'"
            " AND column_name IN ('input_tokens', 'output_tokens') AND data_type = 'integer'"
            " ORDER BY column_name"
        )
        narrow = columns.scalars().all()
        if narrow:  # one rewrite of the table for both
            alters = ", ".join(f"ALTER COLUMN {name} TYPE BIGINT" for name in narrow)
            conn.exec_driver_sql(f"ALTER TABLE queries {alters}")


def _v3_to_v4(conn: Connection) -> None:
    """Version 4: the key a daemon's client gave each call (``span_key``, text: a random
    session token of the client process and its span id), indexed, so that a daemon can
    tell whether an end a client sent again after losing its connection (its
    acknowledgement lost) is stored already. Older records and records written
    in-process have none (NULL). Both dialects create the index only if it is missing."""
    _add_columns(conn, "queries", [("span_key", "VARCHAR", "VARCHAR")])
    conn.exec_driver_sql("CREATE INDEX IF NOT EXISTS ix_queries_span_key ON queries (span_key)")


def _v4_to_v5(conn: Connection) -> None:
    """Version 5: the caller's OpenTelemetry trace context on each record (``trace_id``,
    32 hex digits, indexed to join records with traces; ``span_id``, 16), text. Older
    records have none (NULL); rollups do not change."""
    _add_columns(
        conn, "queries", [("trace_id", "VARCHAR", "VARCHAR"), ("span_id", "VARCHAR", "VARCHAR")]
    )
    conn.exec_driver_sql("CREATE INDEX IF NOT EXISTS ix_queries_trace_id ON queries (trace_id)")


def _v5_to_v6(conn: Connection) -> None:
    """Version 6: the ``devices`` table (which GPU a UUID is: index, model, vendor), empty
    until a process opens the database; reports fall back to UUIDs without it."""
    devices_v6 = Table(
        "devices",
        MetaData(),
        Column("id", Integer, primary_key=True),
        Column("host", String, nullable=False),
        Column("uuid", String, nullable=False),
        Column("kind", String, nullable=False),
        Column("device_index", Integer),
        Column("name", String),
        Column("vendor", String),
        Column("energy_method", String),
        Column("first_seen_at", DateTime(timezone=True), nullable=False),
        Column("last_seen_at", DateTime(timezone=True), nullable=False),
        UniqueConstraint("host", "uuid"),
    )
    devices_v6.create(conn, checkfirst=True)


def _v6_to_v7(conn: Connection) -> None:
    """Version 7: each record's energy split at its first token (``prefill_energy_j``,
    ``decode_energy_j``), and in the rollups their sums with the count and token sums of
    the queries carrying them. Older records have none (NULL); their rollup rows get 0
    over 0 queries, exactly the sums of those records, so no rollup is rebuilt."""
    _add_columns(
        conn,
        "queries",
        [
            ("prefill_energy_j", "FLOAT", "DOUBLE PRECISION"),
            ("decode_energy_j", "FLOAT", "DOUBLE PRECISION"),
        ],
    )
    zero_float = ("FLOAT NOT NULL DEFAULT 0", "DOUBLE PRECISION NOT NULL DEFAULT 0")
    zero_int = ("BIGINT NOT NULL DEFAULT 0", "BIGINT NOT NULL DEFAULT 0")
    _add_columns(
        conn,
        "query_rollups",
        [
            ("phase_queries", *zero_int),
            ("prefill_energy_j", *zero_float),
            ("decode_energy_j", *zero_float),
            ("phase_input_tokens", *zero_int),
            ("phase_output_tokens", *zero_int),
        ],
    )


MIGRATIONS: dict[int, Callable[[Connection], None]] = {
    1: _v1_to_v2,
    2: _v2_to_v3,
    3: _v3_to_v4,
    4: _v4_to_v5,
    5: _v5_to_v6,
    6: _v6_to_v7,
}


def schema_version(conn: Connection) -> int | None:
    """The schema version the database records (None when it records none: a new one)."""
    meta = table_of(Meta)
    row = conn.execute(select(meta.c.value).where(meta.c.key == "schema_version")).first()
    return None if row is None else int(row[0])


def migrate(engine: Engine) -> None:
    """Record ``SCHEMA_VERSION`` in a new database, or migrate an older one to it; raises
    ``StoreError`` for a newer one, or one no migration leads from."""
    meta = table_of(Meta)
    with engine.begin() as conn:
        version = schema_version(conn)
        if version is None:
            conn.execute(insert(meta), [{"key": "schema_version", "value": str(SCHEMA_VERSION)}])
            return
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"database schema version {version} is newer than this footprint "
                f"(which knows up to {SCHEMA_VERSION}); upgrade footprint to use it"
            )
        if version == SCHEMA_VERSION:
            return  # nothing to write: read-only databases open too
        while version < SCHEMA_VERSION:
            step = MIGRATIONS.get(version)
            if step is None:
                raise StoreError(f"no migration from schema version {version}")
            step(conn)
            version += 1
            log.info("footprint: migrated database to schema version %d", version)
        conn.execute(meta.update().where(meta.c.key == "schema_version").values(value=str(version)))
