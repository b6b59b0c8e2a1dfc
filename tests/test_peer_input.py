"""Numbers from a peer (the daemon's clients): every one is checked for type, range and
size before use, and what is out of range is a ``ProtocolError`` (a 400 and a counted
refusal), never an exception of the daemon. In-process, a time to first token that
cannot be one is stored as NULL and counted.

Before: ``"end_s": 1000…0`` (401 digits) raised OverflowError inside ``decode_batch``
(the socket client was disconnected, HTTP got no answer); ``start_s`` of -1.7e308, a pid
of 401 digits and a ``ttft_s`` of 1e300 on a 0.4 s call were taken.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
import warnings

import pytest
from test_daemon_server import Client, http_post, metric, metrics_text, spawn

import footprint
from footprint.runtime.protocol import (
    MAX_GPUS_PER_SPAN,
    MAX_LOSS_COUNT,
    MAX_TIME_S,
    ProtocolError,
    decode_batch,
)
from footprint.runtime.spans import INVALID_TTFT, FootprintWarning

HUGE = "1" + "0" * 400  # a 401-digit integer: float() of it raises OverflowError
LONGER_THAN_PYTHON_PARSES = "9" * 5000  # over sys.get_int_max_str_digits() (4300)


def _batch(ends: str = "", starts: str = "", extra: str = "") -> bytes:
    text = f'{{"pid": 12, "host": "h", "starts": [{starts}], "ends": [{ends}]{extra}}}'
    return text.encode()


def _end(**fields: str) -> str:
    item = {"id": "1", "start_s": "4.0", "end_s": "4.4", "model": '"m"', **fields}
    return "{" + ", ".join(f'"{k}": {v}' for k, v in item.items()) + "}"


BAD = {
    "end_s of 401 digits": _batch(_end(end_s=HUGE)),
    "start_s of 401 digits": _batch(_end(start_s=HUGE)),
    "a start of 401 digits": _batch(starts=f'{{"id": 1, "start_s": {HUGE}}}'),
    "monotonic_s of 401 digits": _batch(extra=f', "monotonic_s": {HUGE}'),
    "ttft_s of 401 digits": _batch(_end(ttft_s=HUGE)),
    "an integer too long for Python": _batch(_end(end_s=LONGER_THAN_PYTHON_PARSES)),
    "a start of -1.7e308": _batch(_end(start_s="-1.7e308")),
    "a start far in the past": _batch(starts='{"id": 1, "start_s": -1.7e308}'),
    "a time of 2^35 s": _batch(_end(end_s=str(float(MAX_TIME_S)))),
    "a time of -2^35 s": _batch(_end(start_s=str(-MAX_TIME_S))),
    "an overflowing float": _batch(_end(end_s="1e400")),
    "ttft longer than the call": _batch(_end(ttft_s="1e300")),
    "ttft just over the call": _batch(_end(ttft_s="0.5")),
    "a negative ttft": _batch(_end(ttft_s="-0.1")),
    "an id of 2^63": _batch(_end(id=str(2**63))),
    "an id of 401 digits": _batch(_end(id=HUGE)),
    "a pid of 401 digits": f'{{"pid": {HUGE}, "host": "h"}}'.encode(),
    "a pid of 2^31": f'{{"pid": {2**31}, "host": "h"}}'.encode(),
    "tokens of 401 digits": _batch(_end(output_tokens=HUGE)),
    "a token count as a float": _batch(_end(input_tokens="12.0")),
    "a loss count of 401 digits": _batch(extra=f', "lost": {{"record_failed": {HUGE}}}'),
    "a loss count over the maximum": _batch(
        extra=f', "lost": {{"record_failed": {MAX_LOSS_COUNT}}}'
    ),
    "a GPU index of 401 digits": _batch(_end(gpus=f"[{HUGE}]")),
    "too many GPUs": _batch(_end(gpus=json.dumps(list(range(MAX_GPUS_PER_SPAN + 1))))),
    "a boolean time": _batch(_end(end_s="true")),
}


@pytest.mark.parametrize("data", BAD.values(), ids=BAD.keys())
def test_out_of_range_numbers_are_protocol_errors(data):
    with pytest.raises(ProtocolError) as caught:
        decode_batch(data)
    assert caught.value.reason in ("invalid", "json")
    assert len(str(caught.value)) < 400  # the message does not echo the huge number


def test_numbers_in_range_are_taken():
    t = 4.0
    batch = decode_batch(
        _batch(
            _end(
                start_s=str(t),
                end_s=str(t + 0.4),
                ttft_s="0.4",
                id=str(2**63 - 1),
                output_tokens=str(2**40 - 1),
                gpus="[0, 3]",
            ),
            starts='{"id": 0, "start_s": -3600}',
            extra=f', "monotonic_s": {MAX_TIME_S - 1}, "lost": {{"record_failed": 7}}',
        )
    )
    (end,) = batch.ends
    assert end.ttft_s == 0.4 and end.end_s - end.start_s >= end.ttft_s
    assert end.span_id == 2**63 - 1 and end.output_tokens == 2**40 - 1
    # a time before the daemon's boot is another clock's: the clock check names it
    assert batch.starts[0].start_s == -3600.0 and batch.lost == {"record_failed": 7}


def test_the_daemon_answers_400_and_counts_the_refusal(tmp_path_factory):
    import shutil
    import tempfile
    from pathlib import Path

    folder = Path(tempfile.mkdtemp(prefix="fpp-", dir="/tmp"))  # a short socket path
    daemon = spawn(folder, name="peer")
    try:
        before = (
            metric(metrics_text(daemon), "footprint_protocol_errors_total", reason="invalid") or 0
        )
        client = Client(daemon.sock)
        client.send_raw(BAD["end_s of 401 digits"] + b"\n")
        reply = client.reply()
        assert reply is not None and reply["reason"] == "invalid", reply
        status, body = http_post(
            daemon.url("/v1/spans"), BAD["end_s of 401 digits"], token=daemon.token
        )
        assert status == 400 and body["reason"] == "invalid", body
        status, body = http_post(
            daemon.url("/v1/spans"), BAD["ttft longer than the call"], token=daemon.token
        )
        assert status == 400 and "ttft" in body["error"], body
        after = metric(metrics_text(daemon), "footprint_protocol_errors_total", reason="invalid")
        assert after == before + 3
        # the connection is still up and the daemon takes good spans on it
        t = time.monotonic()
        ends = [{"id": 1, "start_s": t - 0.1, "end_s": t, "model": "m", "gpus": [0]}]
        good = {"pid": 95001, "host": "h", "monotonic_s": t, "ack": True, "ends": ends}
        client.send_raw(json.dumps(good).encode() + b"\n")
        assert client.reply(timeout=30) == {"acked": [1]}
        client.close()
        assert daemon.proc.poll() is None
        assert "internal error" not in daemon.stderr
    finally:
        daemon.stop()
        shutil.rmtree(folder, ignore_errors=True)


# -- in-process: a time to first token is within its call or NULL -----------------------
def test_an_impossible_ttft_is_stored_as_null_and_counted(tracked_db):
    footprint.flush()  # the runtime starts
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for value in (1e300, -0.1, math.nan, math.inf):
            with footprint.query(model="bad-ttft") as q:
                q._ttft_s = value  # what a wrapper or a clock gone wrong may leave there
        with footprint.query(model="good-ttft") as q:
            q.first_token()
    footprint.flush()
    con = sqlite3.connect(tracked_db)
    got = con.execute(
        "SELECT model, time_to_first_token_s, duration_s FROM queries ORDER BY id"
    ).fetchall()
    losses = dict(con.execute("SELECT kind, SUM(count) FROM losses GROUP BY kind"))
    con.close()
    assert [ttft for model, ttft, _ in got if model == "bad-ttft"] == [None] * 4
    ((_, ttft, duration),) = [row for row in got if row[0] == "good-ttft"]
    assert ttft is not None and 0 <= ttft <= duration
    assert footprint.stats()[INVALID_TTFT] == 4
    assert losses == {INVALID_TTFT: 4}
    mine = [w for w in caught if issubclass(w.category, FootprintWarning)]
    assert len(mine) == 1 and INVALID_TTFT in str(mine[0].message)
