"""Gateway metrics for Prometheus, served at /metrics (gateway_project/metrics.py).

With several worker processes (`make serve`, the Docker image) the server start sets
PROMETHEUS_MULTIPROC_DIR to an empty directory before any worker imports prometheus_client:
every process then writes its samples to files there and /metrics merges them
(prometheus_client's multiprocess mode), so counters equal the traffic whichever worker is
scraped. Gauges declare how processes combine (`multiprocess_mode`).

Label sets are bounded: endpoint, route, served model, provider (catalog sizes), status and
outcome; never a tenant or key unless GATEWAY_METRICS_TENANT_LABEL turns on the separate
`gateway_tenant_*` series.

Two families:
* ours: `gateway_*` (requests, tokens, cost, latency, TTFT, fallbacks, refusals, breakers,
  upstream pools; the usage pipeline gauges come from gateway_project/metrics.py at scrape);
* the enterprise proxy seed's names: `http_requests_total`, `http_request_duration_seconds`,
  `llm_requests_total`, `llm_tokens_total`, `cache_hits_total`, `cache_misses_total`.
"""

from __future__ import annotations

import contextvars
import time

from django.conf import settings
from prometheus_client import Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

REQUESTS = Counter(
    "gateway_requests_total",
    "Inference requests by endpoint, route, served model, outcome and status",
    ["endpoint", "route", "model", "outcome", "status"],
)
TOKENS = Counter(
    "gateway_tokens_total",
    "Tokens by route, served model and direction",
    ["route", "model", "direction"],
)
COST = Counter(
    "gateway_cost_usd_total", "Cost charged in USD by route and served model", ["route", "model"]
)
LATENCY = Histogram(
    "gateway_request_seconds",
    "Time from request to last byte",
    ["endpoint"],
    buckets=_LATENCY_BUCKETS,
)
PROVIDER_LATENCY = Histogram(
    "gateway_provider_request_seconds",
    "Time from request to last byte, by the provider and model that served it",
    ["provider", "model"],
    buckets=_LATENCY_BUCKETS,
)
TTFT = Histogram(
    "gateway_time_to_first_token_seconds",
    "Time to the first upstream chunk (streams) or the whole answer",
    ["provider", "model"],
    buckets=_TTFT_BUCKETS,
)
FALLBACKS = Counter("gateway_fallbacks_total", "Fallbacks taken, by route", ["route"])
REFUSALS = Counter(
    "gateway_refusals_total",
    "Requests refused before any upstream call, by endpoint, error code and status",
    ["endpoint", "code", "status"],
)
BREAKER_STATE = Gauge(
    "gateway_breaker_state",
    "Circuit breaker per deployment: 0 closed, 1 half-open, 2 open (worst over live workers)",
    ["provider_id", "model_id"],
    multiprocess_mode="livemax",
)
POOL_IN_USE = Gauge(
    "gateway_upstream_pool_connections_in_use",
    "Upstream HTTP connections in use, by provider id (sum over live workers)",
    ["provider_id"],
    multiprocess_mode="livesum",
)
POOL_IDLE = Gauge(
    "gateway_upstream_pool_connections_idle",
    "Idle keep-alive upstream HTTP connections, by provider id (sum over live workers)",
    ["provider_id"],
    multiprocess_mode="livesum",
)
POOL_LIMIT = Gauge(
    "gateway_upstream_pool_connections_limit",
    "Connection limit of the upstream pools, by provider id (sum over live workers)",
    ["provider_id"],
    multiprocess_mode="livesum",
)

# The enterprise proxy seed's names.
HTTP_REQUESTS = Counter(
    "http_requests_total",
    "Inference HTTP requests (refusals included) by method, endpoint and status",
    ["method", "endpoint", "status"],
)
HTTP_DURATION = Histogram(
    "http_request_duration_seconds",
    "Inference HTTP request duration by method and endpoint",
    ["method", "endpoint"],
    buckets=_LATENCY_BUCKETS,
)
LLM_REQUESTS = Counter(
    "llm_requests_total",
    "Requests served by an upstream LLM, by provider, model and status",
    ["provider", "model", "status"],
)
LLM_TOKENS = Counter(
    "llm_tokens_total",
    "Tokens processed by upstream LLMs, by provider, model and type (prompt/completion)",
    ["provider", "model", "type"],
)
CACHE_HITS = Counter("cache_hits_total", "Cache hits by cache", ["cache"])
CACHE_MISSES = Counter("cache_misses_total", "Cache misses by cache", ["cache"])
RESPONSE_CACHE_SAVINGS = Counter(
    "gateway_response_cache_savings_usd_total",
    "Upstream cost the response cache saved (original cost minus what hits were charged)",
    ["route"],
)
# The caches the gateway has today; the series exist (at 0) before the first lookup.
CACHES = ("key_policy", "response")
for _cache in CACHES:
    CACHE_HITS.labels(_cache)
    CACHE_MISSES.labels(_cache)

TENANT_REQUESTS = Counter(
    "gateway_tenant_requests_total",
    "Inference requests by tenant id (only with GATEWAY_METRICS_TENANT_LABEL)",
    ["tenant", "outcome"],
)
TENANT_COST = Counter(
    "gateway_tenant_cost_usd_total",
    "Cost charged in USD by tenant id (only with GATEWAY_METRICS_TENANT_LABEL)",
    ["tenant"],
)

_STATE_VALUES = {"closed": 0, "half_open": 1, "open": 2}

# Labelled children, cached: prometheus_client's .labels() validates and locks on every call.
_children: dict[tuple, tuple] = {}
_provider_children: dict[tuple, tuple] = {}
_POOL_REFRESH_S = 1.0
_pool_refreshed_at = 0.0


def _method_of(endpoint: str) -> str:
    # Websocket requests (endpoint ws_*) are messages on an upgraded connection, not POSTs.
    return "WS" if endpoint.startswith("ws") else "POST"


def _children_for(endpoint: str, route: str, model: str, outcome: str, status: int) -> tuple:
    key = (endpoint, route, model, outcome, status)
    children = _children.get(key)
    if children is None:
        if len(_children) > 10_000:
            _children.clear()
        children = _children[key] = (
            REQUESTS.labels(endpoint, route, model, outcome, str(status)),
            LATENCY.labels(endpoint),
            TOKENS.labels(route, model, "in"),
            TOKENS.labels(route, model, "out"),
            COST.labels(route, model),
            FALLBACKS.labels(route),
            HTTP_REQUESTS.labels(_method_of(endpoint), endpoint, str(status)),
            HTTP_DURATION.labels(_method_of(endpoint), endpoint),
        )
    return children


def _provider_children_for(provider: str, model: str, status: int) -> tuple:
    key = (provider, model, status)
    children = _provider_children.get(key)
    if children is None:
        if len(_provider_children) > 10_000:
            _provider_children.clear()
        children = _provider_children[key] = (
            PROVIDER_LATENCY.labels(provider, model),
            TTFT.labels(provider, model),
            LLM_REQUESTS.labels(provider, model, str(status)),
            LLM_TOKENS.labels(provider, model, "prompt"),
            LLM_TOKENS.labels(provider, model, "completion"),
        )
    return children


def request_observe(
    *,
    endpoint: str,
    route: str,
    model: str,
    outcome: str,
    status: int,
    tokens_in: int,
    tokens_out: int,
    cost_usd: float,
    latency_s: float,
    ttft_s: float | None,
    fallbacks: int,
    provider: str = "",
    tenant: str | int | None = None,
) -> None:
    """One finished inference request (served, failed upstream, or cancelled). `provider` is
    the name of the provider that served it ("" when none did: the llm_* and per-provider
    series are then left alone)."""
    _mark_observed()
    (
        requests,
        latency,
        tokens_in_c,
        tokens_out_c,
        cost,
        fallbacks_c,
        http_requests,
        http_duration,
    ) = _children_for(endpoint, route, model, outcome, status)
    requests.inc()
    latency.observe(latency_s)
    http_requests.inc()
    http_duration.observe(latency_s)
    if tokens_in:
        tokens_in_c.inc(tokens_in)
    if tokens_out:
        tokens_out_c.inc(tokens_out)
    if cost_usd:
        # Prometheus counters are floats: fine for dashboards; money of record is in Postgres.
        cost.inc(cost_usd)
    if fallbacks:
        fallbacks_c.inc(fallbacks)
    if provider:
        p_latency, p_ttft, llm_requests, llm_prompt, llm_completion = _provider_children_for(
            provider, model, status
        )
        p_latency.observe(latency_s)
        llm_requests.inc()
        if ttft_s is not None:
            p_ttft.observe(ttft_s)
        if tokens_in:
            llm_prompt.inc(tokens_in)
        if tokens_out:
            llm_completion.inc(tokens_out)
    if tenant is not None and settings.GATEWAY_METRICS_TENANT_LABEL:
        TENANT_REQUESTS.labels(str(tenant), outcome).inc()
        if cost_usd:
            TENANT_COST.labels(str(tenant)).inc(cost_usd)
    upstream_pools_observe()


def request_refused(
    *, endpoint: str, code: str, status: int, latency_s: float | None = None, method: str = "POST"
) -> None:
    """A request answered with an error before any upstream call (bad key, validation, rate
    limit, budget, model not allowed...): counted by code, and in the request counters (with
    outcome "refused"), so error rates see it."""
    _mark_observed()
    code = (code or "unknown")[:64]
    REFUSALS.labels(endpoint, code, str(status)).inc()
    REQUESTS.labels(endpoint, "", "", "refused", str(status)).inc()
    HTTP_REQUESTS.labels(method, endpoint, str(status)).inc()
    if latency_s is not None:
        HTTP_DURATION.labels(method, endpoint).observe(latency_s)


def cache_observe(*, cache: str, hit: bool) -> None:
    (CACHE_HITS if hit else CACHE_MISSES).labels(cache).inc()


def response_cache_savings_observe(*, route: str, saved_usd: float) -> None:
    if saved_usd > 0:
        RESPONSE_CACHE_SAVINGS.labels(route).inc(saved_usd)


_KEY_POLICY_HIT = CACHE_HITS.labels("key_policy")
_KEY_POLICY_MISS = CACHE_MISSES.labels("key_policy")


def key_policy_cache_observe(hit: bool) -> None:
    """tenants' key-policy cache lookups (wired by routing.wiring)."""
    (_KEY_POLICY_HIT if hit else _KEY_POLICY_MISS).inc()


def breaker_state_observe(*, provider_id: int, model_id: int, state: str) -> None:
    BREAKER_STATE.labels(str(provider_id), str(model_id)).set(_STATE_VALUES.get(state, 0))


def upstream_pools_observe(*, force: bool = False) -> None:
    """This process's upstream pool use, at most once a second (cheap: a few len() calls)."""
    global _pool_refreshed_at
    now = time.monotonic()
    if not force and now - _pool_refreshed_at < _POOL_REFRESH_S:
        return
    _pool_refreshed_at = now
    from providers.http import http_pool_stats

    for provider_id, (in_use, idle, limit) in http_pool_stats().items():
        label = str(provider_id)
        POOL_IN_USE.labels(label).set(in_use)
        POOL_IDLE.labels(label).set(idle)
        POOL_LIMIT.labels(label).set(limit)


# -- refusals seen at the edge -----------------------------------------------------------------

# A mutable cell per request (not a bare bool): the view may run in a task of its own, whose
# context is a copy; a cell set by the middleware is shared by both.
_observation: contextvars.ContextVar[list[bool] | None] = contextvars.ContextVar(
    "gateway_request_observation", default=None
)


def _mark_observed() -> None:
    cell = _observation.get()
    if cell is not None:
        cell[0] = True


def request_observation_begin() -> list[bool]:
    """Called by the inference middleware before the view: request_observe / request_refused
    mark the request as counted; an error response that nobody counted is a refusal."""
    cell = [False]
    _observation.set(cell)
    return cell
