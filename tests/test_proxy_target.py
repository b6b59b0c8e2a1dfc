"""``footprint proxy`` forwards origin-form request targets only (no SSRF), on loopback.

The proxy runs as ``footprint proxy`` in a subprocess, once with aiohttp's C HTTP parser
and once with the pure-Python one (``AIOHTTP_NO_EXTENSIONS=1``), in front of the fake
upstream. Beside them a *canary*, a plain listening socket on loopback that the proxy
must never reach. Raw requests are written on a socket: a ``CONNECT``, an absolute-form
URL, a ``//host`` path and ``OPTIONS *`` must get a 400 and reach neither the canary nor
the upstream.

The port-less upstream ``http://127.0.0.`` is the shape of the reported attack
(``--upstream http://v`` and ``CONNECT m:18601`` made the proxy call ``vm:18601``): here
``CONNECT 1:<canary port>`` once made it call ``http://127.0.0.1:<canary port>``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from footprint.proxy import ProxyConfigError
from tests.fakes.fake_openai import FakeUpstream, LoopThread, running_proxy, running_upstream

PARSERS = ["c", "python"]
PORTLESS = "http://127.0.0."  # + "1:<port>" is the canary: the attack's shape
TARGETS = [
    "CONNECT 127.0.0.1:{canary} HTTP/1.1",
    "CONNECT 1:{canary} HTTP/1.1",
    "GET http://127.0.0.1:{canary}/x HTTP/1.1",
    "GET //127.0.0.1:{canary}/x HTTP/1.1",
    "OPTIONS * HTTP/1.1",
]


CANARY_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\ncanary"


class Canary:
    """A loopback listener that records every connection made to it and what it got."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.connections: list[bytes] = []
        self._thread = threading.Thread(target=self._serve, daemon=True, name="canary")
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            index = len(self.connections)
            self.connections.append(b"")
            with conn:
                conn.settimeout(10)
                data = b""
                with contextlib.suppress(OSError):
                    while b"\r\n\r\n" not in data:
                        piece = conn.recv(65536)
                        if not piece:
                            break
                        data += piece
                self.connections[index] = data
                with contextlib.suppress(OSError):
                    conn.sendall(CANARY_ANSWER)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept() above
        self.sock.close()
        self._thread.join(10)


def raw_exchange(port: int, request_line: str) -> tuple[int, bytes]:
    """(status, body) of one request written as it is, with a bearer token."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(
            request_line.encode() + b"\r\nHost: 127.0.0.1\r\n"
            b"Authorization: Bearer sk-secret\r\nConnection: close\r\n\r\n"
        )
        answer = b""
        while piece := sock.recv(65536):
            answer += piece
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def proxy_env(parser: str, home: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("FOOTPRINT_") and k != "AIOHTTP_NO_EXTENSIONS"
    }
    env.update(
        FOOTPRINT_SENSOR="simulated:gpus=1",
        FOOTPRINT_CPU="false",
        FOOTPRINT_REGION="FRA",
        FOOTPRINT_DAEMON="off",
        XDG_RUNTIME_DIR=str(home),
    )
    if parser == "python":
        env["AIOHTTP_NO_EXTENSIONS"] = "1"
    return env


@contextlib.contextmanager
def proxy_process(upstream: str, parser: str, home: Path) -> Iterator[int]:
    """``footprint proxy`` in a subprocess using ``parser``; the port it listens on."""
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
            str(home / "proxy.db"),
        ],
        stderr=subprocess.PIPE,
        text=True,
        env=proxy_env(parser, home),
        cwd=home,
    )
    assert proc.stderr is not None
    reader = None
    try:
        line = proc.stderr.readline()
        match = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
        assert match, line
        # Keep reading its stderr so that it never blocks on a full pipe.
        reader = threading.Thread(target=proc.stderr.read, daemon=True)
        reader.start()
        yield int(match.group(1))
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if reader is not None:
            reader.join(10)  # at the end of the pipe now: the process is gone
        proc.stderr.close()


# -- fixtures: one upstream, one canary, one proxy per (parser, upstream) ----------------


@pytest.fixture(scope="module")
def loop():
    with LoopThread() as running:
        yield running


@pytest.fixture(scope="module")
def upstream(loop):
    with running_upstream(loop) as fake:
        yield fake


@pytest.fixture(scope="module")
def canary():
    running = Canary()
    yield running
    running.close()


@pytest.fixture(scope="module", params=PARSERS)
def parser(request) -> str:
    return request.param


@pytest.fixture(scope="module", params=["portless", "with-port-and-path"])
def proxy_port(request, parser, upstream, tmp_path_factory) -> Iterator[int]:
    url = PORTLESS if request.param == "portless" else f"{upstream.url}/base"
    with proxy_process(url, parser, tmp_path_factory.mktemp("proxy")) as port:
        yield port


# -- the tests ---------------------------------------------------------------------------


def test_the_proxy_process_uses_the_parser_asked_for(parser, tmp_path):
    import aiohttp.http_parser as parsers

    if parser == "c" and parsers.HttpRequestParser is parsers.HttpRequestParserPy:
        pytest.skip("aiohttp's C extensions are not installed")
    code = "import aiohttp.http_parser as p; print(p.HttpRequestParser is p.HttpRequestParserPy)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=proxy_env(parser, tmp_path),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.strip() == str(parser == "python")


@pytest.mark.parametrize("target", TARGETS)
def test_a_target_that_is_not_a_path_gets_400_and_reaches_nothing(
    target, proxy_port, canary, upstream
):
    reached_canary = len(canary.connections)
    reached_upstream = len(upstream.requests)
    status, body = raw_exchange(proxy_port, target.format(canary=canary.port))
    assert canary.connections[reached_canary:] == []  # not a connection, not a byte
    assert len(upstream.requests) == reached_upstream
    assert status == 400, body
    error = json.loads(body)["error"]
    assert error["type"] == "invalid_request_target"
    assert "path" in error["message"]


def test_an_origin_form_target_reaches_the_upstream_under_its_base_path(
    parser, upstream, canary, tmp_path
):
    with proxy_process(f"{upstream.url}/base/", parser, tmp_path) as port:
        status, body = raw_exchange(port, "GET /v1/models?x=1 HTTP/1.1")
        assert (status, json.loads(body)["raw_path"]) == (200, "/base/v1/models?x=1")
        # '//', '@' and a host:port inside the path or the query change no host.
        tricky = f"/x//127.0.0.1:{canary.port}/@127.0.0.1:{canary.port}?q=//a@b&c=%2F%20"
        reached_canary = len(canary.connections)
        status, body = raw_exchange(port, f"GET {tricky} HTTP/1.1")
        assert canary.connections[reached_canary:] == []
        assert (status, json.loads(body)["raw_path"]) == (200, "/base" + tricky)
        assert dict(upstream.requests[-1]["headers"])["Host"] == upstream.url[len("http://") :]


def test_a_portless_upstream_url_takes_the_default_port_and_keeps_its_host():
    from footprint.proxy.server import upstream_target, upstream_url

    plain = upstream_url("http://127.0.0.1")
    assert (plain.scheme, plain.host, plain.port) == ("http", "127.0.0.1", 80)
    joined = upstream_target(plain, "/v1/chat/completions?x=1")  # (yarl < 1.10 shows ":80")
    assert (joined.scheme, joined.host, joined.port, joined.raw_path_qs) == (
        "http",
        "127.0.0.1",
        80,
        "/v1/chat/completions?x=1",
    )
    based = upstream_url("https://models.example/base/")
    assert (based.host, based.port) == ("models.example", 443)
    for target in ("/v1/x", "//evil.com/x", "/@evil.com/x", "/x?u=http://evil.com/y"):
        joined = upstream_target(based, target)
        assert (joined.scheme, joined.host, joined.port) == ("https", "models.example", 443)
        assert joined.raw_path_qs == "/base" + target
    ipv6 = upstream_target(upstream_url("http://[::1]:8000"), "/a%2Fb?c=%20")
    assert (ipv6.host, ipv6.port, ipv6.raw_path_qs) == ("::1", 8000, "/a%2Fb?c=%20")
    for bad in (
        "ftp://h",
        "http://",
        "http://h/?q=1",
        "http://h/#f",
        "http://u:p@h",
        "http://h:0",
        "http://h:99999",
        "127.0.0.1:8000",
    ):
        with pytest.raises(ProxyConfigError):
            upstream_url(bad)


def test_a_portless_upstream_on_port_80_gets_the_request(loop, canary):
    """End to end, where this machine lets a test listen on 127.0.0.1:80."""
    fake = FakeUpstream()
    try:
        loop.run(fake.start(port=80))
    except OSError as exc:
        loop.run(fake.stop())
        pytest.skip(f"cannot listen on 127.0.0.1:80 here: {exc}")
    try:
        with running_proxy(loop, "http://127.0.0.1") as proxy:
            status, _ = raw_exchange(proxy.port, "GET /v1/models?x=1 HTTP/1.1")
            seen = fake.requests[-1]
            assert (status, seen["raw_path"]) == (200, "/v1/models?x=1")
            assert dict(seen["headers"])["Host"] == "127.0.0.1"
            reached = len(canary.connections)
            status, _ = raw_exchange(proxy.port, f"CONNECT 127.0.0.1:{canary.port} HTTP/1.1")
            assert (status, canary.connections[reached:]) == (400, [])
    finally:
        loop.run(fake.stop())


@pytest.mark.parametrize("interval, warnings", [(1e9, 1), (0.0, 3)])
def test_refusals_are_counted_and_logged_at_most_once_per_interval(
    interval, warnings, loop, upstream, monkeypatch, caplog
):
    from footprint.proxy import server

    monkeypatch.setattr(server, "REFUSAL_LOG_INTERVAL_S", interval)
    with (
        caplog.at_level(logging.WARNING, logger="footprint.proxy"),
        running_proxy(loop, upstream.url) as proxy,
    ):
        for _ in range(3):
            assert raw_exchange(proxy.port, "OPTIONS * HTTP/1.1")[0] == 400
        assert raw_exchange(proxy.port, "GET /v1/models HTTP/1.1")[0] == 200
        stats = proxy.proxy.stats.as_dict()
    assert (stats["requests"], stats["refused_targets"]) == (4, 3)
    logged = [r for r in caplog.records if "not a path" in r.getMessage()]
    assert len(logged) == warnings
