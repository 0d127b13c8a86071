"""OpenAI-shaped endpoints beyond chat: `POST /v1/responses` (Responses API, stateless),
`POST /v1/completions` (legacy text completions), `GET /v1/models/{id}`, and the `n > 1`
path of chat completions. Views only parse, open the inference call (routing.ingress) and
shape the answer; the translations live in routing/protocols/, and the call settles inside
routing.inference on every exit."""

from __future__ import annotations

import time

import orjson
from django.http import HttpRequest, HttpResponse
from ninja import Router

from providers.types import ChatRequest, ProviderError
from routing.errors import GatewayError
from routing.inference import InferenceCall, inference_call_open
from routing.ingress import (
    Ingress,
    call_error_response,
    call_respond,
    ingress_error_response,
    ingress_key_check,
    ingress_open,
    ingress_reject,
    ingress_start,
    json_answer_shaped,
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
from routing.snapshot import snapshot_get
from routing.streaming import StreamEncoder

router = Router(tags=["openai"])

_ERRORS = {400: dict, 401: dict, 403: dict, 404: dict, 429: dict, 502: dict, 504: dict}


async def _choices_answer(
    ingress: Ingress, call: InferenceCall, chats: list[ChatRequest], *, n: int, shape
) -> HttpResponse:
    """Every choice of every request (natively or by fan-out) inside one settled call:
    `shape(answers)` is the JSON body."""
    try:
        answers = await call.run_settled(choices_complete(call, chats, n=n))
    except ProviderError as exc:
        return call_error_response(ingress, call, exc)
    return await json_answer_shaped(ingress, call, lambda: shape(answers))


# -- POST /v1/responses ---------------------------------------------------------------------
@router.post("/v1/responses", response=_ERRORS | {200: dict}, summary="Create a response")
async def create_response(request: HttpRequest):
    ingress = ingress_start(request, endpoint="responses")
    try:
        payload = await ingress_open(ingress, request, parse=responses_request_parse)
        chat = chat_request_from_responses(payload)
        call = await inference_call_open(ingress=ingress, chat=chat)
    except GatewayError as error:
        return await ingress_reject(ingress, error)
    shell = ResponseShell(payload, response_id=new_id("resp"), chat=chat)

    def body(response):
        response.usage = call.settled_usage or response.usage
        return response_object(shell, response)

    return await call_respond(
        ingress, call, chat, body=body, encoder=lambda: ResponsesStreamEncoder(shell)
    )


async def _not_stored(request: HttpRequest, response_id: str) -> HttpResponse:
    ingress = ingress_start(request, endpoint="responses")
    if (refused := await ingress_key_check(ingress, request)) is not None:
        return refused
    return ingress_error_response(
        ingress,
        GatewayError(
            status=404,
            message=f"No response found with id '{response_id}': this gateway does not store "
            "responses (store=false semantics); keep the output you received.",
            code="response_not_stored",
            param="response_id",
        ),
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
    ingress = ingress_start(request, endpoint="completions")
    try:
        payload = await ingress_open(ingress, request, parse=completions_request_parse)
        assert ingress.route is not None
        prompts = completion_prompts(payload)
        chats = [chat_request_from_prompt(payload, prompt) for prompt in prompts]
        # Reserve for every answer: each upstream call sends its prompt, each choice may
        # use the whole output bound (billed per choice, see routing/protocols/choices.py).
        sends = 1 if n_native(ingress.route) else payload.n
        admitted = ChatRequest(
            model=payload.model,
            messages=[m for chat in chats for m in chat.messages] * sends,
            max_tokens=(chats[0].max_tokens or 1) * len(prompts) * payload.n,
            stream=payload.stream,
        )
        call = await inference_call_open(ingress=ingress, chat=admitted)
    except GatewayError as error:
        return await ingress_reject(ingress, error)

    completion_id = new_completion_id()
    if payload.stream:

        def encoder() -> StreamEncoder:
            return CompletionsStreamEncoder(
                completion_id=completion_id,
                model=payload.model,
                include_usage=bool(payload.stream_options and payload.stream_options.include_usage),
                echo_prompt=prompts[0] if payload.echo else None,
            )

        return await call_respond(ingress, call, chats[0], body=lambda _: {}, encoder=encoder)

    def shape(answers) -> dict:
        pairs = [
            (prompt, answer)
            for prompt, group in zip(prompts, answers, strict=True)
            for answer in group
        ]
        return completion_object(
            completion_id=completion_id,
            model=payload.model,
            choices=pairs,
            usage=call.settled_usage,
            echo=payload.echo,
        )

    return await _choices_answer(ingress, call, chats, n=payload.n, shape=shape)


# -- chat completions with n > 1 ------------------------------------------------------------
async def chat_completion_choices(
    ingress: Ingress, *, chat: ChatRequest, n: int, encoder
) -> HttpResponse:
    """`/v1/chat/completions` with n > 1: natively on OpenAI-kind routes (streams too),
    by concurrent fan-out elsewhere (not streamed), billed per choice. `ingress` is opened
    (key, body, route); this opens the call."""
    assert ingress.route is not None
    native = n_native(ingress.route)
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
            ingress=ingress, chat=admission_chat(chat, route=ingress.route, copies=n)
        )
    except GatewayError as error:
        return await ingress_reject(ingress, error)
    if chat.stream:
        return await call_respond(ingress, call, chat, body=lambda _: {}, encoder=encoder)
    return await _choices_answer(
        ingress,
        call,
        [chat],
        n=n,
        shape=lambda answers: chat_completion_object(
            model=chat.model, answers=answers[0], usage=call.settled_usage
        ),
    )


# -- GET /v1/models/{id} --------------------------------------------------------------------
@router.get("/v1/models/{path:model_id}", response={200: dict, 401: dict, 404: dict})
async def retrieve_model(request: HttpRequest, model_id: str):
    anthropic_shape = wants_anthropic_shape(request.META)
    ingress = ingress_start(
        request, endpoint="models", shape="anthropic" if anthropic_shape else "openai"
    )
    if (refused := await ingress_key_check(ingress, request)) is not None:
        return refused
    policy = ingress.policy
    assert policy is not None
    snapshot = await snapshot_get()
    known = snapshot.resolve(model_id) is not None and policy.allows_model(model_id)
    if anthropic_shape:
        from routing.endpoints.anthropic_extras import anthropic_model_response

        return anthropic_model_response(model_id if known else None)
    if not known:
        # A model the key may not use is reported like an unknown one: no catalog probing.
        return ingress_error_response(
            ingress,
            GatewayError(
                status=404,
                message=f"The model '{model_id}' does not exist",
                code="model_not_found",
                param="model",
            ),
        )
    body = {"id": model_id, "object": "model", "created": int(time.time()), "owned_by": "gateway"}
    return HttpResponse(orjson.dumps(body), content_type="application/json")
