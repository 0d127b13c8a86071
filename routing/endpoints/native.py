"""The gateway's native shape. `POST /api/v1/generate`: prompt in, text out. A convenience for scripts and dashboards that
do not want the chat shape; it runs the same path as `/v1/chat/completions` (key, route,
admission, strategy, one usage event) and answers errors in the same OpenAI shape.

    {"model": "chat", "prompt": "Say hi", "max_tokens": 50, "stream": false}
 -> {"id": "gen-...", "model": "chat", "text": "...", "finish_reason": "stop",
     "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}}

With `"stream": true` the answer is SSE: `data: {"id", "model", "text": "<delta>"}` events,
then one `data: {"id", "model", "text": "", "finish_reason", "usage"}`, then `data: [DONE]`;
an upstream failure after the first byte arrives in-band as `data: {"error": {...}}`.

The orchestration seed's shape is answered when the request uses any of its fields (`task`,
`model_preference`, `text`, `messages`, `constraints`) or names no `model`:

    {"task": "summarize", "model_preference": "balanced", "text": "..."}
 -> {"success": true, "result": "...", "request_id": "req_...", "is_default_message": false,
     "routing": {"selected_model", "provider", "reason", "task", "task_rule", "strategy",
                 "preference", "cost_score", "latency_score", "quality_score", "final_score",
                 "candidates": [...]},
     "usage": {"input_tokens", "output_tokens", "total_cost_usd", "savings_usd"},
     "performance": {"total_time_ms", "routing_time_ms", "inference_time_ms"}}

The task is the request's or the classifier's (routing/decide/tasks.py), and its template
builds the upstream messages. Candidates are the named route's steps, or, without `model`,
every catalog model the key may use; with a `model_preference` (or without `model`) they are
ranked by routing/decide/scoring.py (preference, task quality, live latency, price, breaker
state; `constraints` exclude, and none left is 400 `no_candidate_satisfies_constraints`), and
the call falls back in that order. `savings_usd` is against the dearest eligible candidate.
Streams (`stream: true`) keep the SSE shape above."""

from __future__ import annotations

import dataclasses
import time
import uuid
from typing import Any

import orjson
from django.http import HttpRequest
from ninja import Router, Schema
from pydantic import ConfigDict, Field

from providers.tokens import count_message_tokens
from providers.types import ChatRequest, ChatResponse, Chunk, ProviderError, Usage
from routing.decide.scoring import ScoredChoice, savings_usd, scored_choose
from routing.decide.tasks import TASK_NAMES, task_classify, task_messages, task_request_extra
from routing.errors import GatewayError
from routing.inference import InferenceCall, inference_call_open
from routing.ingress import (
    Ingress,
    call_respond,
    ingress_open,
    ingress_reject,
    ingress_resolve,
    ingress_start,
    payload_validate,
)
from routing.options import PREFERENCES, RouteOptionsError, constraints_parse
from routing.schemas import ErrorOut
from routing.snapshot import ResolvedRoute, Target, snapshot_get
from routing.sse import DONE, sse_event

router = Router(tags=["Native"])

ENDPOINT = "generate"


class GenerateIn(Schema):
    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(default=None, min_length=1, max_length=256)
    prompt: str | None = Field(default=None, min_length=1)
    # The orchestration seed's fields.
    task: str | None = None
    model_preference: str | None = None
    text: str | None = Field(default=None, min_length=1)
    messages: list[dict[str, Any]] | None = Field(default=None, min_length=1)
    constraints: dict[str, Any] | None = None
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


AUTO_ROUTE = "auto"
SEED_FIELDS = ("task", "model_preference", "text", "messages", "constraints")


def _invalid(message: str, param: str) -> GatewayError:
    return GatewayError(status=400, message=message, code="invalid_value", param=param)


def generate_payload_parse(data: Any) -> GenerateIn:
    """The body, with the checks pydantic cannot express: exactly one input, a known task and
    preference, valid constraints."""
    payload = payload_validate(GenerateIn, data)
    given = [name for name in ("prompt", "text", "messages") if getattr(payload, name)]
    if len(given) != 1:
        param = given[1] if len(given) > 1 else "prompt"
        raise _invalid("Send exactly one of 'prompt', 'text' or 'messages'", param)
    if payload.task is not None and payload.task not in TASK_NAMES:
        raise _invalid(f"Unknown task; tasks are {', '.join(TASK_NAMES)}", "task")
    if payload.model_preference is not None and payload.model_preference not in PREFERENCES:
        raise _invalid(
            f"model_preference must be one of {', '.join(PREFERENCES)}", "model_preference"
        )
    try:
        constraints_parse(payload.constraints)
    except RouteOptionsError as exc:
        raise _invalid(str(exc), "constraints") from None
    return payload


def seed_shape(payload: GenerateIn) -> bool:
    return payload.model is None or any(getattr(payload, f) is not None for f in SEED_FIELDS)


@dataclasses.dataclass(slots=True)
class Orchestration:
    """What the seed shape decided before the call: the task, its messages, the ranking."""

    task: str | None = None
    task_rule: str = ""
    messages: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    scored: ScoredChoice | None = None
    routing_time_ms: float = 0.0


def _catalog_route(ingress: Ingress, snapshot) -> ResolvedRoute:
    """Without a `model`: every catalog model the key may use is a candidate."""
    assert ingress.policy is not None
    targets = []
    for entry in snapshot.catalog.models.values():
        provider = snapshot.catalog.providers.get(entry.provider_id)
        if provider is not None and ingress.policy.allows_model(entry.name):
            targets.append(Target(entry, provider))
    if not targets:
        raise GatewayError(
            status=404,
            message="No model is available to this key",
            code="model_not_found",
            param="model",
        )
    targets.sort(key=lambda t: t.model.name)
    return ResolvedRoute(
        name=AUTO_ROUTE, strategy="scored", targets=tuple(targets), max_attempts=len(targets)
    )


def _orchestrate(orchestration: Orchestration):
    """The route chooser of the seed shape (ingress_open's `route_for`)."""

    async def route_for(ingress: Ingress, payload: GenerateIn) -> ResolvedRoute:
        started = time.perf_counter()
        if payload.model is not None:
            route = await ingress_resolve(ingress, payload.model)
        else:
            ingress.route_name = AUTO_ROUTE
            route = _catalog_route(ingress, await snapshot_get())
        task = payload.task
        rule = "request" if task else ""
        if task is None:
            found = task_classify(text=payload.text or payload.prompt, messages=payload.messages)
            task, rule = found.task, found.rule
        messages = task_messages(
            task, text=payload.text or payload.prompt, messages=payload.messages
        )
        if payload.system:
            messages.insert(1, {"role": "system", "content": payload.system})
        orchestration.task, orchestration.task_rule, orchestration.messages = task, rule, messages
        if payload.model is None or payload.model_preference or route.strategy == "scored":
            scored = await scored_choose(
                list(route.targets),
                task=task,
                preference=payload.model_preference or route.options.preference,
                prompt_tokens=count_message_tokens(messages),
                max_tokens=payload.max_tokens,
                constraints=(
                    constraints_parse(payload.constraints)
                    if payload.constraints is not None
                    else route.options.constraints
                ),
                weights=route.options.weights_dict() or None,
            )
            orchestration.scored = scored
            route = dataclasses.replace(
                route, targets=tuple(scored.targets), max_attempts=len(scored.targets)
            )
        orchestration.routing_time_ms = round((time.perf_counter() - started) * 1000, 3)
        return route

    return route_for


def seed_body(
    *,
    ingress: Ingress,
    call: InferenceCall,
    result: ChatResponse,
    orchestration: Orchestration,
    preference: str | None,
) -> dict[str, Any]:
    served = call.served
    usage = call.settled_usage or result.usage
    scored = orchestration.scored
    routing: dict[str, Any] = {
        "selected_model": served.model.name if served else None,
        "provider": served.provider.name if served else None,
        "task": orchestration.task,
        "task_rule": orchestration.task_rule,
        "strategy": "scored" if scored is not None else call.route.strategy,
        "preference": scored.preference if scored is not None else preference,
    }
    savings = 0
    if scored is not None:
        chosen = next(
            (c for c in scored.ranked if served and c.target.model.id == served.model.id),
            scored.chosen,
        )
        routing.update(
            reason=scored.reason(),
            cost_score=round(chosen.cost_score, 4),
            latency_score=round(chosen.latency_score, 4),
            quality_score=round(chosen.quality_score, 4),
            final_score=round(chosen.final_score, 4),
            candidates=[c.as_dict() for c in scored.ranked + scored.excluded],
        )
        if served is not None:
            savings = savings_usd(
                served,
                scored.ranked,
                tokens_in=usage.prompt_tokens,
                tokens_out=usage.completion_tokens,
                when=call.created_at,
            )
    else:
        routing["reason"] = (
            f"{call.route.strategy} route '{call.route.name}', first step that answered"
        )
    total_ms = round((time.perf_counter() - ingress.started) * 1000, 3)
    inference_ms = round(sum(a.latency_ms for a in call.attempts), 3)
    return {
        "success": not call.default_message_used,
        "result": result.content or "",
        "request_id": ingress.request_id,
        "is_default_message": call.default_message_used,
        "routing": routing,
        "usage": {
            "input_tokens": usage.prompt_tokens,
            "output_tokens": usage.completion_tokens,
            "total_cost_usd": float(call.cost),
            "savings_usd": float(savings),
        },
        "performance": {
            "total_time_ms": total_ms,
            "routing_time_ms": orchestration.routing_time_ms,
            "inference_time_ms": inference_ms,
        },
    }


def chat_request_from_seed(
    payload: GenerateIn, orchestration: Orchestration, route: ResolvedRoute
) -> ChatRequest:
    first = route.targets[0]
    extra = task_request_extra(
        orchestration.task or "chat", supports_json_mode=first.model.supports_json_mode
    )
    if extra and not all(t.model.supports_json_mode for t in route.targets):
        extra = {}  # JSON mode only where every candidate has it (the template asks for JSON)
    return ChatRequest(
        model=route.name,
        messages=orchestration.messages,
        stream=payload.stream,
        max_tokens=payload.max_tokens,
        temperature=payload.temperature,
        stop=payload.stop,
        include_usage=True,
        extra=extra,
    )


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
    orchestration = Orchestration()
    seed = False

    def parse(data: Any) -> GenerateIn:
        nonlocal seed
        payload = generate_payload_parse(data)
        seed = seed_shape(payload)
        return payload

    async def route_for(ingress: Ingress, payload: GenerateIn) -> ResolvedRoute:
        if seed:
            return await _orchestrate(orchestration)(ingress, payload)
        return await ingress_resolve(ingress, payload.model)

    try:
        payload: GenerateIn = await ingress_open(ingress, request, parse=parse, route_for=route_for)
        assert ingress.route is not None
        if seed:
            chat = chat_request_from_seed(payload, orchestration, ingress.route)
        else:
            chat = chat_request_from_prompt(payload)
        call = await inference_call_open(ingress=ingress, chat=chat)
    except GatewayError as error:
        return await ingress_reject(ingress, error)
    generation_id = f"gen-{uuid.uuid4().hex[:24]}"
    model = payload.model or AUTO_ROUTE
    if seed:
        return await call_respond(
            ingress,
            call,
            chat,
            body=lambda result: seed_body(
                ingress=ingress,
                call=call,
                result=result,
                orchestration=orchestration,
                preference=payload.model_preference,
            ),
            encoder=lambda: GenerateStreamEncoder(generation_id=generation_id, model=model),
        )
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
