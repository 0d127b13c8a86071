"""One inference request, top to bottom: admit, run the route's strategy over the adapters,
settle, and leave exactly one usage event, whatever happens (success, upstream failure, client
disconnect, cancellation)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from providers.adapters.base import adapter_for
from providers.pricing import usage_cost_usd
from providers.tokens import count_message_tokens, count_text_tokens, estimate_prompt_tokens_fast
from providers.types import (
    ChatRequest,
    ChatResponse,
    Chunk,
    EmbeddingRequest,
    EmbeddingResponse,
    ProviderError,
    ProviderProtocolError,
    ProviderRateLimited,
    Usage,
)
from routing import tracing
from routing.breakers import (
    breaker_acquire,
    breaker_available_targets,
    breaker_record,
    circuit_open_error,
)
from routing.metrics import request_observe
from routing.snapshot import ResolvedRoute, Target
from routing.strategies import strategy_order
from tenants.admission import Admission, request_admit, request_settle
from tenants.policy import KeyPolicy
from usage.realtime import realtime_begin, realtime_observe
from usage.services import usage_event_record

logger = logging.getLogger("gateway.routing")

RETRY_BASE_DELAY_S = 0.1
RETRY_MAX_DELAY_S = 2.0


@dataclass(slots=True)
class AttemptRecord:
    model_id: int
    provider_id: int
    status_code: int
    error_type: str
    latency_ms: float


def retry_delay(retry_index: int, retry_after: float | None) -> float | None:
    """Seconds to wait before retrying the same target, or None to move on to the next one
    (the upstream asked for a longer pause than we are willing to hold the client)."""
    if retry_after is not None:
        return retry_after if retry_after <= RETRY_MAX_DELAY_S else None
    backoff = min(RETRY_MAX_DELAY_S, RETRY_BASE_DELAY_S * (2**retry_index))
    return backoff * (0.5 + random.random() / 2)  # noqa: S311 - jitter, not crypto


def target_order(route: ResolvedRoute) -> list[Target]:
    """Targets in the order to try them (routing/strategies), each distinct target once,
    without the deployments whose circuit breaker is open (raises CircuitOpen when that
    leaves none); open ones do not use up the route's max_attempts."""
    ordered = breaker_available_targets(strategy_order(route), route_name=route.name)
    return ordered[: route.max_attempts] if route.max_attempts else ordered


class InferenceCall:
    """State of one request. `finish` is idempotent and emits the single usage event."""

    def __init__(
        self,
        *,
        request_id: str,
        policy: KeyPolicy,
        route: ResolvedRoute,
        endpoint: str = "chat",
        stream: bool = False,
    ) -> None:
        self.request_id = request_id
        self.policy = policy
        self.route = route
        self.endpoint = endpoint
        self.stream_mode = stream
        self.created_at = datetime.now(tz=UTC)
        self.started = time.perf_counter()
        self.admission: Admission | None = None
        self.attempts: list[AttemptRecord] = []
        self.served: Target | None = None
        self.usage: Usage | None = None
        self.ttft_ms: float | None = None
        self.cost: Decimal = Decimal(0)
        self._finished = False
        # The usage the single usage event carries, once finish() ran (streams end with it).
        self.settled_usage: Usage | None = None
        self.unit_prices: tuple[Decimal, Decimal] | None = None
        self._messages: list[dict[str, Any]] = []
        self._streamed_text: list[str] = []
        self.trace = tracing.request_span(
            endpoint=endpoint,
            model=route.name,
            request_id=request_id,
            tenant_id=policy.tenant_id if policy else None,
        )

    # -- admission ---------------------------------------------------------------------
    async def admit(self, *, messages: list[dict[str, Any]], max_tokens: int | None) -> None:
        self._messages = messages
        targets = self.route.targets
        max_out = max_tokens or max(t.model.max_output_tokens for t in targets)
        try:
            with tracing.child_span(self.trace, "gateway.admission"):
                self.admission = await request_admit(
                    policy=self.policy,
                    request_id=self.request_id,
                    estimated_prompt_tokens=estimate_prompt_tokens_fast(messages),
                    max_output_tokens=max_out,
                    # A prompt-cache write may cost more than input: reserve at the dearer of the two.
                    input_price_per_mtok=max(
                        max(
                            t.model.price_at(self.created_at)[0],
                            t.model.cache_write_price_per_mtok or 0,
                        )
                        for t in targets
                    ),
                    output_price_per_mtok=max(
                        t.model.price_at(self.created_at)[1] for t in targets
                    ),
                )
        except BaseException as exc:
            tracing.request_span_abort(self.trace, exc)
            raise
        realtime_begin(tenant_id=self.policy.tenant_id)

    @property
    def rate_limit_headers(self) -> dict[str, str]:
        return dict(self.admission.headers) if self.admission else {}

    def gateway_headers(self) -> dict[str, str]:
        headers = self.rate_limit_headers
        if self.served is not None:
            headers["x-gateway-model"] = self.served.model.name
            headers["x-gateway-provider"] = self.served.provider.name
        headers["x-gateway-route"] = self.route.name
        headers["x-gateway-fallbacks"] = str(self.fallbacks)
        headers["x-gateway-cost-usd"] = format(self.cost, "f")
        return headers

    @property
    def fallbacks(self) -> int:
        targets = {(a.model_id, a.provider_id) for a in self.attempts}
        return max(0, len(targets) - 1)

    # -- execution ---------------------------------------------------------------------
    def _trace_attempt(self, target: Target, retry_index: int):
        """The attempt span and, inside it, the upstream call's client span (both no-ops when
        tracing is off), to be entered together: `with attempt, upstream: <call>`."""
        attempt = tracing.attempt_span(
            self.trace,
            provider=target.provider.name,
            model=target.model.name,
            retry_index=retry_index,
        )
        upstream = tracing.upstream_span(
            attempt,
            operation=self.endpoint,
            provider_kind=target.provider.kind,
            upstream_model=target.model.upstream_model,
            base_url=target.provider.base_url,
        )
        return attempt, upstream

    def _request_for(self, chat: ChatRequest, target: Target) -> ChatRequest:
        max_tokens = chat.max_tokens or target.model.max_output_tokens
        return dataclasses.replace(chat, model=target.model.upstream_model, max_tokens=max_tokens)

    def _record(
        self,
        target: Target,
        started: float,
        status: int,
        error_type: str = "",
        error: ProviderError | None = None,
    ) -> None:
        breaker_record(target, error)
        self.attempts.append(
            AttemptRecord(
                model_id=target.model.id,
                provider_id=target.provider.id,
                status_code=status,
                error_type=error_type,
                latency_ms=round((time.perf_counter() - started) * 1000, 3),
            )
        )

    async def _attempts(self):
        """Yields (target, retry_index) in strategy order, sleeping between retries. Each try
        first claims the deployment's breaker (a half-open one admits one probe at a time; one
        that opened during this request is not retried)."""
        targets = target_order(self.route)
        tried = False
        for target in targets:
            retries = max(0, target.provider.max_retries)
            for retry_index in range(retries + 1):
                if not breaker_acquire(target):
                    break
                tried = True
                yield target, retry_index
        if not tried:
            raise circuit_open_error(targets, route_name=self.route.name)

    async def _handle_failure(self, target: Target, exc: ProviderError, retry_index: int) -> str:
        """Returns 'raise', 'retry' or 'next'."""
        if not exc.retryable:
            return "raise"
        if retry_index < max(0, target.provider.max_retries):
            retry_after = exc.retry_after if isinstance(exc, ProviderRateLimited) else None
            delay = retry_delay(retry_index, retry_after)
            if delay is not None:
                await asyncio.sleep(delay)
                return "retry"
        return "next"

    async def complete(self, chat: ChatRequest) -> ChatResponse:
        last_error: ProviderError | None = None
        skip_target: Target | None = None
        async for target, retry_index in self._attempts():
            if target is skip_target:
                continue
            adapter = adapter_for(target.provider)
            started = time.perf_counter()
            attempt, upstream = self._trace_attempt(target, retry_index)
            try:
                with attempt, upstream:
                    response = await adapter.chat(self._request_for(chat, target))
                    upstream.set(tracing.RESPONSE_MODEL, response.model)
            except ProviderError as exc:
                self._record(target, started, exc.upstream_status or exc.status, exc.code, exc)
                last_error = exc
                decision = await self._handle_failure(target, exc, retry_index)
                if decision == "raise":
                    raise
                if decision == "next":
                    skip_target = target
                continue
            self._record(target, started, 200)
            self.served = target
            self.usage = response.usage
            self.ttft_ms = self.attempts[-1].latency_ms
            return response
        assert last_error is not None
        raise last_error

    async def stream(self, chat: ChatRequest) -> AsyncIterator[Chunk]:
        """Chunks of the first target that starts answering; fallbacks happen only before the
        first chunk, since after it the client has seen this target's output."""
        last_error: ProviderError | None = None
        skip_target: Target | None = None
        async for target, retry_index in self._attempts():
            if target is skip_target:
                continue
            adapter = adapter_for(target.provider)
            started = time.perf_counter()
            iterator = adapter.stream_chat(self._request_for(chat, target))
            attempt, upstream = self._trace_attempt(target, retry_index)
            try:
                # The upstream span covers the call up to its first chunk.
                with attempt, upstream:
                    first = await anext(iterator)
            except StopAsyncIteration:
                exc: ProviderError = ProviderProtocolError("upstream stream ended without data")
            except ProviderError as err:
                exc = err
            else:
                self._record(target, started, 200)
                self.served = target
                self.ttft_ms = round((time.perf_counter() - self.started) * 1000, 3)
                try:
                    self._observe(first)
                    yield first
                    async for chunk in iterator:
                        self._observe(chunk)
                        yield chunk
                except ProviderError as err:
                    # It started, then died mid-stream: that counts against the deployment.
                    breaker_record(target, err)
                    raise
                finally:
                    await iterator.aclose()
                return
            await iterator.aclose()
            self._record(target, started, exc.upstream_status or exc.status, exc.code, exc)
            last_error = exc
            decision = await self._handle_failure(target, exc, retry_index)
            if decision == "raise":
                raise exc
            if decision == "next":
                skip_target = target
        assert last_error is not None
        raise last_error

    def _observe(self, chunk: Chunk) -> None:
        if chunk.usage is not None:
            self.usage = chunk.usage
        if chunk.content:
            self._streamed_text.append(chunk.content)

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResponse:
        last_error: ProviderError | None = None
        for target in target_order(self.route):
            adapter = adapter_for(target.provider)
            started = time.perf_counter()
            attempt, upstream = self._trace_attempt(target, 0)
            try:
                with attempt, upstream:
                    response = await adapter.embed(
                        dataclasses.replace(request, model=target.model.upstream_model)
                    )
            except ProviderError as exc:
                self._record(target, started, exc.upstream_status or exc.status, exc.code, exc)
                last_error = exc
                if not exc.retryable:
                    raise
                continue
            self._record(target, started, 200)
            self.served = target
            self.usage = response.usage
            return response
        assert last_error is not None
        raise last_error

    # -- settlement --------------------------------------------------------------------
    def _final_usage(self) -> Usage:
        if self.usage is not None:
            return self.usage
        if self.served is None:
            return Usage()
        # The upstream did not report usage (or the client left first): count it ourselves.
        return Usage(
            prompt_tokens=count_message_tokens(self._messages),
            completion_tokens=count_text_tokens("".join(self._streamed_text)),
            estimated=True,
        )

    async def finish(self, *, status_code: int, outcome: str, error_type: str = "") -> None:
        if self._finished:
            return
        self._finished = True
        usage = self.settled_usage = self._final_usage()
        target = self.served
        if target is not None:
            # The price in force when the request arrived, even if it changed since.
            self.unit_prices = target.model.price_at(self.created_at)
            self.cost = usage_cost_usd(
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                cache_read_tokens=usage.cache_read_tokens,
                cache_write_tokens=usage.cache_write_tokens,
                input_price_per_mtok=self.unit_prices[0],
                output_price_per_mtok=self.unit_prices[1],
                cache_read_price_per_mtok=target.model.cache_read_price_per_mtok,
                cache_write_price_per_mtok=target.model.cache_write_price_per_mtok,
            )
        payload = usage_event_payload(
            call=self, usage=usage, status_code=status_code, outcome=outcome, error_type=error_type
        )
        stored = False
        if self.admission is not None:
            with tracing.child_span(self.trace, "gateway.settlement"):
                stored = await request_settle(
                    admission=self.admission,
                    cost_usd=self.cost,
                    tokens_used=usage.total_tokens,
                    usage_event=payload,
                )
        if not stored:
            await usage_event_record(payload=payload)
        request_observe(
            endpoint=self.endpoint,
            route=self.route.name,
            model=payload["model"],
            outcome=outcome,
            status=status_code,
            tokens_in=usage.prompt_tokens,
            tokens_out=usage.completion_tokens,
            cost_usd=float(self.cost),
            latency_s=payload["latency_ms"] / 1000,
            ttft_s=self.ttft_ms / 1000 if self.ttft_ms is not None else None,
            fallbacks=self.fallbacks,
            provider=target.provider.name if target is not None else "",
            tenant=self.policy.tenant_id if self.policy else None,
        )
        realtime_observe(
            tenant_id=self.policy.tenant_id if self.policy else None,
            latency_ms=payload["latency_ms"],
            status_code=status_code,
            outcome=outcome,
            began=self.admission is not None,
        )
        tracing.request_span_end(
            self.trace,
            response_model=payload["model"],
            provider_kind=target.provider.kind if target is not None else None,
            input_tokens=usage.prompt_tokens,
            output_tokens=usage.completion_tokens,
            status_code=status_code,
            outcome=outcome,
            cost_usd=format(self.cost, "f"),
            fallbacks=self.fallbacks,
        )
        logger.info(
            "request.finished",
            extra={
                "model": payload["model"],
                "provider": target.provider.name if target is not None else "",
                "tenant_id": self.policy.tenant_id if self.policy else None,
                "api_key_id": self.policy.key_id if self.policy else None,
                "route": self.route.name if self.route else "",
                "status_code": status_code,
                "outcome": outcome,
                "tokens_in": usage.prompt_tokens,
                "tokens_out": usage.completion_tokens,
                "cost_usd": format(self.cost, "f"),
                "latency_ms": payload["latency_ms"],
            },
        )


async def inference_call_open(
    *,
    request_id: str,
    policy: KeyPolicy,
    route: ResolvedRoute,
    chat: ChatRequest,
    endpoint: str,
) -> InferenceCall:
    """The opening every ingress shares (chat, messages, generate, websocket): a call for the
    resolved route, admitted against the key's and tenant's limits. Raises AdmissionDenied."""
    call = InferenceCall(
        request_id=request_id, policy=policy, route=route, endpoint=endpoint, stream=chat.stream
    )
    await call.admit(messages=chat.messages, max_tokens=chat.max_tokens)
    return call


def usage_event_payload(
    *,
    call: InferenceCall | None,
    usage: Usage,
    status_code: int,
    outcome: str,
    error_type: str,
    request_id: str | None = None,
    policy: KeyPolicy | None = None,
    route_name: str = "",
    endpoint: str = "chat",
    started: float | None = None,
    created_at: datetime | None = None,
) -> dict[str, Any]:
    """The usage event as a plain dict (what the stream and the writer carry)."""
    if call is not None:
        request_id, policy, route_name = call.request_id, call.policy, call.route.name
        endpoint, started, created_at = call.endpoint, call.started, call.created_at
    target = call.served if call is not None else None
    prices = None
    if call is not None and target is not None:
        prices = call.unit_prices or target.model.price_at(call.created_at)
    return {
        "request_id": request_id,
        "created_at": (created_at or datetime.now(tz=UTC)).isoformat(),
        "tenant_id": policy.tenant_id if policy else None,
        "api_key_id": policy.key_id if policy else None,
        "route": route_name,
        "model": target.model.name if target else "",
        "model_id": target.model.id if target else None,
        "provider_id": target.provider.id if target else None,
        "upstream_model": target.model.upstream_model if target else "",
        "endpoint": endpoint,
        "stream": call.stream_mode if call is not None else False,
        "tokens_in": usage.prompt_tokens,
        "tokens_out": usage.completion_tokens,
        "cache_read_tokens": usage.cache_read_tokens,
        "cache_write_tokens": usage.cache_write_tokens,
        "usage_estimated": usage.estimated,
        "input_price_per_mtok": str(prices[0]) if prices else "0",
        "output_price_per_mtok": str(prices[1]) if prices else "0",
        "cost_usd": format(call.cost, "f") if call is not None else "0",
        "latency_ms": round((time.perf_counter() - (started or time.perf_counter())) * 1000, 3),
        "ttft_ms": call.ttft_ms if call is not None else None,
        "status_code": status_code,
        "outcome": outcome,
        "error_type": error_type,
        "fallbacks": call.fallbacks if call is not None else 0,
        "attempts": [dataclasses.asdict(a) for a in call.attempts] if call is not None else [],
    }


async def rejected_request_record(
    *,
    request_id: str,
    policy: KeyPolicy | None,
    route_name: str,
    endpoint: str,
    status_code: int,
    error_type: str,
    started: float,
) -> None:
    """The usage event of a request refused before any upstream call (bad key, bad body,
    unknown model, limit refusal): still exactly one event."""
    payload = usage_event_payload(
        call=None,
        usage=Usage(),
        status_code=status_code,
        outcome="rejected",
        error_type=error_type,
        request_id=request_id,
        policy=policy,
        route_name=route_name,
        endpoint=endpoint,
        started=started,
    )
    await usage_event_record(payload=payload)
    realtime_observe(
        tenant_id=policy.tenant_id if policy else None,
        latency_ms=payload["latency_ms"],
        status_code=status_code,
        outcome="rejected",
        began=False,
    )
