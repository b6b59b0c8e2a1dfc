"""``footprint proxy`` records who called: allowed headers, the OpenAI ``user`` field and a
keyed hash of the API key, each only when asked, as tags of the request's record."""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import time
from urllib.parse import urlsplit

import pytest
from conftest import rows
from multidict import CIMultiDict

import footprint
from footprint.cli import main
from footprint.proxy.callers import (
    DEFAULT_API_KEY_SALT,
    MAX_TAG_CHARS,
    CallerTagging,
    TagHeader,
    api_key_hash,
    caller_tags,
    clean,
)
from tests.fakes.fake_openai import LoopThread, running_proxy, running_upstream

CHAT = "/v1/chat/completions"
BODY = {
    "model": "m",
    "messages": [{"role": "user", "content": "three little words"}],
    "max_tokens": 2,
}


@pytest.fixture
def loop():
    with LoopThread() as running:
        yield running


@pytest.fixture
def upstream(loop):
    with running_upstream(loop) as fake:
        yield fake


def post(base: str, body: dict, headers: dict[str, str] | None = None) -> int:
    url = urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    try:
        conn.request(
            "POST",
            CHAT,
            json.dumps(body).encode(),
            {"Content-Type": "application/json", **(headers or {})},
        )
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def recorded_tags(db, count: int) -> list[dict]:
    deadline = time.monotonic() + 10
    while True:
        footprint.flush()
        found = rows(db)
        if len(found) >= count or time.monotonic() > deadline:
            return [json.loads(r["tags"]) for r in found]
        time.sleep(0.05)


def expected_hash(key: str, secret: bytes = DEFAULT_API_KEY_SALT) -> str:
    return hmac.new(secret, key.encode(), hashlib.sha256).hexdigest()[:16]


# -- through the proxy -------------------------------------------------------------------


def test_allowed_headers_are_stored_and_no_other(loop, upstream, tracked_db):
    with running_proxy(
        loop, upstream.url, tag_headers=["X-Footprint-Team=team", "x-tenant=tenant"]
    ) as proxy:
        headers = {
            "X-Footprint-Team": "  search  ",
            "X-Tenant": "t" * 300,
            "X-Other": "not stored",
            "Authorization": "Bearer sk-secret-1",
        }
        assert post(proxy.url, {**BODY, "user": "alice"}, headers) == 200
        assert post(proxy.url, BODY, {"X-Other": "x"}) == 200
    first, second = recorded_tags(tracked_db, 2)
    assert first == {"endpoint": "chat.completions", "team": "search", "tenant": "t" * 128}
    assert second == {"endpoint": "chat.completions"}  # an absent header: no tag
    assert "sk-secret-1" not in json.dumps(first) and "alice" not in json.dumps(first)


def test_the_user_field_is_stored_when_asked(loop, upstream, tracked_db):
    with running_proxy(loop, upstream.url, tag_user=True) as proxy:
        assert post(proxy.url, {**BODY, "user": "alice"}) == 200
        assert post(proxy.url, {**BODY, "user": "b" * 500}) == 200
        assert post(proxy.url, {**BODY, "user": 42}) == 200  # not a string: no tag
        assert post(proxy.url, BODY) == 200
    tags = recorded_tags(tracked_db, 4)
    assert [t.get("user") for t in tags] == ["alice", "b" * MAX_TAG_CHARS, None, None]
    # what the upstream received is what the client sent
    assert upstream.requests[0]["json"]["user"] == "alice"


def test_the_api_key_is_stored_as_a_stable_keyed_hash(loop, upstream, tracked_db):
    with running_proxy(loop, upstream.url, tag_api_key_hash=True) as proxy:
        for key in ("sk-first-key", "sk-first-key", "sk-second-key"):
            assert post(proxy.url, BODY, {"Authorization": f"Bearer {key}"}) == 200
        assert post(proxy.url, BODY) == 200  # no key: no tag
        assert post(proxy.url, BODY, {"Authorization": "Basic dXNlcjpwdw=="}) == 200
    tags = recorded_tags(tracked_db, 5)
    hashes = [t.get("api_key_hash") for t in tags]
    assert hashes[0] == hashes[1] == expected_hash("sk-first-key")
    assert hashes[2] == expected_hash("sk-second-key") != hashes[0]
    assert hashes[3] is None and hashes[4] is None
    assert all(len(h) == 16 and int(h, 16) >= 0 for h in hashes[:3])
    assert "sk-first-key" not in json.dumps(tags) and "sk-second-key" not in json.dumps(tags)


def test_a_deployment_secret_keys_the_hash(loop, upstream, tracked_db, tmp_path):
    secret = tmp_path / "secret"
    secret.write_bytes(b"per-deployment-secret\n")
    with running_proxy(
        loop, upstream.url, tag_api_key_hash=True, api_key_secret_file=str(secret)
    ) as proxy:
        assert post(proxy.url, BODY, {"Authorization": "Bearer sk-first-key"}) == 200
    (tags,) = recorded_tags(tracked_db, 1)
    assert tags["api_key_hash"] == expected_hash("sk-first-key", b"per-deployment-secret")
    assert tags["api_key_hash"] != expected_hash("sk-first-key")


# -- the pieces ----------------------------------------------------------------------------


def test_values_are_cleaned_and_capped():
    assert clean("  a\x00b\tc\u200bd\udcff  ") == "abcd"
    assert clean("é" * 200) == "é" * MAX_TAG_CHARS
    assert clean(" \x01 ") == ""
    tagging = CallerTagging(headers=(TagHeader("X-Team", "team"),), user=True, api_key_hash=True)
    headers = CIMultiDict({"x-team": "\x7f", "authorization": "bearer  k  "})
    assert caller_tags(tagging, headers, {"user": " \n "}) == {"api_key_hash": expected_hash("k")}
    assert caller_tags(tagging, headers, None) == {"api_key_hash": expected_hash("k")}
    assert caller_tags(CallerTagging(), headers, {"user": "u"}) == {}
    assert api_key_hash("Bearer ", None) is None and api_key_hash(None, None) is None


def test_the_command_options_reach_the_proxy(monkeypatch, tmp_path):
    import footprint.proxy

    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    seen = []
    monkeypatch.setattr(footprint.proxy, "serve", lambda config, on_ready: seen.append(config))
    main(
        [
            "proxy",
            "--upstream",
            "http://127.0.0.1:9",
            "--tag-header",
            "X-Team=team",
            "--tag-header",
            "X-Env=env",
            "--tag-user",
            "--tag-api-key-hash",
            "--api-key-secret-file",
            str(secret),
        ]
    )
    (config,) = seen
    assert config.callers == CallerTagging(
        headers=(TagHeader("X-Team", "team"), TagHeader("X-Env", "env")),
        user=True,
        api_key_hash=True,
        api_key_secret=b"s3cret",
    )
    assert "s3cret" not in repr(config)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--tag-header", "X-Team"], "HEADER=TAG"),
        (["--tag-header", "Bad Header=x"], "HEADER=TAG"),
        (["--tag-header", "Authorization=auth"], "carries credentials"),
        (["--tag-header", "Cookie=c"], "carries credentials"),
        (["--tag-header", "X-A=endpoint"], "reserved"),
        (["--tag-header", "X-A=model"], "reserved"),
        (["--tag", "team=a", "--tag-header", "X-A=team"], "already a --tag"),
        (["--tag-header", "X-A=a", "--tag-header", "x-a=b"], "repeats"),
        (["--tag", "user=u", "--tag-user"], "set by the proxy"),
        (["--api-key-secret-file", "/nonexistent"], "needs --tag-api-key-hash"),
        (["--tag-api-key-hash", "--api-key-secret-file", "/nonexistent/s"], "No such file"),
    ],
)
def test_bad_caller_options_exit_2_with_one_line(args, message, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["proxy", "--upstream", "http://h:8000", *args])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
