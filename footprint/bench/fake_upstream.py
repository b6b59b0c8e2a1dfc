"""A fake OpenAI-compatible (and Ollama) model server, for ``footprint bench proxy`` and
the tests.

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

Ollama's native API too: ``/api/chat``, ``/api/generate`` (newline-delimited JSON streams,
``application/x-ndjson``, unless the body says ``"stream": false``; the last object has
``"done": true``, ``prompt_eval_count`` and ``eval_count``; output: ``options.num_predict``
tokens, default 5), ``/api/embed`` (``prompt_eval_count``) and the older
``/api/embeddings`` (no counts). Their errors are Ollama's ``{"error": "message"}``; model
``long-context`` gives ``/api/generate`` a last object with a ``context`` over 1 MiB.

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
CREATED_AT = "2023-11-14T22:13:20Z"  # CREATED, as Ollama writes its times
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
        self._routes = {
            "/v1/chat/completions": self._chat,
            "/v1/completions": self._completions,
            "/v1/embeddings": self._embeddings,
            "/v1/responses": self._responses,
            "/api/chat": self._ollama_chat,
            "/api/generate": self._ollama_generate,
            "/api/embed": self._ollama_embed,
            "/api/embeddings": self._ollama_embeddings,
        }

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
        body, seen = await self._receive(request)
        route = self._routes.get(request.path)
        if request.method == "GET" and request.path == "/v1/models":
            return self._json(
                200,
                {
                    "object": "list",
                    "data": [
                        {
                            "id": "fake-model",
                            "object": "model",
                            "created": CREATED,
                            "owned_by": "fake",
                        }
                    ],
                },
            )
        if route is None or request.method != "POST":
            return self._json(200, {**seen, "headers": dict(request.headers)})
        error = self._ollama_error if request.path.startswith("/api/") else self._error
        try:
            obj = json.loads(body)
        except ValueError:
            return error(400, "We could not parse the JSON body of your request.")
        if not isinstance(obj, dict):
            return error(400, "The request body must be a JSON object.")
        seen["json"] = {k: v for k, v in obj.items() if k not in ("messages", "input", "prompt")}
        model = obj.get("model")
        if not isinstance(model, str):
            return error(400, "you must provide a model parameter")
        if self.refuse_stream_options and "stream_options" in obj:
            return error(400, "Unrecognized request argument supplied: stream_options")
        if model == "fail-500":
            return error(500, "The server had an error processing your request.", "server_error")
        if model == "fail-400":
            return error(400, "This model's maximum context length is 8 tokens.")
        await self._delay(request, model)
        # From the request less stream_options: the same id with or without the option.
        key = _dumps({k: v for k, v in obj.items() if k != "stream_options"})
        ident = hashlib.sha1(key).hexdigest()[:16]
        response = await route(request, obj, model, ident)
        if request.headers.get("X-Fake-Gzip") and isinstance(response, web.Response):
            response.body = gzip.compress(response.body, mtime=0)  # type: ignore[arg-type]
            response.headers["Content-Encoding"] = "gzip"
        return response

    async def _receive(self, request: web.BaseRequest) -> tuple[bytes, dict]:
        """The request's body, and what is kept of the request in ``requests``."""
        digest = hashlib.sha256()
        pieces = []
        size = 0
        async for piece in request.content.iter_any():
            digest.update(piece)
            pieces.append(piece)
            size += len(piece)
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
        return b"".join(pieces), seen

    async def _delay(self, request: web.BaseRequest, model: str) -> None:
        """The model's compute time: ``latency_s``, or the request's ``X-Fake-Latency-Ms``."""
        if model == "hang":
            await asyncio.sleep(3600)
        latency = self.latency_s
        asked = request.headers.get("X-Fake-Latency-Ms")
        if asked:
            with contextlib.suppress(ValueError):
                latency = max(0.0, min(float(asked), 60_000.0)) / 1000.0
        if latency:
            await asyncio.sleep(latency)

    @staticmethod
    def _json(status: int, obj: Any) -> web.Response:
        return web.Response(status=status, body=_dumps(obj), content_type="application/json")

    def _error(self, status: int, message: str, kind: str = "invalid_request_error"):
        error = {"message": message, "type": kind, "param": None, "code": None}
        return self._json(status, {"error": error})

    def _ollama_error(self, status: int, message: str, kind: str = ""):
        return self._json(status, {"error": message})  # Ollama's shape: a message only

    @staticmethod
    def _output_tokens(obj: dict) -> int:
        for key in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
            value = obj.get(key)
            if isinstance(value, int) and value >= 0:
                return value
        return 5

    async def _stream(
        self,
        request: web.BaseRequest,
        model: str,
        events: list[bytes],
        headers: dict[str, str] | None = None,
    ) -> web.StreamResponse:
        """``events`` written one by one (server-sent events unless ``headers`` say)."""
        response = web.StreamResponse(
            headers=headers or {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
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
        usage = {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out}
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
                choice = {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": "length",
                }
            else:
                choice = {
                    "index": 0,
                    "text": "".join(tokens),
                    "logprobs": None,
                    "finish_reason": "length",
                }
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
        items = (
            inputs
            if isinstance(inputs, list) and inputs and not isinstance(inputs[0], int)
            else [inputs]
        )
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
        usage = {
            "input_tokens": n_in,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": n_out,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": n_in + n_out,
        }
        text = {"type": "output_text", "text": "".join(tokens), "annotations": []}
        message = {
            "type": "message",
            "id": message_id,
            "status": "completed",
            "role": "assistant",
            "content": [text],
        }
        done = {
            "id": f"resp_{ident}",
            "object": "response",
            "created_at": CREATED,
            "status": "completed",
            "model": model,
            "output": [message],
            "usage": usage,
        }
        if not obj.get("stream"):
            return self._json(200, done)
        started = {**done, "status": "in_progress", "output": [], "usage": None}
        events = [
            self._sse(
                {"type": "response.created", "sequence_number": 0, "response": started},
                "response.created",
            )
        ]
        for i, token in enumerate(tokens):
            delta = {
                "type": "response.output_text.delta",
                "sequence_number": i + 1,
                "item_id": message_id,
                "output_index": 0,
                "content_index": 0,
                "delta": token,
            }
            events.append(self._sse(delta, "response.output_text.delta"))
        events.append(
            self._sse(
                {"type": "response.completed", "sequence_number": n_out + 1, "response": done},
                "response.completed",
            )
        )
        return await self._stream(request, model, events)

    # -- Ollama's native API -----------------------------------------------------------

    async def _ollama_answer(self, request, obj, model, parts: list[dict], last: dict):
        """A JSON answer (``"stream": false``), else the NDJSON stream of ``parts``
        then ``last``: every object with ``model``, ``created_at`` and ``done``."""
        head = {"model": model, "created_at": CREATED_AT}
        if obj.get("stream") is False:
            return self._json(200, {**head, **last})
        lines = [_dumps({**head, **part, "done": False}) + b"\n" for part in parts]
        lines.append(_dumps({**head, **last}) + b"\n")
        return await self._stream(request, model, lines, {"Content-Type": "application/x-ndjson"})

    @staticmethod
    def _ollama_metrics(n_in: int, n_out: int) -> dict[str, int]:
        return {
            "total_duration": 5_000_000,
            "load_duration": 1_000_000,
            "prompt_eval_count": n_in,
            "prompt_eval_duration": 1_000_000,
            "eval_count": n_out,
            "eval_duration": 3_000_000,
        }

    @staticmethod
    def _predict(obj: dict) -> int:
        options = obj.get("options")
        value = options.get("num_predict") if isinstance(options, dict) else None
        return value if isinstance(value, int) and value >= 0 else 5

    async def _ollama_chat(self, request, obj, model, ident):
        n_in, n_out = _words(obj.get("messages")), self._predict(obj)
        tokens = [f"tok{i} " for i in range(n_out)]
        parts = [{"message": {"role": "assistant", "content": t}} for t in tokens]
        done = {"done_reason": "length", "done": True, **self._ollama_metrics(n_in, n_out)}
        whole = "" if obj.get("stream") is not False else "".join(tokens)
        last = {"message": {"role": "assistant", "content": whole}, **done}
        return await self._ollama_answer(request, obj, model, parts, last)

    async def _ollama_generate(self, request, obj, model, ident):
        n_in, n_out = _words(obj.get("prompt")), self._predict(obj)
        tokens = [f"tok{i} " for i in range(n_out)]
        # The context (token ids) comes before the counts; model long-context makes it
        # longer than the proxy holds of one line.
        context = list(range(300_000 if model == "long-context" else n_in + n_out))
        whole = "" if obj.get("stream") is not False else "".join(tokens)
        last = {
            "response": whole,
            "done": True,
            "done_reason": "length",
            "context": context,
            **self._ollama_metrics(n_in, n_out),
        }
        parts = [{"response": t} for t in tokens]
        return await self._ollama_answer(request, obj, model, parts, last)

    async def _ollama_embed(self, request, obj, model, ident):
        inputs = obj.get("input")
        items = inputs if isinstance(inputs, list) else [inputs]
        vectors = [
            [round(((i + 1) * (d + 1) % 7) / 7.0, 4) for d in range(8)] for i in range(len(items))
        ]
        metrics = self._ollama_metrics(_words(inputs), 0)
        del metrics["eval_count"], metrics["eval_duration"]
        return self._json(200, {"model": model, "embeddings": vectors, **metrics})

    async def _ollama_embeddings(self, request, obj, model, ident):
        vector = [round(((d + 1) % 7) / 7.0, 4) for d in range(8)]
        return self._json(200, {"embedding": vector})  # the older API: no counts


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
