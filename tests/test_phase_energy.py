"""Each record's energy split at its first token (``prefill_energy_j``, ``decode_energy_j``):
the equal rule's split sums to the energy and leaves the energy itself bit-identical,
and the split reaches the records through every path that tells a first-token time with
token counts (a generator's first item, ``Query.first_token``, the daemon's ends)."""

from __future__ import annotations

import json
import math
import time

import pytest
from conftest import ManualRun, rows
from hypothesis import given, settings
from hypothesis import strategies as st

from footprint.attribution import DeviceResolver
from footprint.attribution.placement import SpanTokens
from footprint.config import Settings

SENSOR = "simulated:gpus=1,idle_w=60,busy_w=400,noise=0.0,seed=5"


# -- the resolver's equal rule -------------------------------------------------------
def test_the_equal_rule_splits_a_span_at_its_first_token_exactly():
    """100 W busy; a from 0.05 s, b from 0.5 s: a alone until 0.5 s (45 J), then both at
    50 W each. a's first token at 1.05 s: 45 + 0.55 × 50 = 72.5 J before it; b's at 0.8 s:
    0.3 × 50 = 15 J. The split is the same when the sweep passed the first token before
    the end told it."""
    for early_resolve in (False, True):
        resolver = DeviceResolver(rule="equal")
        resolver.add_samples([(i * 0.1, i * 10.0) for i in range(100)])
        resolver.begin("a", 0.05)
        resolver.begin("b", 0.5)
        shares = resolver.resolve(2.0) if early_resolve else {}
        assert shares == {}
        resolver.end("a", 3.0, SpanTokens(100, 50, 1.0))
        resolver.end("b", 6.0, SpanTokens(100, 50, 0.3))
        resolver.end("c", 6.0)  # never begun: ignored
        shares = resolver.resolve()
        a, b = shares["a"], shares["b"]
        assert a.energy_j == pytest.approx(170.0)
        assert (a.prefill_energy_j, a.decode_energy_j) == pytest.approx((72.5, 97.5))
        assert b.energy_j == pytest.approx(425.0)
        assert (b.prefill_energy_j, b.decode_energy_j) == pytest.approx((15.0, 410.0))


def test_no_first_token_time_no_split():
    resolver = DeviceResolver(rule="equal")
    resolver.add_samples([(i * 0.1, i * 10.0) for i in range(40)])
    resolver.begin("a", 0.05)
    resolver.begin("b", 0.05)
    resolver.end("a", 2.0, SpanTokens(100, 50, None))
    resolver.end("b", 2.0)
    shares = resolver.resolve()
    for key in "ab":
        assert shares[key].energy_j > 0
        assert shares[key].prefill_energy_j is None and shares[key].decode_energy_j is None


def test_a_span_shorter_than_a_nanosecond_gets_a_finite_share():
    """A span 5e-311 s long (hypothesis found it) at the start of a 1 W interval: its
    busy power, J over a denormal s, overflowed to inf W, so the span got inf J and a NaN
    bound. Too short to tell a power from, it gets its time share, bounded by the whole
    interval, and its power is not carried to the next interval's bound."""
    resolver = DeviceResolver(rule="equal", extrapolate_start=True)
    resolver.add_samples([(0.0, 0.0)])
    resolver.begin("short", 0.0)
    resolver.begin("later", 1.2)
    resolver.add_samples([(0.5, 0.5), (1.0, 0.5)])
    resolver.end("short", 5.4535291827857e-311)
    resolver.add_samples([(0.5 * i, 0.5 + 2.0 * (i - 2)) for i in range(3, 12)])
    resolver.end("later", 4.2)
    shares = resolver.resolve(final=True)
    short, later = shares["short"], shares["later"]
    assert 0.0 <= short.energy_j <= 1e-300
    assert math.isfinite(short.uncertainty_j) and 0.0 <= short.uncertainty_j <= 0.5
    assert 0.0 < later.energy_j <= 18.5  # all the energy measured
    assert math.isfinite(later.uncertainty_j) and later.uncertainty_j <= 18.5


@st.composite
def traces(draw):
    """Counter samples (a random power each interval) and spans with random first-token
    times (some none, some outside the span), resolved in random chunks."""
    n = draw(st.integers(3, 40))
    t, e, samples = 0.0, 0.0, []
    for _ in range(n):
        samples.append((t, e))
        dt = draw(st.floats(0.01, 0.5))
        t += dt
        e += dt * draw(st.floats(0.0, 700.0))
    spans = []
    for _ in range(draw(st.integers(1, 15))):
        start = draw(st.floats(-0.2, t))
        length = draw(st.floats(0.0, t / 2 + 0.5))
        ttft = draw(st.one_of(st.none(), st.floats(0.0, length + 0.2)))
        spans.append((start, start + length, ttft))
    return samples, spans, draw(st.integers(1, 8))


@given(traces())
@settings(max_examples=200, deadline=None)
def test_prefill_plus_decode_is_the_energy_and_the_energy_is_unchanged(case):
    """On the equal rule, for random spans: prefill + decode = energy_j, each within
    [0, energy_j]; a span with a first token strictly inside it is split, one without is
    not; and every span's energy, GPU-seconds and bound are bit-identical to a run
    without first-token times."""
    samples, spans, chunk = case

    def run(with_tokens: bool):
        resolver = DeviceResolver(rule="equal", extrapolate_start=True)
        resolver.add_samples(samples[:1])
        for key, (start, _, _) in enumerate(spans):
            resolver.begin(key, start)
        out = {}
        ended = 0
        for i in range(1, len(samples), chunk):
            resolver.add_samples(samples[i : i + chunk])
            now = samples[min(i + chunk, len(samples)) - 1][0]
            while ended < len(spans) and spans[ended][1] <= now:  # ends told as they come
                start, end, ttft = spans[ended]
                resolver.end(ended, end, SpanTokens(10, 20, ttft) if with_tokens else None)
                ended += 1
            out.update(resolver.resolve(until_s=now))
        for key in range(ended, len(spans)):
            start, end, ttft = spans[key]
            resolver.end(key, end, SpanTokens(10, 20, ttft) if with_tokens else None)
        out.update(resolver.resolve(final=True))
        return out

    split, plain = run(True), run(False)
    assert set(split) == set(plain) == set(range(len(spans)))
    for key, (start, end, ttft) in enumerate(spans):
        share, base = split[key], plain[key]
        assert all(math.isfinite(x) for x in (share.energy_j, share.gpu_s, share.uncertainty_j))
        assert (share.energy_j, share.gpu_s, share.uncertainty_j) == (
            base.energy_j,
            base.gpu_s,
            base.uncertainty_j,
        )
        assert base.prefill_energy_j is None and base.decode_energy_j is None
        inside = ttft is not None and start < start + ttft < end
        if share.partial or not inside:
            assert share.prefill_energy_j is None and share.decode_energy_j is None
            continue
        assert share.prefill_energy_j is not None and share.decode_energy_j is not None
        scale = max(1.0, abs(share.energy_j))
        assert math.isclose(
            share.prefill_energy_j + share.decode_energy_j, share.energy_j, abs_tol=1e-12 * scale
        )
        assert -1e-12 <= share.prefill_energy_j <= share.energy_j + 1e-12 * scale
        assert share.decode_energy_j >= -1e-12 * scale


# -- records, through each path that tells tokens and a first-token time -----------
def _manual(tmp_path) -> ManualRun:
    settings = Settings(
        db=str(tmp_path / "p.db"), sensor=SENSOR, cpu=False, region="FRA", attribution="equal"
    )
    return ManualRun(settings, seed=1)


def _assert_split(row: dict, prefill_share: tuple[float, float]) -> None:
    """The row is split, its parts sum to its energy, the prefill part in the range."""
    assert row["prefill_energy_j"] is not None and row["decode_energy_j"] is not None
    assert row["prefill_energy_j"] + row["decode_energy_j"] == pytest.approx(
        row["energy_j"], rel=1e-12
    )
    low, high = prefill_share
    assert low * row["energy_j"] <= row["prefill_energy_j"] <= high * row["energy_j"]


def test_records_carry_the_split_from_generators_and_query(tmp_path):
    """A generator's first item and ``Query.first_token`` give the first-token time, its
    ``tokens=`` and ``set_tokens`` the counts: the record is split where the first token
    came (a third of the call in: about a third of its energy, the call alone on the GPU).
    Without a first-token time (a plain function's ``tokens=``, a query that never called
    ``first_token``) the record has no split."""
    run = _manual(tmp_path)

    @run.tracker.track(model="gen", tokens=lambda items: (120, items))
    def stream():
        run.advance(0.5)
        for _ in range(4):
            yield "tok"
            run.advance(0.25)

    @run.tracker.track(model="plain", tokens=lambda result: (10, 20))
    def plain():
        run.advance(1.0)
        return "answer"

    assert list(stream()) == ["tok"] * 4
    run.advance(0.5)
    with run.tracker.query(model="query") as q:
        run.advance(0.4)
        q.first_token()
        run.advance(0.8)
        q.set_tokens(input=300, output=30)
    run.advance(0.5)
    with run.tracker.query(model="no-first-token") as q:
        run.advance(0.6)
        q.set_tokens(input=5, output=7)
    run.advance(0.5)
    plain()
    run.advance(0.5)
    run.close()
    found = {r["model"]: r for r in rows(tmp_path / "p.db")}
    assert found["gen"]["time_to_first_token_s"] == pytest.approx(0.5)
    assert found["gen"]["output_tokens"] == 4
    _assert_split(found["gen"], (0.5 / 1.5 - 0.1, 0.5 / 1.5 + 0.1))
    _assert_split(found["query"], (0.4 / 1.2 - 0.1, 0.4 / 1.2 + 0.1))
    for model in ("plain", "no-first-token"):
        assert found[model]["energy_j"] > 0
        assert found[model]["prefill_energy_j"] is None
        assert found[model]["decode_energy_j"] is None


def test_the_daemons_ends_carry_the_split_to_the_record(tmp_path):
    """A daemon client's end with ``input_tokens``, ``output_tokens`` and ``ttft_s`` (the
    protocol) is split in the record the daemon's runtime makes."""
    from footprint.daemon.spans import SpanIntake
    from footprint.runtime.local import Runtime
    from footprint.runtime.protocol import decode_batch

    settings = Settings(
        db=str(tmp_path / "d.db"),
        sensor="simulated:gpus=1,idle_w=60,busy_w=360,noise=0,workload=manual",
        cpu=False,
        region="aws:us-east-1",
        daemon="off",
        attribution="equal",
    )
    runtime = Runtime(settings, presence_role="daemon")
    records: list[dict] = []
    runtime.on_records.append(lambda batch, _idle: records.extend(batch))
    try:
        intake = SpanIntake(runtime)
        t = time.monotonic()
        ends = []
        for i, ttft in enumerate((0.05, None)):
            end = {"id": i + 1, "start_s": t - 0.3, "end_s": t - 0.1, "model": f"m{i}"}
            end.update(gpus=[0], input_tokens=900, output_tokens=40, ttft_s=ttft)
            ends.append(end)
        intake.apply(
            decode_batch(json.dumps({"pid": 1, "host": "h", "monotonic_s": t, "ends": ends}))
        )
        runtime.flush()
    finally:
        runtime.shutdown()
    by_model = {r["model"]: r for r in records}
    split, whole = by_model["m0"], by_model["m1"]
    assert split["energy_j"] is not None and split["energy_j"] > 0
    assert split["prefill_energy_j"] + split["decode_energy_j"] == pytest.approx(
        split["energy_j"], rel=1e-12
    )
    assert 0 < split["prefill_energy_j"] < split["energy_j"]
    assert whole["prefill_energy_j"] is None and whole["decode_energy_j"] is None


def test_the_proxys_streams_carry_the_split_to_the_record(tmp_path):
    """Through the proxy, a streamed chat completion: the usage gives the counts, the
    first chunk the first-token time, and the record is split there."""
    pytest.importorskip("openai")
    import footprint
    from tests.fakes.fake_openai import LoopThread, running_proxy, running_upstream
    from tests.test_proxy import CHAT, MESSAGES, post_json, records

    db = tmp_path / "proxy.db"
    footprint.configure(db=str(db), sensor=SENSOR, cpu=False, region="FRA", attribution="equal")
    body = {"model": "llama-3-8b", "messages": MESSAGES, "max_tokens": 5, "stream": True}
    with (
        LoopThread() as loop,
        running_upstream(loop, latency_s=0.05) as upstream,
        running_proxy(loop, upstream.url) as proxy,
    ):
        status, _, _ = post_json(proxy.url, CHAT, body)
        assert status == 200
        (record,) = records(db, 1)
    assert (record["input_tokens"], record["output_tokens"]) == (3, 5)
    assert 0 < record["time_to_first_token_s"] < record["duration_s"]
    assert record["energy_j"] > 0
    assert record["prefill_energy_j"] is not None and record["decode_energy_j"] is not None
    assert record["prefill_energy_j"] + record["decode_energy_j"] == pytest.approx(
        record["energy_j"], rel=1e-12
    )
