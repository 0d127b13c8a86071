"""OpenAI's wire shape: `POST /v1/chat/completions`, `POST /v1/embeddings`, `GET /v1/models`.
Each view parses and shapes; routing.ingress authenticates, resolves and refuses, and
routing.inference runs and settles."""

from __future__ import annotations

import random
import time
from typing import Any

import orjson
from django.http import HttpRequest, HttpResponse
from ninja import Router

from providers.types import ChatRequest, EmbeddingRequest, ProviderError
from routing.endpoints.anthropic_extras import anthropic_models_response
from routing.endpoints.responses import chat_completion_choices
from routing.errors import GatewayError
from routing.inference import embedding_call_open, inference_call_open
from routing.ingress import (
    call_error_response,
    call_respond,
    ingress_key_check,
    ingress_open,
    ingress_reject,
    ingress_start,
    json_answer,
    payload_validate,
)
from routing.protocols.models import wants_anthropic_shape
from routing.schemas import ChatCompletionIn, EmbeddingsIn, ErrorOut, ModelListOut
from routing.snapshot import snapshot_get
from routing.sse import completion_body
from routing.streaming import OpenAIStreamEncoder

router = Router(tags=["OpenAI"])

_ERRORS = {s: ErrorOut for s in (400, 401, 402, 403, 404, 409, 413, 429, 502, 504)}


def _body_doc(schema: Any) -> dict[str, Any]:
    """The request body in the OpenAPI document (the views read the body themselves, after
    authenticating the key)."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": schema.model_json_schema()}},
        }
    }


class ChatPayload:
    """The validated chat body plus its messages exactly as sent (forwarded unchanged,
    unknown fields included)."""

    __slots__ = ("model", "payload", "raw_messages")

    def __init__(self, data: Any) -> None:
        self.payload = payload_validate(ChatCompletionIn, data)
        self.model = self.payload.model
        messages = data.get("messages")
        self.raw_messages = messages if isinstance(messages, list) else None


def chat_request_from(
    payload: ChatCompletionIn, *, raw_messages: list[dict] | None = None
) -> ChatRequest:
    """The normalized request. `raw_messages` are the validated body's messages as the client
    sent them (forwarded as they are, unknown fields included); without them the validated
    models are dumped."""
    extra = {k: v for k, v in (payload.model_extra or {}).items() if v is not None}
    if payload.n is not None:
        extra["n"] = payload.n
    chat_messages = raw_messages
    if chat_messages is None:
        chat_messages = [m.model_dump(exclude_none=True) for m in payload.messages]
    return ChatRequest(
        model=payload.model,
        messages=chat_messages,
        stream=payload.stream,
        max_tokens=payload.max_completion_tokens or payload.max_tokens,
        temperature=payload.temperature,
        top_p=payload.top_p,
        stop=payload.stop,
        tools=payload.tools,
        tool_choice=payload.tool_choice,
        include_usage=bool(payload.stream_options and payload.stream_options.include_usage),
        user=payload.user,
        extra=extra,
    )


@router.post(
    "/v1/chat/completions",
    response={200: dict, **_ERRORS},
    summary="Create a chat completion (OpenAI-compatible, SSE when stream=true)",
    openapi_extra=_body_doc(ChatCompletionIn),
)
async def chat_completions(request: HttpRequest):
    ingress = ingress_start(request, endpoint="chat")
    try:
        parsed: ChatPayload = await ingress_open(ingress, request, parse=ChatPayload)
        chat = chat_request_from(parsed.payload, raw_messages=parsed.raw_messages)
        model = parsed.model

        def encoder() -> OpenAIStreamEncoder:
            return OpenAIStreamEncoder(
                completion_id=f"chatcmpl-{random.getrandbits(116):029x}",
                model=model,
                include_usage=chat.include_usage,
            )

        if (parsed.payload.n or 1) > 1:
            return await chat_completion_choices(
                ingress, chat=chat, n=parsed.payload.n, encoder=encoder
            )
        call = await inference_call_open(ingress=ingress, chat=chat)
    except GatewayError as error:
        return await ingress_reject(ingress, error)
    return await call_respond(
        ingress,
        call,
        chat,
        body=lambda response: completion_body(response=response, model=response.model or model),
        encoder=encoder,
    )


@router.get("/v1/models", response={200: ModelListOut, 401: ErrorOut}, summary="List usable models")
async def list_models(request: HttpRequest):
    anthropic_shape = wants_anthropic_shape(request.META)
    ingress = ingress_start(
        request, endpoint="models", shape="anthropic" if anthropic_shape else "openai"
    )
    if (refused := await ingress_key_check(ingress, request)) is not None:
        return refused
    policy = ingress.policy
    assert policy is not None
    snapshot = await snapshot_get()
    if anthropic_shape:
        names = [n for n in snapshot.public_names() if policy.allows_model(n)]
        return anthropic_models_response(names)
    created = int(snapshot.loaded_at and time.time())
    data = [
        {"id": name, "object": "model", "created": created, "owned_by": "gateway"}
        for name in snapshot.public_names()
        if policy.allows_model(name)
    ]
    return HttpResponse(
        orjson.dumps({"object": "list", "data": data}), content_type="application/json"
    )


@router.post(
    "/v1/embeddings",
    response={200: dict, **_ERRORS},
    summary="Create embeddings (where the provider has them)",
    openapi_extra=_body_doc(EmbeddingsIn),
)
async def embeddings(request: HttpRequest):
    ingress = ingress_start(request, endpoint="embeddings")
    try:
        payload: EmbeddingsIn = await ingress_open(ingress, request, parse=EmbeddingsIn)
        inputs: list = payload.input if isinstance(payload.input, list) else [payload.input]
        if inputs and isinstance(inputs[0], int):
            inputs = [inputs]
        call = await embedding_call_open(ingress=ingress, inputs=inputs)
    except GatewayError as error:
        return await ingress_reject(ingress, error)
    extra = payload.model_dump(exclude_none=True, exclude={"model", "input"})
    try:
        result = await call.run_embed(
            EmbeddingRequest(model=payload.model, input=inputs, extra=extra)
        )
    except ProviderError as exc:
        return call_error_response(ingress, call, exc)
    body = result.raw or {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": vector}
            for i, vector in enumerate(result.data)
        ],
        "model": payload.model,
        "usage": {
            "prompt_tokens": result.usage.prompt_tokens,
            "total_tokens": result.usage.prompt_tokens,
        },
    }
    return await json_answer(ingress, call, body)
