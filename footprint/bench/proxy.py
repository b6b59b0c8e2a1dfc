"""``footprint bench proxy``: what ``footprint proxy`` adds to a small chat completion.

Three processes, as in production: the fake OpenAI-compatible upstream
(:mod:`footprint.bench.fake_upstream`), ``footprint proxy`` in front of it (recording
every request in a temporary SQLite file, on one simulated GPU), and this one, the
clients (aiohttp, kept-alive connections). In the same run, side by side:

- latency: sequential requests, alternately in blocks straight to the upstream and
  through the proxy; median and p99 of each, and the median added. The upstream answers
  at once, so the difference is the proxy's own cost.
- throughput: ``concurrency`` clients each sending one request after the other for
  ``seconds``, alternately in halves straight and through the proxy; requests/s of each,
  twice: with the upstream taking ``upstream_latency_ms`` per request (20 ms by default,
  less than a small completion takes a model on a GPU: ``rps_direct``, ``rps_proxy``,
  ``rps_ratio``), and with an upstream that costs nothing (``*_zero_latency``: the
  proxy's own ceiling on this machine; there, the proxy does about twice the HTTP work of
  the fake upstream it fronts, on the same cores, so that ratio says how fast the proxy
  is, not how much it slows a model server).

Then the proxy is stopped (SIGTERM) and the records it wrote are counted: one per request
sent through it.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BODY = json.dumps(
    {
        "model": "bench-model",
        "messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": 5,
    }
).encode()
HEADERS = {"Content-Type": "application/json", "Authorization": "Bearer bench"}
START_TIMEOUT_S = 30.0
WARM_UP = 100  # requests per side before anything is timed


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _wait_line(proc: subprocess.Popen, stream: Any, pattern: str) -> re.Match:
    """The first line of ``stream`` matching ``pattern`` (the process must not end)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    seen = []
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            break
        seen.append(line)
        match = re.search(pattern, line)
        if match:
            return match
    proc.kill()
    proc.communicate()  # reaps it and closes its pipes
    raise RuntimeError(f"process did not start: {''.join(seen)[-2000:]}")


def _start_upstream() -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "footprint.bench.fake_upstream", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    match = _wait_line(proc, proc.stdout, r"listening on (\d+)")
    return proc, f"http://127.0.0.1:{match.group(1)}"


def _start_proxy(upstream: str, db: Path) -> tuple[subprocess.Popen, str]:
    env = {
        **os.environ,
        "FOOTPRINT_SENSOR": "simulated:gpus=1,workload=manual",
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
            upstream,
            "--listen",
            "127.0.0.1:0",
            "--db",
            str(db),
            "--grace",
            "5",
        ],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    match = _wait_line(proc, proc.stderr, r"listening on (http://[^,\s]+)")
    return proc, match.group(1)


async def _one(session: Any, url: str, headers: dict[str, str]) -> None:
    async with session.post(url, data=BODY, headers=headers) as response:
        await response.read()
        if response.status != 200:
            raise RuntimeError(f"{url} answered {response.status}")


async def _latencies(
    session: Any, direct: str, proxied: str, requests: int, block: int = 50
) -> tuple[list[float], list[float]]:
    out: dict[str, list[float]] = {direct: [], proxied: []}
    timer = time.perf_counter_ns
    for _ in range(0, requests, block):
        for url in (direct, proxied):
            for _ in range(block):
                start = timer()
                await _one(session, url, HEADERS)
                out[url].append((timer() - start) / 1e6)
    return out[direct], out[proxied]


async def _throughput(
    session: Any, url: str, concurrency: int, seconds: float, headers: dict[str, str]
) -> int:
    done = 0
    stop_at = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal done
        while time.perf_counter() < stop_at:
            await _one(session, url, headers)
            done += 1

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return done


async def _side_by_side(
    session: Any, direct: str, proxied: str, concurrency: int, seconds: float, latency_ms: float
) -> tuple[int, int]:
    """Requests done straight and through the proxy, in alternating halves of ``seconds``."""
    headers = {**HEADERS, "X-Fake-Latency-Ms": str(latency_ms)}
    counts = {direct: 0, proxied: 0}
    rounds = 2
    for _ in range(rounds):
        for url in (direct, proxied):
            counts[url] += await _throughput(session, url, concurrency, seconds / rounds, headers)
    return counts[direct], counts[proxied]


async def _measure(
    direct: str, proxied: str, requests: int, seconds: float, concurrency: int, latency_ms: float
) -> dict[str, Any]:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        for url in (direct, proxied):  # warm up: connections, first-call costs
            for _ in range(WARM_UP):
                await _one(session, url, HEADERS)
        direct_ms, proxy_ms = await _latencies(session, direct, proxied, requests)
        rps = await _side_by_side(session, direct, proxied, concurrency, seconds, latency_ms)
        rps_zero = await _side_by_side(session, direct, proxied, concurrency, seconds, 0.0)
    sent = WARM_UP + len(proxy_ms) + rps[1] + rps_zero[1]
    return {
        "direct_ms": direct_ms,
        "proxy_ms": proxy_ms,
        "rps": rps,
        "rps_zero": rps_zero,
        "sent_through_proxy": sent,
    }


def run(
    requests: int = 1000,
    seconds: float = 5.0,
    concurrency: int = 32,
    upstream_latency_ms: float = 20.0,
) -> dict[str, Any]:
    """Measure; the figures as one JSON-able dict."""
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench-proxy.db"
        upstream_proc, upstream = _start_upstream()
        proxy_proc = None
        try:
            proxy_proc, proxy = _start_proxy(upstream, db)
            path = "/v1/chat/completions"
            figures = asyncio.run(
                _measure(
                    upstream + path,
                    proxy + path,
                    requests,
                    seconds,
                    concurrency,
                    upstream_latency_ms,
                )
            )
            proxy_proc.send_signal(signal.SIGTERM)
            proxy_proc.communicate(timeout=60)
            proxy_proc = None
        finally:
            for proc in (proxy_proc, upstream_proc):
                if proc is not None:
                    if proc.poll() is None:
                        proc.kill()
                    proc.communicate()  # reaps it and closes its pipes
        con = sqlite3.connect(db)
        try:
            records, measured = con.execute(
                "SELECT count(*), count(input_tokens) FROM queries WHERE model = 'bench-model'"
            ).fetchone()
        finally:
            con.close()
    direct_ms, proxy_ms = figures["direct_ms"], figures["proxy_ms"]
    direct_median = statistics.median(direct_ms)
    rps_direct, rps_proxy = (count / seconds for count in figures["rps"])
    zero_direct, zero_proxy = (count / seconds for count in figures["rps_zero"])
    proxy_median = statistics.median(proxy_ms)
    return {
        "requests_per_side": len(direct_ms),
        "direct_ms_median": round(direct_median, 4),
        "direct_ms_p99": round(_percentile(direct_ms, 0.99), 4),
        "proxy_ms_median": round(proxy_median, 4),
        "proxy_ms_p99": round(_percentile(proxy_ms, 0.99), 4),
        "added_ms_median": round(proxy_median - direct_median, 4),
        "added_ms_p99": round(_percentile(proxy_ms, 0.99) - _percentile(direct_ms, 0.99), 4),
        "concurrency": concurrency,
        "seconds_per_side": seconds,
        "upstream_latency_ms": upstream_latency_ms,
        "rps_direct": round(rps_direct, 1),
        "rps_proxy": round(rps_proxy, 1),
        "rps_ratio": round(rps_proxy / rps_direct, 3),
        "rps_direct_zero_latency": round(zero_direct, 1),
        "rps_proxy_zero_latency": round(zero_proxy, 1),
        "rps_ratio_zero_latency": round(zero_proxy / zero_direct, 3),
        "records": records,
        "records_with_tokens": measured,
        "requests_through_proxy": figures["sent_through_proxy"],
        "cpu_count": os.cpu_count(),
        "target_added_ms_median": 1.0,
        "target_rps_ratio": 0.8,
    }
