"""OpenAI-shaped endpoints beyond chat: `POST /v1/responses` (Responses API, stateless),
`POST /v1/completions` (legacy text completions), `GET /v1/models/{id}`, and the `n > 1`
path of chat completions. Views only parse, open the inference call and shape the answer;
the translations live in routing/protocols/."""

from __future__ import annotations

import asyncio
import time

import orjson
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from ninja import Router

from providers.types import ChatRequest, ProviderError
from routing.api import (
    _reject,
    _request_id,
    _stream_response,
    _with_headers,
    authenticate,
    resolve_route,
)
from routing.errors import (
    GatewayError,
    error_response,
    gateway_error_from_admission,
    gateway_error_from_provider,
)
from routing.protocols.choices import (
    admission_chat,
    chat_completion_object,
    choices_complete,
    n_native,
)
from routing.protocols.completions import (
    CompletionsStreamEncoder,
    chat_request_from_prompt,
    completion_object,
    completion_prompts,
    completions_request_parse,
    new_completion_id,
)
from routing.protocols.models import wants_anthropic_shape
from routing.protocols.responses import (
    ResponseShell,
    ResponsesStreamEncoder,
    chat_request_from_responses,
    new_id,
    response_object,
    responses_request_parse,
)
from routing.services import InferenceCall, inference_call_open
from routing.snapshot import ResolvedRoute, snapshot_get
from routing.streaming import keepalive_interval, sse_stream, stream_headers, stream_start
from tenants.admission import AdmissionDenied

router = Router(tags=["openai"])

_ERRORS = {400: dict, 401: dict, 403: dict, 404: dict, 429: dict, 502: dict, 504: dict}


def _body(request: HttpRequest) -> bytes:
    try:
        return request.body
    except RequestDataTooBig:
        raise GatewayError(
            status=413, message="Request body too large", code="request_too_large"
        ) from None


def _json(body: dict, call: InferenceCall) -> HttpResponse:
    return _with_headers(
        HttpResponse(orjson.dumps(body), content_type="application/json"), call.gateway_headers()
    )


async def _failed(call: InferenceCall, exc: ProviderError) -> HttpResponse:
    error = gateway_error_from_provider(exc)
    await call.finish(status_code=error.status, outcome="error", error_type=exc.code)
    return error_response(error, call.gateway_headers())


async def _cancelled(call: InferenceCall) -> None:
    await asyncio.shield(
        call.finish(status_code=499, outcome="cancelled", error_type="client_disconnected")
    )


async def _stream(call: InferenceCall, chat: ChatRequest, encoder) -> HttpResponse:
    try:
        pump = await stream_start(call, chat, keepalive_s=keepalive_interval())
    except ProviderError as exc:
        return await _failed(call, exc)
    response = StreamingHttpResponse(
        sse_stream(call=call, pump=pump, encoder=encoder), content_type="text/event-stream"
    )
    return _with_headers(response, stream_headers(call))


# -- POST /v1/responses ---------------------------------------------------------------------
@router.post("/v1/responses", response=_ERRORS | {200: dict}, summary="Create a response")
async def create_response(request: HttpRequest):
    request.started_at = time.perf_counter()
    endpoint = "responses"
    try:
        body = _body(request)
        policy = await authenticate(request)
        payload = responses_request_parse(body)
        route = await resolve_route(request, policy, payload.model)
        chat = chat_request_from_responses(payload)
        call = await inference_call_open(
            request_id=_request_id(request),
            policy=policy,
            route=route,
            chat=chat,
            endpoint=endpoint,
        )
    except GatewayError as error:
        return await _reject(request, error, endpoint=endpoint)
    except AdmissionDenied as denied:
        return await _reject(request, gateway_error_from_admission(denied), endpoint=endpoint)

    shell = ResponseShell(payload, response_id=new_id("resp"), chat=chat)
    if chat.stream:
        return await _stream(call, chat, ResponsesStreamEncoder(shell))
    try:
        response = await call.complete(chat)
    except ProviderError as exc:
        return await _failed(call, exc)
    except asyncio.CancelledError:
        await _cancelled(call)
        raise
    await call.finish(status_code=200, outcome="ok")
    response.usage = call.settled_usage or response.usage
    return _json(response_object(shell, response), call)


async def _not_stored(request: HttpRequest, response_id: str) -> HttpResponse:
    try:
        await authenticate(request)
    except GatewayError as error:
        return error_response(error)
    return error_response(
        GatewayError(
            status=404,
            message=f"No response found with id '{response_id}': this gateway does not store "
            "responses (store=false semantics); keep the output you received.",
            code="response_not_stored",
            param="response_id",
        )
    )


@router.get("/v1/responses/{response_id}", response={401: dict, 404: dict})
async def retrieve_response(request: HttpRequest, response_id: str):
    return await _not_stored(request, response_id)


@router.delete("/v1/responses/{response_id}", response={401: dict, 404: dict})
async def delete_response(request: HttpRequest, response_id: str):
    return await _not_stored(request, response_id)


# -- POST /v1/completions -------------------------------------------------------------------
@router.post("/v1/completions", response=_ERRORS | {200: dict}, summary="Create a completion")
async def create_completion(request: HttpRequest):
    request.started_at = time.perf_counter()
    endpoint = "completions"
    try:
        body = _body(request)
        policy = await authenticate(request)
        payload = completions_request_parse(body)
        route = await resolve_route(request, policy, payload.model)
        prompts = completion_prompts(payload)
        chats = [chat_request_from_prompt(payload, prompt) for prompt in prompts]
        # Reserve for every answer: each upstream call sends its prompt, each choice may
        # use the whole output bound (billed per choice, see routing/protocols/choices.py).
        sends = 1 if n_native(route) else payload.n
        admitted = ChatRequest(
            model=payload.model,
            messages=[m for chat in chats for m in chat.messages] * sends,
            max_tokens=(chats[0].max_tokens or 1) * len(prompts) * payload.n,
            stream=payload.stream,
        )
        call = await inference_call_open(
            request_id=_request_id(request),
            policy=policy,
            route=route,
            chat=admitted,
            endpoint=endpoint,
        )
    except GatewayError as error:
        return await _reject(request, error, endpoint=endpoint)
    except AdmissionDenied as denied:
        return await _reject(request, gateway_error_from_admission(denied), endpoint=endpoint)

    completion_id = new_completion_id()
    if payload.stream:
        encoder = CompletionsStreamEncoder(
            completion_id=completion_id,
            model=payload.model,
            include_usage=bool(payload.stream_options and payload.stream_options.include_usage),
            echo_prompt=prompts[0] if payload.echo else None,
        )
        return await _stream(call, chats[0], encoder)
    try:
        answers = await choices_complete(call, chats, n=payload.n)
    except ProviderError as exc:
        return await _failed(call, exc)
    except asyncio.CancelledError:
        await _cancelled(call)
        raise
    await call.finish(status_code=200, outcome="ok")
    pairs = [
        (prompt, answer) for prompt, group in zip(prompts, answers, strict=True) for answer in group
    ]
    body_out = completion_object(
        completion_id=completion_id,
        model=payload.model,
        choices=pairs,
        usage=call.settled_usage,
        echo=payload.echo,
    )
    return _json(body_out, call)


# -- chat completions with n > 1 ------------------------------------------------------------
async def chat_completion_choices(
    request: HttpRequest, *, chat: ChatRequest, policy, route: ResolvedRoute, n: int
) -> HttpResponse:
    """`/v1/chat/completions` with n > 1: natively on OpenAI-kind routes (streams too),
    by concurrent fan-out elsewhere (not streamed), billed per choice."""
    endpoint = "chat"
    native = n_native(route)
    try:
        if chat.stream and not native:
            raise GatewayError(
                status=400,
                message="n > 1 with stream=true needs an OpenAI-kind provider; this model is "
                "served by fan-out: send stream=false",
                code="unsupported_parameter",
                param="n",
            )
        call = await inference_call_open(
            request_id=_request_id(request),
            policy=policy,
            route=route,
            chat=admission_chat(chat, route=route, copies=n),
            endpoint=endpoint,
        )
    except GatewayError as error:
        return await _reject(request, error, endpoint=endpoint)
    except AdmissionDenied as denied:
        return await _reject(request, gateway_error_from_admission(denied), endpoint=endpoint)
    if chat.stream:
        return await _stream_response(call, chat, model=chat.model)
    try:
        [answers] = await choices_complete(call, [chat], n=n)
    except ProviderError as exc:
        return await _failed(call, exc)
    except asyncio.CancelledError:
        await _cancelled(call)
        raise
    await call.finish(status_code=200, outcome="ok")
    body = chat_completion_object(model=chat.model, answers=answers, usage=call.settled_usage)
    return _json(body, call)


# -- GET /v1/models/{id} --------------------------------------------------------------------
@router.get("/v1/models/{path:model_id}", response={200: dict, 401: dict, 404: dict})
async def retrieve_model(request: HttpRequest, model_id: str):
    anthropic_shape = wants_anthropic_shape(request.META)
    try:
        policy = await authenticate(request)
    except GatewayError as error:
        if anthropic_shape:
            from routing.messages import anthropic_error_response

            return anthropic_error_response(error)
        return error_response(error)
    snapshot = await snapshot_get()
    known = snapshot.resolve(model_id) is not None and policy.allows_model(model_id)
    if anthropic_shape:
        from routing.endpoints.anthropic_extras import anthropic_model_response

        return anthropic_model_response(model_id if known else None)
    if not known:
        # A model the key may not use is reported like an unknown one: no catalog probing.
        return error_response(
            GatewayError(
                status=404,
                message=f"The model '{model_id}' does not exist",
                code="model_not_found",
                param="model",
            )
        )
    body = {"id": model_id, "object": "model", "created": int(time.time()), "owned_by": "gateway"}
    return HttpResponse(orjson.dumps(body), content_type="application/json")
