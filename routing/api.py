"""The public inference API (django-ninja, async). Views parse, call the routing service and
shape the answer; every path out of a view leaves exactly one usage event."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from datetime import UTC, datetime

import orjson
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from ninja import NinjaAPI
from ninja.errors import HttpError, ValidationError
from ninja.parser import Parser

from providers.types import ChatRequest, EmbeddingRequest, ProviderError
from routing.errors import (
    GatewayError,
    error_response,
    gateway_error_from_admission,
    gateway_error_from_provider,
)
from routing.schemas import ChatCompletionIn, EmbeddingsIn, ErrorOut, ModelListOut
from routing.services import InferenceCall, inference_call_open, rejected_request_record
from routing.snapshot import ResolvedRoute, snapshot_get
from routing.sse import completion_body
from routing.streaming import (
    OpenAIStreamEncoder,
    keepalive_interval,
    sse_stream,
    stream_headers,
    stream_start,
)
from tenants.admission import AdmissionDenied
from tenants.keys import api_key_from_headers
from tenants.policy import KeyPolicy
from tenants.selectors import api_key_policy_get

logger = logging.getLogger("gateway.api")


class OrjsonParser(Parser):
    def parse_body(self, request: HttpRequest):
        return orjson.loads(request.body)


api = NinjaAPI(
    title="LLM Gateway inference API",
    version="1",
    description="OpenAI-compatible inference endpoints. Authenticate with "
    "`Authorization: Bearer <key>` or `X-API-Key: <key>`.",
    urls_namespace="inference",
    docs_url="/v1/docs",
    openapi_url="/v1/openapi.json",
    parser=OrjsonParser(),
)


# -- errors ------------------------------------------------------------------------------
def _request_id(request: HttpRequest) -> str:
    rid = getattr(request, "request_id", None)
    if not rid:
        rid = f"req_{random.getrandbits(128):032x}"
        request.request_id = rid
    return rid


async def _reject(request: HttpRequest, error: GatewayError, *, endpoint: str) -> HttpResponse:
    """Answer an error that happened before any upstream call, leaving its usage event."""
    await rejected_request_record(
        request_id=_request_id(request),
        policy=getattr(request, "key_policy", None),
        route_name=getattr(request, "route_name", ""),
        endpoint=endpoint,
        status_code=error.status,
        error_type=error.code or error.error_type,
        started=getattr(request, "started_at", time.perf_counter()),
    )
    return error_response(error)


@api.exception_handler(GatewayError)
def _on_gateway_error(request, exc: GatewayError):
    return error_response(exc)


@api.exception_handler(ValidationError)
def _on_validation_error(request, exc: ValidationError):
    first = exc.errors[0] if exc.errors else {}
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "payload")]
    param = ".".join(loc) or None
    message = first.get("msg", "Invalid request body")
    error = GatewayError(
        status=400,
        message=f"{message}" + (f" ({param})" if param else ""),
        code="invalid_value" if param else "invalid_request",
        param=param,
    )
    return error_response(error)


@api.exception_handler(HttpError)
def _on_http_error(request, exc: HttpError):
    status = exc.status_code
    message = str(exc) if status != 400 else "Request body is not valid JSON"
    return error_response(GatewayError(status=status, message=message, code="invalid_json"))


@api.exception_handler(RequestDataTooBig)
def _on_too_big(request, exc):
    return error_response(
        GatewayError(status=413, message="Request body too large", code="request_too_large")
    )


@api.exception_handler(Exception)
def _on_unexpected(request, exc: Exception):
    logger.error("api.unhandled_error", exc_info=exc, extra={"error_class": type(exc).__name__})
    return error_response(
        GatewayError(
            status=500, message="Internal gateway error", error_type="server_error", code=None
        )
    )


# -- auth and routing --------------------------------------------------------------------
async def authenticate(request: HttpRequest) -> KeyPolicy:
    request.started_at = getattr(request, "started_at", time.perf_counter())
    raw_key = api_key_from_headers(
        # META, not request.headers: the latter builds a case-insensitive copy of every header.
        request.META.get("HTTP_AUTHORIZATION"),
        request.META.get("HTTP_X_API_KEY"),
    )
    if raw_key is None:
        raise GatewayError(
            status=401,
            message="Missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key'",
            error_type="authentication_error",
            code="missing_api_key",
        )
    policy = await api_key_policy_get(raw_key=raw_key)
    if policy is None:
        raise GatewayError(
            status=401,
            message="Incorrect API key provided",
            error_type="authentication_error",
            code="invalid_api_key",
        )
    if not policy.usable_at(datetime.now(tz=UTC)):
        code = (
            "revoked_api_key"
            if policy.revoked
            else ("tenant_disabled" if not policy.tenant_active else "expired_api_key")
        )
        raise GatewayError(
            status=401,
            message="This API key is no longer valid",
            error_type="authentication_error",
            code=code,
        )
    request.key_policy = policy
    return policy


async def resolve_route(request: HttpRequest, policy: KeyPolicy, model: str) -> ResolvedRoute:
    request.route_name = model
    snapshot = await snapshot_get()
    route = snapshot.resolve(model)
    if route is None:
        raise GatewayError(
            status=404,
            message=f"The model '{model}' does not exist",
            code="model_not_found",
            param="model",
        )
    if not policy.allows_model(model):
        raise GatewayError(
            status=403,
            message=f"This key may not use the model '{model}'",
            error_type="permission_error",
            code="model_not_allowed",
            param="model",
        )
    return route


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


def _raw_messages(request: HttpRequest) -> list[dict] | None:
    """The body's messages as sent, once validation has passed (a second parse of the body
    is cheaper than dumping the validated models)."""
    try:
        messages = orjson.loads(request.body).get("messages")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return messages if isinstance(messages, list) else None


def _with_headers(response: HttpResponse, headers: dict[str, str]) -> HttpResponse:
    for name, value in headers.items():
        response[name] = value
    return response


# -- endpoints ---------------------------------------------------------------------------
@api.post(
    "/v1/chat/completions",
    response={
        200: dict,
        400: ErrorOut,
        401: ErrorOut,
        403: ErrorOut,
        404: ErrorOut,
        429: ErrorOut,
        502: ErrorOut,
        504: ErrorOut,
    },
    summary="Create a chat completion (OpenAI-compatible, SSE when stream=true)",
)
async def chat_completions(request: HttpRequest, payload: ChatCompletionIn):
    started = time.perf_counter()
    request.started_at = started
    try:
        policy = await authenticate(request)
        route = await resolve_route(request, policy, payload.model)
        chat = chat_request_from(payload, raw_messages=_raw_messages(request))
        if (payload.n or 1) > 1:
            from routing.endpoints.responses import chat_completion_choices

            return await chat_completion_choices(
                request, chat=chat, policy=policy, route=route, n=payload.n
            )
        call = await inference_call_open(
            request_id=_request_id(request), policy=policy, route=route, chat=chat, endpoint="chat"
        )
    except GatewayError as error:
        return await _reject(request, error, endpoint="chat")
    except AdmissionDenied as denied:
        return await _reject(request, gateway_error_from_admission(denied), endpoint="chat")

    if chat.stream:
        return await _stream_response(call, chat, model=payload.model)

    try:
        response = await call.complete(chat)
    except ProviderError as exc:
        error = gateway_error_from_provider(exc)
        await call.finish(status_code=error.status, outcome="error", error_type=exc.code)
        return error_response(error, call.gateway_headers())
    except asyncio.CancelledError:
        await asyncio.shield(call.finish(status_code=499, outcome="cancelled"))
        raise
    await call.finish(status_code=200, outcome="ok")
    body = completion_body(response=response, model=response.model or payload.model)
    return _with_headers(
        HttpResponse(orjson.dumps(body), content_type="application/json"),
        call.gateway_headers(),
    )


async def _stream_response(call: InferenceCall, chat: ChatRequest, *, model: str) -> HttpResponse:
    # The first chunk is awaited before the headers go out, so a request that fails before any
    # output still gets its real status (see routing/streaming.py).
    try:
        pump = await stream_start(call, chat, keepalive_s=keepalive_interval())
    except ProviderError as exc:
        error = gateway_error_from_provider(exc)
        await call.finish(status_code=error.status, outcome="error", error_type=exc.code)
        return error_response(error, call.gateway_headers())
    encoder = OpenAIStreamEncoder(
        completion_id=f"chatcmpl-{random.getrandbits(116):029x}",
        model=model,
        include_usage=chat.include_usage,
    )
    response = StreamingHttpResponse(
        sse_stream(call=call, pump=pump, encoder=encoder), content_type="text/event-stream"
    )
    return _with_headers(response, stream_headers(call))


@api.get("/v1/models", response={200: ModelListOut, 401: ErrorOut}, summary="List usable models")
async def list_models(request: HttpRequest):
    anthropic_shape = wants_anthropic_shape(request.META)
    try:
        policy = await authenticate(request)
    except GatewayError as error:
        if anthropic_shape:
            return messages.anthropic_error_response(error)
        return error_response(error)
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


@api.post(
    "/v1/embeddings",
    response={200: dict, 400: ErrorOut, 401: ErrorOut, 403: ErrorOut, 404: ErrorOut},
    summary="Create embeddings (where the provider has them)",
)
async def embeddings(request: HttpRequest, payload: EmbeddingsIn):
    request.started_at = time.perf_counter()
    try:
        policy = await authenticate(request)
        route = await resolve_route(request, policy, payload.model)
        inputs = payload.input if isinstance(payload.input, list) else [payload.input]
        if inputs and isinstance(inputs[0], int):
            inputs = [inputs]
        call = InferenceCall(
            request_id=_request_id(request), policy=policy, route=route, endpoint="embeddings"
        )
        text_messages = [{"role": "user", "content": i} for i in inputs if isinstance(i, str)]
        await call.admit(messages=text_messages or [{"role": "user", "content": ""}], max_tokens=1)
    except GatewayError as error:
        return await _reject(request, error, endpoint="embeddings")
    except AdmissionDenied as denied:
        return await _reject(request, gateway_error_from_admission(denied), endpoint="embeddings")
    extra = payload.model_dump(exclude_none=True, exclude={"model", "input"})
    try:
        result = await call.embed(EmbeddingRequest(model=payload.model, input=inputs, extra=extra))
    except ProviderError as exc:
        error = gateway_error_from_provider(exc)
        await call.finish(status_code=error.status, outcome="error", error_type=exc.code)
        return error_response(error, call.gateway_headers())
    await call.finish(status_code=200, outcome="ok")
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
    return _with_headers(
        HttpResponse(orjson.dumps(body), content_type="application/json"), call.gateway_headers()
    )


# The other ingress shapes register their views on `api` and reuse the helpers above; they are
# imported last so that importing either module first also works.
from routing import generate, messages  # noqa: E402, F401
from routing.endpoints.anthropic_extras import anthropic_models_response  # noqa: E402
from routing.endpoints.anthropic_extras import router as _anthropic_extras_router  # noqa: E402
from routing.endpoints.responses import router as _responses_router  # noqa: E402
from routing.protocols.models import wants_anthropic_shape  # noqa: E402

api.add_router("", _responses_router)
api.add_router("", _anthropic_extras_router)
