"""Reads behind the metrics API (/api/v1/metrics/*, /stats). Every selector takes the tenant
scope first (None: every tenant, for operators who may see them all).

Figures come from raw usage events (and their attempts) of the window, not from rollups: a
window is minutes to days, raw events are kept GATEWAY_USAGE_RETENTION_DAYS, and the rollups
follow only as often as beat runs them. Percentiles are exact: PostgreSQL's
percentile_cont over the window's events (linear interpolation between the two nearest
values); on SQLite the same definition is computed in Python over the sorted values. Money is
summed exactly (numeric on PostgreSQL, Decimal in Python on SQLite)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db import connection
from django.db.models import Avg, Count, DecimalField, F, Max, Q, QuerySet, Sum
from django.db.models.functions import TruncDay

from providers.models import Provider
from tenants.models import ApiKey
from usage.models import COST_QUANTUM, Outcome, UsageAttempt, UsageEvent
from usage.rollups import cache_savings
from usage.selectors import route_savings_from_rows

_ZERO = Decimal(0)
QUANTILES = (0.5, 0.95, 0.99)
MAX_WINDOW = timedelta(days=90)
LOGS_MAX_LIMIT = 500


def _is_postgres() -> bool:
    return connection.vendor == "postgresql"


# -- windows -------------------------------------------------------------------------------
WINDOW_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def window_parse(raw: str | None, *, now: datetime | None = None, default: str = "24h"):
    """[now - window, now) for a window like 90s, 15m, 24h or 7d (at most 90 days)."""
    text = (raw or default).strip().lower()
    unit = WINDOW_UNITS.get(text[-1:]) if text else None
    if unit is None or not text[:-1].isdigit() or int(text[:-1]) <= 0:
        raise ValueError("window must look like 90s, 15m, 24h or 7d")
    # Compared as an int first: a huge count would overflow timedelta (a 500, not a 400).
    if int(text[:-1]) * unit > MAX_WINDOW.total_seconds():
        raise ValueError("window longer than 90 days")
    span = timedelta(seconds=int(text[:-1]) * unit)
    end = now or datetime.now(tz=UTC)
    return end - span, end


# -- building blocks -----------------------------------------------------------------------
def _events(tenant_ids: Sequence[int] | None, start: datetime | None, end: datetime | None):
    events = UsageEvent.objects.all()
    if tenant_ids is not None:
        events = events.filter(tenant_id__in=list(tenant_ids))
    if start is not None:
        events = events.filter(created_at__gte=start)
    if end is not None:
        events = events.filter(created_at__lt=end)
    return events.order_by()


def percentile_cont(values: Sequence[float], q: float) -> float | None:
    """PostgreSQL's percentile_cont on a sorted list: the value at position q x (n - 1),
    interpolated linearly between its neighbours."""
    if not values:
        return None
    position = q * (len(values) - 1)
    lower = int(position)
    upper = min(lower + 1, len(values) - 1)
    fraction = position - lower
    return values[lower] + (values[upper] - values[lower]) * fraction


def percentiles(qs: QuerySet, column: str, quantiles: Sequence[float] = QUANTILES) -> list:
    """Exact percentiles of `column` over the rows of `qs` (NULLs ignored)."""
    qs = qs.filter(**{f"{column}__isnull": False}).order_by()
    if _is_postgres():
        inner, params = qs.values(column).query.sql_with_params()
        sql = (
            f"SELECT percentile_cont(%s::float8[]) WITHIN GROUP (ORDER BY q.{column}) "  # noqa: S608 - column is ours
            f"FROM ({inner}) AS q"
        )
        with connection.cursor() as cursor:
            cursor.execute(sql, [list(quantiles), *params])
            row = cursor.fetchone()
        values = row[0] if row and row[0] is not None else [None] * len(quantiles)
        return [_ms(v) for v in values]
    ordered = sorted(qs.values_list(column, flat=True))
    return [_ms(percentile_cont(ordered, q)) for q in quantiles]


def _ms(value: float | None) -> float | None:
    return None if value is None else round(float(value), 3)


def _money_by(qs: QuerySet, field: str | None) -> dict[Any, Decimal]:
    """Exact cost sums grouped by `field` (None: one total under the key None)."""
    if _is_postgres():
        if field is None:
            return {None: qs.aggregate(c=Sum("cost_usd"))["c"] or _ZERO}
        return {r[field]: r["c"] for r in qs.values(field).annotate(c=Sum("cost_usd"))}
    sums: dict[Any, Decimal] = {}
    columns = ("cost_usd",) if field is None else (field, "cost_usd")
    for row in qs.values_list(*columns):
        key = None if field is None else row[0]
        sums[key] = sums.get(key, _ZERO) + row[-1]
    return sums if field is not None else {None: sums.get(None, _ZERO)}


def _counts(qs: QuerySet) -> dict[str, int]:
    by_outcome = {r["outcome"]: r["n"] for r in qs.values("outcome").annotate(n=Count("id"))}
    total = sum(by_outcome.values())
    ok = by_outcome.get(Outcome.OK, 0)
    return {"total": total, "successful": ok, "failed": total - ok, "by_outcome": by_outcome}


def _served(qs: QuerySet) -> QuerySet:
    """Requests that reached routing (refusals before any upstream call answer in microseconds
    and would drag every percentile down)."""
    return qs.exclude(outcome=Outcome.REJECTED)


def _latency(qs: QuerySet) -> dict[str, float | None]:
    p50, p95, p99 = percentiles(_served(qs), "latency_ms")
    return {"p50": p50, "p95": p95, "p99": p99}


def _window(start: datetime | None, end: datetime | None) -> dict[str, Any]:
    return {"start": start, "end": end}


# -- summary, per model ----------------------------------------------------------------------
def metrics_summary(
    *, tenant_ids: Sequence[int] | None, start: datetime, end: datetime
) -> dict[str, Any]:
    events = _events(tenant_ids, start, end)
    by_model = _money_by(events.exclude(model=""), "model")
    return {
        "window": _window(start, end),
        "requests": _counts(events),
        "latency_ms": _latency(events),
        "costs": {
            "total_usd": _money_by(events, None)[None],
            "by_model": dict(sorted(by_model.items())),
        },
    }


def metrics_model(
    *, tenant_ids: Sequence[int] | None, model: str, start: datetime, end: datetime
) -> dict[str, Any]:
    events = _events(tenant_ids, start, end).filter(model=model)
    tokens = events.aggregate(i=Sum("tokens_in"), o=Sum("tokens_out"))
    counts = _counts(events)
    ttft50, ttft95, ttft99 = percentiles(_served(events), "ttft_ms")
    cost = _money_by(events, None)[None]
    provider_ids = sorted(
        {p for p in events.values_list("provider_id", flat=True).distinct() if p is not None}
    )
    names = _provider_names(provider_ids)
    return {
        "model": model,
        "window": _window(start, end),
        "requests": counts,
        "latency_ms": _latency(events),
        "ttft_ms": {"p50": ttft50, "p95": ttft95, "p99": ttft99},
        "tokens": {"input": tokens["i"] or 0, "output": tokens["o"] or 0},
        "costs": {
            "total_usd": cost,
            "per_request_usd": (cost / counts["total"]) if counts["total"] else _ZERO,
        },
        "providers": [names.get(p, str(p)) for p in provider_ids],
    }


def _provider_names(ids: Sequence[int]) -> dict[int, str]:
    return dict(Provider.objects.filter(pk__in=list(ids)).values_list("id", "name"))


# -- providers ---------------------------------------------------------------------------
# Routing registers this at start-up (routing/wiring.py): provider id -> the worst breaker
# state among its deployments in this process ("closed" when absent).
_breaker_states_loader: Callable[[], dict[int, str]] | None = None


def breaker_states_loader_set(loader: Callable[[], dict[int, str]] | None) -> None:
    global _breaker_states_loader
    _breaker_states_loader = loader


def metrics_providers(
    *, tenant_ids: Sequence[int] | None, start: datetime, end: datetime
) -> dict[str, Any]:
    """Health per provider from the window's upstream attempts (a fallback away from a failing
    provider counts against it even though the request succeeded)."""
    attempts = UsageAttempt.objects.filter(
        event__created_at__gte=start, event__created_at__lt=end
    ).order_by()
    if tenant_ids is not None:
        attempts = attempts.filter(event__tenant_id__in=list(tenant_ids))
    failed = Q(status_code__gte=400)
    rows = {
        r["provider_id"]: r
        for r in attempts.values("provider_id").annotate(
            n=Count("id"),
            errors=Count("id", filter=failed),
            mean=Avg("latency_ms"),
            last_ok=Max("event__created_at", filter=~failed),
            last_error=Max("event__created_at", filter=failed),
        )
    }
    states = _breaker_states_loader() if _breaker_states_loader is not None else {}
    providers = []
    for provider in Provider.objects.order_by("name"):
        row = rows.get(provider.id)
        if row is None and (tenant_ids is not None or not provider.is_active):
            # The catalog is the operator's: a scoped caller (an API key, a tenant-limited
            # operator) sees only providers its tenants' requests reached in the window.
            continue
        n = row["n"] if row else 0
        errors = row["errors"] if row else 0
        providers.append(
            {
                "provider": provider.name,
                "kind": provider.kind,
                "active": provider.is_active,
                "breaker_state": states.get(provider.id, "closed"),
                "attempts": n,
                "errors": errors,
                "error_rate": round(errors / n, 6) if n else 0.0,
                # No EWMA is kept anywhere yet: the mean over the window's attempts.
                "latency_ms": {"mean": _ms(row["mean"]) if row else None, "kind": "mean"},
                "last_success": row["last_ok"] if row else None,
                "last_error": row["last_error"] if row else None,
            }
        )
    return {"window": _window(start, end), "providers": providers}


# -- costs -------------------------------------------------------------------------------
def metrics_costs(
    *, tenant_ids: Sequence[int] | None, start: datetime, end: datetime
) -> dict[str, Any]:
    events = _events(tenant_ids, start, end)
    by_provider_id = _money_by(events.exclude(provider_id=None), "provider_id")
    by_key_id = _money_by(events.exclude(api_key_id=None), "api_key_id")
    providers = _provider_names(list(by_provider_id))
    keys = {
        k.id: k.name or k.prefix
        for k in ApiKey.objects.filter(pk__in=list(by_key_id)).only("id", "name", "prefix")
    }
    by_day = _money_by_day(events)
    route_rows = list(
        events.exclude(route="")
        .exclude(model_id=None)
        .values("route", "model_id")
        .annotate(t_in=Sum("tokens_in"), t_out=Sum("tokens_out"), cost=Sum("cost_usd"))
    )
    if not _is_postgres():
        exact = _money_by_pairs(events.exclude(route="").exclude(model_id=None))
        for row in route_rows:
            row["cost"] = exact[(row["route"], row["model_id"])]
    savings = route_savings_from_rows(route_rows)
    cache = _cache_savings(events.filter(cache_read_tokens__gt=0))
    routing_savings = sum((s.savings_usd for s in savings), _ZERO)
    return {
        "window": _window(start, end),
        "total_usd": _money_by(events, None)[None],
        "by_model": dict(sorted(_money_by(events.exclude(model=""), "model").items())),
        "by_provider": {providers.get(p, str(p)): c for p, c in sorted(by_provider_id.items())},
        "by_key": [
            {"api_key_id": k, "key": keys.get(k, str(k)), "cost_usd": c}
            for k, c in sorted(by_key_id.items())
        ],
        "by_day": dict(sorted(by_day.items())),
        "savings": {
            "total_usd": routing_savings + cache,
            "routing_usd": routing_savings,
            "cache_usd": cache,
            "by_route": [
                {
                    "route": s.route,
                    "cost_usd": s.cost_usd,
                    "most_expensive_model": s.ceiling_model,
                    "most_expensive_cost_usd": s.ceiling_cost_usd,
                    "savings_usd": s.savings_usd,
                }
                for s in savings
            ],
        },
    }


def _money_by_day(qs: QuerySet) -> dict[str, Decimal]:
    """Cost per UTC day."""
    if _is_postgres():
        rows = (
            qs.annotate(day=TruncDay("created_at", tzinfo=UTC))
            .values("day")
            .annotate(c=Sum("cost_usd"))
        )
        return {r["day"].date().isoformat(): r["c"] for r in rows}
    by_day: dict[str, Decimal] = {}
    for created, cost in qs.values_list("created_at", "cost_usd"):
        day = created.astimezone(UTC).date().isoformat()
        by_day[day] = by_day.get(day, _ZERO) + cost
    return by_day


def _cache_savings(qs: QuerySet) -> Decimal:
    """List-price value of cache-read prompt tokens (exact; as rollups.cache_savings)."""
    if _is_postgres():
        total = qs.aggregate(
            v=Sum(
                F("cache_read_tokens") * F("input_price_per_mtok"),
                output_field=DecimalField(max_digits=40, decimal_places=6),
            )
        )["v"]
        return (total or _ZERO).scaleb(-6).quantize(COST_QUANTUM)
    total = _ZERO
    for tokens, price in qs.values_list("cache_read_tokens", "input_price_per_mtok"):
        total += cache_savings(tokens, price)
    return total


def _money_by_pairs(qs: QuerySet) -> dict[tuple[str, int], Decimal]:
    sums: dict[tuple[str, int], Decimal] = {}
    for route, model_id, cost in qs.values_list("route", "model_id", "cost_usd"):
        sums[(route, model_id)] = sums.get((route, model_id), _ZERO) + cost
    return sums


# -- logs, stats -------------------------------------------------------------------------
LOG_FIELDS = (
    "request_id",
    "created_at",
    "tenant_id",
    "api_key_id",
    "route",
    "model",
    "provider_id",
    "endpoint",
    "stream",
    "status_code",
    "outcome",
    "error_type",
    "latency_ms",
    "ttft_ms",
    "tokens_in",
    "tokens_out",
    "cost_usd",
    "fallbacks",
)


def metrics_logs(
    *,
    tenant_ids: Sequence[int] | None,
    limit: int = 100,
    before: datetime | None = None,
    model: str | None = None,
    outcome: str | None = None,
) -> list[dict[str, Any]]:
    """The most recent requests, newest first. Events hold no prompt or answer text, and none
    is read here."""
    events = _events(tenant_ids, None, before)
    if model:
        events = events.filter(model=model)
    if outcome:
        events = events.filter(outcome=outcome)
    rows = list(events.order_by("-created_at", "-id").values(*LOG_FIELDS)[: max(1, limit)])
    names = _provider_names({r["provider_id"] for r in rows if r["provider_id"] is not None})
    for row in rows:
        provider_id = row.pop("provider_id")
        row["provider"] = names.get(provider_id, "") if provider_id is not None else ""
    return rows


@dataclass(slots=True)
class Stats:
    total_requests: int
    average_latency_ms: float | None
    total_cost_usd: Decimal
    error_rate: float


def stats_get(
    *, tenant_ids: Sequence[int] | None, start: datetime | None = None, end: datetime | None = None
) -> Stats:
    """The demo seed's /stats: every stored event unless a window is given."""
    events = _events(tenant_ids, start, end)
    counts = _counts(events)
    average = _served(events).aggregate(a=Avg("latency_ms"))["a"]
    return Stats(
        total_requests=counts["total"],
        average_latency_ms=_ms(average),
        total_cost_usd=_money_by(events, None)[None],
        error_rate=round(counts["failed"] / counts["total"], 6) if counts["total"] else 0.0,
    )
