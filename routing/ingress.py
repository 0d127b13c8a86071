"""How a request enters the gateway, for every wire shape (OpenAI, Anthropic, native, websocket).

One typed context, `Ingress`, carries what every step needs (the gateway's request id, the
client's own id, the start time, the key policy, the route, the endpoint and the error shape);
nothing is stashed on the HttpRequest. An endpoint is five lines:

    ingress = ingress_start(request, endpoint="chat")
    try:
        payload = await ingress_open(ingress, request, parse=ChatCompletionIn)  # auth, body, route
        chat = chat_request_from(payload)
        call = await inference_call_open(ingress=ingress, chat=chat)            # admission
    except GatewayError as error:
        return await ingress_reject(ingress, error)
    return await call_respond(ingress, call, chat, body=..., encoder=...)

Order matters for money: the key is authenticated BEFORE the body is read, so a stranger's
request costs a hash and leaves no row; a known key's request leaves exactly one usage event
whatever fails after that (bad JSON, schema, unknown model, refusal, upstream, disconnect)."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

import orjson
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError

from providers.types import ChatRequest, ChatResponse, ProviderError
from routing.cache import CacheDirective, cache_directive_from_headers
from routing.errors import (
    GatewayError,
    anthropic_error_response,
    error_response,
    gateway_error_from_provider,
)
from routing.idempotency import (
    IdempotencyClaim,
    IdempotentReplay,
    idempotency_claim,
    idempotency_complete,
    idempotency_release,
)
from routing.inference import InferenceCall, hold_seconds, rejected_request_record
from routing.snapshot import ResolvedRoute, snapshot_get
from routing.streaming import (
    StreamEncoder,
    keepalive_interval,
    sse_stream,
    stream_headers,
    stream_start,
)
from tenants.keys import api_key_from_headers
from tenants.policy import KeyPolicy
from tenants.selectors import api_key_policy_get

logger = logging.getLogger("gateway.ingress")

Shape = Literal["openai", "anthropic"]
P = TypeVar("P")

CLIENT_REQUEST_ID_MAX = 128
NO_DIRECTIVE = CacheDirective()


@dataclass(slots=True)
class Ingress:
    request_id: str  # the gateway's: the usage event's identity, never the client's
    client_request_id: str  # the client's x-request-id (capped, printable), "" when none
    started: float  # perf_counter at arrival
    endpoint: str  # usage/metrics label: chat, embeddings, messages, generate, ws_chat...
    shape: Shape = "openai"  # how errors are written
    policy: KeyPolicy | None = None
    route: ResolvedRoute | None = None
    route_name: str = ""  # what the client asked for, even when it resolves to nothing
    idempotency: IdempotencyClaim | None = None  # the Idempotency-Key record this request holds
    # Cache-Control / x-gateway-cache / x-gateway-cache-ttl of the request (docs/cache.md).
    cache_directive: CacheDirective = NO_DIRECTIVE

    @property
    def headers(self) -> dict[str, str]:
        """Headers every answer of this ingress carries besides the middleware's."""
        if self.shape == "anthropic":
            return {"request-id": self.request_id}
        return {}


def new_request_id() -> str:
    # Unique, not secret: the PRNG is enough and costs no syscall (uuid4 reads os.urandom).
    return f"req_{random.getrandbits(128):032x}"


def client_request_id_clean(raw: Any) -> str:
    """The client's own request id as we keep it: a string, printable, at most 128
    characters (longer ones are cut); anything else is dropped."""
    if raw is None:
        return ""
    text = str(raw)[:CLIENT_REQUEST_ID_MAX]
    return text if text.isprintable() else ""


def ingress_start(request: HttpRequest, *, endpoint: str, shape: Shape = "openai") -> Ingress:
    """The context of one HTTP request: ids and clock. Never fails."""
    meta = request.META
    directive = NO_DIRECTIVE
    cache_control = meta.get("HTTP_CACHE_CONTROL")
    gateway_cache = meta.get("HTTP_X_GATEWAY_CACHE")
    if cache_control or gateway_cache:
        directive = cache_directive_from_headers(
            cache_control=cache_control,
            gateway_cache=gateway_cache,
            ttl=meta.get("HTTP_X_GATEWAY_CACHE_TTL"),
        )
    return Ingress(
        cache_directive=directive,
        # RequestIdMiddleware assigns the gateway's id (and echoes it); without it, a new one.
        request_id=getattr(request, "request_id", None) or new_request_id(),
        client_request_id=client_request_id_clean(
            meta.get("HTTP_X_CLIENT_REQUEST_ID") or meta.get("HTTP_X_REQUEST_ID")
        ),
        started=time.perf_counter(),
        endpoint=endpoint,
        shape=shape,
    )


# -- the steps ---------------------------------------------------------------------------------
async def ingress_authenticate(ingress: Ingress, raw_key: str | None) -> KeyPolicy:
    """The usable policy of the presented key (noted on the ingress), or a 401 GatewayError."""
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
    ingress.policy = policy
    return policy


def request_raw_key(request: HttpRequest) -> str | None:
    # META, not request.headers: the latter builds a case-insensitive copy of every header.
    return api_key_from_headers(
        request.META.get("HTTP_AUTHORIZATION"), request.META.get("HTTP_X_API_KEY")
    )


def _invalid(message: str, *, param: str | None = None, code: str | None = None) -> GatewayError:
    return GatewayError(
        status=400,
        message=message,
        code=code or ("invalid_value" if param else "invalid_request"),
        param=param,
    )


def payload_validate(schema: type[P], data: Any) -> P:
    """`data` (decoded JSON) validated against a pydantic model, or a 400 GatewayError that
    names the first offending field."""
    if not isinstance(data, dict):
        raise _invalid("Request body must be a JSON object")
    try:
        return schema.model_validate(data)  # type: ignore[attr-defined]
    except PydanticValidationError as exc:
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "payload")]
        param = ".".join(loc) or None
        message = first.get("msg", "Invalid request body")
        raise _invalid(f"{message}" + (f" ({param})" if param else ""), param=param) from None


def body_json(request: HttpRequest) -> Any:
    try:
        body = request.body
    except RequestDataTooBig:
        raise GatewayError(
            status=413, message="Request body too large", code="request_too_large"
        ) from None
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise _invalid("Request body is not valid JSON", code="invalid_json") from None


async def ingress_resolve(ingress: Ingress, model: str) -> ResolvedRoute:
    """The route the key may call by this name, or a 404/403 GatewayError."""
    assert ingress.policy is not None
    ingress.route_name = str(model)[:128]
    # The allow-list is checked before the catalog: a limited key is refused alike for names
    # that exist and names that do not (no catalog probing, as /v1/models/{id}).
    if not ingress.policy.allows_model(model):
        raise GatewayError(
            status=403,
            message=f"This key may not use the model '{model}'",
            error_type="permission_error",
            code="model_not_allowed",
            param="model",
        )
    route = (await snapshot_get()).resolve(model)
    if route is None:
        raise GatewayError(
            status=404,
            message=f"The model '{model}' does not exist",
            code="model_not_found",
            param="model",
        )
    ingress.route = route
    return route


async def ingress_open(
    ingress: Ingress,
    request: HttpRequest,
    *,
    parse: type[BaseModel] | Callable[[Any], Any],
    idempotent: bool = True,
    route_for: Callable[[Ingress, Any], Awaitable[ResolvedRoute]] | None = None,
) -> Any:
    """Authenticate (before the body is read), decode and validate the body with `parse` (a
    pydantic model, or a function of the decoded JSON raising GatewayError) and resolve the
    payload's `model` (or, with `route_for`, let it choose the route and set it on the
    ingress); claim the Idempotency-Key when the endpoint has an answer to keep
    (`idempotent`; free lookups such as count_tokens ignore the header). Returns the
    payload; raises GatewayError."""
    await ingress_authenticate(ingress, request_raw_key(request))
    data = body_json(request)
    if isinstance(parse, type) and issubclass(parse, BaseModel):
        payload = payload_validate(parse, data)
    else:
        payload = parse(data)
    if route_for is not None:
        route = await route_for(ingress, payload)
        ingress.route = route
    else:
        route = await ingress_resolve(ingress, payload.model)
    raw_idempotency_key = request.META.get("HTTP_IDEMPOTENCY_KEY")
    if raw_idempotency_key is not None and idempotent:
        assert ingress.policy is not None
        ingress.idempotency = await idempotency_claim(
            raw=raw_idempotency_key,
            key_id=ingress.policy.key_id,
            endpoint=ingress.endpoint,
            body=request.body,
            request_id=ingress.request_id,
            pending_s=hold_seconds(route),
        )
    return payload


# -- answers -----------------------------------------------------------------------------------
def ingress_error_response(
    ingress: Ingress, error: GatewayError, extra_headers: dict[str, str] | None = None
) -> HttpResponse:
    headers = {**(extra_headers or {}), **ingress.headers}
    if ingress.shape == "anthropic":
        return anthropic_error_response(error, headers)
    return error_response(error, headers)


def call_error_response(ingress: Ingress, call: InferenceCall, exc: ProviderError) -> HttpResponse:
    """The error answer of a call that failed upstream, with the call's gateway headers. Once
    the gateway retried or fell back for the client (more than one upstream attempt) it says
    `x-should-retry: false`, even over an upstream's Retry-After: a client retrying on top
    would multiply the load."""
    error = gateway_error_from_provider(exc)
    headers = call.gateway_headers()
    if "x-should-retry" in headers:
        error.headers["x-should-retry"] = headers["x-should-retry"]
    return ingress_error_response(ingress, error, headers)


async def ingress_reject(ingress: Ingress, error: GatewayError) -> HttpResponse:
    """Answer a refusal that happened before any upstream call; with a known key it leaves
    the request's one usage event, without one only metrics and a log line."""
    if isinstance(error, IdempotentReplay):
        return await _replay(ingress, error)
    if ingress.idempotency is not None:
        await idempotency_release(ingress.idempotency)
    await ingress_refusal_record(ingress, error)
    return ingress_error_response(ingress, error)


async def _replay(ingress: Ingress, replay: IdempotentReplay) -> HttpResponse:
    """The first answer of this Idempotency-Key again: one usage event (outcome `replayed`,
    cost 0), no upstream call, no charge."""
    await rejected_request_record(
        request_id=ingress.request_id,
        client_request_id=ingress.client_request_id,
        policy=ingress.policy,
        route_name=ingress.route_name,
        endpoint=ingress.endpoint,
        status_code=replay.status,
        error_type="",
        started=ingress.started,
        outcome="replayed",
    )
    response = HttpResponse(
        replay.body_bytes, status=replay.status, content_type=replay.content_type
    )
    return _with_headers(
        response,
        {
            **replay.replay_headers,
            **ingress.headers,
            "idempotent-replayed": "true",
            "x-gateway-replay-of": replay.first_request_id,
        },
    )


async def ingress_key_check(ingress: Ingress, request: HttpRequest) -> HttpResponse | None:
    """For endpoints that need only the key (model lists and lookups): authenticate; a
    refusal is recorded and answered in the ingress's shape (returned), else None with
    `ingress.policy` set."""
    try:
        await ingress_authenticate(ingress, request_raw_key(request))
    except GatewayError as error:
        await ingress_refusal_record(ingress, error)
        return ingress_error_response(ingress, error)
    return None


async def ingress_refusal_record(ingress: Ingress, error: GatewayError) -> None:
    """The record of a refusal (usage event when the key is known, metric, log); for
    ingresses that answer on their own (websocket frames)."""
    await rejected_request_record(
        request_id=ingress.request_id,
        client_request_id=ingress.client_request_id,
        policy=ingress.policy,
        route_name=ingress.route_name,
        endpoint=ingress.endpoint,
        status_code=error.status,
        error_type=error.code or error.error_type,
        started=ingress.started,
    )


def _with_headers(response: HttpResponse, headers: dict[str, str]) -> HttpResponse:
    for name, value in headers.items():
        response[name] = value
    return response


async def json_answer(ingress: Ingress, call: InferenceCall, body: dict) -> HttpResponse:
    """The JSON answer of a settled call (kept for Idempotency-Key replays when asked)."""
    content = orjson.dumps(body)
    headers = {**call.gateway_headers(), **ingress.headers}
    if ingress.idempotency is not None and not call.default_message_used:
        await idempotency_complete(ingress.idempotency, body=content, headers=headers)
    return _with_headers(HttpResponse(content, content_type="application/json"), headers)


async def json_answer_shaped(
    ingress: Ingress, call: InferenceCall, shape: Callable[[], dict]
) -> HttpResponse:
    """`json_answer` of `shape()`; when shaping fails (a bug of ours: the client gets a 500),
    the Idempotency-Key is released so a retry is not told "in progress" for the hold TTL."""
    try:
        body = shape()
    except Exception:
        if ingress.idempotency is not None:
            await idempotency_release(ingress.idempotency)
        raise
    return await json_answer(ingress, call, body)


async def call_respond(
    ingress: Ingress,
    call: InferenceCall,
    chat: ChatRequest,
    *,
    body: Callable[[ChatResponse], dict],
    encoder: Callable[[], StreamEncoder],
) -> HttpResponse:
    """Run an admitted call to its answer: JSON (`body` of the response) or, when the request
    streams, SSE (`encoder()` writes the chunks). The call settles on every exit, inside.
    Where the route or the request turns the response cache on, a hit answers without an
    upstream call (same shapes, streams replayed) and a miss is stored once it ends ok."""
    if call.route.options.cache.enabled or ingress.cache_directive.mode != "default":
        try:
            await call.cache_prepare(chat=chat, directive=ingress.cache_directive)
        except Exception:
            # The cache never fails a request: served from upstream, the fault logged.
            logger.exception("cache.prepare_failed", extra={"request_id": ingress.request_id})
            call.cache_state = "bypass"
    if chat.stream:
        try:
            # Built before the upstream call starts: a failure here settles the admitted call
            # at once (no running pump left behind holding the slot until the hold expires).
            stream_encoder = encoder()
        except Exception:
            await call.finish(status_code=500, outcome="error", error_type="internal_error")
            raise
        try:
            pump = await stream_start(call, chat, keepalive_s=keepalive_interval())
        except ProviderError as exc:
            return call_error_response(ingress, call, exc)
        response = StreamingHttpResponse(
            sse_stream(call=call, pump=pump, encoder=stream_encoder),
            content_type="text/event-stream",
        )
        return _with_headers(response, {**stream_headers(call), **ingress.headers})
    try:
        result = await call.run_complete(chat)
    except ProviderError as exc:
        return call_error_response(ingress, call, exc)
    return await json_answer_shaped(ingress, call, lambda: body(result))
