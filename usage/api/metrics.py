"""The metrics API (/api/v1/metrics/*) and the demo's /stats, in the orchestration seed's JSON
shapes, tenant-scoped:

- an API key (`Authorization: Bearer <key>` or `X-API-Key`) sees its own tenant; a `?tenant=`
  naming another tenant is refused (403);
- an operator (`Authorization: Token <operator token>`, or a logged-in admin session) sees every
  tenant it may administer (superusers: all), or one of them with `?tenant=<id>`.

Errors are OpenAI-shaped. Money is exact: Decimal amounts are written as JSON numbers with
their exact digits (never through a float). OpenAPI: /api/v1/metrics/openapi.json."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
from asgiref.sync import sync_to_async
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from ninja import NinjaAPI, Query, Router, Schema
from ninja.errors import ValidationError
from ninja.renderers import BaseRenderer

from tenants.keys import api_key_from_headers, api_key_hash
from tenants.models import OperatorToken
from tenants.selectors import api_key_policy_get, tenant_ids_visible_to
from usage import metrics_selectors as sel
from usage.access import parse_range
from usage.realtime import realtime_stats


# -- JSON with exact decimals ------------------------------------------------------------
def _json(value: Any) -> str:
    if isinstance(value, dict):
        return (
            "{"
            + ",".join(f"{orjson.dumps(str(k)).decode()}:{_json(v)}" for k, v in value.items())
            + "}"
        )
    if isinstance(value, list | tuple):
        return "[" + ",".join(_json(v) for v in value) + "]"
    if isinstance(value, Decimal):
        if not value.is_finite():
            return "null"
        text = format(value.normalize(), "f")
        return text if text not in ("-0", "") else "0"
    return orjson.dumps(value).decode()


class ExactJSONRenderer(BaseRenderer):
    media_type = "application/json"

    def render(self, request: HttpRequest, data: Any, *, response_status: int) -> str:
        return _json(data)


class MetricsAPI(NinjaAPI):
    """Declares the three ways to authenticate in the OpenAPI document (the views check them
    themselves, to answer in OpenAI's error shape)."""

    def get_openapi_schema(self, *, path_prefix=None, path_params=None):
        schema = super().get_openapi_schema(path_prefix=path_prefix, path_params=path_params)
        schema.setdefault("components", {})["securitySchemes"] = {
            "apiKeyBearer": {"type": "http", "scheme": "bearer", "description": "API key"},
            "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            "operatorToken": {
                "type": "apiKey",
                "in": "header",
                "name": "Authorization",
                "description": "`Token <operator token>` (tenants.OperatorToken)",
            },
        }
        schema["security"] = [{"apiKeyBearer": []}, {"apiKeyHeader": []}, {"operatorToken": []}]
        return schema


metrics_api = MetricsAPI(
    title="LLM Gateway metrics API",
    version="1",
    description="Usage metrics per tenant. Authenticate with an API key (`Authorization: "
    "Bearer <key>` or `X-API-Key`: your tenant) or an operator token (`Authorization: Token "
    "<token>`: every tenant you administer, or one with `?tenant=<id>`). Money amounts are "
    "exact decimal numbers in USD.",
    urls_namespace="metrics",
    docs_url="/api/v1/metrics/docs",
    openapi_url="/api/v1/metrics/openapi.json",
    renderer=ExactJSONRenderer(),
)
router = Router(tags=["metrics"])


# -- errors --------------------------------------------------------------------------------
class MetricsError(Exception):
    def __init__(self, status: int, message: str, error_type: str, code: str) -> None:
        super().__init__(message)
        self.status, self.message, self.error_type, self.code = status, message, error_type, code


def _error_response(status: int, message: str, error_type: str, code: str | None, param=None):
    body = {"error": {"message": message, "type": error_type, "param": param, "code": code}}
    return HttpResponse(orjson.dumps(body), status=status, content_type="application/json")


@metrics_api.exception_handler(MetricsError)
def _on_metrics_error(request, exc: MetricsError):
    return _error_response(exc.status, exc.message, exc.error_type, exc.code)


@metrics_api.exception_handler(ValidationError)
def _on_validation_error(request, exc: ValidationError):
    first = exc.errors[0] if exc.errors else {}
    param = ".".join(str(p) for p in first.get("loc", ()) if p not in ("query", "path")) or None
    message = first.get("msg", "Invalid request")
    return _error_response(400, message, "invalid_request_error", "invalid_value", param)


def _unauthenticated(message: str, code: str) -> MetricsError:
    return MetricsError(401, message, "authentication_error", code)


def _forbidden(message: str) -> MetricsError:
    return MetricsError(403, message, "permission_error", "tenant_not_allowed")


# -- who is asking -----------------------------------------------------------------------
async def _operator_scope(user, tenant: int | None) -> list[int] | None:
    if not (user and user.is_authenticated and user.is_active):
        raise _unauthenticated("Invalid operator token", "invalid_operator_token")
    visible = await sync_to_async(tenant_ids_visible_to)(user=user)
    if visible is not None and not visible:
        raise _forbidden("This operator administers no tenant")
    if tenant is None:
        return visible
    if visible is not None and tenant not in visible:
        raise _forbidden("Not one of your tenants")
    return [tenant]


async def tenant_scope_for(request: HttpRequest, tenant: int | None) -> list[int] | None:
    """The tenant ids this request may read (None: every tenant)."""
    authorization = request.META.get("HTTP_AUTHORIZATION") or ""
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() == "token":
        token = await (
            OperatorToken.objects.select_related("user")
            .filter(key_hash=api_key_hash(value.strip()))
            .afirst()
        )
        # One answer for unknown, revoked and expired tokens (no oracle for which it was).
        if token is None or token.revoked_at is not None or token.expires_at <= timezone.now():
            raise _unauthenticated("Invalid operator token", "invalid_operator_token")
        if token.tenant_id is not None:
            # A token limited to one tenant reads that tenant only, whatever it asks for.
            if tenant is not None and tenant != token.tenant_id:
                raise _forbidden("This token is limited to another tenant")
            tenant = token.tenant_id
        return await _operator_scope(token.user, tenant)
    raw_key = api_key_from_headers(authorization or None, request.META.get("HTTP_X_API_KEY"))
    if raw_key is None:
        user = await request.auser()
        if user.is_authenticated:
            return await _operator_scope(user, tenant)
        raise _unauthenticated(
            "Missing credentials: send 'Authorization: Bearer <key>', 'X-API-Key' or "
            "'Authorization: Token <operator token>'",
            "missing_api_key",
        )
    policy = await api_key_policy_get(raw_key=raw_key)
    if policy is None:
        raise _unauthenticated("Incorrect API key provided", "invalid_api_key")
    if not policy.usable_at(datetime.now(tz=UTC)):
        raise _unauthenticated("This API key is no longer valid", "invalid_api_key")
    if tenant is not None and tenant != policy.tenant_id:
        raise _forbidden("An API key sees only its own tenant")
    return [policy.tenant_id]


# -- parameters and shapes -------------------------------------------------------------
class ErrorDetail(Schema):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorOut(Schema):
    error: ErrorDetail


ERRORS = {400: ErrorOut, 401: ErrorOut, 403: ErrorOut}


class WindowParams(Schema):
    tenant: int | None = None
    window: str | None = None
    start: str | None = None
    end: str | None = None


def _text(value: str | None, param: str) -> str | None:
    """A free-text filter as PostgreSQL can compare it: NUL is refused (a 400, not a 500)."""
    if value is not None and "\x00" in value:
        raise MetricsError(
            400, f"{param} must not contain NUL", "invalid_request_error", "invalid_value"
        )
    return value


def _range(params: WindowParams) -> tuple[datetime, datetime]:
    try:
        if params.start or params.end:
            return parse_range(params.start, params.end)
        return sel.window_parse(params.window)
    except ValueError as exc:
        raise MetricsError(400, str(exc), "invalid_request_error", "invalid_window") from exc


class WindowOut(Schema):
    start: datetime | None
    end: datetime | None


class RequestCounts(Schema):
    total: int
    successful: int
    failed: int
    by_outcome: dict[str, int]


class Percentiles(Schema):
    p50: float | None
    p95: float | None
    p99: float | None


class CostsOut(Schema):
    total_usd: Decimal
    by_model: dict[str, Decimal]


class SummaryOut(Schema):
    window: WindowOut
    requests: RequestCounts
    latency_ms: Percentiles
    costs: CostsOut


class TokensOut(Schema):
    input: int
    output: int


class ModelCostsOut(Schema):
    total_usd: Decimal
    per_request_usd: Decimal


class ModelOut(Schema):
    model: str
    window: WindowOut
    requests: RequestCounts
    latency_ms: Percentiles
    ttft_ms: Percentiles
    tokens: TokensOut
    costs: ModelCostsOut
    providers: list[str]


class ProviderLatency(Schema):
    mean: float | None
    kind: str


class ProviderOut(Schema):
    provider: str
    kind: str
    active: bool
    breaker_state: str
    attempts: int
    errors: int
    error_rate: float
    latency_ms: ProviderLatency
    last_success: datetime | None
    last_error: datetime | None


class ProvidersOut(Schema):
    window: WindowOut
    providers: list[ProviderOut]


class KeyCost(Schema):
    api_key_id: int
    key: str
    cost_usd: Decimal


class RouteSavingsOut(Schema):
    route: str
    cost_usd: Decimal
    most_expensive_model: str
    most_expensive_cost_usd: Decimal
    savings_usd: Decimal


class SavingsOut(Schema):
    total_usd: Decimal
    routing_usd: Decimal
    cache_usd: Decimal
    by_route: list[RouteSavingsOut]


class CostBreakdownOut(Schema):
    window: WindowOut
    total_usd: Decimal
    by_model: dict[str, Decimal]
    by_provider: dict[str, Decimal]
    by_key: list[KeyCost]
    by_day: dict[str, Decimal]
    savings: SavingsOut


class LogParams(Schema):
    tenant: int | None = None
    limit: int = 100
    before: datetime | None = None
    model: str | None = None
    outcome: str | None = None


class LogEntry(Schema):
    request_id: str
    created_at: datetime
    tenant_id: int | None
    api_key_id: int | None
    route: str
    model: str
    provider: str
    endpoint: str
    stream: bool
    status_code: int
    outcome: str
    error_type: str
    latency_ms: float
    ttft_ms: float | None
    tokens_in: int
    tokens_out: int
    cost_usd: Decimal
    fallbacks: int


class LogsOut(Schema):
    logs: list[LogEntry]
    count: int


class TenantParam(Schema):
    tenant: int | None = None


class RealtimeSecond(Schema):
    t: int
    requests: int
    errors: int


class RealtimeLatency(Schema):
    p50: float | None
    p95: float | None
    method: str


class RealtimeOut(Schema):
    window_seconds: int
    requests: int
    rps: float
    errors: int
    error_rate: float
    in_flight: int
    latency_ms: RealtimeLatency
    series: list[RealtimeSecond]


class StatsOut(Schema):
    total_requests: int
    average_latency_ms: float | None
    total_cost_usd: Decimal
    error_rate: float


# -- endpoints -----------------------------------------------------------------------------
@router.get(
    "/summary", response={200: SummaryOut, **ERRORS}, summary="Requests, latency percentiles, costs"
)
async def summary(request: HttpRequest, params: Query[WindowParams]):
    tenant_ids = await tenant_scope_for(request, params.tenant)
    start, end = _range(params)
    return await sync_to_async(sel.metrics_summary)(tenant_ids=tenant_ids, start=start, end=end)


@router.get(
    "/models/{path:model}",
    response={200: ModelOut, **ERRORS},
    summary="One served model's performance",
)
async def model_detail(request: HttpRequest, model: str, params: Query[WindowParams]):
    tenant_ids = await tenant_scope_for(request, params.tenant)
    start, end = _range(params)
    return await sync_to_async(sel.metrics_model)(
        tenant_ids=tenant_ids, model=_text(model, "model"), start=start, end=end
    )


@router.get("/providers", response={200: ProvidersOut, **ERRORS}, summary="Provider health")
async def providers(request: HttpRequest, params: Query[WindowParams]):
    tenant_ids = await tenant_scope_for(request, params.tenant)
    start, end = _range(params)
    return await sync_to_async(sel.metrics_providers)(tenant_ids=tenant_ids, start=start, end=end)


@router.get(
    "/costs",
    response={200: CostBreakdownOut, **ERRORS},
    summary="Costs by model, provider, key, day",
)
async def costs(request: HttpRequest, params: Query[WindowParams]):
    tenant_ids = await tenant_scope_for(request, params.tenant)
    start, end = _range(params)
    return await sync_to_async(sel.metrics_costs)(tenant_ids=tenant_ids, start=start, end=end)


@router.get(
    "/logs", response={200: LogsOut, **ERRORS}, summary="Recent requests (never prompts or answers)"
)
async def logs(request: HttpRequest, params: Query[LogParams]):
    tenant_ids = await tenant_scope_for(request, params.tenant)
    if not 1 <= params.limit <= sel.LOGS_MAX_LIMIT:
        raise MetricsError(
            400, f"limit must be 1..{sel.LOGS_MAX_LIMIT}", "invalid_request_error", "invalid_limit"
        )
    rows = await sync_to_async(sel.metrics_logs)(
        tenant_ids=tenant_ids,
        limit=params.limit,
        before=params.before,
        model=_text(params.model, "model"),
        outcome=_text(params.outcome, "outcome"),
    )
    return {"logs": rows, "count": len(rows)}


@router.get(
    "/realtime", response={200: RealtimeOut, **ERRORS}, summary="The last 60 seconds, all workers"
)
async def realtime(request: HttpRequest, params: Query[TenantParam]):
    tenant_ids = await tenant_scope_for(request, params.tenant)
    stats = await realtime_stats(tenant_ids=tenant_ids)
    return {
        "window_seconds": stats.window_s,
        "requests": stats.requests,
        "rps": round(stats.rps, 3),
        "errors": stats.errors,
        "error_rate": round(stats.errors / stats.requests, 6) if stats.requests else 0.0,
        "in_flight": stats.in_flight,
        "latency_ms": {
            "p50": stats.p50_ms,
            "p95": stats.p95_ms,
            "method": "histogram bucket upper bound (buckets grow by 25%)",
        },
        "series": [{"t": t, "requests": n, "errors": e} for t, n, e in stats.series],
    }


metrics_api.add_router("/api/v1/metrics", router)


@metrics_api.get(
    "/stats", response={200: StatsOut, **ERRORS}, tags=["metrics"], summary="Totals (demo seed)"
)
async def stats(request: HttpRequest, params: Query[TenantParam]):
    tenant_ids = await tenant_scope_for(request, params.tenant)
    result = await sync_to_async(sel.stats_get)(tenant_ids=tenant_ids)
    return {
        "total_requests": result.total_requests,
        "average_latency_ms": result.average_latency_ms,
        "total_cost_usd": result.total_cost_usd,
        "error_rate": result.error_rate,
    }
