"""``footprint proxy`` in front of Ollama's native API (``/api/chat``, ``/api/generate``,
``/api/embed``, ``/api/embeddings``): forwarded unchanged, tokens from
``prompt_eval_count`` and ``eval_count``, the first token at a stream's first object."""

from __future__ import annotations

import http.client
import json
import time
from urllib.parse import urlsplit

import pytest
from conftest import rows

import footprint
from footprint.proxy.accounting import MAX_EVENT
from footprint.proxy.ollama import NDJSONAccountant, ollama_tokens
from tests.fakes.fake_openai import LoopThread, running_proxy, running_upstream

MESSAGES = [{"role": "user", "content": "three little words"}]


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


def post(base: str, path: str, body: dict) -> tuple[int, str, bytes]:
    """(status, Content-Type, body) of one POST."""
    url = urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    try:
        conn.request("POST", path, json.dumps(body).encode(), {"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type", ""), response.read()
    finally:
        conn.close()


def records(db, count: int) -> list[dict]:
    deadline = time.monotonic() + 10
    while True:
        footprint.flush()
        found = rows(db)
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def same_through_proxy(upstream, proxy, path: str, body: dict) -> tuple[str, bytes]:
    direct = post(upstream.url, path, body)
    proxied = post(proxy.url, path, body)
    assert proxied == direct and proxied[0] == 200, proxied[2][:300]
    return proxied[1], proxied[2]


@pytest.mark.parametrize(
    "path, kind, body",
    [
        ("/api/chat", "ollama.chat", {"model": "llama3.2", "messages": MESSAGES}),
        ("/api/generate", "ollama.generate", {"model": "llama3.2", "prompt": "three little words"}),
    ],
)
@pytest.mark.parametrize("stream", [True, False, None])
def test_chat_and_generate_are_forwarded_and_their_counts_recorded(
    upstream, proxy, tracked_db, path, kind, body, stream
):
    body = {**body, "options": {"num_predict": 4}}
    if stream is not None:  # Ollama streams unless told not to
        body["stream"] = stream
    content_type, answer = same_through_proxy(upstream, proxy, path, body)
    lines = answer.decode().splitlines()
    if stream is False:
        assert content_type.startswith("application/json") and len(lines) == 1
    else:
        assert content_type == "application/x-ndjson" and len(lines) == 5
    assert json.loads(lines[-1])["done"] is True
    (record,) = records(tracked_db, 1)
    assert (record["model"], record["status"]) == ("llama3.2", "ok")
    assert (record["input_tokens"], record["output_tokens"]) == (3, 4)
    assert json.loads(record["tags"]) == {"endpoint": kind}
    if stream is False:
        assert record["time_to_first_token_s"] is None
    else:
        assert record["time_to_first_token_s"] is not None


def test_embed_records_its_input_tokens(upstream, proxy, tracked_db):
    body = {"model": "nomic-embed-text", "input": ["one two", "three four five"]}
    _, answer = same_through_proxy(upstream, proxy, "/api/embed", body)
    assert len(json.loads(answer)["embeddings"]) == 2
    (record,) = records(tracked_db, 1)
    assert (record["model"], record["input_tokens"], record["output_tokens"]) == (
        "nomic-embed-text",
        5,
        None,
    )
    assert json.loads(record["tags"]) == {"endpoint": "ollama.embed"}


def test_the_older_embeddings_api_is_measured_without_counts(upstream, proxy, tracked_db):
    body = {"model": "nomic-embed-text", "prompt": "one two"}
    same_through_proxy(upstream, proxy, "/api/embeddings", body)
    (record,) = records(tracked_db, 1)
    assert (record["model"], record["status"], record["input_tokens"]) == (
        "nomic-embed-text",
        "ok",
        None,
    )
    assert json.loads(record["tags"]) == {"endpoint": "ollama.embeddings"}
    assert proxy.proxy.stats.no_usage == 1


def test_a_last_object_longer_than_the_proxy_holds_still_gives_its_counts(
    upstream, proxy, tracked_db
):
    body = {"model": "long-context", "prompt": "one two", "options": {"num_predict": 2}}
    _, answer = same_through_proxy(upstream, proxy, "/api/generate", body)
    assert len(answer.splitlines()[-1]) > MAX_EVENT
    (record,) = records(tracked_db, 1)
    assert (record["input_tokens"], record["output_tokens"]) == (2, 2)
    assert proxy.proxy.stats.oversized_events == 1


def test_an_ollama_error_is_recorded_as_one(upstream, proxy, tracked_db):
    status, _, answer = post(proxy.url, "/api/chat", {"model": "fail-500", "messages": []})
    assert status == 500 and "error" in json.loads(answer)
    (record,) = records(tracked_db, 1)
    assert (record["status"], record["error_type"]) == ("error", "HTTP500")


# -- the stream reader ----------------------------------------------------------------------


def ndjson(*objs: dict) -> bytes:
    return b"".join(json.dumps(o).encode() + b"\n" for o in objs)


STREAM = ndjson(
    {
        "model": "m",
        "message": {"role": "assistant", "content": 'say "eval_count": 9'},
        "done": False,
    },
    {"model": "m", "message": {"role": "assistant", "content": "!"}, "done": False},
    {"model": "m", "done": True, "context": [1, 2], "prompt_eval_count": 26, "eval_count": 298},
)


@pytest.mark.parametrize("size", [1, 2, 7, 64, len(STREAM)])
def test_counts_and_first_object_whatever_the_network_splits(size):
    firsts = []
    accountant = NDJSONAccountant("ollama.chat", on_first_content=lambda: firsts.append(1))
    data = STREAM[:-1]  # the last line without its line end still counts
    for i in range(0, len(data), size):
        assert accountant.feed(data[i : i + size]) == b""
    accountant.close()
    assert accountant.tokens() == (26, 298)
    assert firsts == [1] and not accountant.stream_error


def test_an_error_object_and_an_answer_with_nothing_generated():
    accountant = NDJSONAccountant("ollama.generate", on_first_content=lambda: 1 / 0)
    accountant.feed(ndjson({"model": "m", "response": "", "done": True, "done_reason": "load"}))
    accountant.feed(b'{"error":"model runner has unexpectedly stopped"}\n')
    accountant.close()
    assert accountant.stream_error and not accountant.first_seen
    assert accountant.tokens() is None


def test_counts_read_from_a_json_body():
    body = json.dumps({"model": "m", "embeddings": [[0.1]], "prompt_eval_count": 8}).encode()
    assert ollama_tokens(body, "ollama.embed") == (8, None)
    assert ollama_tokens(b'{"embedding":[0.5]}', "ollama.embeddings") is None
    assert ollama_tokens(STREAM, "ollama.generate") == (26, 298)
