"""Apps whose requests are tracked calls, for the shutdown tests: ASGI (``app``) and WSGI
(``wsgi``). After each call ends (normally or cancelled), one byte is appended to
``FOOTPRINT_TEST_ENDS``, so the test knows how many calls ended whatever the server did
next."""

import asyncio
import os
import time

import footprint

_ends_fd = os.open(os.environ["FOOTPRINT_TEST_ENDS"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
CALL_S = 0.002


def _ended() -> None:
    os.write(_ends_fd, b".")


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    try:  # a server that cancels requests at shutdown (hypercorn 0.16) ends calls too
        with footprint.query(model="asgi"):
            await asyncio.sleep(CALL_S)
    finally:
        _ended()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", b"2")],
        }
    )
    await send({"type": "http.response.body", "body": b"ok"})


def wsgi(environ, start_response):
    try:
        with footprint.query(model="wsgi"):
            time.sleep(CALL_S)
    finally:
        _ended()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]
