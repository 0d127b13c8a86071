"""Anthropic's wire shape: `POST /v1/messages`, so the official `anthropic` SDK works against
the gateway with a gateway key. The conversion both ways lives in routing.messages; this view
parses and shapes, errors in Anthropic's shape."""

from __future__ import annotations

import uuid

from django.http import HttpRequest
from ninja import Router

from providers.tokens import estimate_prompt_tokens_fast
from routing.errors import GatewayError
from routing.inference import inference_call_open
from routing.ingress import call_respond, ingress_open, ingress_reject, ingress_start
from routing.messages import (
    AnthropicStreamEncoder,
    MessagesIn,
    anthropic_message_from,
    chat_request_from_anthropic,
    messages_payload_validate,
)
from routing.protocols.anthropic_native import messages_chat_request

router = Router(tags=["Anthropic"])

ENDPOINT = "messages"


@router.post(
    "/v1/messages",
    response={200: dict},
    summary="Create a message (Anthropic Messages API compatible, SSE when stream=true)",
    description="Accepts the Messages API request (`x-api-key` or `Authorization: Bearer`) "
    "and answers an Anthropic Message; errors use Anthropic's error shape.",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": MessagesIn.model_json_schema()}},
        }
    },
)
async def create_message(request: HttpRequest):
    ingress = ingress_start(request, endpoint=ENDPOINT, shape="anthropic")
    try:
        payload: MessagesIn = await ingress_open(ingress, request, parse=messages_payload_validate)
        assert ingress.route is not None
        # For Anthropic targets the client's own body (and anthropic-beta) goes upstream as
        # it came; other kinds get the translation, or a 400 for what cannot be translated.
        chat = messages_chat_request(
            payload,
            body=request.body,
            route=ingress.route,
            beta=request.META.get("HTTP_ANTHROPIC_BETA"),
            convert=chat_request_from_anthropic,
        )
        call = await inference_call_open(ingress=ingress, chat=chat)
    except GatewayError as error:
        return await ingress_reject(ingress, error)
    message_id = f"msg_{uuid.uuid4().hex[:24]}"
    model = payload.model
    return await call_respond(
        ingress,
        call,
        chat,
        body=lambda response: (
            response.native
            or anthropic_message_from(response=response, model=model, message_id=message_id)
        ),
        encoder=lambda: AnthropicStreamEncoder(
            message_id=message_id,
            model=model,
            input_tokens_estimate=estimate_prompt_tokens_fast(chat.messages),
        ),
    )
