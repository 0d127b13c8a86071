"""`POST /api/v1/generate`: prompt in, text out. A convenience for scripts and dashboards that
do not want the chat shape; it runs the same path as `/v1/chat/completions` (key, route,
admission, strategy, one usage event) and answers errors in the same OpenAI shape.

    {"model": "chat", "prompt": "Say hi", "max_tokens": 50, "stream": false}
 -> {"id": "gen-...", "model": "chat", "text": "...", "finish_reason": "stop",
     "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}}

With `"stream": true` the answer is SSE: `data: {"id", "model", "text": "<delta>"}` events,
then one `data: {"id", "model", "text": "", "finish_reason", "usage"}`, then `data: [DONE]`;
an upstream failure after the first byte arrives in-band as `data: {"error": {...}}`."""

from __future__ import annotations

import asyncio
import time
import uuid

import orjson
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from ninja import Schema
from pydantic import ConfigDict, Field

from providers.types import ChatRequest, Chunk, ProviderError, Usage
from routing.api import _reject, _request_id, api, authenticate, resolve_route
from routing.errors import (
    GatewayError,
    error_response,
    gateway_error_from_admission,
    gateway_error_from_provider,
)
from routing.schemas import ErrorOut
from routing.services import InferenceCall, inference_call_open
from routing.sse import DONE, sse_event
from routing.streaming import keepalive_interval, sse_stream, stream_headers, stream_start
from tenants.admission import AdmissionDenied

ENDPOINT = "generate"


class GenerateIn(Schema):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=256)
    prompt: str = Field(min_length=1)
    system: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    stop: list[str] | None = Field(default=None, max_length=4)
    stream: bool = False


class UsageOut(Schema):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class GenerateOut(Schema):
    id: str
    model: str
    text: str
    finish_reason: str | None
    usage: UsageOut


def chat_request_from_prompt(payload: GenerateIn) -> ChatRequest:
    messages = [{"role": "user", "content": payload.prompt}]
    if payload.system:
        messages.insert(0, {"role": "system", "content": payload.system})
    return ChatRequest(
        model=payload.model,
        messages=messages,
        stream=payload.stream,
        max_tokens=payload.max_tokens,
        temperature=payload.temperature,
        stop=payload.stop,
        include_usage=True,
    )


class GenerateStreamEncoder:
    def __init__(self, *, generation_id: str, model: str) -> None:
        self.generation_id = generation_id
        self.model = model
        self._finish_reason: str | None = None

    def _data(self, **fields: object) -> bytes:
        return sse_event(orjson.dumps({"id": self.generation_id, "model": self.model, **fields}))

    def encode(self, chunk: Chunk) -> bytes | None:
        if chunk.finish_reason:
            self._finish_reason = chunk.finish_reason
        return self._data(text=chunk.content) if chunk.content else None

    def error(self, exc: ProviderError) -> bytes:
        body = {
            "error": {
                "message": exc.message,
                "type": exc.error_type,
                "param": None,
                "code": exc.code,
            }
        }
        return sse_event(orjson.dumps(body))

    def finish(self, call: InferenceCall, failure: ProviderError | None) -> bytes | None:
        if failure is not None:
            return DONE
        usage = call.settled_usage or Usage()
        final = self._data(
            text="",
            finish_reason=self._finish_reason or "stop",
            usage={
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "total_tokens": usage.total_tokens,
            },
        )
        return final + DONE


@api.post(
    "/api/v1/generate",
    response={
        200: GenerateOut,
        400: ErrorOut,
        401: ErrorOut,
        403: ErrorOut,
        404: ErrorOut,
        429: ErrorOut,
        502: ErrorOut,
        504: ErrorOut,
    },
    summary="Generate text from a prompt (SSE when stream=true)",
)
async def generate(request: HttpRequest, payload: GenerateIn):
    request.started_at = time.perf_counter()
    try:
        policy = await authenticate(request)
        route = await resolve_route(request, policy, payload.model)
        chat = chat_request_from_prompt(payload)
        call = await inference_call_open(
            request_id=_request_id(request),
            policy=policy,
            route=route,
            chat=chat,
            endpoint=ENDPOINT,
        )
    except GatewayError as error:
        return await _reject(request, error, endpoint=ENDPOINT)
    except AdmissionDenied as denied:
        return await _reject(request, gateway_error_from_admission(denied), endpoint=ENDPOINT)

    generation_id = f"gen-{uuid.uuid4().hex[:24]}"
    if chat.stream:
        try:
            pump = await stream_start(call, chat, keepalive_s=keepalive_interval())
        except ProviderError as exc:
            error = gateway_error_from_provider(exc)
            await call.finish(status_code=error.status, outcome="error", error_type=exc.code)
            return error_response(error, call.gateway_headers())
        encoder = GenerateStreamEncoder(generation_id=generation_id, model=payload.model)
        response = StreamingHttpResponse(
            sse_stream(call=call, pump=pump, encoder=encoder), content_type="text/event-stream"
        )
        for name, value in stream_headers(call).items():
            response[name] = value
        return response

    try:
        result = await call.complete(chat)
    except ProviderError as exc:
        error = gateway_error_from_provider(exc)
        await call.finish(status_code=error.status, outcome="error", error_type=exc.code)
        return error_response(error, call.gateway_headers())
    except asyncio.CancelledError:
        await asyncio.shield(
            call.finish(status_code=499, outcome="cancelled", error_type="client_disconnected")
        )
        raise
    await call.finish(status_code=200, outcome="ok")
    body = {
        "id": generation_id,
        "model": payload.model,
        "text": result.content or "",
        "finish_reason": result.finish_reason,
        "usage": {
            "prompt_tokens": result.usage.prompt_tokens,
            "completion_tokens": result.usage.completion_tokens,
            "total_tokens": result.usage.total_tokens,
        },
    }
    response = HttpResponse(orjson.dumps(body), content_type="application/json")
    for name, value in call.gateway_headers().items():
        response[name] = value
    return response
