"""Anthropic-shaped endpoints beside `/v1/messages`: `POST /v1/messages/count_tokens`
(exact through Anthropic's own endpoint when the model is served by Anthropic, else our
tokenizer's count, flagged `x-gateway-token-count: estimated`) and the Anthropic shape of
the models endpoints (used by routing/api.py and routing/endpoints/responses.py)."""

from __future__ import annotations

import dataclasses
import time

import orjson
from django.http import HttpRequest, HttpResponse
from ninja import Router

from providers.adapters.base import adapter_for
from providers.tokens import count_message_tokens, count_text_tokens
from providers.types import ProviderError
from routing.errors import GatewayError, anthropic_error_response, gateway_error_from_provider
from routing.ingress import ingress_open, ingress_refusal_record, ingress_start
from routing.protocols.anthropic_native import messages_chat_request
from routing.protocols.models import anthropic_model_list, anthropic_model_object

router = Router(tags=["anthropic"])


def anthropic_models_response(names: list[str]) -> HttpResponse:
    body = anthropic_model_list(names, created=int(time.time()))
    return HttpResponse(orjson.dumps(body), content_type="application/json")


def anthropic_model_response(name: str | None) -> HttpResponse:
    from routing.messages import anthropic_error_response

    if name is None:
        return anthropic_error_response(
            GatewayError(status=404, message="The model does not exist", code="model_not_found")
        )
    body = anthropic_model_object(name, created=int(time.time()))
    return HttpResponse(orjson.dumps(body), content_type="application/json")


def _count_data(data: object) -> dict:
    """A count_tokens request parses as a Messages request without max_tokens."""
    if not isinstance(data, dict):
        raise GatewayError(status=400, message="Request body must be a JSON object")
    data = dict(data)
    data.pop("stream", None)
    data["max_tokens"] = 1
    return data


@router.post("/v1/messages/count_tokens", response={200: dict})
async def count_tokens(request: HttpRequest):
    # routing.messages holds the Messages conversions (imported late: it imports routing
    # modules that import this one).
    from routing.messages import chat_request_from_anthropic, messages_payload_validate

    ingress = ingress_start(request, endpoint="count_tokens", shape="anthropic")
    try:
        payload = await ingress_open(
            ingress,
            request,
            parse=lambda data: messages_payload_validate(_count_data(data)),
            idempotent=False,
        )
        route = ingress.route
        assert route is not None
        chat = messages_chat_request(
            payload,
            body=orjson.dumps(_count_data(orjson.loads(request.body))),
            route=route,
            beta=request.META.get("HTTP_ANTHROPIC_BETA"),
            convert=chat_request_from_anthropic,
        )
    except GatewayError as error:
        await ingress_refusal_record(ingress, error)
        return anthropic_error_response(error)
    target = route.targets[0]
    if target.provider.kind == "anthropic" and chat.native is not None:
        upstream = dataclasses.replace(chat, model=target.model.upstream_model)
        try:
            tokens = await adapter_for(target.provider).count_tokens(upstream)
        except ProviderError as exc:
            return anthropic_error_response(gateway_error_from_provider(exc))
        flag = "exact"
    else:
        tokens = count_message_tokens(chat.messages)
        if chat.tools:
            tokens += count_text_tokens(orjson.dumps(chat.tools).decode())
        flag = "estimated"
    response = HttpResponse(orjson.dumps({"input_tokens": tokens}), content_type="application/json")
    response["x-gateway-token-count"] = flag
    return response
