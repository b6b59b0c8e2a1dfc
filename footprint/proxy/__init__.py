"""``footprint proxy``: measure an OpenAI-compatible model server with no code change.

Put it in front of vLLM, TGI, SGLang, llama.cpp's server or Ollama; point the clients at
it. Every request is forwarded unchanged and every inference request recorded through
``footprint.query`` (so spans go wherever footprint sends them: measured in this process,
or to the daemon named by ``FOOTPRINT_DAEMON``). See docs/proxy.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable
from typing import Any

from footprint.proxy.config import (
    DEFAULT_LISTEN,
    ProxyConfig,
    ProxyConfigError,
    parse_caller_tagging,
    parse_gpus,
    parse_listen,
    parse_tags,
    parse_upstream,
)
from footprint.proxy.server import ENDPOINTS, Proxy

SWITCH_INTERVAL_S = 0.0005

__all__ = [
    "DEFAULT_LISTEN",
    "ENDPOINTS",
    "Proxy",
    "ProxyConfig",
    "ProxyConfigError",
    "make_config",
    "serve",
]


def make_config(
    upstream: str,
    listen: str = DEFAULT_LISTEN,
    gpus: str | None = None,
    tags: list[str] | None = None,
    *,
    tag_headers: list[str] | None = None,
    tag_user: bool = False,
    tag_api_key_hash: bool = False,
    api_key_secret_file: str | None = None,
    **options: float,
) -> ProxyConfig:
    """The settings from command-line text; ``ProxyConfigError`` names what is wrong."""
    host, port = parse_listen(listen)
    static_tags = parse_tags(tags)
    callers = parse_caller_tagging(
        tag_headers, tag_user, tag_api_key_hash, api_key_secret_file, static_tags
    )
    config = ProxyConfig(
        upstream=parse_upstream(upstream),
        host=host,
        port=port,
        gpus=parse_gpus(gpus),
        tags=static_tags,
        callers=callers,
        **options,  # type: ignore[arg-type]
    )
    import footprint

    try:  # the names footprint.query would refuse, refused now
        names: dict[str, Any] = dict.fromkeys(callers.tag_names, "")
        footprint.query(model="check", gpus=config.gpus, **config.tags, **names)
    except TypeError as exc:
        raise ProxyConfigError(str(exc)) from None
    return config


def serve(config: ProxyConfig, on_ready: Callable[[str], None] | None = None) -> int:
    """Run until SIGTERM or SIGINT; the signal that stopped it.

    The first signal stops accepting connections and lets the requests in flight finish
    (up to ``config.grace_s``); a second one cuts them short (recorded as cancelled).
    Records are flushed before returning. ``ProxyConfigError`` if it cannot listen.
    """
    # The tracker's threads (sampler, resolver, writer) share the GIL with the event loop:
    # with Python's default 5 ms switch interval, a loop waking for I/O while the writer
    # works would wait up to 5 ms each time. The proxy owns its process: switch faster.
    previous = sys.getswitchinterval()
    sys.setswitchinterval(min(previous, SWITCH_INTERVAL_S))
    try:
        return asyncio.run(_serve(config, on_ready))
    finally:
        sys.setswitchinterval(previous)


async def _serve(config: ProxyConfig, on_ready: Callable[[str], None] | None) -> int:
    import footprint

    proxy = Proxy(config)
    host, port = await proxy.start()
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    received: list[int] = []

    def on_signal(signum: int) -> None:
        received.append(signum)
        if len(received) == 1:
            stopping.set()
        else:  # a second signal: stop waiting for the requests in flight
            for task in list(proxy._handlers):
                task.cancel()

    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signum, on_signal, signum)  # main thread only
    shown = f"[{host}]" if ":" in host else host
    line = (
        f"footprint proxy: listening on http://{shown}:{port}, forwarding to "
        f"{config.upstream}; measuring {', '.join(ENDPOINTS)} on GPUs "
        f"{','.join(map(str, config.gpus)) if config.gpus else 'all'}"
    )
    if on_ready is not None:
        on_ready(line)
    try:
        await stopping.wait()
    finally:
        await proxy.stop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(signum)
        await loop.run_in_executor(None, footprint.flush)
        s = proxy.stats
        sys.stderr.write(
            f"footprint proxy: stopped after {s.requests} requests ({s.measured} measured, "
            f"{s.upstream_errors} upstream errors, {s.cancelled} cancelled, {s.no_usage} "
            f"without usage, {s.estimated} estimated, {s.unparsed_bodies} unparsed bodies, "
            f"{s.bad_traceparents} invalid traceparent headers)\n"
        )
    return received[0] if received else 0
