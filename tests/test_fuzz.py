"""Arbitrary models, tags and token values through ``track`` and ``query``.

On main a tag that could not become JSON stopped the writer for good (60,001 spans
pending after 30 s, ``flush()`` raising into user code); ``set_tokens(nan)`` raised inside
the user's block; negative, text and infinite token counts were stored as given. Now: user
code never sees footprint's exception, every call is a record, and every value that had
to be replaced is counted.
"""

from __future__ import annotations

import math
import sqlite3
import warnings

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, text

import footprint
from footprint._sanitize import MAX_MODEL_CHARS, clean_model, clean_tokens, tags_json


class Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no text for you")

    def __repr__(self) -> str:  # hypothesis prints failing examples with repr
        return "Unprintable()"


def _cycle() -> list:
    loop: list = [1]
    loop.append(loop)
    return loop


ODD_VALUES = st.sampled_from(
    [Unprintable(), float("nan"), float("inf"), object(), b"\xff\x00", {1, 2}, "\ud800", "a\x00b"]
)
TAG_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(), ODD_VALUES),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(
            st.one_of(st.text(max_size=5), st.integers(), st.none()), inner, max_size=3
        ),
    ),
    max_leaves=8,
)
TAGS = st.dictionaries(
    st.text(min_size=1, max_size=8).filter(lambda k: k not in ("model", "tokens", "gpus", "sync")),
    st.one_of(TAG_VALUES, st.builds(_cycle)),
    max_size=4,
)
TOKENS = st.one_of(
    st.none(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=4),
    st.booleans(),
)
MODELS = st.text(min_size=1, max_size=400)
CALL = st.tuples(st.sampled_from(["track", "query"]), MODELS, TAGS, TOKENS, TOKENS)


def _count(db_url: str) -> int:
    if "://" not in db_url:
        con = sqlite3.connect(db_url)
        try:
            return con.execute("SELECT COUNT(*) FROM queries").fetchone()[0]
        finally:
            con.close()
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            return conn.execute(text("SELECT COUNT(*) FROM queries")).scalar_one()
    finally:
        engine.dispose()


def _run(kind: str, model: str, tags: dict, tokens_in, tokens_out) -> None:
    if kind == "track":

        @footprint.track(model=model, tokens=lambda _: (tokens_in, tokens_out), **tags)
        def call() -> int:
            return 1

        assert call() == 1
    else:
        with footprint.query(model=model, **tags) as q:
            q.set_tokens(tokens_in, tokens_out)


def test_user_code_never_sees_footprints_exception_and_every_call_is_a_record(db_url):
    from footprint.storage.store import Store

    Store(db_url).close()
    footprint.configure(db=db_url, sensor="none", cpu=False, region="FRA", flush_interval_s=60)

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(calls=st.lists(CALL, min_size=1, max_size=6))
    def check(calls):
        before = _count(db_url)
        stats_before = footprint.stats()
        bad_tokens = 0
        for kind, model, tags, tokens_in, tokens_out in calls:
            _run(kind, model, tags, tokens_in, tokens_out)
            bad_tokens += sum(
                t is not None and clean_tokens(t) is None for t in (tokens_in, tokens_out)
            )
        footprint.flush()
        after = footprint.stats()
        assert _count(db_url) - before == len(calls)  # every call is a record
        assert after["invalid_tokens"] - stats_before.get("invalid_tokens", 0) == bad_tokens
        assert after["unsaved_records"] == 0

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check()
    # The only warnings: a value replaced, and counted (each kind once per runtime).
    said = [f"{w.category.__name__}: {w.message}" for w in caught]
    assert all(m.startswith("FootprintWarning: ") and "(counted in stats()[" in m for m in said), (
        said
    )


def test_model_names_become_storable_text():
    assert clean_model("llama-3-8b") == "llama-3-8b"
    assert clean_model("a\x00b") == "ab"
    assert clean_model("x\ud800y") == "x\\ud800y"
    assert len(clean_model("m" * 10_000)) == MAX_MODEL_CHARS
    assert clean_model("\x00") == "(invalid model name)"


@pytest.mark.parametrize(
    ("value", "stored"),
    [
        (0, 0),
        (12, 12),
        (12.0, 12),
        (2**40 - 1, 2**40 - 1),
        (2**40, None),
        (2**63, None),
        (-1, None),
        (math.nan, None),
        (math.inf, None),
        ("12", None),
        (True, None),
        (1.5, None),
    ],
)
def test_token_counts_are_integers_in_range_or_null(value, stored):
    assert clean_tokens(value) == stored


def test_tags_that_cannot_be_json_are_replaced_and_counted():
    text_, replaced = tags_json({"ok": 1, "bad": Unprintable(), 3: "mixed keys", "loop": _cycle()})
    assert replaced == 2  # the unprintable value and the cycle
    assert '"ok": 1' in text_ and '"3": "mixed keys"' in text_ and "<Unprintable>" in text_
    assert tags_json({"team": "search"}) == ('{"team": "search"}', 0)
    assert tags_json({"x": math.nan})[1] == 1


def test_set_tokens_never_raises_in_the_users_block(tracked_db):
    with pytest.warns(footprint.FootprintWarning, match=r"token count .*\['invalid_tokens'\]"):
        with footprint.query(model="m") as q:
            q.set_tokens(math.nan, "many")  # on main: ValueError inside the block
        footprint.flush()
    con = sqlite3.connect(tracked_db)
    row = con.execute("SELECT input_tokens, output_tokens FROM queries").fetchone()
    losses = dict(con.execute("SELECT kind, SUM(count) FROM losses GROUP BY kind"))
    con.close()
    assert row == (None, None)
    assert footprint.stats()["invalid_tokens"] == 2
    assert losses == {"invalid_tokens": 2}
