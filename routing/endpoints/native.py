"""The gateway's native shape. `POST /api/v1/generate`: prompt in, text out. A convenience for scripts and dashboards that
do not want the chat shape; it runs the same path as `/v1/chat/completions` (key, route,
admission, strategy, one usage event) and answers errors in the same OpenAI shape.

    {"model": "chat", "prompt": "Say hi", "max_tokens": 50, "stream": false}
 -> {"id": "gen-...", "model": "chat", "text": "...", "finish_reason": "stop",
     "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}}

With `"stream": true` the answer is SSE: `data: {"id", "model", "text": "<delta>"}` events,
then one `data: {"id", "model", "text": "", "finish_reason", "usage"}`, then `data: [DONE]`;
an upstream failure after the first byte arrives in-band as `data: {"error": {...}}`."""

from __future__ import annotations

import uuid

import orjson
from django.http import HttpRequest
from ninja import Router, Schema
from pydantic import ConfigDict, Field

from providers.types import ChatRequest, Chunk, ProviderError, Usage
from routing.errors import GatewayError
from routing.inference import InferenceCall, inference_call_open
from routing.ingress import call_respond, ingress_open, ingress_reject, ingress_start
from routing.schemas import ErrorOut
from routing.sse import DONE, sse_event

router = Router(tags=["Native"])

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


@router.post(
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
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": GenerateIn.model_json_schema()}},
        }
    },
)
async def generate(request: HttpRequest):
    ingress = ingress_start(request, endpoint=ENDPOINT)
    try:
        payload: GenerateIn = await ingress_open(ingress, request, parse=GenerateIn)
        chat = chat_request_from_prompt(payload)
        call = await inference_call_open(ingress=ingress, chat=chat)
    except GatewayError as error:
        return await ingress_reject(ingress, error)
    generation_id = f"gen-{uuid.uuid4().hex[:24]}"
    model = payload.model
    return await call_respond(
        ingress,
        call,
        chat,
        body=lambda result: {
            "id": generation_id,
            "model": model,
            "text": result.content or "",
            "finish_reason": result.finish_reason,
            "usage": {
                "prompt_tokens": result.usage.prompt_tokens,
                "completion_tokens": result.usage.completion_tokens,
                "total_tokens": result.usage.total_tokens,
            },
        },
        encoder=lambda: GenerateStreamEncoder(generation_id=generation_id, model=model),
    )
