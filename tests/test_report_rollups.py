"""footprint report from the hourly rollups: the same figures as a scan of every query
(aligned and unaligned --since/--until, every --by, --model), the fallbacks when the
rollups cannot be used, and percentiles exact up to the sample size and sampled above.

Tests taking ``db_url`` run on SQLite always and on PostgreSQL when
``FOOTPRINT_TEST_POSTGRES_URL`` is set (``.ci/run`` sets it).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import random
import sqlite3

import pytest
from sqlalchemy import insert, text

from footprint.pricing import usd_per_unit
from footprint.reporting import ReportRequest, build_report, grouped, parse_when, percentiles
from footprint.storage import rollups
from footprint.storage.engine import open_engine
from footprint.storage.models import PRICING_COLUMNS, QueryRecord
from footprint.storage.store import Store

UTC = dt.timezone.utc
START = dt.datetime(2026, 4, 6, 21, tzinfo=UTC)  # the data crosses two midnights
HOURS = 52
MODELS = ("alpha", "beta", "gamma")
GPUS = ('["G0"]', '["G1"]', '["G0", "G1"]', '["G2"]')
# Instants some queries start at exactly: the edges of the unaligned periods below.
EDGES = ("2026-04-06T22:17:03.25", "2026-04-08T13:42:10", "2026-04-07T05:10")


def make_records(seed: int, n: int = 600, unconverted: bool = True) -> list[dict]:
    """Queries over 52 hours varying everything a report groups on (NULLs included)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        if i < len(EDGES):
            began = parse_when(EDGES[i], option="edge")
        elif i % 25 == 0:  # exactly on the hour
            began = START + dt.timedelta(hours=rng.randint(0, HOURS))
        else:
            began = START + dt.timedelta(seconds=rng.uniform(0, HOURS * 3600))
        duration = rng.uniform(0.05, 4.0)
        gpus = rng.choice(GPUS)
        gpu_s = duration * len(json.loads(gpus)) * rng.uniform(0.3, 1.0)
        measured = rng.random() > 0.08
        energy = gpu_s * rng.uniform(150, 650) if measured else None
        zone = rng.choice(["FRA", "FRA", "aws:us-east-1", None])
        error = rng.random() < 0.05
        record = {
            "model": rng.choice(MODELS),
            "tags": "{}",
            "started_at": began,
            "ended_at": began + dt.timedelta(seconds=duration),
            "duration_s": duration,
            "time_to_first_token_s": None,
            "status": "error" if error else "ok",
            "error_type": "TimeoutError" if error else None,
            "input_tokens": rng.choice([None, rng.randint(5, 3000)]),
            "output_tokens": None if error else rng.randint(1, 900),
            "gpus": gpus,
            "gpu_seconds": gpu_s,
            "energy_j": energy,
            "energy_source": "counter" if measured else "missing",
            "cpu_energy_j": None,
            # a bound with the energy, except on some records (as written before it existed)
            "energy_uncertainty_j": None
            if energy is None or rng.random() < 0.1
            else energy * rng.uniform(0.001, 0.03),
            "cpu_energy_source": "missing",
            "host": rng.choice(["h1", "h2"]),
            "pid": 7,
            **dict.fromkeys(PRICING_COLUMNS),
        }
        if zone is not None:
            eur = zone == "FRA"
            pue = 1.2 if eur else rng.choice([1.14, 1.15])
            intensity = rng.choice([52.0, 56.5]) if eur else 380.0
            price = 0.2 if eur else 0.09
            record.update(
                zone=zone,
                intensity_g_per_kwh=intensity,
                intensity_source="static",
                market_intensity_g_per_kwh=rng.choice([None, 20.0]),
                pue=pue,
                price_per_kwh=price,
                currency="EUR" if eur else "USD",
                usd_per_gpu_hour=3.6,
            )
            if energy is not None:
                kwh = energy / 3.6e6 * pue
                cost = kwh * price
                usd = cost * 1.08 if eur else cost
                if eur and unconverted and rng.random() < 0.3:
                    usd = None  # priced in EUR with no USD figure stored
                record.update(
                    co2e_g=kwh * intensity,
                    market_co2e_g=None
                    if record["market_intensity_g_per_kwh"] is None
                    else kwh * 20.0,
                    embodied_co2e_g=gpu_s * 7.9e-4,
                    energy_cost=cost,
                    energy_cost_usd=usd,
                    compute_cost=gpu_s * 3.6 / 3600,
                )
        out.append(record)
    return out


def idle_rows() -> list[dict]:
    rows = []
    for minute in range(0, HOURS * 60, 7):
        at = START + dt.timedelta(minutes=minute)
        for device in ("G0", "G1", "G9", "cpu-package-0"):
            joules = 60.0 + minute % 13
            rows.append(
                {
                    "device_uuid": device,
                    "minute": at,
                    "idle_energy_j": joules,
                    "measured_energy_j": joules * 1.5,
                    "host": "h1",
                    "pid": 7,
                }
            )
    return rows


def write(url: str, records: list[dict]) -> None:
    """Through the real store, in batches; SQLite catches up once, the report does the rest."""
    store = Store(url)
    try:
        for i in range(0, len(records), 150):
            store.insert(records[i : i + 150], idle_rows() if i == 0 else [])
            if i == 150:
                store.catch_up_rollups()
    finally:
        store.close()


def assert_same(a, b, path="report"):
    assert type(a) is type(b) or {type(a), type(b)} <= {int, float}, path
    if isinstance(a, dict):
        assert set(a) == set(b), path
        for key in a:
            assert_same(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}.{i}")
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-15), path
    else:
        assert a == b, path


CASES = [
    {},
    {"since": "2026-04-07T00:00", "until": "2026-04-08T03:00"},  # whole hours only
    {"since": EDGES[0], "until": EDGES[1]},  # part hours at both ends
    {"since": EDGES[2], "until": "2026-04-07T05:50"},  # inside one hour
    {"since": EDGES[2], "until": "2026-04-07T06:50"},  # two part hours, no whole one
    {"since": "2026-04-07T11:59:59.999999"},
    {"until": "2026-04-07T09:30"},
    {"since": "2026-04-07T03:30", "until": "2026-04-08", "by": "host", "models": ["beta"]},
    {"since": "2026-04-07T01:01", "by": "day", "models": ["alpha", "gamma"]},
    {"until": "2026-04-08T07:00:00.5", "by": "region"},
]


def request_for(db: str, case: dict) -> ReportRequest:
    return ReportRequest(
        db=db,
        since=parse_when(case["since"], option="--since") if "since" in case else None,
        until=parse_when(case["until"], option="--until", end=True) if "until" in case else None,
        models=case.get("models"),
        by=case.get("by", "model"),
        allow_empty=True,
    )


@pytest.mark.parametrize("seed", [3, 11])
def test_rollups_give_the_figures_of_a_scan_of_every_query(db_url, seed, monkeypatch):
    write(db_url, make_records(seed))
    scanned: list[tuple] = []
    raw_scan = grouped.grouped_rows

    def spy(conn, engine, request, period=None):
        scanned.append(period)
        return raw_scan(conn, engine, request, period)

    monkeypatch.setattr(grouped, "grouped_rows", spy)
    for case in CASES:
        request = request_for(db_url, case)
        scanned.clear()
        fast = build_report(request)
        edges = list(scanned)
        slow = build_report(request, use_rollups=False)
        assert scanned[len(edges) :] == [None]  # the fallback: one scan of the whole period
        assert fast["notes"] == slow["notes"]
        assert_same(fast, slow, f"case {case}")
        assert fast["totals"]["queries"] > 0, case
        # Raw scans only where whole hours cannot be used: the part hours at the edges.
        hours, expected = grouped.split_period(request)
        assert edges == expected, case
        for since, until in edges:
            assert hours is None or until - since < dt.timedelta(hours=1), case
    if db_url.endswith(".db"):  # the first report caught up
        engine = open_engine(db_url, create=False)
        assert rollups.pending_rows(engine) == 0
        engine.dispose()


def test_split_period_whole_hours_and_edges():
    at = lambda text: parse_when(text, option="t")  # noqa: E731
    req = ReportRequest(db="x", since=at("2026-04-07T05:10"), until=at("2026-04-07T09:30"))
    assert grouped.split_period(req) == (
        (at("2026-04-07T06:00"), at("2026-04-07T09:00")),
        [
            (at("2026-04-07T05:10"), at("2026-04-07T06:00")),
            (at("2026-04-07T09:00"), at("2026-04-07T09:30")),
        ],
    )
    aligned = ReportRequest(db="x", since=at("2026-04-07T05:00"), until=at("2026-04-08"))
    assert grouped.split_period(aligned) == ((aligned.since, aligned.until), [])
    assert grouped.split_period(ReportRequest(db="x")) == ((None, None), [])
    inside = ReportRequest(db="x", since=at("2026-04-07T05:10"), until=at("2026-04-07T06:50"))
    assert grouped.split_period(inside) == (None, [(inside.since, inside.until)])


def _period_request(db: str) -> ReportRequest:
    return request_for(db, {"since": EDGES[0], "until": EDGES[1]})


def test_read_only_database_falls_back_to_the_scan_and_says_so(tmp_path):
    db = tmp_path / "ro.db"
    write(str(db), make_records(5, n=400))  # the last 100 not rolled up yet
    read_only = f"sqlite:///file:{db}?mode=ro&uri=true"
    slow = build_report(_period_request(str(db)), use_rollups=False)
    pending = build_report(_period_request(read_only))  # rows not rolled up, cannot write
    assert any("could not be brought up to date" in n and "readonly" in n for n in pending["notes"])
    assert_same({**pending, "notes": []}, {**slow, "notes": []})
    build_report(_period_request(str(db)))  # a writable report catches up
    caught_up = build_report(_period_request(read_only))
    assert not any("rollups" in note for note in caught_up["notes"])
    assert_same(caught_up, slow)


def test_rollups_that_disagree_with_queries_are_not_used(tmp_path):
    db = tmp_path / "deleted.db"
    write(str(db), make_records(6, n=300))
    build_report(ReportRequest(db=str(db)))  # rollups complete
    con = sqlite3.connect(db)
    con.execute("DELETE FROM queries WHERE id % 10 = 0")  # a retention job, say
    con.commit()
    con.close()
    fast = build_report(_period_request(str(db)))
    slow = build_report(_period_request(str(db)), use_rollups=False)
    assert any("rollups count" in note for note in fast["notes"])
    assert_same({**fast, "notes": []}, {**slow, "notes": []})


def test_postgresql_rows_written_without_the_store_are_not_trusted_to_rollups(db_url):
    if db_url.endswith(".db"):
        pytest.skip("PostgreSQL rolls up inline; SQLite catches up (tested above)")
    engine = open_engine(db_url)
    with engine.begin() as conn:
        conn.execute(insert(QueryRecord.__table__), make_records(8, n=200))
    report = build_report(ReportRequest(db=db_url))
    assert any("rollups count 0 queries" in note for note in report["notes"])
    assert report["totals"]["queries"] == 200
    rollups.rebuild(engine)
    engine.dispose()
    assert_same(
        build_report(ReportRequest(db=db_url)),
        build_report(ReportRequest(db=db_url), use_rollups=False),
    )


# --- percentiles ---------------------------------------------------------------------------


def _nearest(values: list[float], p: int) -> float | None:
    ordered = sorted(values)
    return ordered[math.ceil(p / 100 * len(ordered)) - 1] if ordered else None


def _expected_percentiles(records: list[dict], request: ReportRequest) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for model in MODELS:
        mine = [
            r
            for r in records
            if r["model"] == model and request.since <= r["started_at"] < request.until
        ]
        measured = [r for r in mine if r["energy_j"] is not None]
        figures = {
            "energy": [r["energy_j"] / 3600 for r in measured],
            "co2e": [r["co2e_g"] for r in mine if r["co2e_g"] is not None],
            # a cost none of whose terms is known is not a cost of 0
            "cost": [
                (r["energy_cost_usd"] or 0.0) + (r["compute_cost"] or 0.0)
                for r in measured
                if r["energy_cost_usd"] is not None or r["compute_cost"] is not None
            ],
        }
        out[model] = {name: {p: _nearest(v, p) for p in (50, 95)} for name, v in figures.items()}
    return out


def _check_percentiles(report: dict, expected: dict) -> None:
    keys = {"energy": "energy_wh", "co2e": "co2e_g", "cost": "cost_usd"}
    for entry in report["models"]:
        for name, key in keys.items():
            for p in (50, 95):
                got = entry["per_query"][key][f"p{p}"]
                assert got == pytest.approx(expected[entry["model"]][name][p], rel=1e-12), (
                    entry["model"],
                    name,
                    p,
                )


def test_percentiles_above_the_sample_size_come_from_the_sample(db_url, monkeypatch):
    """A model with more measured queries than the sample size gets its percentiles from a
    deterministic sample of about that many, and the notes say so; below it, exact."""
    records = make_records(21, n=900, unconverted=False)
    write(db_url, records)
    monkeypatch.setattr(percentiles, "PERCENTILE_SAMPLE", 60)
    request = _period_request(db_url)
    sampled = build_report(request)
    assert any("deterministic sample of about 60" in note for note in sampled["notes"])
    for entry in sampled["models"]:
        assert 20 < entry["per_query"]["percentile_sample"] < min(150, entry["queries"])
    again = build_report(request)  # deterministic: the same sample
    assert [m["per_query"] for m in again["models"]] == [m["per_query"] for m in sampled["models"]]
    monkeypatch.setattr(percentiles, "PERCENTILE_SAMPLE", 10_000)
    exact = build_report(request)
    assert not any("sample" in note for note in exact["notes"]), exact["notes"]
    _check_percentiles(exact, _expected_percentiles(records, request))
    # Everything else is the scan's figures.
    assert_same(exact["totals"], build_report(request, use_rollups=False)["totals"])


def test_storage_creates_no_percentile_index(tmp_path):
    """The report has no index-ordered percentile path: storage never creates an index
    ordered by a figure, so that path was never taken in production."""
    db = tmp_path / "idx.db"
    write(str(db), make_records(24, n=50))
    con = sqlite3.connect(db)
    names = [r[0] for r in con.execute("SELECT sql FROM sqlite_master WHERE type = 'index'")]
    con.close()
    assert not any(n and ("energy_j" in n or "co2e_g" in n) for n in names)
    assert not hasattr(percentiles, "PERCENTILE_INDEXES")


def test_small_models_get_exact_percentiles_without_any_index(db_url):
    records = make_records(23, n=400)
    write(db_url, records)
    request = _period_request(db_url)
    report = build_report(request)
    assert not any("sample" in note for note in report["notes"])
    rate, _ = usd_per_unit("EUR")
    for r in records:  # the report converts EUR costs with no USD figure at the shipped rate
        if r["energy_cost"] is not None and r["energy_cost_usd"] is None:
            r["energy_cost_usd"] = r["energy_cost"] * rate
    _check_percentiles(report, _expected_percentiles(records, request))


def test_bench_database_is_left_as_footprint_leaves_it(tmp_path):
    from footprint.bench.report import build_db

    path = tmp_path / "bench.db"
    build_db(path, 500, seed=2)
    engine = open_engine(str(path), create=False)
    assert rollups.pending_rows(engine) == 0
    with engine.connect() as conn:
        rolled = conn.execute(text("SELECT SUM(queries) FROM query_rollups")).scalar_one()
    engine.dispose()
    assert rolled == 500
