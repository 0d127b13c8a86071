"""The project's own fake provider: a real HTTP server (aiohttp.web) on a free loopback port that
speaks OpenAI's Chat Completions and Embeddings, Azure OpenAI's deployment URLs and Anthropic's
Messages API (JSON and SSE, with the real event sequences), checks auth headers, records what it
received, counts connections (and logs when each one closed: `disconnects`), and injects
faults on demand.

Use it from async tests with `async with FakeUpstream() as fake:`, from sync code (a live
gateway process driven by the sync openai SDK) with `with FakeUpstream().serve_in_thread() as
fake:`. URLs: `fake.openai_base_url` (…/v1), `fake.anthropic_base_url` (…/v1),
`fake.azure_base_url` (the resource root).

Faults (see `Fault.parse`), chosen per request, first match wins:
1. the `x-fake-fault` request header, e.g. `429:retry_after=2`;
2. the scripted queue (`fake.script("500", "429:retry_after=0")`), one per request, any API;
3. a magic model (or Azure deployment) name `fault:<spec>`, e.g. `fault:429:retry_after=2`.

Kinds: 400 401 403 404 429 500 502 503 529 (an error answer in the API's shape; 429 takes
retry_after, retry_after_ms, reset), context_length, content_filter, reset (drop the connection
before answering), hang_headers (never answer), slow_headers:delay_ms=N, hang_stream:after=N,
cut:after=N (drop the connection mid-body), no_done:after=N (end the stream cleanly without its
end marker), malformed (broken JSON body or stream event), trickle:delay_ms=N (stream pieces
slowly), no_usage (no usage in the answer), error_body:code=C (a 200 whose body is an
error object), stream_error:after=N,type=T (an error event inside
a 200 stream).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import itertools
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

HANG_LIMIT_S = 120.0  # a hung answer still ends, at the latest when the server stops

DEFAULT_API_KEY = "sk-fake-upstream-0123456789abcdef"
DEFAULT_REPLY = "Hello from the fake upstream, one token at a time."


@dataclass(frozen=True, slots=True)
class Fault:
    kind: str
    params: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, spec: str) -> Fault:
        """`429:retry_after=2`, `hang_stream:after=1`, `trickle:delay_ms=20,after=0`."""
        kind, _, rest = spec.strip().partition(":")
        params: dict[str, str] = {}
        for item in rest.replace(";", ",").replace(":", ",").split(","):
            name, sep, value = item.partition("=")
            if sep:
                params[name.strip()] = value.strip()
        return cls(kind=kind.strip(), params=params)

    def number(self, name: str, default: float) -> float:
        return float(self.params.get(name, default))


@dataclass(slots=True)
class RecordedRequest:
    api: str  # "openai" | "azure" | "anthropic"
    endpoint: str  # "chat" | "embeddings" | "messages"
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-cased names
    body: Any
    peer_port: int
    fault: Fault | None


class FakeUpstream:
    """One fake provider server. Attributes that shape answers may be changed between requests:
    api_key (None: no auth check), reply_text, prompt_tokens, cached_tokens (OpenAI),
    cache_read_tokens / cache_write_tokens (Anthropic), tool_arguments, embedding_dims."""

    def __init__(
        self,
        *,
        api_key: str | None = DEFAULT_API_KEY,
        reply_text: str = DEFAULT_REPLY,
        prompt_tokens: int = 12,
    ) -> None:
        self.api_key = api_key
        self.reply_text = reply_text
        self.prompt_tokens = prompt_tokens
        self.cached_tokens = 0
        self.cache_read_tokens = 0
        self.cache_write_tokens = 0
        self.tool_arguments: dict[str, Any] = {"location": "Paris", "unit": "celsius"}
        self.embedding_dims = 8
        self.requests: list[RecordedRequest] = []
        self.connections_opened = 0
        # (client port, time.monotonic()) of every connection the server saw close.
        self.disconnects: list[tuple[int, float]] = []
        self._open: set[int] = set()
        self._peers: dict[int, int] = {}
        self._script: deque[Fault] = deque()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._runner: web.AppRunner | None = None
        self._stopping: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.port = 0

    # -- addresses and inspection ----------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_base_url(self) -> str:
        return f"{self.base_url}/v1"

    @property
    def anthropic_base_url(self) -> str:
        return f"{self.base_url}/v1"

    @property
    def azure_base_url(self) -> str:
        return self.base_url

    @property
    def open_connections(self) -> int:
        """Connections currently open from clients (closed ones leave as soon as the server
        sees the close)."""
        return len(self._open)

    @property
    def last_request(self) -> RecordedRequest:
        with self._lock:
            return self.requests[-1]

    def script(self, *specs: str | Fault) -> None:
        """Queue faults for the next requests, in order (one per request)."""
        with self._lock:
            for spec in specs:
                self._script.append(spec if isinstance(spec, Fault) else Fault.parse(spec))

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self._script.clear()

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> FakeUpstream:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        app = web.Application(client_max_size=32 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._openai_chat)
        app.router.add_post("/v1/embeddings", self._openai_embeddings)
        app.router.add_post("/v1/messages", self._anthropic_messages)
        app.router.add_post("/v1/messages/count_tokens", self._anthropic_count_tokens)
        app.router.add_post("/openai/deployments/{deployment}/chat/completions", self._azure_chat)
        app.router.add_post("/openai/deployments/{deployment}/embeddings", self._azure_embeddings)
        # handler_cancellation: a client that goes away cancels its handler, as in real servers.
        runner = web.AppRunner(
            app, handler_cancellation=True, shutdown_timeout=0.5, access_log=None
        )
        await runner.setup()
        self._count_connections(runner.server)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # noqa: SLF001 - the bound port
        self._runner = runner
        return self

    async def stop(self) -> None:
        if self._stopping is not None:
            self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeUpstream:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @contextlib.contextmanager
    def serve_in_thread(self) -> Iterator[FakeUpstream]:
        """Run the server on its own event loop in a background thread (for sync callers)."""
        loop = asyncio.new_event_loop()
        started = threading.Event()
        thread = threading.Thread(
            target=self._thread_main, args=(loop, started), name="fake-upstream", daemon=True
        )
        thread.start()
        if not started.wait(timeout=10):
            raise RuntimeError("fake upstream did not start within 10 s")
        try:
            yield self
        finally:
            asyncio.run_coroutine_threadsafe(self.stop(), loop).result(timeout=10)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            loop.close()

    def _thread_main(self, loop: asyncio.AbstractEventLoop, started: threading.Event) -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(self.start())
        started.set()
        loop.run_forever()

    def _count_connections(self, server: web.Server) -> None:
        made, lost = server.connection_made, server.connection_lost

        def connection_made(handler: Any, transport: Any) -> None:
            peer = transport.get_extra_info("peername") if transport is not None else None
            with self._lock:
                self.connections_opened += 1
                self._open.add(id(handler))
                self._peers[id(handler)] = peer[1] if peer else 0
            made(handler, transport)

        def connection_lost(handler: Any, exc: BaseException | None = None) -> None:
            with self._lock:
                self._open.discard(id(handler))
                self.disconnects.append((self._peers.pop(id(handler), 0), time.monotonic()))
            lost(handler, exc)

        server.connection_made = connection_made  # type: ignore[method-assign]
        server.connection_lost = connection_lost  # type: ignore[method-assign]

    # -- common plumbing -------------------------------------------------------------------
    async def _record(
        self, request: web.Request, *, api: str, endpoint: str, model: str
    ) -> tuple[Any, Fault | None]:
        raw = await request.read()
        try:
            body = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = None
        peer = request.transport.get_extra_info("peername") if request.transport else None
        fault: Fault | None = None
        header = request.headers.get("x-fake-fault")
        with self._lock:
            if header:
                fault = Fault.parse(header)
            elif self._script:
                fault = self._script.popleft()
        if fault is None and model.startswith("fault:"):
            fault = Fault.parse(model[len("fault:") :])
        record = RecordedRequest(
            api=api,
            endpoint=endpoint,
            method=request.method,
            path=request.path,
            query=dict(request.query),
            headers={k.lower(): v for k, v in request.headers.items()},
            body=body,
            peer_port=peer[1] if peer else 0,
            fault=fault,
        )
        with self._lock:
            self.requests.append(record)
        return body, fault

    async def _hang(self) -> None:
        assert self._stopping is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), HANG_LIMIT_S)

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids):06d}"

    def _pieces(self, max_tokens: int | None) -> tuple[list[str], bool]:
        words = self.reply_text.split(" ")
        pieces = [w if i == 0 else " " + w for i, w in enumerate(words)]
        if max_tokens is not None and max_tokens < len(pieces):
            return pieces[:max_tokens], True
        return pieces, False

    async def _pre_answer_fault(
        self,
        request: web.Request,
        fault: Fault | None,
        error: Callable[[int, str, str], web.Response],
    ) -> web.StreamResponse | None:
        """Faults that replace the answer before any body byte; None to answer normally."""
        if fault is None:
            return None
        kind = fault.kind
        if kind == "reset":
            if request.transport is not None:
                request.transport.abort()
            await self._hang()
            return web.Response(status=500)
        if kind == "hang_headers":
            await self._hang()
            return web.Response(status=504)
        if kind == "slow_headers":
            await asyncio.sleep(fault.number("delay_ms", 200) / 1000)
            return None
        # echo_key=1: the error message quotes the key the client presented, as some real
        # providers do, to prove the gateway redacts it.
        echoed = _presented_key(request) if fault.params.get("echo_key") else ""
        if kind == "context_length":
            return error(400, "context_length", echoed)
        if kind == "content_filter":
            return error(400, "content_filter", echoed)
        if kind.isdigit():
            response = error(int(kind), kind, echoed)
            if kind == "429":
                if "retry_after" in fault.params:
                    response.headers["Retry-After"] = fault.params["retry_after"]
                if "retry_after_ms" in fault.params:
                    response.headers["retry-after-ms"] = fault.params["retry_after_ms"]
                if "reset" in fault.params:
                    response.headers["x-ratelimit-reset-requests"] = fault.params["reset"]
            return response
        return None

    async def _stream(
        self,
        request: web.Request,
        events: list[bytes],
        fault: Fault | None,
        *,
        end_marker: bytes | None,
        error_event: bytes | None = None,
    ) -> web.StreamResponse:
        """Send SSE events (already framed), applying stream faults."""
        response = web.StreamResponse(
            status=200,
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"},
        )
        await response.prepare(request)
        kind = fault.kind if fault else ""
        after = int(fault.number("after", 1)) if fault else 0
        delay = fault.number("delay_ms", 20) / 1000 if kind == "trickle" else 0.0
        for index, event in enumerate(events):
            if kind in ("hang_stream", "cut", "no_done", "stream_error") and index == after:
                if kind == "hang_stream":
                    await self._hang()
                    return response
                if kind == "cut":
                    assert request.transport is not None
                    request.transport.abort()
                    return response
                if kind == "no_done":
                    await response.write_eof()
                    return response
                if kind == "stream_error" and error_event is not None:
                    await response.write(error_event)
                    await response.write_eof()
                    return response
            if kind == "malformed" and index == after:
                event = b'data: {"id": "broken", "choices": [\n\n'
            if delay:
                await asyncio.sleep(delay)
            await response.write(event)
        if end_marker is not None:
            await response.write(end_marker)
        await response.write_eof()
        return response

    async def _json(
        self, request: web.Request, body: dict[str, Any], fault: Fault | None
    ) -> web.StreamResponse:
        if fault is not None and fault.kind == "malformed":
            return web.Response(
                body=b'{"id": "broken", "choices": [', content_type="application/json"
            )
        if fault is not None and fault.kind == "error_body":
            # A 200 answer whose body is an error object, as some proxies send.
            code = fault.params.get("code") or None
            error = {"message": "upstream proxy error", "type": "server_error", "code": code}
            return web.Response(
                body=orjson.dumps({"error": error}), content_type="application/json"
            )
        payload = orjson.dumps(body)
        if fault is not None and fault.kind == "cut":
            response = web.StreamResponse(
                status=200,
                headers={"Content-Type": "application/json", "Content-Length": str(len(payload))},
            )
            await response.prepare(request)
            await response.write(payload[: len(payload) // 2])
            assert request.transport is not None
            request.transport.abort()
            return response
        if fault is not None and fault.kind == "hang_stream":
            response = web.StreamResponse(
                status=200,
                headers={"Content-Type": "application/json", "Content-Length": str(len(payload))},
            )
            await response.prepare(request)
            await response.write(payload[: len(payload) // 2])
            await self._hang()
            return response
        return web.Response(body=payload, content_type="application/json")

    # -- OpenAI and Azure ------------------------------------------------------------------
    def _openai_error(self, status: int, kind: str, presented_key: str) -> web.Response:
        if kind == "context_length":
            message, code, etype = (
                "This model's maximum context length is 8192 tokens. However, your messages "
                "resulted in 9000 tokens. Please reduce the length of the messages.",
                "context_length_exceeded",
                "invalid_request_error",
            )
        elif kind == "content_filter":
            message, code, etype = (
                "The response was filtered due to the prompt triggering Azure OpenAI's content "
                "management policy.",
                "content_filter",
                "invalid_request_error",
            )
        elif status == 401:
            # Real providers echo (part of) the key they were given; the gateway must redact.
            message, code, etype = (
                f"Incorrect API key provided: {presented_key}.",
                "invalid_api_key",
                "invalid_request_error",
            )
        elif status == 429:
            message, code, etype = (
                "Rate limit reached for requests",
                "rate_limit_exceeded",
                "requests",
            )
        elif status >= 500:
            message, code, etype = (
                "The server had an error processing your request.",
                None,
                "server_error",
            )
        else:
            message, code, etype = (f"fake upstream error {status}", None, "invalid_request_error")
        if presented_key and status != 401:
            message = f"{message} (key {presented_key})"
        body = {"error": {"message": message, "type": etype, "param": None, "code": code}}
        return web.json_response(body, status=status, dumps=lambda o: orjson.dumps(o).decode())

    def _openai_auth_error(self, request: web.Request, *, azure: bool) -> web.Response | None:
        if self.api_key is None:
            return None
        if azure:
            presented = request.headers.get("api-key", "")
            if not presented and request.headers.get("Authorization", "").startswith("Bearer "):
                presented = request.headers["Authorization"][7:]
        else:
            auth = request.headers.get("Authorization", "")
            presented = auth[7:] if auth.startswith("Bearer ") else ""
        if presented == self.api_key:
            return None
        return self._openai_error(401, "401", presented)

    async def _openai_chat(self, request: web.Request) -> web.StreamResponse:
        return await self._chat_completions(request, azure=False)

    async def _azure_chat(self, request: web.Request) -> web.StreamResponse:
        return await self._chat_completions(request, azure=True)

    async def _chat_completions(self, request: web.Request, *, azure: bool) -> web.StreamResponse:
        deployment = request.match_info.get("deployment", "")
        raw_model = deployment
        if not azure:
            try:
                raw_model = str((orjson.loads(await request.read()) or {}).get("model") or "")
            except orjson.JSONDecodeError:
                raw_model = ""
        body, fault = await self._record(
            request, api="azure" if azure else "openai", endpoint="chat", model=raw_model
        )
        denied = self._openai_auth_error(request, azure=azure)
        if denied is not None:
            return denied
        if azure and "api-version" not in request.query:
            return self._openai_error(404, "404", "")
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return self._openai_error(400, "400", "")
        replaced = await self._pre_answer_fault(request, fault, self._openai_error)
        if replaced is not None:
            return replaced
        model = deployment if azure else str(body.get("model"))
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
        pieces, truncated = self._pieces(max_tokens)
        tools = body.get("tools") or []
        call_tool = bool(tools) and body.get("tool_choice") != "none"
        usage_wanted = bool((body.get("stream_options") or {}).get("include_usage"))
        no_usage = fault is not None and fault.kind == "no_usage"
        completion_id = self._new_id("chatcmpl-fake")
        created = int(time.time())
        tool_name = _chosen_tool(body) if call_tool else ""
        arguments = orjson.dumps(self.tool_arguments).decode()
        completion_tokens = len(pieces) if not call_tool else max(1, len(arguments) // 4)
        usage: dict[str, Any] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": self.prompt_tokens + completion_tokens,
        }
        if self.cached_tokens:
            usage["prompt_tokens_details"] = {"cached_tokens": self.cached_tokens}
        finish = "tool_calls" if call_tool else ("length" if truncated else "stop")

        choices_n = body.get("n") if isinstance(body.get("n"), int) else 1
        if not body.get("stream"):
            message: dict[str, Any] = {
                "role": "assistant",
                "content": None if call_tool else "".join(pieces),
            }
            if call_tool:
                message["tool_calls"] = [
                    {
                        "id": "call_fake_1",
                        "type": "function",
                        "function": {"name": tool_name, "arguments": arguments},
                    }
                ]
            answer: dict[str, Any] = {
                "id": completion_id,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {"index": i, "message": message, "logprobs": None, "finish_reason": finish}
                    for i in range(choices_n)
                ],
            }
            if not no_usage:
                # n choices: the prompt counts once, the completions n times (as OpenAI bills)
                answer["usage"] = dict(
                    usage,
                    completion_tokens=completion_tokens * choices_n,
                    total_tokens=self.prompt_tokens + completion_tokens * choices_n,
                )
            return await self._json(request, answer, fault)

        def event(choices: list[dict[str, Any]], usage_value: Any = None) -> bytes:
            chunk: dict[str, Any] = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": "fp_fake",
                "choices": choices,
            }
            if usage_wanted and not no_usage:
                chunk["usage"] = usage_value
            return b"data: " + orjson.dumps(chunk) + b"\n\n"

        def delta(d: dict[str, Any], finish_reason: str | None = None) -> list[dict[str, Any]]:
            return [{"index": 0, "delta": d, "logprobs": None, "finish_reason": finish_reason}]

        events = [event(delta({"role": "assistant", "content": "" if not call_tool else None}))]
        if call_tool:
            events.append(
                event(
                    delta(
                        {
                            "tool_calls": [
                                {
                                    "index": 0,
                                    "id": "call_fake_1",
                                    "type": "function",
                                    "function": {"name": tool_name, "arguments": ""},
                                }
                            ]
                        }
                    )
                )
            )
            for part in _split(arguments, 3):
                events.append(
                    event(delta({"tool_calls": [{"index": 0, "function": {"arguments": part}}]}))
                )
        else:
            events.extend(event(delta({"content": piece})) for piece in pieces)
        events.append(event(delta({}, finish)))
        if usage_wanted and not no_usage:
            events.append(event([], usage))
        error_event = (
            b"data: "
            + orjson.dumps(
                {
                    "error": {
                        "message": "The server had an error while processing your request.",
                        "type": "server_error",
                        "code": None,
                    }
                }
            )
            + b"\n\n"
        )
        return await self._stream(
            request, events, fault, end_marker=b"data: [DONE]\n\n", error_event=error_event
        )

    async def _openai_embeddings(self, request: web.Request) -> web.StreamResponse:
        return await self._embeddings(request, azure=False)

    async def _azure_embeddings(self, request: web.Request) -> web.StreamResponse:
        return await self._embeddings(request, azure=True)

    async def _embeddings(self, request: web.Request, *, azure: bool) -> web.StreamResponse:
        deployment = request.match_info.get("deployment", "")
        body, fault = await self._record(
            request, api="azure" if azure else "openai", endpoint="embeddings", model=deployment
        )
        denied = self._openai_auth_error(request, azure=azure)
        if denied is not None:
            return denied
        if not isinstance(body, dict) or "input" not in body:
            return self._openai_error(400, "400", "")
        model = deployment if azure else str(body.get("model") or "")
        if fault is None and model.startswith("fault:"):
            fault = Fault.parse(model[len("fault:") :])
        replaced = await self._pre_answer_fault(request, fault, self._openai_error)
        if replaced is not None:
            return replaced
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        data = []
        tokens = 0
        for index, item in enumerate(inputs):
            text = item if isinstance(item, str) else " ".join(map(str, item))
            tokens += max(1, len(text.split()))
            vector = [
                round(((hash_byte(text, i) - 128) / 128), 6) for i in range(self.embedding_dims)
            ]
            embedding: Any = vector
            if body.get("encoding_format") == "base64":
                embedding = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        data.reverse()  # real servers may answer out of order; the index is what counts
        answer: dict[str, Any] = {"object": "list", "data": data, "model": model}
        if fault is None or fault.kind != "no_usage":
            answer["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
        return await self._json(request, answer, fault)

    # -- Anthropic -------------------------------------------------------------------------
    def _anthropic_error(self, status: int, kind: str, presented_key: str) -> web.Response:
        etype = {
            400: "invalid_request_error",
            401: "authentication_error",
            403: "permission_error",
            404: "not_found_error",
            429: "rate_limit_error",
            500: "api_error",
            529: "overloaded_error",
        }.get(status, "api_error")
        message = {
            401: "invalid x-api-key",
            429: "Number of request tokens has exceeded your per-minute rate limit",
            529: "Overloaded",
        }.get(status, f"fake upstream error {status}")
        if kind == "context_length":
            message = "prompt is too long: 250000 tokens > 200000 maximum"
        elif kind == "content_filter":
            message = "Output blocked by content filtering policy"
        if presented_key:
            message = f"{message} (key {presented_key})"
        body = {"type": "error", "error": {"type": etype, "message": message}}
        return web.json_response(body, status=status, dumps=lambda o: orjson.dumps(o).decode())

    def _anthropic_invalid(self, message: str) -> web.Response:
        body = {"type": "error", "error": {"type": "invalid_request_error", "message": message}}
        return web.json_response(body, status=400, dumps=lambda o: orjson.dumps(o).decode())

    def _anthropic_validate(self, body: Any) -> str | None:
        """The Messages API's own checks that catch a wrong conversion."""
        if not isinstance(body, dict):
            return "body must be a JSON object"
        if not isinstance(body.get("max_tokens"), int):
            return "max_tokens: Field required"
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return "messages: at least one message is required"
        previous = None
        for index, message in enumerate(messages):
            role = message.get("role")
            if role not in ("user", "assistant"):
                return f"messages.{index}.role: Input should be 'user' or 'assistant'"
            if role == previous:
                return "messages: roles must alternate between 'user' and 'assistant'"
            previous = role
            content = message.get("content")
            if isinstance(content, list):
                for block in content:
                    if block.get("type") == "text" and not block.get("text"):
                        return "messages: text content blocks must be non-empty"
        unknown = set(body) - {
            "model",
            "messages",
            "max_tokens",
            "system",
            "stop_sequences",
            "temperature",
            "top_p",
            "top_k",
            "tools",
            "tool_choice",
            "metadata",
            "stream",
            "thinking",
            "service_tier",
            "output_config",
            "output_format",
            "cache_control",
            "container",
            "context_management",
            "mcp_servers",
            "inference_geo",
        }
        if unknown:
            return f"{sorted(unknown)[0]}: Extra inputs are not permitted"
        for index, message in enumerate(messages):
            for block in message.get("content") if isinstance(message.get("content"), list) else ():
                if block.get("type") == "thinking" and not block.get("signature"):
                    # The real API rejects thinking blocks that lost their signature.
                    return f"messages.{index}.content: thinking blocks need their signature"
        return None

    async def _anthropic_count_tokens(self, request: web.Request) -> web.StreamResponse:
        """`POST /v1/messages/count_tokens`: a deterministic count (bytes of the counted
        fields / 4), so a test can tell the upstream's exact count from an estimate."""
        body, fault = await self._record(
            request, api="anthropic", endpoint="count_tokens", model=""
        )
        if self.api_key is not None and request.headers.get("x-api-key") != self.api_key:
            return self._anthropic_error(401, "401", "")
        replaced = await self._pre_answer_fault(request, fault, self._anthropic_error)
        if replaced is not None:
            return replaced
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return self._anthropic_invalid("messages: Field required")
        if "max_tokens" in body or "stream" in body:
            return self._anthropic_invalid("max_tokens: Extra inputs are not permitted")
        return web.json_response({"input_tokens": fake_count_tokens(body)})

    async def _anthropic_messages(self, request: web.Request) -> web.StreamResponse:
        try:
            model = str((orjson.loads(await request.read()) or {}).get("model") or "")
        except orjson.JSONDecodeError:
            model = ""
        body, fault = await self._record(request, api="anthropic", endpoint="messages", model=model)
        if self.api_key is not None and request.headers.get("x-api-key") != self.api_key:
            return self._anthropic_error(401, "401", request.headers.get("x-api-key", ""))
        if not request.headers.get("anthropic-version"):
            return self._anthropic_invalid("anthropic-version: header is required")
        invalid = self._anthropic_validate(body)
        if invalid is not None:
            return self._anthropic_invalid(invalid)
        replaced = await self._pre_answer_fault(request, fault, self._anthropic_error)
        if replaced is not None:
            return replaced
        pieces, truncated = self._pieces(body["max_tokens"])
        tools = body.get("tools") or []
        choice = body.get("tool_choice") or {}
        call_tool = bool(tools) and choice.get("type") != "none"
        tool_name = ""
        if call_tool:
            tool_name = choice.get("name") if choice.get("type") == "tool" else tools[0]["name"]
        no_usage = fault is not None and fault.kind == "no_usage"
        message_id = self._new_id("msg_fake")
        arguments = orjson.dumps(self.tool_arguments).decode()
        output_tokens = len(pieces) + (max(1, len(arguments) // 4) if call_tool else 0)
        stop_reason = "tool_use" if call_tool else ("max_tokens" if truncated else "end_turn")
        usage = {
            "input_tokens": self.prompt_tokens,
            "cache_creation_input_tokens": self.cache_write_tokens,
            "cache_read_input_tokens": self.cache_read_tokens,
            "output_tokens": output_tokens,
        }
        text = "".join(pieces)
        thinking = (body.get("thinking") or {}).get("type") == "enabled"
        if not body.get("stream"):
            content: list[dict[str, Any]] = [{"type": "text", "text": text}]
            if thinking:
                content.insert(0, dict(FAKE_THINKING))
            if call_tool:
                content.append(
                    {
                        "type": "tool_use",
                        "id": "toolu_fake_1",
                        "name": tool_name,
                        "input": self.tool_arguments,
                    }
                )
            answer: dict[str, Any] = {
                "id": message_id,
                "type": "message",
                "role": "assistant",
                "model": body["model"],
                "content": content,
                "stop_reason": stop_reason,
                "stop_sequence": None,
                "usage": usage if not no_usage else {},
            }
            return await self._json(request, answer, fault)

        def sse(name: str, data: dict[str, Any]) -> bytes:
            return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"

        start_usage = dict(usage, output_tokens=1)
        events = [
            sse(
                "message_start",
                {
                    "type": "message_start",
                    "message": {
                        "id": message_id,
                        "type": "message",
                        "role": "assistant",
                        "model": body["model"],
                        "content": [],
                        "stop_reason": None,
                        "stop_sequence": None,
                        "usage": start_usage if not no_usage else {},
                    },
                },
            ),
        ]
        block = 0
        if thinking:
            events.extend(
                [
                    sse(
                        "content_block_start",
                        {
                            "type": "content_block_start",
                            "index": 0,
                            "content_block": {"type": "thinking", "thinking": "", "signature": ""},
                        },
                    ),
                    sse(
                        "content_block_delta",
                        {
                            "type": "content_block_delta",
                            "index": 0,
                            "delta": {
                                "type": "thinking_delta",
                                "thinking": FAKE_THINKING["thinking"],
                            },
                        },
                    ),
                    sse(
                        "content_block_delta",
                        {
                            "type": "content_block_delta",
                            "index": 0,
                            "delta": {
                                "type": "signature_delta",
                                "signature": FAKE_THINKING["signature"],
                            },
                        },
                    ),
                    sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
                ]
            )
            block = 1
        events.extend(
            [
                sse(
                    "content_block_start",
                    {
                        "type": "content_block_start",
                        "index": block,
                        "content_block": {"type": "text", "text": ""},
                    },
                ),
                sse("ping", {"type": "ping"}),
            ]
        )
        events.extend(
            sse(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": block,
                    "delta": {"type": "text_delta", "text": piece},
                },
            )
            for piece in pieces
        )
        events.append(sse("content_block_stop", {"type": "content_block_stop", "index": block}))
        block += 1
        if call_tool:
            events.append(
                sse(
                    "content_block_start",
                    {
                        "type": "content_block_start",
                        "index": block,
                        "content_block": {
                            "type": "tool_use",
                            "id": "toolu_fake_1",
                            "name": tool_name,
                            "input": {},
                        },
                    },
                )
            )
            events.append(
                sse(
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": block,
                        "delta": {"type": "input_json_delta", "partial_json": ""},
                    },
                )
            )
            events.extend(
                sse(
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": block,
                        "delta": {"type": "input_json_delta", "partial_json": part},
                    },
                )
                for part in _split(arguments, 3)
            )
            events.append(sse("content_block_stop", {"type": "content_block_stop", "index": 1}))
        events.append(
            sse(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                    "usage": {"output_tokens": output_tokens} if not no_usage else {},
                },
            )
        )
        events.append(sse("message_stop", {"type": "message_stop"}))
        error_type = fault.params.get("type", "overloaded_error") if fault else "overloaded_error"
        error_event = sse(
            "error", {"type": "error", "error": {"type": error_type, "message": "Overloaded"}}
        )
        return await self._stream(request, events, fault, end_marker=None, error_event=error_event)


def fake_count_tokens(body: dict[str, Any]) -> int:
    counted = {k: body.get(k) for k in ("system", "messages", "tools") if k in body}
    return 7 + len(orjson.dumps(counted)) // 4


FAKE_THINKING = {
    "type": "thinking",
    "thinking": "The user greets me; answer briefly.",
    "signature": "fake-signature-EqQBCgIYAhIM1gbcDa9GJwZA2b3h",
}


def _presented_key(request: web.Request) -> str:
    auth = request.headers.get("Authorization", "")
    if auth.startswith("Bearer "):
        return auth[7:]
    return request.headers.get("api-key") or request.headers.get("x-api-key") or ""


def _chosen_tool(body: dict[str, Any]) -> str:
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        return str((choice.get("function") or {}).get("name") or "")
    return str(body["tools"][0]["function"]["name"])


def _split(text: str, parts: int) -> list[str]:
    size = max(1, -(-len(text) // parts))
    return [text[i : i + size] for i in range(0, len(text), size)]


def hash_byte(text: str, index: int) -> int:
    return hashlib.sha256(f"{index}:{text}".encode()).digest()[0]
