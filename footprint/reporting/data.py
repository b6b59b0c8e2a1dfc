"""The report's figures: SQL aggregation in the database, small rollups in Python.

The grouped sums (per model, day, GPUs, zone and the factors used) come from the hourly
rollups of ``queries`` (``query_rollups``, see ``footprint.storage.rollups``): first
brought up to date (SQLite), then read for the whole hours of the period, with the raw
grouped scan of ``queries`` for the part hours at either edge of an unaligned
``--since``/``--until``. A count of the period's queries checks the rollups; where they
cannot be brought up to date (a read-only file) or disagree with ``queries``, the report
scans ``queries`` instead and says so in a note. The grouped rows are folded, as they come
from the database, into models, totals, days, regions and factors (``_Fold``): memory
follows the models and days of the report, not the rows. ``idle_energy`` is summed per
GPU and day in a second query.

Per-query percentiles are nearest-rank. A model with at most ``PERCENTILE_SAMPLE``
measured queries gets them exactly from all of its queries, read together with other such
models' (a few statements for thousands of models). Above that, each figure is read
exactly with ``ORDER BY … LIMIT 1 OFFSET k`` where an index ordered by that figure serves
the ordering (checked with the query plan; see ``PERCENTILE_INDEXES``); otherwise from a
deterministic hash sample of the model's record ids, stated in the report. Works on
SQLite and PostgreSQL through SQLAlchemy Core.

A SQLite file the report may not write (file or folder) is read read-only, never written
(``probe_sqlite``); what cannot be read is one line, ``cannot read <file>: <why>``.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from operator import itemgetter
from typing import Any
from urllib.parse import quote

from sqlalchemy import (
    BigInteger,
    ClauseElement,
    Engine,
    Executable,
    Float,
    case,
    cast,
    func,
    literal,
    literal_column,
    or_,
    select,
    type_coerce,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.types import NullType

from footprint.daemon.presence import overlap_note
from footprint.reporting.accuracy import published_accuracy
from footprint.storage import rollups
from footprint.storage.models import IdleEnergy, QueryRecord, QueryRollup
from footprint.storage.store import StoreError, normalize_db_url, open_engine, sqlite_path

REPORT_SCHEMA = "footprint.report/1"
BY_CHOICES = ("model", "day", "region", "host")
PERCENTILE_SAMPLE = 10_000  # queries per model above which percentiles use a sample
PERCENTILES = (50, 95)
# Indexes that make every percentile exact: ``ORDER BY … LIMIT 1 OFFSET k`` walks about
# 55% of a model's entries per figure (p50 from below, p95 from above), index only, about
# 0.4 s for all three figures over 1M queries here. Storage creates them or not; the
# report uses whichever exist (found through the query plan) and works without them.
PERCENTILE_INDEXES = (
    "CREATE INDEX ix_queries_model_energy ON queries (model, energy_j, started_at)",
    "CREATE INDEX ix_queries_model_co2e ON queries (model, co2e_g, started_at)",
    "CREATE INDEX ix_queries_model_cost ON queries (model, (coalesce(energy_cost_usd, 0.0) "
    "+ coalesce(compute_cost, 0.0)), started_at) WHERE energy_j IS NOT NULL",
)
_HASH_MULTIPLIER = 2654435761  # Knuth's multiplicative hash: coprime to 10**6
_HASH_MODULUS = 1_000_000
JOULES_PER_KWH = 3_600_000.0
CLEANEST_COUNT = 5
# Models shown by name in the tables and charts of the HTML and Markdown reports (the
# first by CO2e); the others are one "all others (K models)" row. The JSON and CSV
# reports list every model.
TOP_MODELS = 12

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


@dataclass
class SqliteAccess:
    """How a SQLite file can be read, found by ``probe_sqlite``."""

    path: str
    uri: str  # a ``file:`` URI that opens it read-only (``mode=ro``, or ``immutable=1``)
    immutable: bool  # read with ``immutable=1``: no lock, no -shm (the folder is read-only)
    writable: bool  # the file and its folder may be written (rollups, migrations)
    schema_version: int | None


# SQLite's primary result codes that mean "cannot write or create here", not "cannot read".
_SQLITE_READONLY, _SQLITE_CANTOPEN = 8, 14


def _file_uri(path: str, **params: str) -> str:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return f"file:{quote(path)}?{query}"


def probe_sqlite(path: str, timeout_s: float = 10.0) -> SqliteAccess:
    """Open an existing SQLite file read-only and read its schema version, or say in one
    line (``ReportError``: ``cannot read <file>: <why>``) why it cannot be read.

    ``mode=ro`` first: it reads a WAL database as of its last commit, alongside a live
    writer. Where that fails for want of write access (a WAL database needs its -shm file,
    which SQLite creates in the file's folder), ``immutable=1``: no lock, no -shm; only
    when no write-ahead log holds changes it could not see. Nothing is written.
    """
    import sqlite3

    if not os.access(path, os.R_OK):
        raise ReportError(f"cannot read {path}: permission denied")
    folder = os.path.dirname(path) or "."
    writable = os.access(path, os.W_OK) and os.access(folder, os.W_OK)
    immutable = False
    uri = _file_uri(path, mode="ro")
    try:
        version = _probe_version(path, uri, timeout_s)
    except sqlite3.Error as exc:
        code = getattr(exc, "sqlite_errorcode", None)
        if code is None or code & 0xFF not in (_SQLITE_READONLY, _SQLITE_CANTOPEN):
            raise ReportError(f"cannot read {path}: {_reason(exc)}") from None
        wal = path + "-wal"
        if os.path.exists(wal) and os.path.getsize(wal) > 0:
            raise ReportError(
                f"cannot read {path}: its write-ahead log {os.path.basename(wal)} holds "
                f"changes, and reading them needs write access to {folder} (for "
                f"{os.path.basename(path)}-shm; SQLite said: {_reason(exc)}); run this "
                "as a user who may write there, or once the writer has stopped"
            ) from None
        immutable = True
        uri = _file_uri(path, mode="ro", immutable="1")
        try:
            version = _probe_version(path, uri, timeout_s)
        except sqlite3.Error as again:
            raise ReportError(f"cannot read {path}: {_reason(again)}") from None
    from footprint.storage.models import SCHEMA_VERSION

    if version is not None and version > SCHEMA_VERSION:
        raise ReportError(
            f"cannot read {path}: database schema version {version} is newer than this "
            f"footprint (which knows up to {SCHEMA_VERSION}); upgrade footprint to use it"
        )
    return SqliteAccess(path, uri, immutable, writable and not immutable, version)


def _probe_version(path: str, uri: str, timeout_s: float) -> int | None:
    """The schema version stored in the file (None: footprint wrote no version yet)."""
    import sqlite3

    con = sqlite3.connect(uri, uri=True, timeout=timeout_s)
    try:
        tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master")}
        if "footprint_meta" not in tables:
            if tables:
                raise ReportError(f"cannot read {path}: not a footprint database")
            raise ReportError(f"cannot read {path}: an empty database (no footprint tables)")
        row = con.execute(
            "SELECT value FROM footprint_meta WHERE key = 'schema_version'"
        ).fetchone()
    finally:
        con.close()
    try:
        return None if row is None else int(row[0])
    except ValueError:
        raise ReportError(
            f"cannot read {path}: schema version {row[0]!r} is not a number"
        ) from None


def _asks_read_only(url: str) -> bool:
    query = make_url(url).query
    return str(query.get("mode", "")) == "ro" or str(query.get("immutable", "")) == "1"


def _check_read_only_schema(access: SqliteAccess) -> None:
    from footprint.storage.models import SCHEMA_VERSION

    version = access.schema_version
    if version != SCHEMA_VERSION:
        what = "has no schema version" if version is None else f"has schema version {version}"
        raise ReportError(
            f"cannot read {access.path} without writing it: it {what} and this footprint "
            f"reads version {SCHEMA_VERSION}; one run of footprint with write access to the "
            "file and its folder (footprint db info) brings it up to date"
        )


def read_only_engine(access: SqliteAccess, timeout_s: float = 10.0) -> Engine:
    """An engine on ``access.uri``: every connection read-only (any file name)."""
    import sqlite3

    from sqlalchemy import create_engine

    def connect() -> Any:
        return sqlite3.connect(access.uri, uri=True, timeout=timeout_s, check_same_thread=False)

    return create_engine("sqlite://", creator=connect)


def reading_db(db: str) -> str:
    """``db`` for the store's readers (``db info``, ``db export``): a SQLite file that
    cannot be written (file or folder), or given with ``mode=ro``, becomes a read-only URL
    (``mode=ro``, else ``immutable=1``, see ``probe_sqlite``); anything else is unchanged
    (a writable file opens as before: its schema may be brought up to date). A missing
    file is left to the store to report. ``ReportError``: one line, why it cannot be read.
    """
    try:
        url = normalize_db_url(db)
        path = sqlite_path(url)
    except (StoreError, ArgumentError):
        return db
    if path is None or not os.path.isfile(path):
        return db
    access = probe_sqlite(path)
    if access.writable and not _asks_read_only(url):
        return db
    _check_read_only_schema(access)
    if any(c in path for c in "?#%"):  # a URL cannot carry such a name through SQLAlchemy
        return db
    flags = "immutable=1&" if access.immutable else ""
    return f"sqlite:///file:{path}?{flags}mode=ro&uri=true"


def open_report_engine(db: str) -> Engine:
    """Open an existing database; a missing SQLite file is an error.

    The report writes nothing but the hourly rollups it brings up to date (SQLite), and
    only to a file it may write (file and folder); any other file it reads read-only
    (``probe_sqlite``). What cannot be read is one line: ``ReportError``.
    """
    try:
        url = normalize_db_url(db)
    except StoreError as exc:
        raise ReportError(str(exc)) from None
    path = sqlite_path(url)  # also the file of a sqlite:///file:…?mode=ro&uri=true URL
    if path is None:
        try:
            return open_engine(url, create=False)
        except StoreError as exc:
            raise ReportError(str(exc)) from None
    if not os.path.isfile(path):
        raise ReportError(f"no database at {path} (give --db or set FOOTPRINT_DB)")
    access = probe_sqlite(path)
    if access.writable and not _asks_read_only(url):
        try:
            return _with_read_pragmas(open_engine(url, create=False))
        except StoreError as exc:
            if "readonly" not in str(exc):
                raise ReportError(read_error(db, exc)) from None
    _check_read_only_schema(access)
    return _with_read_pragmas(read_only_engine(access))


def _with_read_pragmas(engine: Engine) -> Engine:
    if engine.dialect.name == "sqlite":
        from sqlalchemy import event

        @event.listens_for(engine, "connect")
        def _read_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA temp_store=MEMORY")  # sorts of GROUP BY stay in memory
            # 16 MiB: the OS caches the file; a larger page cache only costs memory (1M
            # records: 1.0 s at 16 MiB, 1.2 s and 220 MB more at 256 MiB, here).
            cursor.execute("PRAGMA cache_size=-16384")
            cursor.close()

        engine.dispose()  # the pragmas apply to connections opened from now on
    return engine


def database_name(db: str) -> str:
    """The database as a message names it: a SQLite file's path, else its URL (no password)."""
    try:
        url = normalize_db_url(db)
        path = sqlite_path(url)
        if path is not None:
            return path
        return make_url(url).render_as_string(hide_password=True)
    except (StoreError, ArgumentError, ValueError):
        return db


def read_error(db: str, exc: BaseException) -> str:
    """One line for a database that could not be read: ``cannot read <file>: <SQLite's
    message>`` (a store's own message, such as ``no database at <file>``, as it is)."""
    reason = _reason(exc)
    if isinstance(exc, StoreError):
        head, sep, rest = reason.partition(": ")
        if not (sep and head.startswith("cannot open database ")):
            return reason
        reason = rest  # "cannot open database <url>: <SQLite's message>"
    return f"cannot read {database_name(db)}: {reason}"


def _day_expr(engine: Engine, column: Any) -> Any:
    if engine.dialect.name == "sqlite":  # constants inline: SELECT and GROUP BY match
        return func.substr(column, literal_column("1"), literal_column("10"))
    return func.to_char(func.timezone("UTC", column), literal_column("'YYYY-MM-DD'"))


def _reason(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _prepare_rollups(engine: Engine) -> str | None:
    """Bring the hourly rollups up to date: None when they can be read, else why not.

    ``catch_up`` takes SQLite's write lock; on a read-only file it fails, and the rollups
    are still complete when no query was written since the last catch-up.
    """
    try:
        rollups.catch_up(engine)
        return None
    except (SQLAlchemyError, OSError) as exc:
        reason = _reason(exc)
    try:
        if rollups.pending_rows(engine) == 0:
            return None
    except (SQLAlchemyError, OSError):
        pass
    return reason


# --- accumulation ------------------------------------------------------------------------

SUM_KEYS = (
    "queries", "errors", "input_tokens", "output_tokens", "gpu_seconds", "energy_j",
    "measured_queries", "facility_energy_j", "co2e_g", "market_co2e_g", "market_queries",
    "embodied_co2e_g", "energy_cost_usd", "unconverted_queries", "compute_cost_usd",
    "duration_s", "energy_uncertainty_j", "uncertainty_queries", "idle_j", "idle_co2e_g",
    "idle_cost_usd",
)  # fmt: skip


def _zero() -> dict[str, float]:
    return dict.fromkeys(SUM_KEYS, 0)


def _add(into: dict[str, float], row: dict[str, float]) -> None:
    for key in SUM_KEYS:
        into[key] += row[key]


class _Fold:
    """The grouped rows, folded one at a time into the sums the report shows.

    Per model, per group (--by), per model and day (four figures), in total; the factor
    sets, zones, days and energy sources seen; what the percentiles need (measured queries
    per model, costs to convert). The idle energy of each GPU is spread over the queries
    that ran on it in proportion to their GPU-seconds: a row's share is its GPU-seconds ×
    a factor of its GPUs known only once every row is in (``settle``), so each sum keeps
    its GPU-seconds (and their CO2e and cost ratios) per set of GPUs until then.
    """

    def __init__(
        self,
        request: ReportRequest,
        idle: list[dict[str, Any]],
        device_gs: dict[str, float] | None,
    ) -> None:
        self.request = request
        self.idle = idle
        self.given_device_gs = device_gs  # with --model: GPU-seconds of every model
        self.device_gs: dict[str, float] = defaultdict(float)
        self.rows = 0
        self.queries = 0
        self.by_model: dict[str, dict[str, Any]] = {}
        self.by_group: dict[str, dict[str, Any]] = {}
        self.by_day: dict[str, dict[str, list[float]]] = {}
        self.total = _zero()
        self.total["_idle"] = {}
        self.by_source: dict[str, int] = defaultdict(int)
        self.factor_sets: dict[tuple, dict[str, Any]] = {}
        self.zones: set[str] = set()
        self.measured: dict[str, int] = defaultdict(int)
        self.unconverted_models: set[str] = set()
        self.rate_refs: dict[str | None, tuple[float, str] | None] = {}
        self.converted: dict[str, int] = defaultdict(int)
        self.unpriced = 0
        self._gpus: dict[str | None, list[str]] = {}

    @property
    def rates(self) -> dict[str, float]:
        """USD per unit of each currency whose energy cost has no USD figure in the records."""
        return {c: r[0] for c, r in self.rate_refs.items() if c and r is not None}

    def add(self, row: dict[str, Any]) -> None:
        from footprint.pricing import usd_per_unit

        self.rows += 1
        model = row["model"]
        self.queries += row["queries"]
        self.measured[model] += row["measured_queries"]
        extra = row.pop("unconverted_energy_cost")
        currency = row["currency"]
        if row["unconverted_queries"]:
            self.unconverted_models.add(model)
            if currency not in self.rate_refs:
                self.rate_refs[currency] = usd_per_unit(currency) if currency else None
            rate = self.rate_refs[currency]
            if rate is None:
                self.unpriced += row["unconverted_queries"]
                row["unconverted_queries"] = 0
            else:
                row["energy_cost_usd"] += extra * rate[0]
                self.converted[currency] += row["unconverted_queries"]
        row["idle_j"] = row["idle_co2e_g"] = row["idle_cost_usd"] = 0.0

        # Idle shares: GPU-seconds per GPU, and the CO2e and cost per joule to price them.
        gpus = row["gpus"]
        uuids = self._gpus.get(gpus)
        if uuids is None:
            uuids = self._gpus[gpus] = [u for u, _ in _split_gpus(gpus, 0.0)]
        seconds = row["gpu_seconds"]
        spread = None
        if uuids and seconds:
            for uuid in uuids:
                self.device_gs[uuid] += seconds / len(uuids)
            energy = row["energy_j"]
            co2e_per_j = cost_per_j = 0.0
            if energy > 0:
                co2e_per_j = row["co2e_g"] / energy
                cost_per_j = row["energy_cost_usd"] / energy
            elif row["pue"] and row["intensity_min"] is not None:
                mid = (row["intensity_min"] + row["intensity_max"]) / 2
                co2e_per_j = row["pue"] * mid / JOULES_PER_KWH
            spread = (seconds, seconds * co2e_per_j, seconds * cost_per_j)

        targets = [self._acc(self.by_model, model), self.total]
        by = self.request.by
        if by == "day":
            targets.append(self._acc(self.by_group, row["day"]))
        elif by == "region":
            targets.append(self._acc(self.by_group, row["zone"] or "(no zone)"))
        elif by == "host":
            targets.append(self._acc(self.by_group, row["host"]))
        for acc in targets:
            _add(acc, row)
            if spread is not None:
                parts = acc["_idle"].get(gpus)
                if parts is None:
                    acc["_idle"][gpus] = list(spread)
                else:
                    parts[0] += spread[0]
                    parts[1] += spread[1]
                    parts[2] += spread[2]

        day = self.by_day.get(row["day"])
        if day is None:
            day = self.by_day[row["day"]] = {}
        figures = day.get(model)
        cost = row["energy_cost_usd"] + row["compute_cost_usd"]
        if figures is None:
            day[model] = [row["queries"], row["energy_j"], row["co2e_g"], cost]
        else:
            figures[0] += row["queries"]
            figures[1] += row["energy_j"]
            figures[2] += row["co2e_g"]
            figures[3] += cost
        self.by_source[row["energy_source"] or "missing"] += row["queries"]
        if row["zone"]:
            self.zones.add(row["zone"])
        _add_factors(self.factor_sets, row)

    @staticmethod
    def _acc(into: dict[str, dict[str, Any]], name: Any) -> dict[str, Any]:
        acc = into.get(name)
        if acc is None:
            acc = into[name] = _zero()
            acc["_idle"] = {}
        return acc

    def settle(self, idle_by_device: dict[str, float]) -> float:
        """Put each GPU's idle energy into the sums; returns the idle energy of GPUs no
        query of the period ran on (unallocated, without --model)."""
        device_gs = self.given_device_gs if self.given_device_gs is not None else self.device_gs
        per_second: dict[str | None, float] = {}
        for gpus, uuids in self._gpus.items():
            factor = 0.0
            for uuid in uuids:
                total = device_gs.get(uuid, 0.0)
                if total > 0:
                    factor += idle_by_device.get(uuid, 0.0) / len(uuids) / total
            per_second[gpus] = factor
        for acc in (*self.by_model.values(), *self.by_group.values(), self.total):
            for gpus, (seconds, co2e, cost) in acc.pop("_idle", {}).items():
                factor = per_second.get(gpus, 0.0)
                if factor:
                    acc["idle_j"] += seconds * factor
                    acc["idle_co2e_g"] += co2e * factor
                    acc["idle_cost_usd"] += cost * factor
        if self.request.models:
            return 0.0
        return sum(j for d, j in idle_by_device.items() if device_gs.get(d, 0.0) <= 0)


# --- the report ------------------------------------------------------------------------


def build_report(
    request: ReportRequest, progress: ProgressFn | None = None, *, use_rollups: bool = True
) -> dict[str, Any]:
    """Every figure of the report as plain data (the JSON output, and what renderers use).

    ``use_rollups=False`` reads every sum from a scan of ``queries`` (what the report
    falls back to by itself when the rollups cannot be used): for checks.
    """
    step = progress or (lambda _name: None)
    if request.by not in BY_CHOICES:
        raise ReportError(f"--by must be one of {', '.join(BY_CHOICES)}, got {request.by!r}")
    request = replace(request, since=_as_utc(request.since), until=_as_utc(request.until))
    if request.since and request.until and request.since >= request.until:
        raise ReportError(
            f"--since {request.since.isoformat()} is not before --until {request.until.isoformat()}"
        )
    compare_zones = _resolve_compare(request.compare)
    engine = open_report_engine(request.db)
    notes: list[str] = []
    try:
        step("updating rollups")
        problem = _prepare_rollups(engine) if use_rollups else "not asked for"
        with engine.connect() as conn:
            step("checking models")
            _check_models(conn, request.models)
            step("aggregating idle energy")
            idle = _idle_rows(conn, engine, request)
            step("aggregating queries")
            fold, note = _sums(conn, engine, request, problem, idle)
            if note and use_rollups:
                notes.append(note)
            first_last = _first_last(conn, request)
            step("computing percentiles")
            percentiles = _percentiles(
                conn, request, fold.measured, fold.unconverted_models, fold.rates
            )
            step("checking for GPUs measured by several processes")
            twice = overlap_note(conn, request.since, request.until)
            if twice:
                notes.append(twice)
    except SQLAlchemyError as exc:
        raise ReportError(read_error(request.db, exc)) from None
    finally:
        engine.dispose()
    if not fold.rows and not request.allow_empty:
        raise ReportError(
            f"no queries in {_period_words(request)}"
            + (f" for {', '.join(request.models)}" if request.models else "")
            + " (use --allow-empty for an explicit empty report)"
        )
    step("rolling up")
    return _assemble(request, fold, percentiles, compare_zones, first_last, notes)


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


Period = tuple[_dt.datetime | None, _dt.datetime | None]  # [since, until), None: open


def _time_filters(
    time_column: Any, model_column: Any, start: Any, end: Any, models: list[str] | None
) -> list[Any]:
    out = []
    if start is not None:
        out.append(time_column >= start)
    if end is not None:
        out.append(time_column < end)
    if models:
        out.append(model_column.in_(models))
    return out


def _filters(
    request: ReportRequest, with_models: bool = True, period: Period | None = None
) -> list[Any]:
    q = QueryRecord.__table__.c
    since, until = period if period is not None else (request.since, request.until)
    return _time_filters(q.started_at, q.model, since, until, with_models and request.models)


def _check_models(conn: Any, models: list[str] | None) -> None:
    if not models:
        return
    q = QueryRecord.__table__.c
    known = {r[0] for r in conn.execute(select(q.model).distinct())}
    unknown = [m for m in models if m not in known]
    if unknown:
        listed = ", ".join(sorted(known)[:12]) or "none: the database has no queries"
        raise ReportError(f"unknown model {', '.join(map(repr, unknown))}; known: {listed}")


# --- grouped sums: hourly rollups for whole hours, a scan of queries for the rest ---------

# What a grouped row is keyed on (plus ``host`` with --by host) and what it sums.
GROUP_KEYS = ("model", "day") + tuple(
    name for name in rollups.KEY_COLUMNS if name not in ("model", "host")
)
GROUP_SUMS = rollups.SUM_COLUMNS
_HOUR = _dt.timedelta(hours=1)


def _split_period(request: ReportRequest) -> tuple[Period | None, list[Period]]:
    """The whole hours of the period (read from rollups) and the part hours at its edges.

    ``(None, [(since, until)])`` when the period holds no whole hour.
    """
    since, until = request.since, request.until
    start = since
    if since is not None and since != _floor_hour(since):
        start = _floor_hour(since) + _HOUR
    end = None if until is None else _floor_hour(until)
    if start is not None and end is not None and start >= end:
        return None, [(since, until)]
    edges: list[Period] = []
    if since is not None and start is not None and since < start:
        edges.append((since, start))
    if until is not None and end is not None and end < until:
        edges.append((end, until))
    return (start, end), edges


def _floor_hour(when: _dt.datetime) -> _dt.datetime:
    return when.replace(minute=0, second=0, microsecond=0)


def _sums(
    conn: Any,
    engine: Engine,
    request: ReportRequest,
    problem: str | None,
    idle: list[dict[str, Any]],
) -> tuple[_Fold, str | None]:
    """The grouped rows folded into the report's sums (``_Fold``), and a note.

    From the rollups unless ``problem`` says why not or they disagree with ``queries``;
    then from a scan of ``queries``, and the note says so. Rows are folded as they come
    from the database: memory follows the models and days shown, not the grouped rows.
    """
    with_host = request.by == "host"
    if problem is None:
        hours, edges = _split_period(request)
        edge_rows = _merge_rows(
            [_grouped_rows(conn, engine, request, edge) for edge in edges], with_host
        )
        device_gs = None
        if request.models:
            pairs = [p for edge in edges for p in _raw_gpu_seconds(conn, request, edge)]
            if hours is not None:
                pairs += _rollup_gpu_seconds(conn, request, hours)
            device_gs = _per_device(pairs)
        fold = _Fold(request, idle, device_gs)
        rows: Iterable[dict[str, Any]] = edge_rows
        if hours is not None:
            rows = _merged_stream(_rollup_rows(conn, engine, request, hours), edge_rows, with_host)
        for row in rows:
            fold.add(row)
        total = _count_queries(conn, request)
        if fold.queries == total:
            return fold, None
        note = (
            f"The hourly rollups count {fold.queries:,} queries in this period but the "
            f"queries table holds {total:,} (rows written or deleted by other means); every "
            "figure was computed from the queries table instead. `footprint db "
            "rebuild-rollups` restores the fast path."
        )
    else:
        note = (
            f"The hourly rollups could not be brought up to date ({problem}); every figure "
            "was computed from the queries table instead, which is slower on large databases."
        )
    device_gs = None
    if request.models:
        device_gs = _per_device(_raw_gpu_seconds(conn, request))
    fold = _Fold(request, idle, device_gs)
    for row in _grouped_rows(conn, engine, request):
        fold.add(row)
    return fold, note


def _group_columns(columns: Any, day: Any, request: ReportRequest) -> list[Any]:
    """The GROUP BY columns (``GROUP_KEYS``, plus host with --by host) of a table."""
    names = GROUP_KEYS + (("host",) if request.by == "host" else ())
    return [day if name == "day" else columns[name] for name in names]


def _grouped_rows(
    conn: Any, engine: Engine, request: ReportRequest, period: Period | None = None
) -> list[dict[str, Any]]:
    """The grouped sums from a scan of ``queries`` over the period (or ``period``)."""
    q = QueryRecord.__table__.c
    day = _day_expr(engine, q.started_at).label("day")
    keys = _group_columns(q, day, request)
    sums = rollups.query_sums()
    stmt = select(*keys, *sums).where(*_filters(request, period=period)).group_by(*keys)
    return [dict(row) for row in conn.execute(stmt).mappings()]


def _iter_rows(conn: Any, stmt: Any, chunk: int = 2000) -> Iterator[dict[str, Any]]:
    """The rows of ``stmt`` as dicts, as they come (``chunk`` rows held at a time; a
    server-side cursor on PostgreSQL)."""
    result = conn.execute(stmt, execution_options={"yield_per": chunk})  # this one only
    keys = list(result.keys())
    for part in result.partitions(chunk):
        for row in part:
            yield dict(zip(keys, row))


def _hour_filters(request: ReportRequest, hours: Period, with_models: bool = True) -> list[Any]:
    r = QueryRollup.__table__.c
    return _time_filters(r.hour, r.model, *hours, with_models and request.models)


def _rollup_rows(
    conn: Any, engine: Engine, request: ReportRequest, hours: Period
) -> Iterator[dict[str, Any]]:
    """The same grouped sums as ``_grouped_rows``, from the rollups of whole hours (as
    they come)."""
    r = QueryRollup.__table__.c
    day = _day_expr(engine, r.hour).label("day")
    keys = _group_columns(r, day, request)
    sums = []
    for name in GROUP_SUMS:
        column = r[name]
        total = func.sum(column)
        if isinstance(column.type, BigInteger):  # PostgreSQL sums BIGINT as NUMERIC
            total = cast(total, BigInteger)
        sums.append(total.label(name))
    sums.append(func.min(r.intensity_min).label("intensity_min"))
    sums.append(func.max(r.intensity_max).label("intensity_max"))
    stmt = select(*keys, *sums).where(*_hour_filters(request, hours)).group_by(*keys)
    return _iter_rows(conn, stmt)


def _group_key(with_host: bool) -> Callable[[dict[str, Any]], tuple]:
    return itemgetter(*GROUP_KEYS, *(("host",) if with_host else ()))


def _merge_into(into: dict[str, Any], row: dict[str, Any]) -> None:
    """Add the sums of ``row`` to ``into`` (same group key)."""
    for name in GROUP_SUMS:
        into[name] += row[name]
    for name, pick in (("intensity_min", min), ("intensity_max", max)):
        values = [v for v in (into[name], row[name]) if v is not None]
        into[name] = pick(values) if values else None


def _merge_rows(parts: list[list[dict[str, Any]]], with_host: bool) -> list[dict[str, Any]]:
    """Grouped rows of several sources added up per key."""
    if len(parts) == 1:
        return parts[0]
    key_of = _group_key(with_host)
    merged: dict[tuple, dict[str, Any]] = {}
    for rows in parts:
        for row in rows:
            key = key_of(row)
            into = merged.get(key)
            if into is None:
                merged[key] = dict(row)
            else:
                _merge_into(into, row)
    return list(merged.values())


def _merged_stream(
    rows: Iterable[dict[str, Any]], extra: list[dict[str, Any]], with_host: bool
) -> Iterator[dict[str, Any]]:
    """``rows`` (distinct keys, streamed) with the few ``extra`` rows added per key."""
    if not extra:
        yield from rows
        return
    key_of = _group_key(with_host)
    pending = {key_of(row): row for row in extra}
    for row in rows:
        other = pending.pop(key_of(row), None)
        if other is not None:
            _merge_into(other, row)
            row = other
        yield row
    yield from pending.values()


def _count_queries(conn: Any, request: ReportRequest) -> int:
    """The period's queries counted in ``queries`` (index only): checks the rollups."""
    stmt = select(func.count()).select_from(QueryRecord.__table__).where(*_filters(request))
    return int(conn.execute(stmt).scalar_one())


def _first_last(conn: Any, request: ReportRequest) -> tuple[Any, Any]:
    """Start times of the first and last query of the period (index lookups)."""
    q = QueryRecord.__table__.c
    # Two statements: SQLite answers a lone min() or max() from the index.
    first = conn.execute(select(func.min(q.started_at)).where(*_filters(request))).scalar()
    last = conn.execute(select(func.max(q.started_at)).where(*_filters(request))).scalar()
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
    return [dict(r) for r in conn.execute(stmt).mappings()]


def _raw_gpu_seconds(
    conn: Any, request: ReportRequest, period: Period | None = None
) -> list[tuple[str, float]]:
    """(GPUs, GPU-seconds) of every model, from ``queries``."""
    q = QueryRecord.__table__.c
    stmt = (
        select(q.gpus, func.coalesce(func.sum(q.gpu_seconds), 0.0))
        .where(*_filters(request, with_models=False, period=period))
        .group_by(q.gpus)
    )
    return [(gpus, seconds) for gpus, seconds in conn.execute(stmt)]


def _rollup_gpu_seconds(
    conn: Any, request: ReportRequest, hours: Period
) -> list[tuple[str, float]]:
    """(GPUs, GPU-seconds) of every model, from the rollups of whole hours."""
    r = QueryRollup.__table__.c
    stmt = (
        select(r.gpus, func.sum(r.gpu_seconds))
        .where(*_hour_filters(request, hours, with_models=False))
        .group_by(r.gpus)
    )
    return [(gpus, seconds) for gpus, seconds in conn.execute(stmt)]


def _per_device(pairs: list[tuple[str, float]]) -> dict[str, float]:
    """GPU-seconds per GPU of every model (the denominator of the idle split)."""
    out: dict[str, float] = defaultdict(float)
    for gpus, seconds in pairs:
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


# --- percentiles ----------------------------------------------------------------------

METRICS = ("energy", "co2e", "cost")


def _cost_expr(rates: dict[str, float]) -> Any:
    """Per-query USD cost in SQL: energy (converted where needed) + compute."""
    q = QueryRecord.__table__.c
    whens = [(q.currency == "USD", q.energy_cost)]
    whens += [
        (q.currency == c, q.energy_cost * literal(r, Float)) for c, r in sorted(rates.items())
    ]
    converted = case(*whens, else_=None)
    return func.coalesce(q.energy_cost_usd, converted, 0.0) + func.coalesce(q.compute_cost, 0.0)


def _plain_cost_expr() -> Any:
    """The cost of queries that all have a USD figure, as written in ``PERCENTILE_INDEXES``.

    Equal to ``_cost_expr`` wherever no energy cost lacks its USD figure; constants are
    inline so that the planner can match the indexed expression.
    """
    q = QueryRecord.__table__.c
    zero = literal_column("0.0")
    return func.coalesce(q.energy_cost_usd, zero) + func.coalesce(q.compute_cost, zero)


def _rank(n: int, p: int) -> int:
    """Nearest rank (1-based): ceil(p / 100 × n) in integer arithmetic."""
    return (n * p + 99) // 100


class _Explain(Executable, ClauseElement):
    """``EXPLAIN`` of a statement: SQLite's query plan, PostgreSQL's plan as JSON."""

    inherit_cache = False

    def __init__(self, statement: Any) -> None:
        self.statement = statement


@compiles(_Explain)
def _compile_explain(element: _Explain, compiler: Any, **kw: Any) -> str:
    sqlite = compiler.dialect.name == "sqlite"
    prefix = "EXPLAIN QUERY PLAN " if sqlite else "EXPLAIN (FORMAT JSON) "
    return prefix + compiler.process(element.statement, **kw)


def _index_ordered(conn: Any, stmt: Any) -> bool:
    """Whether the database reads ``stmt`` in its ORDER BY from an index, with no sort."""
    rows = conn.execute(_Explain(stmt)).all()
    if conn.dialect.name == "sqlite":
        details = [str(row[-1]) for row in rows]
        return any("INDEX" in d for d in details) and not any("TEMP B-TREE" in d for d in details)
    plan = rows[0][0]
    if isinstance(plan, str):
        plan = json.loads(plan)
    kinds: list[str] = []
    nodes = [plan[0]["Plan"]]
    while nodes:
        node = nodes.pop()
        kinds.append(node.get("Node Type", ""))
        nodes.extend(node.get("Plans", []))
    return any(k.startswith("Index") for k in kinds) and not any(k.endswith("Sort") for k in kinds)


def _period_terms(conn: Any, request: ReportRequest) -> list[Any]:
    """The period filter for the ordered percentile statements.

    On SQLite the column is written ``+queries.started_at``: the same values, but no
    index on ``started_at`` can serve it, so the planner takes the index ordered by the
    figure (and filters on its ``started_at`` column) instead of sorting.
    """
    q = QueryRecord.__table__.c
    column: Any = q.started_at
    if conn.dialect.name == "sqlite":
        name = f"+{QueryRecord.__table__.name}.{q.started_at.name}"
        column = literal_column(name, q.started_at.type)
    out = []
    if request.since is not None:
        out.append(column >= request.since)
    if request.until is not None:
        out.append(column < request.until)
    return out


def _metric(name: str, rates: dict[str, float] | None) -> tuple[Any, list[Any]]:
    """A per-query figure and the queries it is defined for.

    Energy and cost: queries with measured energy; CO2e: queries with a CO2e figure.
    ``rates`` None: the model has no energy cost without its USD figure.
    """
    q = QueryRecord.__table__.c
    if name == "energy":
        return q.energy_j, [q.energy_j.is_not(None)]
    if name == "co2e":
        return q.co2e_g, [q.co2e_g.is_not(None)]
    expr = _plain_cost_expr() if rates is None else _cost_expr(rates)
    return expr, [q.energy_j.is_not(None)]


def _percentiles(
    conn: Any,
    request: ReportRequest,
    measured: dict[str, int],
    unconverted: set[str],
    rates: dict[str, float],
) -> dict[str, dict[str, Any]]:
    """Nearest-rank p50 and p95 of energy, CO2e and cost per query, per model.

    A model with at most ``PERCENTILE_SAMPLE`` measured queries: exact, from all of them,
    read with those of other such models (a few statements for thousands of models).
    Above: exact from an index ordered by the figure where there is one; else from a
    deterministic sample of its queries.
    """
    out: dict[str, dict[str, Any]] = {}
    rest: dict[str, list[str]] = {}
    plans: dict[tuple, bool] = {}  # whether an index serves each shape of ordered statement
    for model in sorted(m for m, n in measured.items() if n):
        entry = out[model] = {"sample": measured[model], "sampled": []}
        if measured[model] <= PERCENTILE_SAMPLE:
            rest[model] = list(METRICS)
            continue
        for name in METRICS:
            model_rates = rates if model in unconverted else None
            found = _ordered_percentiles(
                conn, request, model, name, measured[model], model_rates, plans
            )
            if found is None:
                rest.setdefault(model, []).append(name)
            else:
                entry.update(found)
    if rest:
        _sampled_percentiles(conn, request, rest, measured, rates, out)
    return out


def _ordered_percentiles(
    conn: Any,
    request: ReportRequest,
    model: str,
    name: str,
    measured: int,
    rates: dict[str, float] | None,
    plans: dict[tuple, bool] | None = None,
) -> dict[str, Any] | None:
    """Exact percentiles by ``ORDER BY … LIMIT 1 OFFSET k`` on an index; None without one.

    From the low end up to the median, from the high end above it (p95 walks 5% of the
    index, not 95%). ``plans`` keeps whether an index serves each shape of statement (the
    model and offset are parameters: the plan is the same for every model).
    """
    expr, conditions = _metric(name, rates)
    q = QueryRecord.__table__.c
    where = [q.model == model, *conditions, *_period_terms(conn, request)]
    # Untyped: EXPLAIN returns the plan in this column (no float processing of it).
    base = select(type_coerce(expr, NullType())).where(*where).limit(1)
    plans = {} if plans is None else plans

    def served(direction: str, stmt: Any) -> bool:
        key = (name, rates is None, direction)
        if key not in plans:
            plans[key] = _index_ordered(conn, stmt)
        return plans[key]

    n = measured
    if name == "co2e":
        n = -1  # counted below, once the index is known to serve it
    found: dict[str, Any] = {}
    for p in PERCENTILES:
        if n < 0:
            if not served("asc", base.order_by(expr).offset(0)):
                return None
            count = select(func.count()).select_from(QueryRecord.__table__).where(*where)
            n = int(conn.execute(count).scalar_one())
        if n == 0:
            found[f"{name}_p{p}"] = None
            continue
        k = _rank(n, p)
        if k - 1 <= n - k:
            stmt, direction = base.order_by(expr).offset(k - 1), "asc"
        else:
            stmt, direction = base.order_by(expr.desc()).offset(n - k), "desc"
        if not served(direction, stmt):
            return None
        found[f"{name}_p{p}"] = conn.execute(stmt).scalar()
    return found


SQLITE_MODEL_CHUNK = 500  # models per statement (bound parameters: SQLite allows 999+)
OTHER_MODEL_CHUNK = 10_000  # PostgreSQL: one scan per chunk; 65,535 parameters at most


def _sampled_percentiles(
    conn: Any,
    request: ReportRequest,
    rest: dict[str, list[str]],
    measured: dict[str, int],
    rates: dict[str, float],
    out: dict[str, dict[str, Any]],
) -> None:
    """The figures no index serves, from every query of the model or a hash sample.

    SQLite: a sampled model has its own statement through the (model, started_at) index,
    the sample test on the record id evaluated on the index entries, so that only sampled
    rows are read; the other models go through the same index ``SQLITE_MODEL_CHUNK`` at a
    time. Other databases: one statement (one scan) per ``OTHER_MODEL_CHUNK`` models.
    Values are held for one statement's models at a time.
    """
    q = QueryRecord.__table__.c
    models = sorted(rest)
    thresholds = {
        m: min(_HASH_MODULUS, -(-PERCENTILE_SAMPLE * _HASH_MODULUS // measured[m])) for m in models
    }
    sampled = {m for m, t in thresholds.items() if t < _HASH_MODULUS}
    bucket = (q.id * literal(_HASH_MULTIPLIER, BigInteger)) % _HASH_MODULUS
    filters = [
        *_filters(request, with_models=False),
        or_(q.energy_j.is_not(None), q.co2e_g.is_not(None)),
    ]
    columns = (q.model, q.energy_j, q.co2e_g, _cost_expr(rates))
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
                limit = case(*[(q.model == m, thresholds[m]) for m in picked], else_=_HASH_MODULUS)
                sample.append(bucket < limit)
        stmt = select(*columns).where(where_model, *filters, *sample)
        values: dict[str, dict[str, list[float]]] = {m: {k: [] for k in METRICS} for m in batch}
        for model, energy, co2e, cost in conn.execute(stmt).all():
            lists = values[model]
            if energy is not None:
                lists["energy"].append(energy)
                lists["cost"].append(cost)
            if co2e is not None:
                lists["co2e"].append(co2e)
        for model in batch:
            entry = out[model]
            if model in sampled:
                entry["sampled"] = rest[model]
                entry["sample"] = len(values[model]["energy"])
            for name in rest[model]:
                ordered = sorted(values[model][name])
                for p in PERCENTILES:
                    entry[f"{name}_p{p}"] = ordered[_rank(len(ordered), p) - 1] if ordered else None


# --- rollups ---------------------------------------------------------------------------


def _kwh(joules: float) -> float:
    return joules / JOULES_PER_KWH


def _div(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def _assemble(
    request: ReportRequest,
    fold: _Fold,
    percentiles: dict[str, dict[str, Any]],
    compare_zones: list[str],
    first_last: tuple[Any, Any] = (None, None),
    notes: list[str] | None = None,
) -> dict[str, Any]:
    notes = list(notes or [])
    for currency, rate in sorted(fold.rate_refs.items(), key=lambda kv: kv[0] or ""):
        if rate is not None and currency != "USD":
            notes.append(
                f"{fold.converted[currency]:,} queries priced in {currency} had no USD figure "
                f"stored; their energy cost was converted here at {rate[1]}."
            )
    if fold.unpriced:
        notes.append(
            f"{fold.unpriced:,} queries have an energy cost in a currency with no known "
            "exchange rate; it is left out of the USD totals."
        )

    # Idle energy per GPU over the period, spread over that GPU's queries by GPU-seconds.
    idle = fold.idle
    idle_by_device: dict[str, float] = defaultdict(float)
    idle_by_day: dict[str, float] = defaultdict(float)
    idle_by_host: dict[str, float] = defaultdict(float)
    measured_by_device: dict[str, float] = defaultdict(float)
    lost_j = sum(r["lost_j"] or 0.0 for r in idle)
    for r in idle:
        idle_by_device[r["device_uuid"]] += r["idle_j"] or 0.0
        measured_by_device[r["device_uuid"]] += r["measured_j"] or 0.0
        idle_by_day[r["day"]] += r["idle_j"] or 0.0
        idle_by_host[r["host"]] += r["idle_j"] or 0.0
    unallocated_j = fold.settle(idle_by_device)
    device_gs = fold.given_device_gs if fold.given_device_gs is not None else fold.device_gs
    total, by_source = fold.total, fold.by_source
    total["idle_j"] += unallocated_j

    ranked = sorted(fold.by_model.items(), key=lambda kv: (-kv[1]["co2e_g"], kv[0]))
    models = [_figures({"model": name}, acc, percentiles.get(name)) for name, acc in ranked]
    others = None
    if len(ranked) > TOP_MODELS + 1:
        rest = _zero()
        for _, acc in ranked[TOP_MODELS:]:
            _add(rest, acc)
        count = len(ranked) - TOP_MODELS
        head = {"model": None, "label": f"all others ({count:,} models)", "models": count}
        others = _figures(head, rest, {})
        del others["per_query"]["percentile_sample"]
    totals = _figures({}, total, None)
    totals["unallocated_idle_energy_kwh"] = _kwh(unallocated_j)
    totals["models"] = len(models)

    groups = None
    if request.by != "model":
        key = {"day": "day", "region": "zone", "host": "host"}[request.by]
        groups = []
        for name, acc in sorted(fold.by_group.items()):
            entry = _figures({key: name}, acc, None)
            if request.by == "day" and not request.models:
                _replace_idle(entry, acc, idle_by_day.get(name, 0.0))
            elif request.by == "host" and not request.models:
                _replace_idle(entry, acc, idle_by_host.get(name, 0.0))
            groups.append(entry)

    first, last = first_last
    days = sorted(set(fold.by_day) | set(idle_by_day))
    daily = _daily(days, fold.by_day, idle_by_day, [name for name, _ in ranked])

    sampled = [
        name if len(p["sampled"]) == len(METRICS) else f"{name} ({', '.join(p['sampled'])})"
        for name, p in sorted(percentiles.items())
        if p.get("sampled")
    ]
    if sampled:
        notes.append(
            f"Per-query percentiles of {', '.join(sampled)} are computed on a deterministic "
            f"sample of {PERCENTILE_SAMPLE:,} queries per model (hash of the record id); "
            "totals and means use every query."
        )
    if not fold.rows:
        notes.append("No queries were recorded in this period.")
    if lost_j > 0:
        notes.append(
            f"{_kwh(lost_j):.3g} kWh went to calls that were never stored (still running "
            "when their process ended, or closed as abandoned; counted in `footprint db "
            "info` losses): it is spread with the idle energy in the fully loaded figures."
        )
    missing = by_source.get("missing", 0)
    if missing:
        notes.append(
            f"{missing:,} queries have no GPU energy (energy_source=missing): they count as "
            "queries but add no energy, CO2e or energy cost."
        )
    bounded, measured_n = int(total["uncertainty_queries"]), int(total["measured_queries"])
    if bounded < measured_n:
        notes.append(
            f"{measured_n - bounded:,} of the {measured_n:,} queries with GPU energy carry "
            "no energy uncertainty bound (energy estimated, or recorded before footprint "
            "stored one): "
            + (
                f"the ± figures cover the other {bounded:,} only."
                if bounded
                else "no ± figure is shown."
            )
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
            "days": len(fold.by_day),
        },
        "filters": {"models": request.models or None, "by": request.by},
        "totals": totals,
        "models": models,
        # the models after the first TOP_MODELS by CO2e, added up (None when all are shown)
        "others": others,
        "daily": daily,
        "measurement": {
            "energy_sources": dict(sorted(by_source.items())),
            "gpus": len(set(idle_by_device) | {d for d, s in device_gs.items() if s > 0}),
            "measured_energy_kwh": _kwh(sum(measured_by_device.values())),
            "measured_queries": measured_n,  # with GPU energy (energy_j not NULL)
            "uncertainty_queries": bounded,  # of them, with an energy uncertainty bound
            "accuracy": published_accuracy(),
        },
        "factors": _factors(fold.factor_sets),
        "what_if": _what_if(totals, fold.zones, compare_zones),
        "notes": notes,
    }
    if groups is not None:
        report["by"] = request.by
        report["groups"] = groups
    return report


def shown_models(report: dict[str, Any]) -> list[tuple[str, dict[str, Any], str]]:
    """The rows of the per-model tables and charts: (JSON path, figures, name).

    Every model when there are at most ``TOP_MODELS + 1``; else the first ``TOP_MODELS``
    by CO2e and one row adding up all the others (``others`` in the report).
    """
    models = report["models"]
    others = report.get("others")
    shown = models[:TOP_MODELS] if others else models
    rows = [(f"models.{i}", m, m["model"]) for i, m in enumerate(shown)]
    if others:
        rows.append(("others", others, others["label"]))
    return rows


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
        # Σ of the per-record bounds on |error of energy_j|; None when no record has one.
        "energy_uncertainty_kwh": _kwh(acc["energy_uncertainty_j"])
        if acc["uncertainty_queries"]
        else None,
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
    by_day: dict[str, dict[str, list[float]]],
    idle_by_day: dict[str, float],
    models: list[str],
) -> list[dict[str, Any]]:
    """Every day from the first to the last (days with nothing included), with the
    models that had queries that day, in the order of ``models``."""
    if not days:
        return []
    rank = {name: i for i, name in enumerate(models)}
    start = _dt.date.fromisoformat(days[0])
    end = _dt.date.fromisoformat(days[-1])
    out = []
    day = start
    while day <= end:
        key = day.isoformat()
        found = by_day.get(key, {})
        per_model = {}
        for model in sorted(found, key=rank.__getitem__):
            queries, energy_j, co2e_g, cost_usd = found[model]
            per_model[model] = {
                "queries": int(queries),
                "energy_kwh": _kwh(energy_j),
                "co2e_g": co2e_g,
                "cost_usd": cost_usd,
            }
        out.append(
            {"day": key, "idle_energy_kwh": _kwh(idle_by_day.get(key, 0.0)), "models": per_model}
        )
        day += _dt.timedelta(days=1)
    return out


FACTOR_NAMES = ("zone", "intensity_source", "pue", "price_per_kwh", "currency",
                "usd_per_gpu_hour", "market_intensity_g_per_kwh")  # fmt: skip


_FACTOR_KEY = itemgetter(*FACTOR_NAMES)


def _add_factors(sets: dict[tuple, dict[str, Any]], row: dict[str, Any]) -> None:
    """Count a grouped row's queries under the factor set it was priced with."""
    key = _FACTOR_KEY(row)
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


def _factors(sets: dict[tuple, dict[str, Any]]) -> list[dict[str, Any]]:
    """The distinct factor sets the records were priced with, with their sources."""
    from footprint.pricing import build_factors, embodied_for

    def key_of(entry: dict[str, Any]) -> tuple:
        return tuple(entry[name] for name in FACTOR_NAMES)

    out = sorted(sets.values(), key=lambda e: (-e["queries"], *map(_none_first, key_of(e))))
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


def _none_first(value: Any) -> tuple:
    """A sort key for values that may be None (None first): order by value, not by row."""
    return (0, "") if value is None else (1, value)


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


def _what_if(totals: dict[str, Any], zones: set[str], compare: list[str]) -> dict[str, Any]:
    """The same fully loaded GPU energy priced with other zones' static factors."""
    from footprint.pricing import build_factors, lookup_zone

    basis_kwh = totals["fully_loaded_energy_kwh"]
    as_run_co2e = totals["fully_loaded_co2e_g"]
    as_run_cost = totals["fully_loaded_energy_cost_usd"]
    zones_run = sorted(zones)
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
