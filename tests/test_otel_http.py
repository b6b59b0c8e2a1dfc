"""Trace context over HTTP: the ASGI/WSGI middleware take the OpenTelemetry server span
current around them (OTel's instrumentation), else the request's W3C ``traceparent``;
the proxy takes its client's ``traceparent``. An invalid header is ignored and counted,
never an error for the request.

Before (f2a661a): no request's record carried any trace context.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

pytest.importorskip("opentelemetry.sdk")
pytest.importorskip("fastapi")
pytest.importorskip("flask")
pytest.importorskip("httpx")

from fastapi import FastAPI  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from flask import Flask  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from test_proxy import post_json, records  # noqa: E402

from footprint import Tracker  # noqa: E402
from footprint.integrations import FootprintASGIMiddleware, FootprintWSGIMiddleware  # noqa: E402
from tests.fakes.fake_openai import LoopThread, running_proxy, running_upstream  # noqa: E402

QUIET = {"sensor": "none", "cpu": False, "daemon": "off", "region": "FRA"}
TRACER = TracerProvider().get_tracer("footprint-tests")
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
FROM_HEADER = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7")
BAD_HEADERS = (
    "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
    "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
    "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "garbage",
)


def trace_rows(db: str) -> list[tuple]:
    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT trace_id, span_id, status FROM queries ORDER BY id").fetchall()
    finally:
        con.close()


class ServerSpan:
    """What OTel's ASGI instrumentation does around an app: a server span current while
    the request is handled (here with the SDK's tracer, and its ids remembered)."""

    def __init__(self, app) -> None:
        self.app = app
        self.ids: list[tuple[str, str]] = []

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        with TRACER.start_as_current_span("GET /x") as span:
            context = span.get_span_context()
            self.ids.append((f"{context.trace_id:032x}", f"{context.span_id:016x}"))
            await self.app(scope, receive, send)


def test_asgi_records_carry_the_server_span_else_the_traceparent(tmp_path: Path):
    tracker = Tracker(db=str(tmp_path / "a.db"), **QUIET)
    api = FastAPI()

    @api.get("/x")
    def handler() -> dict:
        return {"ok": True}

    measured = FootprintASGIMiddleware(api, model="llm", tracker=tracker)
    instrumented = ServerSpan(measured)
    with TestClient(instrumented) as client:  # OTel outside: its span wins over the header
        assert client.get("/x", headers={"traceparent": TRACEPARENT}).status_code == 200
    with TestClient(measured) as client:  # no OTel: the header
        assert client.get("/x", headers={"traceparent": TRACEPARENT}).status_code == 200
        assert client.get("/x").status_code == 200
        for bad in BAD_HEADERS:
            assert client.get("/x", headers={"traceparent": bad}).status_code == 200
    tracker.close()
    found = trace_rows(tracker.settings().db)
    assert [(t, s) for t, s, _ in found] == [
        instrumented.ids[0],
        FROM_HEADER,
        *[(None, None)] * (1 + len(BAD_HEADERS)),
    ]
    assert {status for *_, status in found} == {"ok"}
    assert measured.bad_traceparents == len(BAD_HEADERS)


def test_wsgi_records_carry_the_traceparent(tmp_path: Path):
    tracker = Tracker(db=str(tmp_path / "w.db"), **QUIET)
    app = Flask(__name__)

    @app.get("/x")
    def handler() -> str:
        return "ok"

    middleware = FootprintWSGIMiddleware(app.wsgi_app, model="llm", tracker=tracker)
    app.wsgi_app = middleware  # type: ignore[method-assign]
    client = app.test_client()  # buffered: each body read and closed, as a server does
    assert client.get("/x", headers={"traceparent": TRACEPARENT}, buffered=True).status_code == 200
    assert (
        client.get("/x", headers={"traceparent": BAD_HEADERS[0]}, buffered=True).status_code == 200
    )
    with TRACER.start_as_current_span("server") as span:  # an instrumented WSGI server
        response = client.get("/x", headers={"traceparent": TRACEPARENT}, buffered=True)
        assert response.status_code == 200
        context = span.get_span_context()
    tracker.close()
    found = [(t, s) for t, s, _ in trace_rows(tracker.settings().db)]
    assert found == [
        FROM_HEADER,
        (None, None),
        (f"{context.trace_id:032x}", f"{context.span_id:016x}"),
    ]
    assert middleware.bad_traceparents == 1


def test_the_proxy_takes_the_clients_traceparent_and_counts_bad_ones(tracked_db):
    body = {"model": "llama-3-8b", "messages": [{"role": "user", "content": "hi"}]}
    with (
        LoopThread() as loop,
        running_upstream(loop) as upstream,
        running_proxy(loop, upstream.url) as proxy,
    ):
        path = "/v1/chat/completions"
        assert post_json(proxy.url, path, body, {"traceparent": TRACEPARENT})[0] == 200
        for bad in BAD_HEADERS:
            assert post_json(proxy.url, path, body, {"traceparent": bad})[0] == 200
        assert post_json(proxy.url, path, body)[0] == 200
        found = records(tracked_db, 2 + len(BAD_HEADERS))
        bad_count = proxy.proxy.stats.bad_traceparents
    assert [(r["trace_id"], r["span_id"]) for r in found] == [FROM_HEADER] + [(None, None)] * (
        1 + len(BAD_HEADERS)
    )
    assert {r["status"] for r in found} == {"ok"}
    assert bad_count == len(BAD_HEADERS)
