"""``footprint proxy`` in front of a fake OpenAI-compatible server, on loopback.

Clients: the official ``openai`` client, ``http.client`` (the bytes as sent) and raw
sockets (a client that goes away). Each exchange is made twice, straight to the upstream
and through the proxy, and the two must be the same; the store must hold one record per
inference request with its model and tokens.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from urllib.parse import urlsplit

import pytest
from conftest import rows

import footprint
from footprint.cli import main
from footprint.proxy.accounting import (
    MAX_EVENT,
    BodyAccountant,
    Inflater,
    SSEAccountant,
    find_usage,
)
from tests.fakes.fake_openai import LoopThread, refused_port, running_proxy, running_upstream

openai = pytest.importorskip("openai")

CHAT = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "three little words"}]


# -- fixtures and helpers ----------------------------------------------------------------


@pytest.fixture
def loop():
    with LoopThread() as running:
        yield running


@pytest.fixture
def upstream(loop):
    with running_upstream(loop) as fake:
        yield fake


@pytest.fixture
def proxy(loop, upstream, tracked_db):
    with running_proxy(loop, upstream.url) as running:
        yield running


_OPEN_CLIENTS: list[openai.OpenAI] = []


def client(base: str) -> openai.OpenAI:
    """An OpenAI client, closed after the test (an unclosed one leaves its connection to
    be collected later, in whichever test the garbage collector then runs)."""
    opened = openai.OpenAI(base_url=base + "/v1", api_key="sk-test", max_retries=0, timeout=30)
    _OPEN_CLIENTS.append(opened)
    return opened


@pytest.fixture(autouse=True)
def _close_clients():
    yield
    while _OPEN_CLIENTS:
        _OPEN_CLIENTS.pop().close()


def request(
    base: str, method: str, path: str, body: bytes | None = None, headers: dict | None = None
) -> tuple[int, list[tuple[str, str]], bytes]:
    """(status, headers, body) of one request with http.client (chunked bodies decoded)."""
    conn = http.client.HTTPConnection(urlsplit(base).hostname, urlsplit(base).port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.getheaders(), response.read()
    finally:
        conn.close()


def post_json(base: str, path: str, obj: dict, headers: dict | None = None):
    all_headers = {"Content-Type": "application/json", **(headers or {})}
    return request(base, "POST", path, json.dumps(obj).encode(), all_headers)


def same_headers(a: list[tuple[str, str]], b: list[tuple[str, str]]) -> bool:
    """Equal but for Date (another second, maybe)."""

    def norm(headers):
        return sorted((k.lower(), v) for k, v in headers if k.lower() != "date")

    return norm(a) == norm(b)


def records(db, count: int, timeout: float = 10.0) -> list[dict]:
    """The records once ``count`` of them are stored (flushing meanwhile)."""
    deadline = time.monotonic() + timeout
    while True:
        footprint.flush()
        found = rows(db)
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def tags(record: dict) -> dict:
    return json.loads(record["tags"])


# -- the official client -----------------------------------------------------------------


def test_chat_completion_is_forwarded_unchanged_and_recorded(upstream, proxy, tracked_db):
    direct = client(upstream.url).chat.completions.create(
        model="llama-3-8b", messages=MESSAGES, max_tokens=4
    )
    proxied = client(proxy.url).chat.completions.create(
        model="llama-3-8b", messages=MESSAGES, max_tokens=4
    )
    assert proxied.model_dump() == direct.model_dump()
    assert proxied.usage.prompt_tokens == 3 and proxied.usage.completion_tokens == 4
    (record,) = records(tracked_db, 1)
    assert record["model"] == "llama-3-8b"
    assert record["status"] == "ok"
    assert (record["input_tokens"], record["output_tokens"]) == (3, 4)
    assert tags(record) == {"endpoint": "chat.completions"}
    assert record["time_to_first_token_s"] is None  # not a stream


def test_raw_bytes_headers_and_request_are_the_same_through_the_proxy(upstream, proxy):
    body = json.dumps({"model": "m", "messages": MESSAGES, "max_tokens": 2}).encode()
    headers = {
        "Content-Type": "application/json",
        "Authorization": "Bearer sk-secret",
        "X-Custom": "kept",
        "User-Agent": "test-agent/1",
    }
    direct = request(upstream.url, "POST", CHAT + "?api-version=1", body, headers)
    seen_direct = upstream.requests[-1]
    proxied = request(proxy.url, "POST", CHAT + "?api-version=1", body, headers)
    seen_proxied = upstream.requests[-1]
    assert proxied[0] == direct[0] == 200
    assert proxied[2] == direct[2]
    assert same_headers(proxied[1], direct[1])
    # The upstream got the same request: method, path and query, body, and headers
    # (Authorization included) but Host, which names the upstream.
    for key in ("method", "raw_path", "body_size", "body_sha256"):
        assert seen_proxied[key] == seen_direct[key]
    assert seen_proxied["raw_path"] == CHAT + "?api-version=1"

    def without_host(seen):
        return sorted((k.lower(), v) for k, v in seen["headers"] if k.lower() != "host")

    assert without_host(seen_proxied) == without_host(seen_direct)
    assert ("authorization", "Bearer sk-secret") in without_host(seen_proxied)


def test_stream_without_usage_gets_exactly_the_stream_it_asked_for(upstream, proxy, tracked_db):
    def chunks(base):
        stream = client(base).chat.completions.create(
            model="llama-3-8b", messages=MESSAGES, max_tokens=5, stream=True
        )
        return [chunk.model_dump() for chunk in stream]

    direct = chunks(upstream.url)
    assert "stream_options" not in upstream.requests[-1]["json"]
    proxied = chunks(proxy.url)
    # The proxy asked the upstream for usage...
    assert upstream.requests[-1]["json"]["stream_options"] == {"include_usage": True}
    # ...and the client saw none of it: no usage chunk, no "usage": null.
    assert proxied == direct
    assert all(c["usage"] is None and c["choices"] for c in proxied)
    text = "".join(c["choices"][0]["delta"]["content"] or "" for c in proxied)
    assert text == "tok0 tok1 tok2 tok3 tok4 "

    body = {"model": "llama-3-8b", "messages": MESSAGES, "max_tokens": 5, "stream": True}
    raw_direct = post_json(upstream.url, CHAT, body)
    raw_proxied = post_json(proxy.url, CHAT, body)
    assert raw_proxied[2] == raw_direct[2]  # byte for byte
    assert b'"usage"' not in raw_proxied[2]
    assert same_headers(raw_proxied[1], raw_direct[1])

    found = records(tracked_db, 2)
    assert len(found) == 2
    for record in found:
        assert record["status"] == "ok"
        assert (record["input_tokens"], record["output_tokens"]) == (3, 5)
        assert "tokens_estimated" not in tags(record)
        assert 0 <= record["time_to_first_token_s"] <= record["duration_s"]


def test_stream_with_include_usage_is_untouched(upstream, proxy, tracked_db):
    def chunks(base):
        stream = client(base).chat.completions.create(
            model="qwen",
            messages=MESSAGES,
            max_tokens=3,
            stream=True,
            stream_options={"include_usage": True},
        )
        return [chunk.model_dump() for chunk in stream]

    direct = chunks(upstream.url)
    proxied = chunks(proxy.url)
    assert proxied == direct
    assert proxied[-1]["choices"] == [] and proxied[-1]["usage"]["completion_tokens"] == 3
    body = {
        "model": "qwen",
        "messages": MESSAGES,
        "max_tokens": 3,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    assert post_json(proxy.url, CHAT, body)[2] == post_json(upstream.url, CHAT, body)[2]
    found = records(tracked_db, 2)
    assert [(r["model"], r["input_tokens"], r["output_tokens"]) for r in found] == [
        ("qwen", 3, 3),
        ("qwen", 3, 3),
    ]


def test_embeddings(upstream, proxy, tracked_db):
    direct = client(upstream.url).embeddings.create(model="bge", input=["a b c", "d e"])
    proxied = client(proxy.url).embeddings.create(model="bge", input=["a b c", "d e"])
    assert proxied.model_dump() == direct.model_dump()
    assert len(proxied.data) == 2 and len(proxied.data[0].embedding) == 8
    (record,) = records(tracked_db, 1)
    assert record["model"] == "bge"
    assert (record["input_tokens"], record["output_tokens"]) == (5, None)
    assert tags(record) == {"endpoint": "embeddings"}


def test_completions_and_responses_api(upstream, proxy, tracked_db):
    proxied = client(proxy.url)
    completion = proxied.completions.create(model="base", prompt="one two", max_tokens=2)
    assert completion.choices[0].text == "tok0 tok1 "
    streamed = list(
        proxied.completions.create(model="base", prompt="one two", max_tokens=3, stream=True)
    )
    assert all(c.usage is None for c in streamed)
    response = proxied.responses.create(model="resp", input="a b c d", max_output_tokens=2)
    assert response.output_text == "tok0 tok1 "
    events = list(
        proxied.responses.create(model="resp", input="a b c d", max_output_tokens=3, stream=True)
    )
    assert events[-1].type == "response.completed"
    found = records(tracked_db, 4)
    summary = [
        (r["model"], tags(r)["endpoint"], r["input_tokens"], r["output_tokens"]) for r in found
    ]
    assert summary == [
        ("base", "completions", 2, 2),
        ("base", "completions", 2, 3),
        ("resp", "responses", 4, 2),
        ("resp", "responses", 4, 3),
    ]
    assert found[3]["time_to_first_token_s"] is not None


def test_other_paths_pass_through_unmeasured(upstream, proxy, tracked_db):
    direct = request(upstream.url, "GET", "/v1/models")
    proxied = request(proxy.url, "GET", "/v1/models")
    assert proxied[0] == 200 and proxied[2] == direct[2]
    assert client(proxy.url).models.list().data[0].id == "fake-model"
    path = "/custom/x%2Fy?a=1&b=%2F%20z&a=2"
    body = b"\x00binary\xffbody" * 1000
    status, _, echoed = request(proxy.url, "PUT", path, body, {"X-Thing": "1"})
    seen = json.loads(echoed)
    assert status == 200
    assert (seen["method"], seen["raw_path"]) == ("PUT", path)
    assert seen["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert seen["headers"]["X-Thing"] == "1"
    # GET on a measured path is not an inference request either.
    assert request(proxy.url, "GET", CHAT)[0] == 200
    footprint.flush()
    assert not tracked_db.exists() or rows(tracked_db) == []  # no tracked call: no database


def test_a_gzipped_answer_stays_gzipped_and_its_usage_is_read(upstream, proxy, tracked_db):
    body = {"model": "m", "messages": MESSAGES, "max_tokens": 3}
    headers = {"Accept-Encoding": "gzip", "X-Fake-Gzip": "1"}
    direct = post_json(upstream.url, CHAT, body, headers)
    proxied = post_json(proxy.url, CHAT, body, headers)
    assert dict(proxied[1])["Content-Encoding"] == "gzip"
    assert proxied[2] == direct[2]
    assert json.loads(gzip.decompress(proxied[2]))["usage"]["completion_tokens"] == 3
    (record,) = records(tracked_db, 1)
    assert (record["input_tokens"], record["output_tokens"]) == (3, 3)


# -- errors ------------------------------------------------------------------------------


def test_upstream_500_reaches_the_client_and_is_recorded_as_error(upstream, proxy, tracked_db):
    body = {"model": "fail-500", "messages": MESSAGES}
    direct = post_json(upstream.url, CHAT, body)
    proxied = post_json(proxy.url, CHAT, body)
    assert proxied[0] == direct[0] == 500
    assert proxied[2] == direct[2]
    with pytest.raises(openai.InternalServerError):
        client(proxy.url).chat.completions.create(model="fail-500", messages=MESSAGES)
    found = records(tracked_db, 2)
    assert [(r["model"], r["status"], r["error_type"]) for r in found] == [
        ("fail-500", "error", "HTTP500")
    ] * 2


def test_unreachable_upstream_gives_502_and_an_error_record(loop, tracked_db):
    with running_proxy(loop, f"http://127.0.0.1:{refused_port()}") as proxy:
        status, headers, body = post_json(proxy.url, CHAT, {"model": "m", "messages": MESSAGES})
        with pytest.raises(openai.APIStatusError) as raised:
            client(proxy.url).chat.completions.create(model="m", messages=MESSAGES)
        listed = request(proxy.url, "GET", "/v1/models")
    assert status == 502
    assert dict(headers)["Content-Type"].startswith("application/json")
    error = json.loads(body)["error"]
    assert error["type"] == "upstream_unreachable" and "cannot reach" in error["message"]
    assert raised.value.status_code == 502
    assert listed[0] == 502  # unmeasured paths too
    found = records(tracked_db, 2)
    assert [(r["status"], r["error_type"]) for r in found] == [("error", "UpstreamUnreachable")] * 2


def test_upstream_timeout_gives_504(loop, upstream, tracked_db):
    with running_proxy(loop, upstream.url, read_timeout_s=0.3) as proxy:
        status, _, body = post_json(proxy.url, CHAT, {"model": "hang", "messages": MESSAGES})
    assert status == 504
    assert json.loads(body)["error"]["type"] == "upstream_timeout"
    (record,) = records(tracked_db, 1)
    assert (record["model"], record["status"], record["error_type"]) == (
        "hang",
        "error",
        "UpstreamTimeout",
    )


def test_upstream_cutting_a_stream_short_cuts_the_clients_too(upstream, proxy, tracked_db):
    body = {"model": "drop-mid-stream", "messages": MESSAGES, "stream": True, "max_tokens": 9}
    for base in (upstream.url, proxy.url):
        with pytest.raises(http.client.IncompleteRead):
            post_json(base, CHAT, body)
    (record,) = records(tracked_db, 1)
    assert (record["status"], record["error_type"]) == ("error", "UpstreamDisconnected")


def go_away_mid_stream(proxy) -> None:
    """A client that starts a slow stream, reads two tokens and closes its connection."""
    body = json.dumps(
        {"model": "slow", "messages": MESSAGES, "max_tokens": 200, "stream": True}
    ).encode()
    with socket.create_connection((proxy.host, proxy.port), timeout=10) as sock:
        sock.sendall(
            b"POST " + CHAT.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
            b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        received = b""
        while b"tok1" not in received:
            received += sock.recv(65536)


@pytest.mark.parametrize("handler_cancellation", [True, False])
def test_client_going_away_mid_stream_is_cancelled(
    handler_cancellation, loop, upstream, tracked_db, monkeypatch, caplog
):
    from aiohttp import web

    # With handler cancellation (the proxy's setting) the handler is cancelled when the
    # client leaves; without it, the next write fails. Both end the same way.
    server = web.Server
    monkeypatch.setattr(
        web,
        "Server",
        lambda handler, **kw: server(
            handler, **{**kw, "handler_cancellation": handler_cancellation}
        ),
    )
    with running_proxy(loop, upstream.url) as proxy:
        go_away_mid_stream(proxy)
        (record,) = records(tracked_db, 1)
    assert (record["model"], record["status"]) == ("slow", "cancelled")
    assert record["duration_s"] < 5  # 200 chunks at 50 ms would take 10 s
    deadline = time.monotonic() + 5
    while upstream.disconnects < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert upstream.disconnects == 1  # the upstream saw the client leave too
    assert proxy.proxy.stats.cancelled == 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# -- bad input ---------------------------------------------------------------------------


def test_malformed_json_is_forwarded_and_recorded_as_unknown(upstream, proxy, tracked_db):
    body = b'{"model": "m", "messages": [oops'
    headers = {"Content-Type": "application/json"}
    direct = request(upstream.url, "POST", CHAT, body, headers)
    proxied = request(proxy.url, "POST", CHAT, body, headers)
    assert proxied[0] == direct[0] == 400
    assert proxied[2] == direct[2]
    assert upstream.requests[-1]["body_sha256"] == hashlib.sha256(body).hexdigest()
    (record,) = records(tracked_db, 1)
    assert (record["model"], record["status"], record["error_type"]) == (
        "unknown",
        "error",
        "HTTP400",
    )


def test_bodies_beyond_10_mb_are_forwarded_unparsed(upstream, proxy, tracked_db):
    words = 2_100_000  # "word " × 2.1M: 10.5 MB
    big = json.dumps(
        {
            "model": "big",
            "messages": [{"role": "user", "content": "word " * words}],
            "max_tokens": 1,
        }
    ).encode()
    assert len(big) > 10 * 1024 * 1024
    status, _, answer = request(proxy.url, "POST", CHAT, big, {"Content-Type": "application/json"})
    assert status == 200
    assert upstream.requests[-1]["body_sha256"] == hashlib.sha256(big).hexdigest()
    # Under the cap but large: parsed (off the event loop).
    content = "w " * 500_000
    medium = {
        "model": "medium",
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 1,
    }
    assert post_json(proxy.url, CHAT, medium)[0] == 200
    found = records(tracked_db, 2)
    assert [(r["model"], r["input_tokens"]) for r in found] == [
        ("unknown", words),
        ("medium", 500_000),
    ]


def test_upstream_refusing_stream_options_gets_the_request_again(loop, tracked_db):
    with (
        running_upstream(loop, refuse_stream_options=True) as upstream,
        running_proxy(loop, upstream.url) as proxy,
    ):
        body = {"model": "old-server", "messages": MESSAGES, "max_tokens": 6, "stream": True}
        direct = post_json(upstream.url, CHAT, body)
        before = len(upstream.requests)
        first = post_json(proxy.url, CHAT, body)
        assert len(upstream.requests) - before == 2  # refused, then sent as it was
        second = post_json(proxy.url, CHAT, body)
        assert len(upstream.requests) - before == 3  # not asked again
        assert first[2] == second[2] == direct[2]
        asked = post_json(proxy.url, CHAT, {**body, "stream_options": {"include_usage": True}})
        assert asked[0] == 400  # the client's own option: the upstream's answer
    found = records(tracked_db, 3)
    for record in found[:2]:
        assert record["status"] == "ok"
        assert (record["input_tokens"], record["output_tokens"]) == (None, 6)
        assert tags(record)["tokens_estimated"] is True
    assert (found[2]["status"], found[2]["error_type"]) == ("error", "HTTP400")


def test_other_stream_options_are_left_alone(upstream, proxy, tracked_db):
    options = {"continuous_usage_stats": True}  # vLLM's: usage in every chunk once asked
    body = {
        "model": "m",
        "messages": MESSAGES,
        "max_tokens": 4,
        "stream": True,
        "stream_options": options,
    }
    direct = post_json(upstream.url, CHAT, body)
    proxied = post_json(proxy.url, CHAT, body)
    assert upstream.requests[-1]["json"]["stream_options"] == options
    assert proxied[2] == direct[2]
    (record,) = records(tracked_db, 1)
    assert (record["input_tokens"], record["output_tokens"]) == (None, 4)
    assert tags(record)["tokens_estimated"] is True


# -- the command -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, message",
    [
        (["--upstream", "localhost:8000"], "not an http(s) URL"),
        (["--upstream", "http://"], "not an http(s) URL"),
        (["--upstream", "http://host:99999"], "not a URL"),
        (["--upstream", "http://h:8000", "--listen", "8001"], "HOST:PORT"),
        (["--upstream", "http://h:8000", "--tag", "model=x"], "reserved"),
        (["--upstream", "http://h:8000", "--tag", "novalue"], "KEY=VALUE"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(args, message, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["proxy", *args])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_listen_address_in_use_exits_2_with_one_line(capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit) as exited:
            main(["proxy", "--upstream", "http://127.0.0.1:1", "--listen", f"127.0.0.1:{port}"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"cannot listen on 127.0.0.1:{port}" in err, err


def test_the_command_serves_records_and_flushes_on_sigterm(upstream, tmp_path):
    db = tmp_path / "proxy.db"
    env = {
        **os.environ,
        "FOOTPRINT_SENSOR": "simulated:gpus=2",
        "FOOTPRINT_CPU": "false",
        "FOOTPRINT_REGION": "FRA",
        "FOOTPRINT_DAEMON": "off",
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "footprint.cli",
            "proxy",
            "--upstream",
            upstream.url,
            "--listen",
            "127.0.0.1:0",
            "--db",
            str(db),
            "--gpus",
            "1",
            "--tag",
            "team=search",
        ],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = proc.stderr.readline()
        match = re.search(r"listening on (http://[\d.:]+)", line)
        assert match, line
        answer = client(match.group(1)).chat.completions.create(
            model="served", messages=MESSAGES, max_tokens=2
        )
        assert answer.usage.completion_tokens == 2
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, rest
    assert "stopped after 1 requests (1 measured" in rest
    (record,) = rows(db)
    assert (record["model"], record["status"], record["output_tokens"]) == ("served", "ok", 2)
    assert tags(record) == {"endpoint": "chat.completions", "team": "search"}
    assert len(json.loads(record["gpus"])) == 1  # --gpus 1: the second of the two


def test_bench_proxy_reports_side_by_side_figures():
    from footprint.bench.proxy import run

    result = run(requests=50, seconds=0.5, concurrency=4, upstream_latency_ms=1)
    for key in (
        "direct_ms_median",
        "proxy_ms_median",
        "added_ms_median",
        "rps_direct",
        "rps_proxy",
        "rps_ratio",
        "rps_direct_zero_latency",
        "rps_proxy_zero_latency",
    ):
        assert result[key] is not None and result[key] == result[key], key
    assert result["rps_direct"] > 0 and result["rps_proxy"] > 0
    assert result["records"] == result["requests_through_proxy"]  # one record each


# -- reading streams without holding them --------------------------------------------------


def sse(*objs: dict | str) -> bytes:
    return b"".join(
        b"data: " + (o.encode() if isinstance(o, str) else json.dumps(o).encode()) + b"\n\n"
        for o in objs
    )


CHUNK = {"id": "c", "choices": [{"index": 0, "delta": {"content": "hi"}}]}
USAGE = {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}


def test_sse_usage_chunk_removed_whatever_the_network_splits():
    asked = sse(
        {**CHUNK, "usage": None},
        {**CHUNK, "usage": None},
        {"id": "c", "choices": [], "usage": USAGE},
        "[DONE]",
    )
    expected = sse(CHUNK, CHUNK, "[DONE]")
    for size in (1, 2, 7, 64, len(asked)):
        accountant = SSEAccountant("chat.completions", strip_usage=True)
        out = b"".join(accountant.feed(asked[i : i + size]) for i in range(0, len(asked), size))
        out += accountant.close()
        assert out == expected, size
        assert accountant.tokens() == (7, 2)
        assert accountant.first_seen


def test_sse_crlf_events_and_a_last_event_without_its_blank_line():
    data = sse(CHUNK).replace(b"\n", b"\r\n") + b'data: {"choices":[],"usage":{"prompt_tokens":1}}'
    accountant = SSEAccountant("chat.completions", count_chunks=True)
    assert accountant.feed(data) == b""  # not stripping: the caller forwards what it got
    accountant.close()
    assert accountant.content_chunks == 1
    assert accountant.tokens() == (1, None)


def test_an_oversized_event_is_passed_on_and_its_usage_still_read():
    text = "x" * (MAX_EVENT * 2)
    usage = {"input_tokens": 3, "output_tokens": 4}
    completed = {
        "type": "response.completed",
        "response": {"output": [{"text": text}], "usage": usage},
    }
    stream = b"event: response.completed\n" + sse(completed)
    accountant = SSEAccountant("responses", strip_usage=True)
    out = b"".join(accountant.feed(stream[i : i + 65536]) for i in range(0, len(stream), 65536))
    assert out + accountant.close() == stream
    assert accountant.tokens() == (3, 4)
    assert accountant.oversized_events == 1
    assert len(accountant._buf) < 16  # nothing of it held


def test_json_body_usage_found_at_the_end_of_a_large_body():
    body = json.dumps(
        {
            "data": [{"embedding": [0.1] * 100_000}],
            "usage": {"prompt_tokens": 12, "total_tokens": 12},
        }
    ).encode()
    accountant = BodyAccountant("embeddings")
    for i in range(0, len(body), 1000):
        accountant.feed(body[i : i + 1000])
    assert accountant.tokens() == (12, None)
    assert len(accountant._head) + len(accountant._tail) <= 3 * 64 * 1024


def test_compressed_bodies_are_read_on_the_side():
    body = json.dumps({"choices": [], "usage": USAGE}).encode()
    inflater = Inflater("gzip")
    packed = gzip.compress(body)
    assert b"".join(inflater.decode(packed[i : i + 5]) for i in range(0, len(packed), 5)) == body
    assert find_usage(body) == USAGE
    assert find_usage(b'{"content": "usage", "usage": {"prompt_tokens": 1}}') == {
        "prompt_tokens": 1
    }
