"""The web-framework middleware (footprint.integrations): real FastAPI and Flask apps under
their test clients, raw ASGI/WSGI calls for a client that goes away, and both apps under a
real server process (uvicorn, gunicorn's sync worker) over loopback."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("flask")
pytest.importorskip("httpx")

from fastapi import FastAPI, HTTPException  # noqa: E402
from fastapi.responses import JSONResponse, StreamingResponse  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from flask import Flask, Response, abort  # noqa: E402

from footprint import FootprintWarning, Tracker  # noqa: E402
from footprint.integrations import (  # noqa: E402
    FootprintASGIMiddleware,
    FootprintWSGIMiddleware,
)
from footprint.integrations.recording import MAX_TAG_CHARS  # noqa: E402

QUIET = {"sensor": "none", "cpu": False, "daemon": "off", "region": "FRA"}
CHUNK_S = 0.05
SECRET = "do-not-store-me"


@pytest.fixture
def tracker(tmp_path: Path):
    with Tracker(db=str(tmp_path / "calls.db"), **QUIET) as tracker:
        yield tracker


def rows(tracker: Tracker) -> list[dict]:
    tracker.close()  # writes the last records
    con = sqlite3.connect(tracker.settings().db)
    con.row_factory = sqlite3.Row
    try:
        found = [dict(r) for r in con.execute("SELECT * FROM queries ORDER BY id")]
    finally:
        con.close()
    for row in found:
        row["tags"] = json.loads(row["tags"])
    return found


def by_route(found: list[dict]) -> dict[str, dict]:
    return {row["tags"]["route"]: row for row in found}


def model_of_path(path: str) -> str | None:
    return None if path == "/health" else "llm"


def tokens_of(headers) -> tuple[int | None, int | None]:
    out = headers.get("x-tokens-out")
    return None, int(out) if out else None


def chunks():
    for _ in range(3):
        time.sleep(CHUNK_S)
        yield b"chunk\n"


# -- FastAPI --------------------------------------------------------------------------


def fastapi_app(tracker: Tracker, **options) -> FastAPI:
    app = FastAPI()

    @app.get("/items/{item_id}")
    def item(item_id: int) -> dict:
        if item_id == 0:
            raise HTTPException(404)
        return {"id": item_id}

    @app.get("/stream")
    def stream() -> StreamingResponse:
        return StreamingResponse(chunks(), headers={"X-Tokens-Out": "3"})

    @app.get("/unavailable")
    def unavailable() -> JSONResponse:
        return JSONResponse({"detail": "later"}, status_code=503)

    @app.get("/fail")
    def fail() -> dict:
        raise ValueError("boom")

    @app.get("/health")
    def health() -> dict:
        return {"ok": True}

    settings = {
        "model": lambda scope: model_of_path(scope["path"]),
        "tag_headers": {"X-Team": "team"},
        "tokens": tokens_of,
        **options,
    }
    app.add_middleware(FootprintASGIMiddleware, tracker=tracker, **settings)
    return app


def test_fastapi_one_row_per_request_with_route_and_allowed_headers(tracker):
    with TestClient(fastapi_app(tracker)) as client:  # lifespan runs: not a request
        for item_id in (1, 2):
            headers = {"X-Team": "search", "Authorization": SECRET, "X-Other": SECRET}
            assert client.get(f"/items/{item_id}", headers=headers).status_code == 200
        assert client.get("/health").status_code == 200  # the callable says None
    found = rows(tracker)
    assert len(found) == 2
    for row in found:
        assert row["model"] == "llm" and row["status"] == "ok" and row["error_type"] is None
        assert row["tags"] == {"route": "/items/{item_id}", "http_status": 200, "team": "search"}
        assert row["time_to_first_token_s"] is None  # not a stream
        assert SECRET not in json.dumps(row)


def test_fastapi_stream_ends_with_its_body_first_token_at_first_chunk(tracker):
    with TestClient(fastapi_app(tracker)) as client:
        response = client.get("/stream")
        assert response.text == "chunk\n" * 3
    (row,) = rows(tracker)
    assert row["tags"]["route"] == "/stream" and row["status"] == "ok"
    assert row["output_tokens"] == 3 and row["input_tokens"] is None
    assert row["time_to_first_token_s"] >= CHUNK_S * 0.9
    assert row["duration_s"] >= row["time_to_first_token_s"] + 2 * CHUNK_S * 0.9


def test_fastapi_5xx_and_exception_are_errors_4xx_is_ok(tracker):
    with TestClient(fastapi_app(tracker), raise_server_exceptions=False) as client:
        assert client.get("/unavailable").status_code == 503
        assert client.get("/fail").status_code == 500
        assert client.get("/items/0").status_code == 404
        assert client.get("/no/such/path").status_code == 404
    found = by_route(rows(tracker))
    assert len(found) == 4
    assert found["/unavailable"]["status"] == "error"
    assert found["/unavailable"]["error_type"] == "HTTP503"
    assert found["/unavailable"]["tags"]["http_status"] == 503
    assert found["/fail"]["status"] == "error" and found["/fail"]["error_type"] == "ValueError"
    assert "http_status" not in found["/fail"]["tags"]  # the 500 is sent outside it
    for route in ("/items/{item_id}", "/no/such/path"):  # no route matched: the path
        assert found[route]["status"] == "ok" and found[route]["tags"]["http_status"] == 404


def test_asgi_middleware_around_the_whole_app_sees_the_500_then_the_exception(tracker):
    app = fastapi_app(tracker)
    app.user_middleware.clear()  # ours wraps the app itself instead
    wrapped = FootprintASGIMiddleware(app, model="llm", tracker=tracker)
    with TestClient(wrapped, raise_server_exceptions=False) as client:
        assert client.get("/fail").status_code == 500
    (row,) = rows(tracker)
    assert (row["status"], row["error_type"]) == ("error", "ValueError")
    assert row["tags"] == {"route": "/fail", "http_status": 500}


def test_fastapi_header_tag_values_are_capped_model_from_a_header(tracker):
    def model_of(scope) -> str | None:
        return dict(scope["headers"]).get(b"x-model", b"").decode() or None

    with TestClient(fastapi_app(tracker, model=model_of)) as client:
        client.get("/items/1", headers={"X-Model": "llama-3-8b", "X-Team": "t" * 1000})
        client.get("/items/2")  # no X-Model: untracked
    (row,) = rows(tracker)
    assert row["model"] == "llama-3-8b"
    assert row["tags"]["team"] == "t" * MAX_TAG_CHARS


def test_a_failing_tokens_callable_warns_once_and_the_request_is_recorded(tracker):
    def broken(headers):
        raise KeyError("x-tokens-out")

    with TestClient(fastapi_app(tracker, tokens=broken)) as client:
        with pytest.warns(FootprintWarning, match="tokens= callable failed"):
            client.get("/items/1")
        client.get("/items/2")
    found = rows(tracker)
    assert [row["status"] for row in found] == ["ok", "ok"]


def test_options_are_checked_when_the_middleware_is_made():
    app = FastAPI()
    with pytest.raises(ValueError, match="route"):
        FootprintASGIMiddleware(app, model="m", tag_headers={"X-Route": "route"})
    with pytest.raises(TypeError, match="model="):
        FootprintWSGIMiddleware(Flask(__name__).wsgi_app, model="")
    with pytest.raises(TypeError, match="tracker="):
        FootprintASGIMiddleware(app, model="m", tracker="calls.db")


def test_asgi_client_gone_mid_stream_is_cancelled_lifespan_untracked(tracker):
    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"first", "more_body": True})
        assert (await receive())["type"] == "http.disconnect"  # the app stops

    async def receive():
        return {"type": "http.disconnect"}

    async def send(message):
        pass

    middleware = FootprintASGIMiddleware(app, model="llm", tracker=tracker)
    scope = {"type": "http", "path": "/generate", "headers": [(b"x-team", b"a")]}
    asyncio.run(middleware({"type": "lifespan"}, receive, send))
    asyncio.run(middleware(scope, receive, send))
    (row,) = rows(tracker)
    assert row["status"] == "cancelled" and row["tags"]["route"] == "/generate"
    assert row["time_to_first_token_s"] is not None


# -- Flask ----------------------------------------------------------------------------


def flask_app(tracker: Tracker, **options) -> Flask:
    app = Flask(__name__)

    @app.get("/items/<int:item_id>")
    def item(item_id: int) -> dict:
        if item_id == 0:
            abort(404)
        return {"id": item_id}

    @app.get("/stream")
    def stream() -> Response:
        return Response(chunks(), headers={"X-Tokens-Out": "3"})

    @app.get("/unavailable")
    def unavailable() -> tuple:
        return {"detail": "later"}, 503

    @app.get("/fail")
    def fail() -> dict:
        raise ValueError("boom")

    @app.get("/health")
    def health() -> dict:
        return {"ok": True}

    settings = {
        "model": lambda environ: model_of_path(environ["PATH_INFO"]),
        "tag_headers": {"X-Team": "team"},
        "tokens": tokens_of,
        **options,
    }
    app.wsgi_app = FootprintWSGIMiddleware(app.wsgi_app, tracker=tracker, **settings)
    return app


def test_flask_one_row_per_request_with_rule_and_allowed_headers(tracker):
    client = flask_app(tracker).test_client()
    for item_id in (1, 2):
        headers = {"X-Team": "search", "Authorization": SECRET, "X-Other": SECRET}
        assert client.get(f"/items/{item_id}", headers=headers, buffered=True).status_code == 200
    assert client.get("/health", buffered=True).status_code == 200
    found = rows(tracker)
    assert len(found) == 2
    for row in found:
        assert row["model"] == "llm" and row["status"] == "ok"
        assert row["tags"] == {
            "route": "/items/<int:item_id>",
            "http_status": 200,
            "team": "search",
        }
        assert row["time_to_first_token_s"] is None
        assert SECRET not in json.dumps(row)


def test_flask_stream_ends_when_its_iterable_is_closed(tracker):
    client = flask_app(tracker).test_client()
    assert client.get("/stream").data == b"chunk\n" * 3
    (row,) = rows(tracker)
    assert row["tags"]["route"] == "/stream" and row["status"] == "ok"
    assert row["output_tokens"] == 3
    assert row["time_to_first_token_s"] >= CHUNK_S * 0.9
    assert row["duration_s"] >= row["time_to_first_token_s"] + 2 * CHUNK_S * 0.9


def test_flask_5xx_and_exception_are_errors_4xx_is_ok(tracker):
    app = flask_app(tracker)
    client = app.test_client()
    # buffered: the test client reads and closes each body, as a server does
    assert client.get("/unavailable", buffered=True).status_code == 503
    assert client.get("/fail", buffered=True).status_code == 500  # Flask answers 500 itself
    assert client.get("/items/0", buffered=True).status_code == 404
    app.config["PROPAGATE_EXCEPTIONS"] = True  # the exception reaches the middleware
    with pytest.raises(ValueError):
        client.get("/fail", buffered=True)
    found = rows(tracker)
    assert [(r["status"], r["error_type"], r["tags"]["http_status"]) for r in found[:3]] == [
        ("error", "HTTP503", 503),
        ("error", "HTTP500", 500),
        ("ok", None, 404),
    ]
    assert found[3]["status"] == "error" and found[3]["error_type"] == "ValueError"
    assert found[3]["tags"]["route"] == "/fail"


def test_wsgi_body_closed_before_its_end_is_cancelled(tracker):
    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return chunks()

    middleware = FootprintWSGIMiddleware(app, model="llm", tracker=tracker)
    body = middleware({"PATH_INFO": "/generate", "REQUEST_METHOD": "GET"}, lambda *a: None)
    iterator = iter(body)
    assert next(iterator) == b"chunk\n"
    body.close()  # the server stopped: the client went away
    (row,) = rows(tracker)
    assert row["status"] == "cancelled" and row["tags"]["route"] == "/generate"
    assert row["time_to_first_token_s"] is not None


# -- real servers ---------------------------------------------------------------------

SERVERS = {
    "uvicorn": ["-m", "uvicorn", "integration_apps:asgi", "--log-level", "warning", "--port"],
    "gunicorn": [
        "-m",
        "gunicorn",
        "-k",
        "sync",
        "--log-level",
        "warning",
        "integration_apps:wsgi",
        "-b",
    ],
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(port: int, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _serve_and_request(tmp_path: Path, server: str) -> list[tuple[int, bytes]]:
    port = _free_port()
    address = str(port) if server == "uvicorn" else f"127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOOTPRINT_")}
    servers = str(Path(__file__).parent / "servers")
    env.update(
        FOOTPRINT_DB=str(tmp_path / "calls.db"),
        FOOTPRINT_SENSOR="none",
        FOOTPRINT_CPU="0",
        FOOTPRINT_DAEMON="off",
        FOOTPRINT_REGION="FRA",
        PYTHONPATH=os.pathsep.join([servers, *filter(None, [env.get("PYTHONPATH")])]),
    )
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115 (closed below)
    argv = [sys.executable, *SERVERS[server], address]
    proc = subprocess.Popen(
        argv, env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        replies = []
        deadline = time.monotonic() + 60
        while True:
            try:
                replies.append(_get(port, "/health", {}))
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "no server"
                time.sleep(0.1)
        for path in ("/items/1", "/items/2", "/stream"):
            replies.append(_get(port, path, {"X-Team": "search", "Authorization": SECRET}))
        # Stopped as a person does: Ctrl-C for uvicorn (its SIGTERM ends the process
        # without Python's exit: footprint counts the last calls lost), TERM for gunicorn.
        proc.send_signal(signal.SIGINT if server == "uvicorn" else signal.SIGTERM)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
    return replies


@pytest.mark.parametrize("server", sorted(SERVERS))
def test_a_real_server_records_each_request_over_loopback(tmp_path: Path, server: str) -> None:
    pytest.importorskip(server)
    replies = _serve_and_request(tmp_path, server)
    log = (tmp_path / "server.log").read_text(errors="replace")
    assert [status for status, _ in replies] == [200] * 4, log
    assert replies[3][1] == b"chunk\n" * 3
    con = sqlite3.connect(tmp_path / "calls.db")
    try:
        found = con.execute(
            "SELECT model, tags, status, time_to_first_token_s, output_tokens FROM queries"
            " ORDER BY id"
        ).fetchall()
    finally:
        con.close()
    rule = "/items/{item_id}" if server == "uvicorn" else "/items/<int:item_id>"
    assert [(m, json.loads(t)["route"], s) for m, t, s, _, _ in found] == [
        ("served-llm", rule, "ok"),
        ("served-llm", rule, "ok"),
        ("served-llm", "/stream", "ok"),
    ], log
    assert json.loads(found[0][1]) == {"route": rule, "http_status": 200, "team": "search"}
    assert found[2][3] is not None and found[2][4] == 3
    assert SECRET not in repr(found)
