"""The decorator and context manager, through the real runtime and SQLite."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime

import pytest
from conftest import rows

import footprint
from footprint.tracking import get_runtime


def sim():
    return get_runtime().gpu_sensor


def test_sync_call_records_one_row_with_energy(tracked_db):
    @footprint.track(model="llama", team="search", tokens=lambda r: (3, len(r)))
    def infer(seconds):
        sim().run(seconds)
        return "abcd"

    assert infer(0.3) == "abcd"
    assert footprint.flush() == 1
    (row,) = rows(tracked_db)
    assert row["model"] == "llama"
    assert json.loads(row["tags"]) == {"team": "search"}
    assert row["status"] == "ok"
    assert (row["input_tokens"], row["output_tokens"]) == (3, 4)
    assert row["energy_source"] == "simulated"
    assert row["duration_s"] >= 0.3
    # 0.3 s at 400 W; edges of the first span after start-up are a tick (~100 ms) coarse.
    assert 400 * 0.3 * 0.75 < row["energy_j"] < 400 * row["duration_s"] * 1.25
    assert json.loads(row["gpus"]) == [sim().devices[0].uuid]
    assert row["gpu_seconds"] == pytest.approx(row["duration_s"], rel=1e-6)


def test_exception_propagates_unchanged_and_is_recorded(tracked_db):
    class Boom(Exception):
        pass

    original = Boom("secret prompt text")

    @footprint.track(model="m")
    def fails():
        raise original

    with pytest.raises(Boom) as caught:
        fails()
    assert caught.value is original
    footprint.flush()
    (row,) = rows(tracked_db)
    assert row["status"] == "error"
    assert row["error_type"] == "Boom"
    assert "secret" not in json.dumps(row)


def test_async_function(tracked_db):
    @footprint.track(model="a")
    async def infer(x):
        await asyncio.sleep(0.01)
        return x * 2

    async def main():
        return await asyncio.gather(*(infer(i) for i in range(5)))

    assert asyncio.run(main()) == [0, 2, 4, 6, 8]
    footprint.flush()
    got = rows(tracked_db)
    assert len(got) == 5
    # Five concurrent calls: their GPU-seconds add up to the wall time they spanned
    # together (first start to last end: more than the longest call, as they do not start
    # at the same instant), not five times it.
    started = min(datetime.fromisoformat(r["started_at"]) for r in got)
    ended = max(datetime.fromisoformat(r["ended_at"]) for r in got)
    spanned_s = (ended - started).total_seconds()
    assert sum(r["gpu_seconds"] for r in got) <= spanned_s * 1.01 + 1e-4
    assert sum(r["gpu_seconds"] for r in got) < 2 * max(r["duration_s"] for r in got)


def test_generator_records_time_to_first_item_and_item_count(tracked_db):
    @footprint.track(model="g", tokens=lambda n_items: (None, n_items))
    def stream(n):
        import time

        time.sleep(0.05)
        yield from range(n)

    assert list(stream(4)) == [0, 1, 2, 3]
    footprint.flush()
    (row,) = rows(tracked_db)
    assert row["output_tokens"] == 4
    assert 0.05 <= row["time_to_first_token_s"] <= row["duration_s"]


def test_generator_closed_early_ends_the_span(tracked_db):
    @footprint.track(model="g")
    def stream():
        yield from range(100)

    gen = stream()
    assert next(gen) == 0
    gen.close()
    footprint.flush()
    (row,) = rows(tracked_db)
    assert row["status"] == "ok"


def test_generator_send_and_throw_are_delegated(tracked_db):
    @footprint.track(model="g")
    def echo():
        received = yield "ready"
        try:
            yield f"got {received}"
        except KeyError:
            yield "handled"

    gen = echo()
    assert next(gen) == "ready"
    assert gen.send("x") == "got x"
    assert gen.throw(KeyError("k")) == "handled"
    gen.close()


def test_async_generator(tracked_db):
    @footprint.track(model="ag")
    async def stream(n):
        for i in range(n):
            await asyncio.sleep(0)
            yield i

    async def main():
        return [i async for i in stream(3)]

    assert asyncio.run(main()) == [0, 1, 2]
    footprint.flush()
    (row,) = rows(tracked_db)
    assert row["model"] == "ag" and row["time_to_first_token_s"] is not None


def test_async_generator_error_propagates(tracked_db):
    @footprint.track(model="ag")
    async def stream():
        yield 1
        raise ValueError("bad")

    async def main():
        return [i async for i in stream()]

    with pytest.raises(ValueError, match="bad"):
        asyncio.run(main())
    footprint.flush()
    (row,) = rows(tracked_db)
    assert row["status"] == "error" and row["error_type"] == "ValueError"


def test_query_context_manager_sync_and_async(tracked_db):
    with footprint.query(model="ctx", route="/v1") as q:
        q.first_token()
        q.set_tokens(input=10, output=20)

    async def main():
        async with footprint.query(model="actx") as q:
            q.set_tokens(output=5)

    asyncio.run(main())
    footprint.flush()
    got = {r["model"]: r for r in rows(tracked_db)}
    assert got["ctx"]["input_tokens"] == 10 and got["ctx"]["output_tokens"] == 20
    assert json.loads(got["ctx"]["tags"]) == {"route": "/v1"}
    assert got["actx"]["output_tokens"] == 5


def test_query_records_error_status(tracked_db):
    with pytest.raises(RuntimeError), footprint.query(model="ctx"):
        raise RuntimeError("x")
    footprint.flush()
    assert rows(tracked_db)[0]["status"] == "error"


def test_track_without_model_fails_at_decoration():
    with pytest.raises(TypeError, match="model"):
        footprint.track()
    with pytest.raises(TypeError, match="keyword"):

        @footprint.track
        def f():
            pass

    with pytest.raises(TypeError, match="model"):
        footprint.query(model="")
    with pytest.raises(TypeError, match="tag"):
        footprint.query(model="m", tokens=3)


def test_tokens_callable_failure_does_not_break_the_call(tracked_db):
    @footprint.track(model="m", tokens=lambda r: r["missing"])
    def f():
        return {}

    with pytest.warns(footprint.FootprintWarning, match="tokens"):
        assert f() == {}
    footprint.flush()
    assert rows(tracked_db)[0]["output_tokens"] is None


def test_no_gpu_auto_records_missing_and_warns_once(tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "pynvml", None)  # import fails
    footprint.configure(db=str(tmp_path / "x.db"), sensor="auto", cpu=False, region="FRA")

    @footprint.track(model="m")
    def f():
        return 1

    with pytest.warns(footprint.FootprintWarning, match="no GPU energy"):
        f()
        footprint.flush()  # the sensors open off the caller's thread; flush waits for them
    f()
    footprint.flush()
    got = rows(tmp_path / "x.db")
    assert len(got) == 2
    assert {r["energy_source"] for r in got} == {"missing"}
    assert {r["energy_j"] for r in got} == {None}


def test_unwritable_database_never_raises_into_user_code(tmp_path):
    footprint.configure(
        db=str(tmp_path / "no" / "such" / "dir" / "x.db"), sensor="none", cpu=False, region="FRA"
    )

    @footprint.track(model="m")
    def f():
        return 42

    assert f() == 42  # the database is opened off the hot path
    with pytest.warns(footprint.FootprintWarning, match="not be stored.*does not exist"):
        footprint.flush()
    assert footprint.stats()["buffered_records"] == 1
    footprint.shutdown()  # at exit what could not be stored is counted, not hidden


def test_full_span_queue_counts_drops(tmp_path):
    footprint.configure(
        db=str(tmp_path / "q.db"),
        sensor="none",
        cpu=False,
        region="FRA",
        max_pending_spans=3,
        flush_interval_s=60,
    )

    @footprint.track(model="m")
    def f():
        return None

    with pytest.warns(footprint.FootprintWarning, match="queue full"):
        for _ in range(10):
            f()
    assert footprint.stats()["dropped_spans"] == 7
    footprint.flush()
    assert footprint.stats()["records_written"] == 3


def test_shutdown_writes_everything(tracked_db):
    @footprint.track(model="m")
    def f():
        return None

    for _ in range(50):
        f()
    footprint.shutdown()
    assert len(rows(tracked_db)) == 50
