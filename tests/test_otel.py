"""OpenTelemetry: each record carries the caller's trace context (the span current when the
call began, or an HTTP request's W3C ``traceparent``), and the records are published as
OTel counters per model (``footprint.integrations.otel``), read back here with the SDK's
``InMemoryMetricReader``.

Before (f2a661a): records had no ``trace_id``/``span_id`` (schema version 4), the daemon
refused ends that carried them, and there was no OTel metrics publisher.
"""

from __future__ import annotations

import asyncio
import json
import math
import sqlite3
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.metrics import MeterProvider  # noqa: E402
from opentelemetry.sdk.metrics.export import InMemoryMetricReader  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from sqlalchemy import create_engine, text  # noqa: E402
from sqlalchemy import inspect as sa_inspect  # noqa: E402

from footprint import Tracker  # noqa: E402
from footprint._tracing import (  # noqa: E402
    OTEL_TRACE_MODULE,
    current_ids,
    hex_ids,
    parse_traceparent,
    raw_ids,
    valid_ids,
)
from footprint.bench.ingest import make_records  # noqa: E402
from footprint.integrations.otel import (  # noqa: E402
    OtelUnavailable,
    RecordMetrics,
    publish_metrics,
)
from footprint.pricing.factors import record_cost_usd  # noqa: E402
from footprint.runtime.outbox import SpanEntries  # noqa: E402
from footprint.runtime.protocol import ProtocolError, decode_batch, encode_batch  # noqa: E402
from footprint.runtime.spans import EndedSpan  # noqa: E402
from footprint.storage.engine import open_engine  # noqa: E402
from footprint.storage.export import export_text  # noqa: E402
from footprint.storage.info import database_info  # noqa: E402
from footprint.storage.models import SCHEMA_VERSION  # noqa: E402
from footprint.storage.store import Store  # noqa: E402

SIMULATED = {
    "sensor": "simulated:gpus=1,idle_w=60,busy_w=400,seed=1",
    "cpu": False,
    "daemon": "off",
    "region": "FRA",
}
W3C_EXAMPLE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
TRACER = TracerProvider().get_tracer("footprint-tests")  # not the global provider


def ids_of(span) -> tuple[str, str]:
    context = span.get_span_context()
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


def trace_rows(db: str | Path) -> list[tuple]:
    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT model, trace_id, span_id FROM queries ORDER BY id").fetchall()
    finally:
        con.close()


# -- parsing and validation -------------------------------------------------------------
def test_traceparent_is_parsed_strictly():
    assert parse_traceparent(W3C_EXAMPLE) == (
        "4bf92f3577b34da6a3ce929d0e0e4736",
        "00f067aa0ba902b7",
    )
    assert parse_traceparent(f" {W3C_EXAMPLE}\t") is not None  # OWS around a field value
    for bad in (
        W3C_EXAMPLE.upper(),  # hex is lowercase
        "01" + W3C_EXAMPLE[2:],  # only version 00 is known exactly
        "ff" + W3C_EXAMPLE[2:],
        W3C_EXAMPLE + "-extra",
        W3C_EXAMPLE[:-1],
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # invalid trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # invalid span id
        "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
        "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
        "",
        None,
        b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "x" * 10_000,
    ):
        assert parse_traceparent(bad) is None, bad


@given(
    st.integers(1, 2**128 - 1),
    st.integers(1, 2**64 - 1),
    st.integers(0, 255),
)
def test_every_valid_traceparent_round_trips(trace_id, span_id, flags):
    header = f"00-{trace_id:032x}-{span_id:016x}-{flags:02x}"
    assert parse_traceparent(header) == (f"{trace_id:032x}", f"{span_id:016x}")


@settings(max_examples=300)
@given(st.text(alphabet="0123456789abcdefABCDEF-x ", max_size=70))
def test_whatever_the_header_parsing_gives_valid_ids_or_none(value):
    ids = parse_traceparent(value)
    assert ids is None or valid_ids(*ids)


@given(st.integers(1, 2**128 - 1), st.integers(1, 2**64 - 1))
def test_hex_and_raw_ids_round_trip(trace_id, span_id):
    ids = hex_ids((trace_id, span_id))
    assert ids is not None and valid_ids(*ids)
    assert raw_ids(ids) == (trace_id, span_id)


def test_valid_ids():
    assert valid_ids("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7")
    assert not valid_ids("4BF92F3577B34DA6A3CE929D0E0E4736", "00f067aa0ba902b7")
    assert not valid_ids("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b")
    assert not valid_ids("0" * 32, "00f067aa0ba902b7")
    assert not valid_ids("4bf92f3577b34da6a3ce929d0e0e4736", "0" * 16)
    assert not valid_ids(1, "00f067aa0ba902b7")
    assert not valid_ids("4bf92f3577b34da6a3ce929d0e0e4736\n", "00f067aa0ba902b7")


def test_current_ids_needs_a_valid_current_span_and_never_raises(monkeypatch):
    assert current_ids() is None  # OTel imported, no span current
    with TRACER.start_as_current_span("outer") as span:
        assert hex_ids(current_ids()) == ids_of(span)
        monkeypatch.delitem(sys.modules, OTEL_TRACE_MODULE)
        assert current_ids() is None  # not imported: not looked for
        monkeypatch.setitem(sys.modules, OTEL_TRACE_MODULE, object())  # not OTel's API
        assert current_ids() is None


# -- records carry the trace context ------------------------------------------------------
def test_every_kind_of_call_carries_the_span_current_at_its_begin(tmp_path):
    db = tmp_path / "calls.db"
    tracker = Tracker(db=str(db), **SIMULATED)

    @tracker.track(model="sync")
    def sync_call() -> int:
        with TRACER.start_as_current_span("inside"):  # started by the call: not its caller
            return 1

    @tracker.track(model="async")
    async def async_call() -> int:
        return 2

    @tracker.track(model="gen")
    def gen_call():
        yield from range(3)

    @tracker.track(model="agen")
    async def agen_call():
        for i in range(3):
            yield i

    async def drain() -> list:
        return [i async for i in agen_call()]

    with TRACER.start_as_current_span("request") as span:
        expected = ids_of(span)
        assert sync_call() == 1
        assert asyncio.run(async_call()) == 2
        assert list(gen_call()) == [0, 1, 2]
        assert asyncio.run(drain()) == [0, 1, 2]
        with tracker.query(model="block") as q:
            assert q.trace == expected
        with pytest.raises(ZeroDivisionError), tracker.query(model="failed"):
            1 / 0  # noqa: B018
    sync_call()  # no span current: none recorded
    with tracker.query(model="block"):
        pass
    tracker.close()
    found = trace_rows(db)
    assert [m for m, *_ in found] == ["sync", "async", "gen", "agen", "block", "failed"] + [
        "sync",
        "block",
    ]
    assert all((t, s) == expected for _, t, s in found[:6])
    assert all((t, s) == (None, None) for _, t, s in found[6:])


def test_the_trace_of_a_query_block_can_be_set_and_is_validated(tmp_path):
    db = tmp_path / "calls.db"
    tracker = Tracker(db=str(db), **SIMULATED)
    ids = parse_traceparent(W3C_EXAMPLE)
    with tracker.query(model="linked") as q:
        assert q.trace is None
        for bad in (("0" * 32, "00f067aa0ba902b7"), ("ab", "cd"), "x", (1, 2)):
            with pytest.raises(ValueError, match="32 and 16 lowercase hex"):
                q.trace = bad  # type: ignore[assignment]
        q.trace = ids
    tracker.close()
    assert trace_rows(db) == [("linked", *ids)]


def test_exports_carry_the_trace_ids(tmp_path):
    db = tmp_path / "calls.db"
    tracker = Tracker(db=str(db), **SIMULATED)

    @tracker.track(model="m")
    def call() -> None:
        pass

    with TRACER.start_as_current_span("request") as span:
        call()
    tracker.close()
    out = tmp_path / "out.jsonl"
    with open(out, "w") as stream:
        assert export_text(str(db), "jsonl", stream) == 1
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert (row["trace_id"], row["span_id"]) == ids_of(span)


# -- to the daemon: the protocol ---------------------------------------------------------
def _end_entry(**extra) -> dict:
    return {"id": 1, "start_s": 10.0, "end_s": 11.0, "model": "m", **extra}


def test_the_protocol_takes_valid_ids_and_refuses_anything_else():
    trace_id, span_id = parse_traceparent(W3C_EXAMPLE)  # type: ignore[misc]
    entry = _end_entry(trace_id=trace_id, span_id=span_id)
    batch = decode_batch(encode_batch({"pid": 7, "host": "h", "ends": [entry]}))
    assert hex_ids(batch.ends[0].trace) == (trace_id, span_id)
    plain = decode_batch(encode_batch({"pid": 7, "host": "h", "ends": [_end_entry()]}))
    assert plain.ends[0].trace is None
    nulls = _end_entry(trace_id=None, span_id=None)
    assert (
        decode_batch(encode_batch({"pid": 7, "host": "h", "ends": [nulls]})).ends[0].trace is None
    )
    for bad in (
        {"trace_id": trace_id},  # one without the other
        {"span_id": span_id},
        {"trace_id": trace_id.upper(), "span_id": span_id},
        {"trace_id": trace_id, "span_id": span_id + "0"},
        {"trace_id": "0" * 32, "span_id": span_id},
        {"trace_id": int(trace_id, 16), "span_id": span_id},
        {"trace_id": [trace_id], "span_id": span_id},
    ):
        with pytest.raises(ProtocolError, match="trace_id") as caught:
            decode_batch(encode_batch({"pid": 7, "host": "h", "ends": [_end_entry(**bad)]}))
        assert caught.value.reason == "invalid"


def test_a_client_sends_the_ids_only_when_its_call_had_them():
    entries = SpanEntries(lambda kind, count: None, lambda key, message: None)
    ids = parse_traceparent(W3C_EXAMPLE)
    assert ids is not None
    span = EndedSpan(3, 1.0, 2.0, "m", {}, "ok", None, 1, 2, None, None, trace=raw_ids(ids))
    sent = entries.end(span)
    assert (sent["trace_id"], sent["span_id"]) == ids
    decoded = decode_batch(encode_batch({"pid": 7, "host": "h", "ends": [sent]}))
    assert decoded.ends[0].trace == raw_ids(ids)
    assert "trace_id" not in entries.end(span._replace(trace=None))
    for not_ids in ((0, 5), (2**128, 5), (5, 2**64), ("ab", 5)):  # never sent: refused
        assert "trace_id" not in entries.end(span._replace(trace=not_ids))


# -- the schema -----------------------------------------------------------------------
def _as_version_4(url: str) -> None:
    engine = open_engine(url, create=False)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP INDEX ix_queries_trace_id")
        conn.exec_driver_sql("ALTER TABLE queries DROP COLUMN trace_id")
        conn.exec_driver_sql("ALTER TABLE queries DROP COLUMN span_id")
        conn.execute(text("UPDATE footprint_meta SET value = '4' WHERE key = 'schema_version'"))
    engine.dispose()


def test_a_version_4_database_gets_the_trace_columns_and_index(db_url):
    store = Store(db_url)
    store.insert(make_records(20, seed=1))
    store.close()
    _as_version_4(db_url)
    raw = create_engine(db_url if "://" in db_url else f"sqlite:///{db_url}")
    with raw.connect() as conn:  # neither creates nor migrates anything
        version = conn.execute(
            text("SELECT value FROM footprint_meta WHERE key = 'schema_version'")
        ).scalar_one()
        assert "trace_id" not in {c["name"] for c in sa_inspect(conn).get_columns("queries")}
    raw.dispose()
    assert version == "4"
    store = Store(db_url)  # opening migrates
    try:
        new = make_records(2, seed=2)
        new[0]["trace_id"], new[0]["span_id"] = parse_traceparent(W3C_EXAMPLE)  # type: ignore[misc]
        store.insert(new)
    finally:
        store.close()
    assert database_info(db_url)["schema_version"] == SCHEMA_VERSION
    engine = open_engine(db_url, create=False)
    try:
        inspector = sa_inspect(engine)
        columns = [c["name"] for c in inspector.get_columns("queries")]
        assert columns[-2:] == ["trace_id", "span_id"]  # last, as in a fresh database
        indexes = {i["name"]: i["column_names"] for i in inspector.get_indexes("queries")}
        assert indexes["ix_queries_trace_id"] == ["trace_id"]
        with engine.connect() as conn:
            found = conn.execute(text("SELECT trace_id, span_id FROM queries ORDER BY id")).all()
    finally:
        engine.dispose()
    assert [tuple(r) for r in found] == [(None, None)] * 20 + [  # the old rows: NULL
        parse_traceparent(W3C_EXAMPLE),
        (None, None),
    ]
    Store(db_url).close()  # migrated already: opens as it is


# -- metrics --------------------------------------------------------------------------
def _points(reader: InMemoryMetricReader) -> dict[str, dict[tuple, float]]:
    """metric name -> {sorted attribute items: value}."""
    out: dict[str, dict[tuple, float]] = {}
    data = reader.get_metrics_data()
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    key = tuple(sorted(point.attributes.items()))
                    out.setdefault(metric.name, {})[key] = point.value
    return out


def _by_model(points: dict[tuple, float]) -> dict[str, float]:
    sums: dict[str, float] = {}
    for key, value in points.items():
        model = dict(key)["model"]
        sums[model] = sums.get(model, 0) + value
    return sums


def _expected(records: list[dict], value) -> dict[str, float]:
    sums: dict[str, float] = {}
    for r in records:
        v = value(r)
        if v is not None:
            sums[r["model"]] = sums.get(r["model"], 0) + v
    return sums


def _assert_sums(points: dict[str, dict], records: list[dict]) -> None:
    for name, value in (
        ("footprint.energy", lambda r: r["energy_j"]),
        ("footprint.co2e", lambda r: r["co2e_g"]),
        ("footprint.cost", record_cost_usd),
        ("footprint.tokens.input", lambda r: r["input_tokens"]),
        ("footprint.tokens.output", lambda r: r["output_tokens"]),
        ("footprint.queries", lambda r: 1),
    ):
        got = _by_model(points.get(name, {}))
        want = _expected(records, value)
        assert got.keys() == want.keys(), name  # a model with none known: no point at all
        for model, total in want.items():
            assert math.isclose(got[model], total, rel_tol=1e-9, abs_tol=1e-12), (name, model)


record_strategy = st.fixed_dictionaries(
    {
        "model": st.sampled_from(["a", "b", "c"]),
        "status": st.sampled_from(["ok", "error"]),
        "energy_source": st.sampled_from(["counter", "missing"]),
        "tags": st.sampled_from(['{"team": "x"}', '{"team": 3}', "{}"]),
        "energy_j": st.none() | st.floats(0, 1e6),
        "co2e_g": st.none() | st.floats(0, 1e3),
        "compute_cost": st.none() | st.floats(0, 10),
        "energy_cost_usd": st.none() | st.floats(0, 10),
        "ownership": st.sampled_from([None, "owned", "rented"]),
        "input_tokens": st.none() | st.integers(0, 2**40),
        "output_tokens": st.none() | st.integers(0, 2**40),
    }
)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(record_strategy, max_size=8), max_size=4))
def test_counters_per_model_are_the_sums_of_the_records(batches):
    reader = InMemoryMetricReader()
    metrics = RecordMetrics(MeterProvider(metric_readers=[reader]), tags=["team"])
    for batch in batches:
        metrics.observe(batch, [])
    records = [r for batch in batches for r in batch]
    points = _points(reader)
    _assert_sums(points, records)
    teams = {dict(key).get("team") for key in points.get("footprint.queries", {})}
    assert teams <= {"x", 3, None}


def test_publish_metrics_in_process_matches_the_store(tmp_path):
    db = tmp_path / "calls.db"
    tracker = Tracker(db=str(db), **SIMULATED)
    reader = InMemoryMetricReader()
    handle = publish_metrics(tracker, MeterProvider(metric_readers=[reader]), tags=["team"])

    @tracker.track(model="priced", team="search", tokens=lambda r: (3, r))
    def priced(n: int) -> int:
        return n

    for n in range(5):
        priced(n)
    with tracker.query(model="block") as q:
        q.set_tokens(input=7)
    tracker.flush()
    handle.close()
    with tracker.query(model="after-close"):
        pass
    tracker.close()
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    records = [dict(r) for r in con.execute("SELECT * FROM queries WHERE model != 'after-close'")]
    con.close()
    assert len(records) == 6
    points = _points(reader)
    _assert_sums(points, records)
    assert "after-close" not in _by_model(points["footprint.queries"])
    attributes = {dict(key)["model"]: dict(key) for key in points["footprint.queries"]}
    assert attributes["priced"] == {
        "model": "priced",
        "status": "ok",
        "energy_source": "simulated",
        "team": "search",
    }
    assert "team" not in attributes["block"]  # no such tag: no such attribute


def test_unknown_cost_adds_no_point_and_unknown_energy_none():
    reader = InMemoryMetricReader()
    metrics = RecordMetrics(MeterProvider(metric_readers=[reader]))
    metrics.observe(
        [
            {"model": "m", "status": "ok", "energy_source": "missing", "energy_j": None},
            {"model": "m", "status": "ok", "energy_source": "missing", "compute_cost": None},
        ],
        [],
    )
    points = _points(reader)
    assert _by_model(points["footprint.queries"]) == {"m": 2}
    assert "footprint.cost" not in points and "footprint.energy" not in points


def test_publish_metrics_says_what_is_missing(tmp_path):
    with pytest.raises(OtelUnavailable, match="no OpenTelemetry SDK MeterProvider"):
        publish_metrics(Tracker(db=str(tmp_path / "a.db"), **SIMULATED))
    with pytest.raises(ValueError, match="attribute already"):
        RecordMetrics(MeterProvider(), tags=["model"])
    with pytest.raises(TypeError):
        RecordMetrics(MeterProvider(), tags=[""])
