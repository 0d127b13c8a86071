"""Gateway metrics for Prometheus (served at /metrics by django-prometheus; with several
worker processes set PROMETHEUS_MULTIPROC_DIR so the page aggregates them)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

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
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
TTFT = Histogram(
    "gateway_time_to_first_token_seconds",
    "Time to the first upstream chunk (streams) or the whole answer",
    ["model"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
FALLBACKS = Counter("gateway_fallbacks_total", "Fallbacks taken, by route", ["route"])


# Labelled children, cached: prometheus_client's .labels() validates and locks on every call.
_children: dict[tuple, tuple] = {}


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
            TTFT.labels(model),
            FALLBACKS.labels(route),
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
) -> None:
    requests, latency, tokens_in_c, tokens_out_c, cost, ttft, fallbacks_c = _children_for(
        endpoint, route, model, outcome, status
    )
    requests.inc()
    latency.observe(latency_s)
    if tokens_in:
        tokens_in_c.inc(tokens_in)
    if tokens_out:
        tokens_out_c.inc(tokens_out)
    if cost_usd:
        # Prometheus counters are floats: fine for dashboards; money of record is in Postgres.
        cost.inc(cost_usd)
    if ttft_s is not None:
        ttft.observe(ttft_s)
    if fallbacks:
        fallbacks_c.inc(fallbacks)
