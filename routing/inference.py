"""One inference call, top to bottom: admit, run the route's strategy over the adapters, settle,
and leave exactly one usage event whatever happens.

`InferenceCall` owns every exit of a call: success, provider error, client disconnect or
cancel, timeout (the upstream's, or the call's own deadline, which is its hold TTL) and a crash
of the task running it. The `run_*` methods are the only way ingress code runs a call; each
settles before it returns or raises, so views and consumers only shape answers.
(`complete`, `stream` and `embed` are the bare attempt loops underneath.)"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import orjson
from django.conf import settings

from providers.adapters.base import adapter_for
from providers.pricing import usage_cost_usd
from providers.tokens import (
    count_message_tokens,
    count_text_tokens,
    embedding_tokens_upper_bound,
    prompt_tokens_upper_bound,
)
from providers.types import (
    ChatRequest,
    ChatResponse,
    Chunk,
    EmbeddingRequest,
    EmbeddingResponse,
    ProviderError,
    ProviderProtocolError,
    ProviderRateLimited,
    ProviderTimeout,
    Usage,
)
from routing import tracing
from routing.breakers import (
    breaker_acquire,
    breaker_available_targets,
    breaker_record,
    breaker_should_retry,
    circuit_open_error,
)
from routing.cache import (
    CachedAnswer,
    CacheDirective,
    CacheScope,
    CacheUnavailable,
    cache_decision,
    cache_hit_charge,
    cache_key,
    cache_task_spawn,
    response_cache,
    response_cache_store,
    semantic_context,
)
from routing.cache import (
    CacheWrite as _CacheWrite,
)
from routing.cache_embedding import EmbedderUnavailable, embedder_get
from routing.decide.attempts import AttemptBudget, should_retry_header
from routing.decide.capabilities import capabilities_required, capability_targets
from routing.errors import gateway_error_from_admission
from routing.idempotency import IdempotencyClaim, idempotency_complete, idempotency_release
from routing.metrics import (
    cache_observe,
    request_observe,
    request_refused,
    response_cache_savings_observe,
)
from routing.params import price_changing_params_refuse
from routing.snapshot import ResolvedRoute, Target
from routing.strategies import strategy_order
from tenants.admission import Admission, AdmissionDenied, request_admit, request_settle
from tenants.policy import KeyPolicy
from usage.realtime import realtime_begin, realtime_observe
from usage.services import usage_event_record

if TYPE_CHECKING:
    from routing.ingress import Ingress

logger = logging.getLogger("gateway.routing")

RETRY_BASE_DELAY_S = 0.1
# The usage event's error_type when the route's default message answered (outcome error,
# status 200, cost 0).
DEFAULT_MESSAGE = "default_message"
RETRY_MAX_DELAY_S = 2.0


@dataclass(slots=True)
class _Chain:
    """One attempt loop's budget, and whether its last attempt said "next step"."""

    budget: AttemptBudget
    move_on: bool = False


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


def hold_seconds(route: ResolvedRoute) -> float:
    """How long a call on this route may live, so how long its hold (slot and reservation)
    must last: every target it may try, each with its retries, each bounded by its provider's
    total timeout, plus the pauses between retries and a margin for settling. A live call never
    outlives its hold (the call enforces this bound as its own deadline)."""
    targets = route.targets[: route.max_attempts] if route.max_attempts else route.targets
    total = 0.0
    for target in targets:
        tries = max(0, target.provider.max_retries) + 1
        total += tries * float(target.provider.total_timeout_s)
        total += (tries - 1) * RETRY_MAX_DELAY_S
    return total + float(settings.GATEWAY_HOLD_MARGIN_SECONDS)


class InferenceCall:
    """State of one call. `finish` is idempotent and emits the single usage event."""

    def __init__(
        self,
        *,
        request_id: str,
        policy: KeyPolicy,
        route: ResolvedRoute,
        endpoint: str = "chat",
        stream: bool = False,
        client_request_id: str = "",
        started: float | None = None,
    ) -> None:
        self.request_id = request_id
        self.client_request_id = client_request_id
        self.policy = policy
        self.route = route
        self.endpoint = endpoint
        self.stream_mode = stream
        self.created_at = datetime.now(tz=UTC)
        self.started = started if started is not None else time.perf_counter()
        self.hold_s = hold_seconds(route)
        # The call's own deadline (monotonic loop time is set when it starts running).
        self.deadline_s = max(1.0, self.hold_s - float(settings.GATEWAY_HOLD_MARGIN_SECONDS))
        self.admission: Admission | None = None
        self.attempts: list[AttemptRecord] = []
        # Each attempt loop (one chain; a fan-out of n choices runs n) draws its attempts,
        # retries included, and its backoff on its own budget capped by the route
        # (options.max_attempts / max_total_wait_ms). `budget` is the latest one.
        self.budget = AttemptBudget.for_route(route)
        self._chains: list[_Chain] = []
        # Every step failed and the route's default_message answered instead (billed 0).
        self.default_message_used = False
        self.served: Target | None = None
        self.usage: Usage | None = None
        self.ttft_ms: float | None = None
        self.cost: Decimal = Decimal(0)
        self._finished = False
        # The usage the single usage event carries, once finish() ran (streams end with it).
        self.settled_usage: Usage | None = None
        self.unit_prices: tuple[Decimal, Decimal] | None = None
        # The target whose prices the event carries (served, or the one that may have billed).
        self.billed: Target | None = None
        # Why a cancelled call was cancelled ("client_disconnected" unless told otherwise).
        self.cancel_reason = "client_disconnected"
        self._messages: list[dict[str, Any]] = []
        self._tools: list[dict[str, Any]] | None = None
        self._streamed_text: list[str] = []
        self._streamed_tool_args: list[str] = []
        self._stream_finish_reason: str | None = None
        self._response: ChatResponse | None = None
        self._embedding_inputs: list | None = None
        # The attempt on the wire right now, and the last one the upstream may bill for (it
        # timed out or was cancelled after the request went out).
        self._inflight: Target | None = None
        self._dispatched_unanswered: Target | None = None
        # The Idempotency-Key record this call holds (released unless it ends ok).
        self.idempotency: IdempotencyClaim | None = None
        # The response cache (routing/cache.py): what this call's answer says about it ("" when
        # the route does not cache), the answer it serves instead of calling upstream, and
        # where a fresh answer goes once the call ends ok.
        self.cache_state = ""
        self.cache_age_s: int | None = None
        self.cache_similarity: float | None = None
        self.cache_saved: Decimal = Decimal(0)
        self._cached: CachedAnswer | None = None
        self._cache_target: Target | None = None
        self._cache_write: _CacheWrite | None = None
        self.trace = tracing.request_span(
            endpoint=endpoint,
            model=route.name,
            request_id=request_id,
            tenant_id=policy.tenant_id if policy else None,
        )

    @classmethod
    def for_ingress(cls, ingress: Ingress, *, stream: bool = False) -> InferenceCall:
        assert ingress.policy is not None and ingress.route is not None
        call = cls(
            request_id=ingress.request_id,
            client_request_id=ingress.client_request_id,
            policy=ingress.policy,
            route=ingress.route,
            endpoint=ingress.endpoint,
            stream=stream,
            started=ingress.started,
        )
        call.idempotency = ingress.idempotency
        return call

    # -- admission ---------------------------------------------------------------------
    async def admit(
        self,
        *,
        messages: list[dict[str, Any]],
        max_tokens: int | None,
        tools: list[dict[str, Any]] | None = None,
        extra: Any = None,
        prompt_tokens: int | None = None,
    ) -> None:
        """Admit the call with a reservation that is an upper bound of what it can cost: the
        prompt bounded by the bytes of everything that reaches the upstream (any script,
        tools, tool calls, images by their worst case, files, token arrays), capped by the
        largest context window of the route; the output by max_tokens (or the largest
        max_output_tokens); both at the route's highest prices."""
        self._messages = messages
        self._tools = tools
        targets = self.route.targets
        if prompt_tokens is None:
            prompt_tokens = prompt_tokens_upper_bound(
                messages,
                tools=tools,
                extra=extra,
                image_tokens=settings.GATEWAY_IMAGE_TOKENS_MAX,
            )
        window = max(t.model.context_window for t in targets)
        if window > 0:
            prompt_tokens = min(prompt_tokens, window)
        max_out = (
            max(0, max_tokens)
            if max_tokens is not None
            else max(t.model.max_output_tokens for t in targets)
        )
        # A prompt-cache write may cost more than input: reserve at the dearer of the two.
        price_in = max(
            max(t.model.price_at(self.created_at)[0], t.model.cache_write_price_per_mtok or 0)
            for t in targets
        )
        price_out = max(t.model.price_at(self.created_at)[1] for t in targets)
        # The dearest target stands for the call in an `orphaned` event (usage.holds).
        dearest = max(targets, key=lambda t: t.model.price_at(self.created_at))
        try:
            with tracing.child_span(self.trace, "gateway.admission"):
                self.admission = await self._admit_in_store(
                    prompt_tokens=prompt_tokens,
                    max_out=max_out,
                    price_in=price_in,
                    price_out=price_out,
                    dearest=dearest,
                )
        except BaseException as exc:
            tracing.request_span_abort(self.trace, exc)
            raise
        realtime_begin(tenant_id=self.policy.tenant_id)

    async def _admit_in_store(
        self,
        *,
        prompt_tokens: int,
        max_out: int,
        price_in: Decimal,
        price_out: Decimal,
        dearest: Target,
    ) -> Admission:
        return await request_admit(
            policy=self.policy,
            request_id=self.request_id,
            estimated_prompt_tokens=prompt_tokens,
            max_output_tokens=max_out,
            input_price_per_mtok=price_in,
            output_price_per_mtok=price_out,
            hold_s=self.hold_s,
            hold_event={
                "request_id": self.request_id,
                "client_request_id": self.client_request_id,
                "created_at": self.created_at.isoformat(),
                "tenant_id": self.policy.tenant_id,
                "api_key_id": self.policy.key_id,
                "route": self.route.name,
                "model": dearest.model.name,
                "model_id": dearest.model.id,
                "provider_id": dearest.provider.id,
                "upstream_model": dearest.model.upstream_model,
                "endpoint": self.endpoint,
                "stream": self.stream_mode,
                "tokens_in": prompt_tokens,
                "tokens_out": max_out,
                "input_price_per_mtok": str(price_in),
                "output_price_per_mtok": str(price_out),
            },
        )

    @property
    def rate_limit_headers(self) -> dict[str, str]:
        return dict(self.admission.headers) if self.admission else {}

    def gateway_headers(self) -> dict[str, str]:
        headers = self.rate_limit_headers
        if self.served is not None:
            headers["x-gateway-model"] = self.served.model.name
            headers["x-gateway-provider"] = self.served.provider.name
        headers["x-gateway-route"] = self.route.name
        headers["x-gateway-strategy"] = self.route.strategy
        headers["x-gateway-attempts"] = str(len(self.attempts))
        headers["x-gateway-fallbacks"] = str(self.fallbacks)
        headers["x-gateway-cost-usd"] = format(self.cost, "f")
        for chain in self._chains:
            headers.update(should_retry_header(chain.budget))
        if self.default_message_used:
            headers["x-gateway-default-message"] = "true"
        if self.cache_state:
            headers["x-gateway-cache"] = self.cache_state
            if self.cache_age_s is not None:
                headers["age"] = str(self.cache_age_s)
            if self.cache_similarity is not None:
                headers["x-gateway-cache-similarity"] = f"{self.cache_similarity:.4f}"
        return headers

    # -- the response cache ------------------------------------------------------------
    async def cache_prepare(self, *, chat: ChatRequest, directive: CacheDirective) -> None:
        """Look the request up in the response cache when its route (or the request) turns
        the cache on: a hit is served by complete()/stream() with no upstream call; a miss
        notes where the fresh answer goes. A cache store that is down or slow is stepped
        around (x-gateway-cache: bypass), never a failure."""
        policy = self.route.options.cache
        decision = cache_decision(
            policy=policy, directive=directive, key_allows=False, temperature=chat.temperature
        )
        if not (decision.read or decision.write):
            if policy.enabled or directive.mode != "default":
                self.cache_state = "bypass"
            return
        if chat.native is not None or (chat.extra.get("n") or 1) != 1:
            # Native pass-through answers and several choices are not rebuilt from the cache.
            self.cache_state = "bypass"
            return
        scope = CacheScope(
            tenant_id=self.policy.tenant_id,
            key_id=self.policy.key_id if policy.per_key else None,
            route=self.route.name,
        )
        identities = [
            (t.model.id, t.model.upstream_model, t.provider.kind, t.provider.base_url)
            for t in self.route.targets
        ]
        digest = cache_key(
            scope=scope, endpoint=self.endpoint, chat=chat, model_identities=identities
        )
        semantic = None
        if policy.semantic:
            semantic = semantic_context(
                scope=scope, endpoint=self.endpoint, chat=chat, model_identities=identities
            )
        cache = response_cache()
        vector = None
        try:
            if decision.read:
                answer = await cache.lookup(tenant_id=scope.tenant_id, digest=digest)
                similarity = None
                if answer is None and semantic is not None:
                    vector = await asyncio.to_thread(embedder_get().embed, semantic[1])
                    found = await cache.semantic_lookup(
                        tenant_id=scope.tenant_id,
                        bucket=semantic[0],
                        question=semantic[1],
                        vector=vector,
                        threshold=policy.similarity_threshold,
                    )
                    if found is not None:
                        answer, similarity = found
                target = answer and next(
                    (
                        t
                        for t in self.route.targets
                        if (t.model.id, t.provider.id) == (answer.model_id, answer.provider_id)
                    ),
                    None,
                )
                if answer is not None and target is not None:
                    self._cached, self._cache_target = answer, target
                    self.cache_state = "hit" if similarity is None else "semantic-hit"
                    self.cache_age_s = answer.age_s()
                    self.cache_similarity = similarity
                    cache_observe(cache="response", hit=True)
                    return
                cache_observe(cache="response", hit=False)
            self.cache_state = "miss"
        except (CacheUnavailable, EmbedderUnavailable) as exc:
            logger.warning("cache.bypassed", extra={"reason": type(exc).__name__})
            self.cache_state = "bypass"
            return
        if decision.write:
            if semantic is not None and vector is None:
                try:
                    vector = await asyncio.to_thread(embedder_get().embed, semantic[1])
                except EmbedderUnavailable:
                    semantic = None
            self._cache_write = _CacheWrite(
                scope=scope,
                digest=digest,
                ttl_s=decision.ttl_s,
                semantic=(semantic[0], semantic[1], vector) if semantic else None,
            )

    def _cached_response(self) -> ChatResponse:
        assert self._cached is not None and self._cache_target is not None
        self.served = self._cache_target
        self.usage = self._cached.usage
        self.ttft_ms = round((time.perf_counter() - self.started) * 1000, 3)
        response = self._cached.as_response(response_id=f"chatcmpl-{random.getrandbits(116):029x}")
        self._response = response
        return response

    def _cached_chunks(self) -> list[Chunk]:
        answer = self._cached
        assert answer is not None
        self._cached_response()
        chunks = [Chunk(role="assistant", content=answer.content or None)]
        if answer.tool_calls:
            chunks.append(
                Chunk(tool_calls=[{"index": i, **call} for i, call in enumerate(answer.tool_calls)])
            )
        # As OpenAI streams it: the finish, then usage alone (dropped unless asked for).
        chunks.append(Chunk(finish_reason=answer.finish_reason))
        chunks.append(Chunk(usage=answer.usage))
        return chunks

    def _cache_store_fresh(self, usage: Usage) -> None:
        """The call ended ok: keep its answer for the next identical request, off the
        request's path (a task; a failed write only logs)."""
        write = self._cache_write
        self._cache_write = None
        if write is None or self.served is None or usage.estimated:
            return
        if self._response is not None:
            content, tool_calls = self._response.content, self._response.tool_calls
            finish_reason = self._response.finish_reason
        elif not self._streamed_tool_args:
            content, tool_calls = "".join(self._streamed_text), None
            finish_reason = self._stream_finish_reason or "stop"
        else:
            return  # a streamed tool call is not reassembled for the cache
        answer = CachedAnswer(
            content=content,
            tool_calls=tool_calls,
            finish_reason=finish_reason,
            usage=usage,
            model=self.served.model.name,
            model_id=self.served.model.id,
            provider_id=self.served.provider.id,
            cost_usd=self.cost,
            stored_at=time.time(),
        )
        cache_task_spawn(
            response_cache_store(
                scope=write.scope,
                digest=write.digest,
                answer=answer,
                ttl_s=write.ttl_s,
                semantic=write.semantic,
            )
        )

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

    def _chain_new(self) -> _Chain:
        chain = _Chain(AttemptBudget.for_route(self.route))
        self.budget = chain.budget
        self._chains.append(chain)
        return chain

    async def _attempts(self, chain: _Chain):
        """Yields (target, retry_index) in strategy order, sleeping between retries. Each try
        first claims the deployment's breaker (a half-open one admits one probe at a time; one
        that opened during this request is not retried)."""
        targets = target_order(self.route)
        tried = False
        for target in targets:
            retries = max(0, target.provider.max_retries)
            for retry_index in range(retries + 1):
                if chain.budget.exhausted:
                    break
                if not breaker_acquire(target):
                    break
                chain.budget.take()
                tried = True
                yield target, retry_index
                if chain.move_on:
                    # The attempt said "next step": its remaining retries are not claimed.
                    chain.move_on = False
                    break
        if not tried:
            raise circuit_open_error(targets, route_name=self.route.name)

    async def _handle_failure(
        self, target: Target, exc: ProviderError, retry_index: int, chain: _Chain
    ) -> str:
        """Returns 'raise', 'retry' or 'next'. An upstream 401/403 is never retried on the same
        deployment (the next step may hold other credentials); a backoff that would exceed
        the route's total wait moves on to the next step at once."""
        if not exc.retryable:
            return "raise"
        if retry_index < max(0, target.provider.max_retries) and breaker_should_retry(exc):
            retry_after = exc.retry_after if isinstance(exc, ProviderRateLimited) else None
            delay = retry_delay(retry_index, retry_after)
            if delay is not None:
                delay = chain.budget.wait(delay)
            if delay is not None:
                await asyncio.sleep(delay)
                return "retry"
        return "next"

    async def complete(self, chat: ChatRequest) -> ChatResponse:
        if self._cached is not None:
            return self._cached_response()
        last_error: ProviderError | None = None
        chain = self._chain_new()
        async for target, retry_index in self._attempts(chain):
            adapter = adapter_for(target.provider)
            started = time.perf_counter()
            self._inflight = target
            attempt, upstream = self._trace_attempt(target, retry_index)
            try:
                with attempt, upstream:
                    response = await adapter.chat(self._request_for(chat, target))
                    upstream.set(tracing.RESPONSE_MODEL, response.model)
            except ProviderError as exc:
                self._landed(target, exc)
                self._record(target, started, exc.upstream_status or exc.status, exc.code, exc)
                last_error = exc
                decision = await self._handle_failure(target, exc, retry_index, chain)
                if decision == "raise":
                    raise
                chain.move_on = decision == "next"
                continue
            self._landed(target, None)
            self._record(target, started, 200)
            self.served = target
            self.usage = response.usage
            self._response = response
            self.ttft_ms = self.attempts[-1].latency_ms
            return response
        assert last_error is not None
        raise last_error

    async def stream(self, chat: ChatRequest) -> AsyncIterator[Chunk]:
        """Chunks of the first target that starts answering; fallbacks happen only before the
        first chunk, since after it the client has seen this target's output."""
        if self._cached is not None:
            for chunk in self._cached_chunks():
                self._observe(chunk)
                yield chunk
            return
        last_error: ProviderError | None = None
        chain = self._chain_new()
        async for target, retry_index in self._attempts(chain):
            adapter = adapter_for(target.provider)
            started = time.perf_counter()
            iterator = adapter.stream_chat(self._request_for(chat, target))
            self._inflight = target
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
                self._landed(target, None)
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
            self._landed(target, exc)
            self._record(target, started, exc.upstream_status or exc.status, exc.code, exc)
            last_error = exc
            decision = await self._handle_failure(target, exc, retry_index, chain)
            if decision == "raise":
                raise exc
            chain.move_on = decision == "next"
        assert last_error is not None
        raise last_error

    def _landed(self, target: Target, exc: ProviderError | None) -> None:
        """An attempt came back. One that timed out after the request went out may still be
        billed by the upstream: remember it (see _final_usage)."""
        self._inflight = None
        if isinstance(exc, ProviderTimeout):
            self._dispatched_unanswered = target

    def _observe(self, chunk: Chunk) -> None:
        if chunk.finish_reason:
            self._stream_finish_reason = chunk.finish_reason
        if chunk.usage is not None:
            self.usage = chunk.usage
        if chunk.content:
            self._streamed_text.append(chunk.content)
        for call in chunk.tool_calls or ():
            # Tool-call arguments (and names) are output the upstream bills for.
            function = call.get("function") or {}
            for part in (function.get("name"), function.get("arguments")):
                if isinstance(part, str) and part:
                    self._streamed_tool_args.append(part)

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResponse:
        last_error: ProviderError | None = None
        chain = self._chain_new()
        for target in target_order(self.route):
            if not chain.budget.take():
                break
            adapter = adapter_for(target.provider)
            started = time.perf_counter()
            self._inflight = target
            attempt, upstream = self._trace_attempt(target, 0)
            try:
                with attempt, upstream:
                    response = await adapter.embed(
                        dataclasses.replace(request, model=target.model.upstream_model)
                    )
            except ProviderError as exc:
                self._landed(target, exc)
                self._record(target, started, exc.upstream_status or exc.status, exc.code, exc)
                last_error = exc
                if not exc.retryable:
                    raise
                continue
            self._landed(target, None)
            self._record(target, started, 200)
            self.served = target
            self.usage = response.usage
            return response
        assert last_error is not None
        raise last_error

    # -- running, settled on every exit -------------------------------------------------
    async def run_settled(
        self, work: Awaitable[Any], *, default: Callable[[], Any] | None = None
    ) -> Any:
        """Await `work` (one attempt loop) under the call's deadline and settle however it
        ends: ok, a provider error (re-raised; or, when every step failed and the route has
        a default_message, `default()` settled at cost 0), the deadline (ProviderTimeout), a
        cancellation (the client left; re-raised) or a crash of ours (re-raised)."""
        try:
            async with asyncio.timeout(self.deadline_s):
                result = await work
        except ProviderError as exc:
            if default is not None and self._default_applies(exc):
                self.default_message_used = True
                await self.finish(status_code=200, outcome="error", error_type=DEFAULT_MESSAGE)
                return default()
            await self.finish(status_code=exc.status, outcome="error", error_type=exc.code)
            raise
        except TimeoutError:
            if self._inflight is not None:
                self._dispatched_unanswered = self._inflight
            await self.finish(status_code=504, outcome="error", error_type="gateway_timeout")
            raise ProviderTimeout(
                "The request did not finish within the gateway's deadline"
            ) from None
        except asyncio.CancelledError:
            await asyncio.shield(
                self.finish(status_code=499, outcome="cancelled", error_type=self.cancel_reason)
            )
            raise
        except Exception:
            await asyncio.shield(
                self.finish(status_code=500, outcome="error", error_type="internal_error")
            )
            raise
        await self.finish(status_code=200, outcome="ok")
        return result

    async def run_complete(self, chat: ChatRequest) -> ChatResponse:
        """The whole answer, settled. Raises ProviderError (already settled as an error)."""
        return await self.run_settled(self.complete(chat), default=self._default_response)

    # -- the route's default message -------------------------------------------------------
    def _default_applies(self, exc: ProviderError) -> bool:
        """Every step failed (an upstream failure, not a refusal of this request's content)
        and the route says what to answer then."""
        return bool(self.route.default_message) and exc.retryable and self.served is None

    def _default_response(self) -> ChatResponse:
        return ChatResponse(
            id=f"chatcmpl-{random.getrandbits(116):029x}",
            model=self.route.name,
            content=self.route.default_message,
            finish_reason="stop",
            usage=Usage(),
            created=int(time.time()),
        )

    def _default_chunks(self) -> list[Chunk]:
        return [
            Chunk(role="assistant", content=self.route.default_message),
            Chunk(finish_reason="stop"),
            Chunk(usage=Usage()),
        ]

    async def run_embed(self, request: EmbeddingRequest) -> EmbeddingResponse:
        """Embeddings, settled. Raises ProviderError (already settled as an error)."""
        return await self.run_settled(self.embed(request))

    async def run_stream(self, chat: ChatRequest) -> AsyncIterator[Chunk]:
        """The stream's chunks; the call settles when the iterator ends however it ends:
        exhausted (ok), a provider error (re-raised), closed or cancelled before the end
        (cancelled, for `cancel_reason`), a crash (re-raised). Close it (aclosing) when
        leaving early."""
        status, outcome, error_type = 499, "cancelled", None
        try:
            async for chunk in self.stream(chat):
                yield chunk
            status, outcome, error_type = 200, "ok", ""
        except ProviderError as exc:
            if not self._default_applies(exc):
                status, outcome, error_type = exc.status, "error", exc.code
                raise
            # Nothing was streamed yet: the route's default message is the answer.
            self.default_message_used = True
            status, outcome, error_type = 200, "error", DEFAULT_MESSAGE
            for chunk in self._default_chunks():
                self._observe(chunk)
                yield chunk
        except (GeneratorExit, asyncio.CancelledError):
            if self._inflight is not None:
                self._dispatched_unanswered = self._inflight
            raise
        except Exception:
            status, outcome, error_type = 500, "error", "internal_error"
            raise
        finally:
            await asyncio.shield(
                self.finish(
                    status_code=status,
                    outcome=outcome,
                    error_type=self.cancel_reason if error_type is None else error_type,
                )
            )

    # -- settlement --------------------------------------------------------------------
    def _prompt_estimate(self) -> int:
        if self._embedding_inputs is not None:
            return sum(
                len(i) if isinstance(i, list) else count_text_tokens(str(i))
                for i in self._embedding_inputs
            )
        return count_message_tokens(self._messages) + (
            count_text_tokens(orjson.dumps(self._tools).decode()) if self._tools else 0
        )

    def _output_estimate(self) -> int:
        if self._response is not None:
            text = self._response.content or ""
            tool_parts = [
                str((c.get("function") or {}).get(k) or "")
                for c in self._response.tool_calls or ()
                for k in ("name", "arguments")
            ]
        else:
            text, tool_parts = "".join(self._streamed_text), self._streamed_tool_args
        return count_text_tokens(text) + sum(count_text_tokens(p) for p in tool_parts)

    def _final_usage(self) -> Usage:
        """What the call is billed for. The upstream's report when it has one; where it has
        none (or an empty one for an answer that has output) the gateway counts prompt and
        output itself and flags the usage as estimated. A call that reached no answer but
        whose request went out (it timed out, or the client left while it was in flight) is
        billed its prompt: the upstream bills that whether or not we read the answer."""
        reported = self.usage
        if self.served is not None:
            if reported is not None and (reported.prompt_tokens or reported.completion_tokens):
                if reported.completion_tokens or not (
                    self._streamed_text or self._streamed_tool_args
                ):
                    return reported
                # Cut before the final usage chunk: the output so far is counted by us.
                return dataclasses.replace(
                    reported, completion_tokens=self._output_estimate(), estimated=True
                )
            return Usage(
                prompt_tokens=self._prompt_estimate(),
                completion_tokens=self._output_estimate(),
                estimated=True,
            )
        if self._inflight is not None or self._dispatched_unanswered is not None:
            if reported is not None and reported.estimated and reported.prompt_tokens:
                # Counted per upstream call already (a fan-out's sent-then-cancelled calls).
                return reported
            return Usage(prompt_tokens=self._prompt_estimate(), estimated=True)
        return Usage()

    async def finish(self, *, status_code: int, outcome: str, error_type: str = "") -> None:
        if self._finished:
            return
        self._finished = True
        usage = self.settled_usage = self._final_usage()
        target = self.served or (
            (self._inflight or self._dispatched_unanswered) if usage.total_tokens else None
        )
        self.billed = target
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
        if self.default_message_used:
            # The route's default message answered: the tenant is billed nothing.
            self.cost = Decimal(0)
        if self._cached is not None and outcome == "ok":
            # Served from the response cache: charged per the route's policy (free or a
            # fraction of what the original call cost), the rest recorded as saved.
            outcome = "cache_hit"
            self.cost, self.cache_saved = cache_hit_charge(
                original_cost=self._cached.cost_usd,
                price_fraction=self.route.options.cache.price_fraction,
            )
            response_cache_savings_observe(route=self.route.name, saved_usd=float(self.cache_saved))
        payload = usage_event_payload(
            call=self, usage=usage, status_code=status_code, outcome=outcome, error_type=error_type
        )
        stored = False
        if self.admission is not None:
            try:
                with tracing.child_span(self.trace, "gateway.settlement"):
                    stored = await request_settle(
                        admission=self.admission,
                        cost_usd=self.cost,
                        tokens_used=usage.total_tokens,
                        usage_event=payload,
                    )
            except Exception:
                # Whatever failed, the event still goes to PostgreSQL; the hold stays open
                # and the sweeper charges the counters with this event when it expires.
                logger.exception("request.settle_failed", extra={"request_id": self.request_id})
        if not stored:
            await usage_event_record(payload=payload)
        if outcome == "ok":
            self._cache_store_fresh(usage)
        if self.idempotency is not None:
            if outcome not in ("ok", "cache_hit"):
                await idempotency_release(self.idempotency)
            elif self.stream_mode:
                await idempotency_complete(self.idempotency)
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
                "request_id": self.request_id,
                "model": payload["model"],
                "provider": target.provider.name if target is not None else "",
                "client_request_id": self.client_request_id,
                "tenant_id": self.policy.tenant_id if self.policy else None,
                "api_key_id": self.policy.key_id if self.policy else None,
                "route": self.route.name if self.route else "",
                "status_code": status_code,
                "outcome": outcome,
                "tokens_in": usage.prompt_tokens,
                "tokens_out": usage.completion_tokens,
                "usage_estimated": usage.estimated,
                "cost_usd": format(self.cost, "f"),
                "latency_ms": payload["latency_ms"],
            },
        )


def capabilities_honour(ingress: Ingress, required: frozenset[str]) -> None:
    """Narrow the ingress's route to the steps whose catalog model declares every capability
    the request needs (tools, images, JSON mode, embeddings): the others are skipped; none
    left is a 400 `model_capability_missing` (routing/decide/capabilities.py). Streaming is
    not checked here (every adapter streams)."""
    route = ingress.route
    if not required or route is None:
        return
    eligible = capability_targets(route.targets, required)
    if len(eligible) != len(route.targets):
        ingress.route = dataclasses.replace(route, targets=tuple(eligible))


async def inference_call_open(
    *,
    ingress: Ingress,
    chat: ChatRequest,
) -> InferenceCall:
    """The opening every ingress shares (chat, messages, generate, websocket...): a call for
    the ingress's resolved route, admitted against the key's and tenant's limits. A refusal
    raises GatewayError (429/402 with its headers), ready for `ingress_reject`."""
    price_changing_params_refuse(chat)
    capabilities_honour(
        ingress,
        capabilities_required(
            messages=chat.messages,
            tools=chat.tools,
            functions=chat.extra.get("functions"),
            response_format=chat.extra.get("response_format"),
        ),
    )
    call = InferenceCall.for_ingress(ingress, stream=chat.stream)
    extra = [chat.tool_choice, chat.stop, chat.extra] if (chat.tool_choice or chat.extra) else None
    tools = chat.tools
    native_tools = chat.native.body.get("tools") if chat.native is not None else None
    if isinstance(native_tools, list) and native_tools:
        # The client's own tools go upstream (server and client tools the normalized request
        # does not carry): the reservation counts what is sent.
        tools = native_tools
    try:
        await call.admit(
            messages=chat.messages, max_tokens=chat.max_tokens, tools=tools, extra=extra
        )
    except AdmissionDenied as denied:
        raise gateway_error_from_admission(denied) from None
    return call


async def embedding_call_open(*, ingress: Ingress, inputs: list) -> InferenceCall:
    """The opening of an embeddings call: admitted on the size of its input (no output)."""
    capabilities_honour(ingress, capabilities_required(endpoint="embeddings"))
    call = InferenceCall.for_ingress(ingress)
    call._embedding_inputs = inputs
    try:
        await call.admit(
            messages=[], max_tokens=0, prompt_tokens=embedding_tokens_upper_bound(inputs)
        )
    except AdmissionDenied as denied:
        raise gateway_error_from_admission(denied) from None
    return call


def usage_event_payload(
    *,
    call: InferenceCall | None,
    usage: Usage,
    status_code: int,
    outcome: str,
    error_type: str,
    request_id: str | None = None,
    client_request_id: str = "",
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
        client_request_id = call.client_request_id
    target = (call.billed or call.served) if call is not None else None
    prices = None
    if call is not None and target is not None:
        prices = call.unit_prices or target.model.price_at(call.created_at)
    return {
        "request_id": request_id,
        "client_request_id": client_request_id,
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
        "response_cache_saved_usd": format(call.cache_saved, "f") if call is not None else "0",
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
    client_request_id: str = "",
    outcome: str = "rejected",
) -> None:
    """A request refused before any upstream call (bad body, unknown model, limit refusal):
    counted in the request metric; with a known key it leaves exactly one usage event. A
    request without a usable key leaves no row (metrics and logs only): a stranger must not
    be able to write into a tenant's records."""
    if outcome == "rejected":
        # Counted by error code too (gateway_refusals_total), and in the request counters.
        request_refused(
            endpoint=endpoint,
            code=error_type,
            status=status_code,
            latency_s=max(0.0, time.perf_counter() - started),
        )
    else:
        request_observe(
            endpoint=endpoint,
            route=route_name[:128] if policy is not None else "",
            model="",
            outcome=outcome,
            status=status_code,
            tokens_in=0,
            tokens_out=0,
            cost_usd=0.0,
            latency_s=max(0.0, time.perf_counter() - started),
            ttft_s=None,
            fallbacks=0,
        )
    realtime_observe(
        tenant_id=policy.tenant_id if policy else None,
        latency_ms=round(max(0.0, time.perf_counter() - started) * 1000, 3),
        status_code=status_code,
        outcome=outcome,
        began=False,
    )
    if policy is None:
        logger.info(
            "request.refused_unauthenticated",
            extra={
                "request_id": request_id,
                "client_request_id": client_request_id,
                "endpoint": endpoint,
                "status_code": status_code,
                "error_type": error_type,
            },
        )
        return
    payload = usage_event_payload(
        call=None,
        usage=Usage(),
        status_code=status_code,
        outcome=outcome,
        error_type=error_type,
        request_id=request_id,
        client_request_id=client_request_id,
        policy=policy,
        route_name=route_name[:128],
        endpoint=endpoint,
        started=started,
    )
    await usage_event_record(payload=payload)
