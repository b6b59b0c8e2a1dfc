"""A fake OpenAI-compatible upstream and ``footprint proxy``, on loopback, for the tests.

The fake server itself is the package's (``footprint.bench.fake_upstream.FakeUpstream``,
which ``footprint bench proxy`` runs too): JSON and SSE answers like the OpenAI API, usage
in a stream only when asked (``stream_options.include_usage``: ``"usage":null`` in every
chunk, then a last chunk with empty ``choices``), slow streams (model ``slow``), errors
(model ``fail-500``, ``fail-400``, ``drop-mid-stream``, ``hang``), bodies of any size, and
``refuse_stream_options=True`` for servers that reject the option.

Here: one event loop in a background thread serving both the fake upstream and the proxy
(as ``footprint proxy`` would, in its own process), so the tests can call them with
blocking clients (the official ``openai`` client, ``http.client``, raw sockets).

    with LoopThread() as loop, running_upstream(loop) as upstream, \\
            running_proxy(loop, upstream.url) as proxy:
        OpenAI(base_url=proxy.url + "/v1", api_key="k").chat.completions.create(...)
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

from footprint.bench.fake_upstream import FakeUpstream
from footprint.proxy import Proxy, make_config

T = TypeVar("T")

__all__ = [
    "FakeUpstream",
    "LoopThread",
    "RunningProxy",
    "refused_port",
    "running_proxy",
    "running_upstream",
]


class LoopThread:
    """An asyncio event loop running in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, daemon=True, name="fake-openai-loop"
        )

    def __enter__(self) -> LoopThread:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


@contextlib.contextmanager
def running_upstream(loop: LoopThread, **options: Any) -> Iterator[FakeUpstream]:
    upstream = FakeUpstream(**options)
    loop.run(upstream.start())
    try:
        yield upstream
    finally:
        loop.run(upstream.stop())


class RunningProxy:
    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        assert proxy.address is not None
        self.host, self.port = proxy.address[:2]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


@contextlib.contextmanager
def running_proxy(
    loop: LoopThread,
    upstream: str,
    listen: str = "127.0.0.1:0",
    gpus: str | None = None,
    tags: list[str] | None = None,
    **options: Any,
) -> Iterator[RunningProxy]:
    proxy = Proxy(make_config(upstream, listen, gpus, tags, **options))
    loop.run(proxy.start())
    try:
        yield RunningProxy(proxy)
    finally:
        loop.run(proxy.stop(grace_s=5))


def refused_port() -> int:
    """A loopback port nothing listens on (connecting is refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
