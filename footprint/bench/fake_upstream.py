"""A fake OpenAI-compatible model server, for ``footprint bench proxy`` and the tests.

It answers like the OpenAI API (and vLLM, which copies it): ``/v1/chat/completions``,
``/v1/completions``, ``/v1/embeddings``, ``/v1/responses`` (JSON, or server-sent events
with ``"stream": true``) and ``GET /v1/models``; usage in every JSON answer, and in a
stream only when asked (``stream_options.include_usage``: every chunk then carries
``"usage":null`` and a last chunk with empty ``choices`` carries the usage, before
``data: [DONE]``). Any other path echoes the request (method, path, query, headers, body
size and SHA-256) as JSON. Answers are deterministic (ids from the request body, a fixed
``created``), so two requests with the same body get the same bytes.

Output: ``max_tokens`` (or ``max_completion_tokens``, ``max_output_tokens``; default 5)
tokens ``"tok0 "``, ``"tok1 "``… Input tokens: the words of the prompt. Behaviours by
model name: ``fail-500`` (a 500 JSON error), ``fail-400``, ``slow`` (``slow_chunk_s``
between stream chunks, 0.05 s by default), ``drop-mid-stream`` (the connection closes
after two chunks), ``hang`` (no answer for an hour). ``refuse_stream_options=True`` makes
it answer 400 to any request with ``stream_options``, as some servers do. ``latency_s``
delays every inference answer (a model's compute time); a request's ``X-Fake-Latency-Ms``
header sets it for that request, and ``X-Fake-Gzip: 1`` gzips a JSON answer.

Run alone: ``python -m footprint.bench.fake_upstream [--port 0] [--latency-ms N]`` prints
``listening on PORT`` and serves until killed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import gzip
import hashlib
import json
import struct
import sys
from collections import deque
from typing import Any

from aiohttp import web

CREATED = 1_700_000_000
_DUMPS = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def _dumps(obj: Any) -> bytes:
    return _DUMPS(obj).encode()


def _words(value: Any) -> int:
    """Rough input tokens: the words of every string in a prompt (messages, parts, lists)."""
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        return sum(_words(v) for v in value)
    if isinstance(value, dict):
        return sum(_words(v) for k, v in value.items() if k in ("content", "text", "input"))
    if isinstance(value, int):
        return 1
    return 0


class FakeUpstream:
    """The fake server; ``await start()`` gives its port, ``await stop()`` ends it."""

    def __init__(
        self,
        *,
        refuse_stream_options: bool = False,
        latency_s: float = 0.0,
        slow_chunk_s: float = 0.05,
        keep_requests: int = 1000,
    ) -> None:
        self.refuse_stream_options = refuse_stream_options
        self.latency_s = latency_s
        self.slow_chunk_s = slow_chunk_s
        self.requests: deque[dict] = deque(maxlen=keep_requests)  # what it received
        self.disconnects = 0  # streams whose client went away before the end
        self._runner: web.ServerRunner | None = None
        self.port = 0

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        server = web.Server(self._handle, access_log=None, handler_cancellation=True)
        self._runner = web.ServerRunner(server)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- requests ----------------------------------------------------------------------

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        digest = hashlib.sha256()
        pieces = []
        size = 0
        async for piece in request.content.iter_any():
            digest.update(piece)
            pieces.append(piece)
            size += len(piece)
        body = b"".join(pieces)
        seen = {
            "method": request.method,
            "path": request.path,
            "raw_path": request.raw_path,
            "headers": list(request.headers.items()),
            "body_size": size,
            "body_sha256": digest.hexdigest(),
            "json": None,
        }
        self.requests.append(seen)
        route = {
            "/v1/chat/completions": self._chat,
            "/v1/completions": self._completions,
            "/v1/embeddings": self._embeddings,
            "/v1/responses": self._responses,
        }.get(request.path)
        if request.method == "GET" and request.path == "/v1/models":
            return self._json(200, {"object": "list", "data": [
                {"id": "fake-model", "object": "model", "created": CREATED, "owned_by": "fake"}
            ]})  # fmt: skip
        if route is None or request.method != "POST":
            return self._json(200, {**seen, "headers": dict(request.headers)})
        try:
            obj = json.loads(body)
        except ValueError:
            return self._error(400, "We could not parse the JSON body of your request.")
        if not isinstance(obj, dict):
            return self._error(400, "The request body must be a JSON object.")
        seen["json"] = {k: v for k, v in obj.items() if k not in ("messages", "input", "prompt")}
        model = obj.get("model")
        if not isinstance(model, str):
            return self._error(400, "you must provide a model parameter")
        if self.refuse_stream_options and "stream_options" in obj:
            return self._error(400, "Unrecognized request argument supplied: stream_options")
        if model == "fail-500":
            return self._error(500, "The server had an error processing your request.",
                               "server_error")  # fmt: skip
        if model == "fail-400":
            return self._error(400, "This model's maximum context length is 8 tokens.")
        if model == "hang":
            await asyncio.sleep(3600)
        latency = self.latency_s
        asked = request.headers.get("X-Fake-Latency-Ms")
        if asked:
            with contextlib.suppress(ValueError):
                latency = max(0.0, min(float(asked), 60_000.0)) / 1000.0
        if latency:
            await asyncio.sleep(latency)
        # From the request less stream_options: the same id with or without the option.
        key = _dumps({k: v for k, v in obj.items() if k != "stream_options"})
        ident = hashlib.sha1(key).hexdigest()[:16]
        response = await route(request, obj, model, ident)
        if request.headers.get("X-Fake-Gzip") and isinstance(response, web.Response):
            response.body = gzip.compress(response.body, mtime=0)  # type: ignore[arg-type]
            response.headers["Content-Encoding"] = "gzip"
        return response

    @staticmethod
    def _json(status: int, obj: Any) -> web.Response:
        return web.Response(status=status, body=_dumps(obj), content_type="application/json")

    def _error(self, status: int, message: str, kind: str = "invalid_request_error"):
        error = {"message": message, "type": kind, "param": None, "code": None}
        return self._json(status, {"error": error})

    @staticmethod
    def _output_tokens(obj: dict) -> int:
        for key in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
            value = obj.get(key)
            if isinstance(value, int) and value >= 0:
                return value
        return 5

    async def _stream(self, request: web.BaseRequest, model: str,
                      events: list[bytes]) -> web.StreamResponse:  # fmt: skip
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "Cache-Control": "no-cache"})  # fmt: skip
        await response.prepare(request)
        delay = self.slow_chunk_s if model == "slow" else 0.0
        try:
            for i, event in enumerate(events):
                if model == "drop-mid-stream" and i == 2:
                    if request.transport is not None:
                        request.transport.close()
                    return response
                await response.write(event)
                if delay:
                    await asyncio.sleep(delay)
        except (ConnectionError, asyncio.CancelledError):
            self.disconnects += 1
            raise
        await response.write_eof()
        return response

    @staticmethod
    def _sse(obj: Any, event: str | None = None) -> bytes:
        head = f"event: {event}\n".encode() if event else b""
        return head + b"data: " + _dumps(obj) + b"\n\n"

    # -- chat and completions ----------------------------------------------------------

    async def _chat(self, request, obj, model, ident):
        return await self._generate(request, obj, model, f"chatcmpl-{ident}", chat=True)

    async def _completions(self, request, obj, model, ident):
        return await self._generate(request, obj, model, f"cmpl-{ident}", chat=False)

    async def _generate(self, request, obj, model, ident, *, chat: bool):
        n_out = self._output_tokens(obj)
        n_in = _words(obj.get("messages") if chat else obj.get("prompt"))
        tokens = [f"tok{i} " for i in range(n_out)]
        usage = {"prompt_tokens": n_in, "completion_tokens": n_out,
                 "total_tokens": n_in + n_out}  # fmt: skip
        base: dict[str, Any] = {
            "id": ident,
            "object": "chat.completion" if chat else "text_completion",
            "created": CREATED,
            "model": model,
            "system_fingerprint": "fp_fake",
        }
        if not obj.get("stream"):
            if chat:
                message = {"role": "assistant", "content": "".join(tokens), "refusal": None}
                choice = {"index": 0, "message": message, "logprobs": None,
                          "finish_reason": "length"}  # fmt: skip
            else:
                choice = {"index": 0, "text": "".join(tokens), "logprobs": None,
                          "finish_reason": "length"}  # fmt: skip
            return self._json(200, {**base, "choices": [choice], "usage": usage})
        options = obj.get("stream_options")
        with_usage = isinstance(options, dict) and bool(options.get("include_usage"))
        base["object"] = "chat.completion.chunk" if chat else "text_completion"
        tail = {"usage": None} if with_usage else {}

        def chunk(delta: dict | None, text: str | None, finish: str | None) -> bytes:
            if chat:
                choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            else:
                choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
            return self._sse({**base, "choices": [choice], **tail})

        events = []
        if chat:
            events.append(chunk({"role": "assistant", "content": "", "refusal": None}, None, None))
        events += [chunk({"content": t}, t, None) for t in tokens]
        events.append(chunk({}, "", "length"))
        if with_usage:
            events.append(self._sse({**base, "choices": [], "usage": usage}))
        events.append(b"data: [DONE]\n\n")
        return await self._stream(request, model, events)

    # -- embeddings --------------------------------------------------------------------

    async def _embeddings(self, request, obj, model, ident):
        inputs = obj.get("input")
        items = inputs if isinstance(inputs, list) and inputs and not isinstance(
            inputs[0], int) else [inputs]  # fmt: skip
        as_base64 = obj.get("encoding_format") == "base64"
        data = []
        for index in range(len(items)):
            vector = [round(((index + 1) * (d + 1) % 7) / 7.0, 4) for d in range(8)]
            if as_base64:
                value: Any = base64.b64encode(struct.pack("<8f", *vector)).decode()
            else:
                value = vector
            data.append({"object": "embedding", "index": index, "embedding": value})
        n_in = _words(inputs)
        usage = {"prompt_tokens": n_in, "total_tokens": n_in}
        return self._json(200, {"object": "list", "data": data, "model": model, "usage": usage})

    # -- responses ---------------------------------------------------------------------

    async def _responses(self, request, obj, model, ident):
        n_out = self._output_tokens(obj)
        n_in = _words(obj.get("input"))
        tokens = [f"tok{i} " for i in range(n_out)]
        message_id = f"msg_{ident}"
        usage = {"input_tokens": n_in, "input_tokens_details": {"cached_tokens": 0},
                 "output_tokens": n_out, "output_tokens_details": {"reasoning_tokens": 0},
                 "total_tokens": n_in + n_out}  # fmt: skip
        text = {"type": "output_text", "text": "".join(tokens), "annotations": []}
        message = {"type": "message", "id": message_id, "status": "completed",
                   "role": "assistant", "content": [text]}  # fmt: skip
        done = {"id": f"resp_{ident}", "object": "response", "created_at": CREATED,
                "status": "completed", "model": model, "output": [message],
                "usage": usage}  # fmt: skip
        if not obj.get("stream"):
            return self._json(200, done)
        started = {**done, "status": "in_progress", "output": [], "usage": None}
        events = [self._sse({"type": "response.created", "sequence_number": 0,
                             "response": started}, "response.created")]  # fmt: skip
        for i, token in enumerate(tokens):
            delta = {"type": "response.output_text.delta", "sequence_number": i + 1,
                     "item_id": message_id, "output_index": 0, "content_index": 0,
                     "delta": token}  # fmt: skip
            events.append(self._sse(delta, "response.output_text.delta"))
        events.append(self._sse({"type": "response.completed", "sequence_number": n_out + 1,
                                 "response": done}, "response.completed"))  # fmt: skip
        return await self._stream(request, model, events)


async def _main(port: int, latency_s: float) -> None:
    upstream = FakeUpstream(latency_s=latency_s, keep_requests=1)
    bound = await upstream.start(port=port)
    sys.stdout.write(f"listening on {bound}\n")
    sys.stdout.flush()
    await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A fake OpenAI-compatible model server.")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(args.port, args.latency_ms / 1000.0))


if __name__ == "__main__":
    main()
