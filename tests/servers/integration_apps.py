"""A FastAPI app (``asgi``) and a Flask app (``wsgi``) behind footprint's middleware, for
tests/test_integrations.py's real-server test: the default tracker, set up by the
environment (FOOTPRINT_DB, FOOTPRINT_SENSOR...). Each has ``/items/{id}``, a streamed
``/stream`` whose response names its output tokens in ``X-Tokens-Out``, and an untracked
``/health``."""

import time

from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from flask import Flask, Response

from footprint.integrations import FootprintASGIMiddleware, FootprintWSGIMiddleware

CHUNK_S = 0.02


def model_of_path(path: str) -> str | None:
    return None if path == "/health" else "served-llm"


def tokens_of(headers) -> tuple[int | None, int | None]:
    out = headers.get("x-tokens-out")
    return None, int(out) if out else None


def chunks():
    for _ in range(3):
        time.sleep(CHUNK_S)
        yield b"chunk\n"


asgi = FastAPI()


@asgi.get("/items/{item_id}")
def asgi_item(item_id: int) -> dict:
    return {"id": item_id}


@asgi.get("/stream")
def asgi_stream() -> StreamingResponse:
    return StreamingResponse(chunks(), headers={"X-Tokens-Out": "3"})


@asgi.get("/health")
def asgi_health() -> dict:
    return {"ok": True}


asgi.add_middleware(
    FootprintASGIMiddleware,
    model=lambda scope: model_of_path(scope["path"]),
    tag_headers={"X-Team": "team"},
    tokens=tokens_of,
)

wsgi = Flask(__name__)


@wsgi.get("/items/<int:item_id>")
def wsgi_item(item_id: int) -> dict:
    return {"id": item_id}


@wsgi.get("/stream")
def wsgi_stream() -> Response:
    return Response(chunks(), headers={"X-Tokens-Out": "3"})


@wsgi.get("/health")
def wsgi_health() -> dict:
    return {"ok": True}


wsgi.wsgi_app = FootprintWSGIMiddleware(
    wsgi.wsgi_app,
    model=lambda environ: model_of_path(environ["PATH_INFO"]),
    tag_headers={"X-Team": "team"},
    tokens=tokens_of,
)
