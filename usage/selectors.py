"""Reads of usage: spend for budgets, reports, statements, dashboards. Every selector takes
the tenant scope first (None only for superusers' whole-platform views).

Money stays Decimal end to end. Amounts are exact to 1e-12 USD; rounding to the cent happens
only for display, with ROUND_HALF_UP applied to each displayed amount on its own (so a total
is the exact sum rounded once, not the sum of rounded lines)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Literal

from django.db.models import Count, Max, QuerySet, Sum
from django.db.models.functions import Coalesce, TruncDay
from django.utils import timezone

from providers.models import Model, Provider
from tenants.models import ApiKey, BudgetPeriod, Tenant
from usage.models import PurgedUsage, RollupPeriod, UsageEvent, UsageRollup
from usage.rollups import DAY, floor_day, floor_hour

CENT = Decimal("0.01")
ROUNDING_RULE = (
    "Amounts are stored exact to 0.000000000001 USD. Each displayed amount (line or total) is "
    "the exact amount rounded to the cent, half up (ROUND_HALF_UP); totals are exact sums "
    "rounded once, so displayed lines may differ from the displayed total by rounding."
)
GROUPINGS = ("tenant", "key", "model", "provider", "day", "hour")
Grouping = Literal["tenant", "key", "model", "provider", "day", "hour"]
_ZERO = Decimal(0)


def to_cents(amount: Decimal) -> Decimal:
    return amount.quantize(CENT, rounding=ROUND_HALF_UP)


# -- spend (budgets) --------------------------------------------------------------------------


def _spend_querysets(scope: str, scope_id: int, start: datetime, end: datetime):
    if scope not in ("key", "tenant"):
        raise ValueError("scope must be 'key' or 'tenant'")
    column = "api_key_id" if scope == "key" else "tenant_id"
    events = UsageEvent.objects.filter(
        **{column: scope_id}, created_at__gte=start, created_at__lt=end
    ).order_by()
    # Purged hours only exist long before any live budget window; they are whole hours.
    purged = PurgedUsage.objects.filter(
        **{column: scope_id}, bucket_start__gte=floor_hour(start), bucket_start__lt=end
    ).order_by()
    return events, purged


async def spend_sum(
    *,
    scope: Literal["key", "tenant"],
    scope_id: int,
    start: datetime,
    end: datetime | None = None,
) -> Decimal:
    """USD spent by a key or a tenant in [start, end) (end None: up to now): stored events
    plus the totals of events retention purged. Events still in the Redis stream are not
    counted here; the caller's live counter holds them. (tenants.admission.spend_loader_set)"""
    events, purged = _spend_querysets(scope, scope_id, start, end or timezone.now())
    a = await events.aaggregate(total=Coalesce(Sum("cost_usd"), _ZERO))
    b = await purged.aaggregate(total=Coalesce(Sum("cost_usd"), _ZERO))
    return a["total"] + b["total"]


def spend_sum_sync(*, scope: str, scope_id: int, start: datetime, end: datetime) -> Decimal:
    events, purged = _spend_querysets(scope, scope_id, start, end)
    a = events.aggregate(total=Coalesce(Sum("cost_usd"), _ZERO))["total"]
    b = purged.aggregate(total=Coalesce(Sum("cost_usd"), _ZERO))["total"]
    return a + b


def budget_period_start(period: str, now: datetime) -> datetime:
    day = floor_day(now)
    if period == BudgetPeriod.DAILY:
        return day
    if period == BudgetPeriod.WEEKLY:
        return day - timedelta(days=day.weekday())
    if period == BudgetPeriod.MONTHLY:
        return day.replace(day=1)
    return datetime(2000, 1, 1, tzinfo=UTC)


# -- periods ---------------------------------------------------------------------------------


def month_bounds(month: date) -> tuple[datetime, datetime]:
    start = datetime(month.year, month.month, 1, tzinfo=UTC)
    end = datetime(month.year + (month.month == 12), month.month % 12 + 1, 1, tzinfo=UTC)
    return start, end


def _rollups(
    tenant_ids: Sequence[int] | None, start: datetime, end: datetime, *, hourly: bool
) -> QuerySet:
    day_aligned = floor_day(start) == start and floor_day(end) == end
    period = RollupPeriod.DAY if day_aligned and not hourly else RollupPeriod.HOUR
    qs = UsageRollup.objects.filter(
        period=period, bucket_start__gte=floor_hour(start), bucket_start__lt=end
    ).order_by()
    if tenant_ids is not None:
        qs = qs.filter(tenant_id__in=list(tenant_ids))
    return qs


_TOTALS = {
    "requests": Sum("requests"),
    "errors": Sum("errors"),
    "tokens_in": Sum("tokens_in"),
    "tokens_out": Sum("tokens_out"),
    "cost_usd": Sum("cost_usd"),
    "cache_savings_usd": Sum("cache_savings_usd"),
}
_GROUP_COLUMNS: dict[str, tuple[str, ...]] = {
    "tenant": ("tenant_id",),
    "key": ("tenant_id", "api_key_id"),
    "model": ("model_id",),
    "provider": ("provider_id",),
}


def usage_report(
    *, tenant_ids: Sequence[int] | None, start: datetime, end: datetime, group_by: Grouping
) -> QuerySet:
    """Totals grouped by one dimension, from the rollups (values() rows, ordered). Day
    rollups serve day-aligned ranges; other ranges are summed from hour rollups."""
    if group_by not in GROUPINGS:
        raise ValueError(f"group_by must be one of {', '.join(GROUPINGS)}")
    qs = _rollups(tenant_ids, start, end, hourly=group_by == "hour")
    if group_by == "day":
        return (
            qs.annotate(day=TruncDay("bucket_start", tzinfo=UTC))
            .values("day")
            .annotate(**_TOTALS)
            .order_by("day")
        )
    if group_by == "hour":
        return qs.values("bucket_start").annotate(**_TOTALS).order_by("bucket_start")
    columns = _GROUP_COLUMNS[group_by]
    extra: dict[str, Any] = {"model_name": Max("model")} if group_by == "model" else {}
    return qs.values(*columns).annotate(**extra, **_TOTALS).order_by(*columns)


def report_labels(rows: list[dict[str, Any]], group_by: str) -> dict[Any, str]:
    """Display names for the ids of a report (one query per dimension)."""
    if group_by == "tenant":
        ids = {r["tenant_id"] for r in rows}
        return {t.id: t.slug for t in Tenant.objects.filter(id__in=ids)}
    if group_by == "key":
        ids = {r["api_key_id"] for r in rows}
        return {
            k.id: f"{k.name or k.prefix} ({k.prefix}…)" for k in ApiKey.objects.filter(id__in=ids)
        }
    if group_by == "model":
        ids = {r["model_id"] for r in rows}
        return {m.id: m.name for m in Model.objects.filter(id__in=ids)}
    if group_by == "provider":
        ids = {r["provider_id"] for r in rows}
        return {p.id: p.name for p in Provider.objects.filter(id__in=ids)}
    return {}


def usage_events_export(
    *, tenant_ids: Sequence[int] | None, start: datetime, end: datetime
) -> Iterator[tuple]:
    """Raw events of a period for export, streamed from the database in chunks."""
    qs = UsageEvent.objects.filter(created_at__gte=start, created_at__lt=end)
    if tenant_ids is not None:
        qs = qs.filter(tenant_id__in=list(tenant_ids))
    return (
        qs.order_by("created_at", "id").values_list(*EVENT_EXPORT_COLUMNS).iterator(chunk_size=2000)
    )


EVENT_EXPORT_COLUMNS = (
    "request_id",
    "created_at",
    "tenant_id",
    "api_key_id",
    "route",
    "model",
    "model_id",
    "provider_id",
    "tokens_in",
    "tokens_out",
    "cache_read_tokens",
    "input_price_per_mtok",
    "output_price_per_mtok",
    "cost_usd",
    "status_code",
    "outcome",
)


# -- statement -------------------------------------------------------------------------------


@dataclass(slots=True)
class StatementLine:
    api_key_id: int
    key_label: str
    model_id: int
    model: str
    input_price_per_mtok: Decimal
    output_price_per_mtok: Decimal
    requests: int
    tokens_in: int
    tokens_out: int
    cost_usd: Decimal

    @property
    def cost_cents(self) -> Decimal:
        return to_cents(self.cost_usd)


@dataclass(slots=True)
class Statement:
    tenant_id: int
    tenant_slug: str
    tenant_name: str
    start: datetime
    end: datetime
    lines: list[StatementLine] = field(default_factory=list)
    per_key: list[dict[str, Any]] = field(default_factory=list)
    per_model: list[dict[str, Any]] = field(default_factory=list)

    @property
    def total_usd(self) -> Decimal:
        return sum((line.cost_usd for line in self.lines), _ZERO)

    @property
    def total_cents(self) -> Decimal:
        return to_cents(self.total_usd)

    @property
    def total_requests(self) -> int:
        return sum(line.requests for line in self.lines)

    @property
    def total_tokens_in(self) -> int:
        return sum(line.tokens_in for line in self.lines)

    @property
    def total_tokens_out(self) -> int:
        return sum(line.tokens_out for line in self.lines)

    rounding_rule: str = ROUNDING_RULE


def statement_build(*, tenant_id: int, start: datetime, end: datetime) -> Statement:
    """The tenant's statement for [start, end): one line per key x model x unit price (a price
    change within the period gives the model two lines, each charged at its own price),
    plus subtotals per key and per model. Built from the rollups."""
    tenant = Tenant.objects.get(pk=tenant_id)
    rows = (
        _rollups([tenant_id], start, end, hourly=False)
        .values("api_key_id", "model_id", "input_price_per_mtok", "output_price_per_mtok")
        .annotate(
            model_name=Max("model"),
            requests_sum=Sum("requests"),
            in_sum=Sum("tokens_in"),
            out_sum=Sum("tokens_out"),
            cost_sum=Sum("cost_usd"),
        )
        .order_by("api_key_id", "model_id", "input_price_per_mtok", "output_price_per_mtok")
    )
    rows = list(rows)
    keys = {
        k.id: f"{k.name or 'key'} ({k.prefix}…)"
        for k in ApiKey.objects.filter(id__in={r["api_key_id"] for r in rows})
    }
    statement = Statement(
        tenant_id=tenant.id, tenant_slug=tenant.slug, tenant_name=tenant.name, start=start, end=end
    )
    for r in rows:
        statement.lines.append(
            StatementLine(
                api_key_id=r["api_key_id"],
                key_label=keys.get(
                    r["api_key_id"], "no key" if not r["api_key_id"] else f"key #{r['api_key_id']}"
                ),
                model_id=r["model_id"],
                model=r["model_name"] or "(none)",
                input_price_per_mtok=r["input_price_per_mtok"],
                output_price_per_mtok=r["output_price_per_mtok"],
                requests=r["requests_sum"],
                tokens_in=r["in_sum"],
                tokens_out=r["out_sum"],
                cost_usd=r["cost_sum"],
            )
        )
    statement.per_key = _subtotals(statement.lines, lambda line: line.key_label)
    statement.per_model = _subtotals(statement.lines, lambda line: line.model)
    return statement


def _subtotals(lines: list[StatementLine], label: Callable[[StatementLine], str]) -> list[dict]:
    totals: dict[str, dict[str, Any]] = {}
    for line in lines:
        entry = totals.setdefault(
            label(line),
            {
                "label": label(line),
                "requests": 0,
                "tokens_in": 0,
                "tokens_out": 0,
                "cost_usd": _ZERO,
            },
        )
        entry["requests"] += line.requests
        entry["tokens_in"] += line.tokens_in
        entry["tokens_out"] += line.tokens_out
        entry["cost_usd"] += line.cost_usd
    for entry in totals.values():
        entry["cost_cents"] = to_cents(entry["cost_usd"])
    return sorted(totals.values(), key=lambda e: (-e["cost_usd"], e["label"]))


# -- reconciliation --------------------------------------------------------------------------


@dataclass(slots=True)
class PeriodTotals:
    requests: int
    tokens_in: int
    tokens_out: int
    cost_usd: Decimal

    def differs(self, other: PeriodTotals) -> bool:
        return (self.requests, self.tokens_in, self.tokens_out, self.cost_usd) != (
            other.requests,
            other.tokens_in,
            other.tokens_out,
            other.cost_usd,
        )


def _period_totals(qs: QuerySet) -> PeriodTotals:
    agg = qs.order_by().aggregate(
        n=Sum("requests"),
        t_in=Sum("tokens_in"),
        t_out=Sum("tokens_out"),
        cost=Sum("cost_usd"),
    )
    return PeriodTotals(
        requests=int(agg["n"] or 0),
        tokens_in=int(agg["t_in"] or 0),
        tokens_out=int(agg["t_out"] or 0),
        cost_usd=agg["cost"] or _ZERO,
    )


def reconciliation_totals(
    *, tenant_id: int, start: datetime, end: datetime
) -> dict[str, PeriodTotals]:
    """The same period's totals from four independent sources: raw events (+ purged totals),
    hour rollups, day rollups and the statement."""
    events = UsageEvent.objects.filter(
        tenant_id=tenant_id, created_at__gte=start, created_at__lt=end
    )
    ev = events.order_by().aggregate(
        n=Count("id"), t_in=Sum("tokens_in"), t_out=Sum("tokens_out"), cost=Sum("cost_usd")
    )
    purged = _period_totals(
        PurgedUsage.objects.filter(
            tenant_id=tenant_id, bucket_start__gte=start, bucket_start__lt=end
        )
    )
    raw = PeriodTotals(
        requests=int(ev["n"] or 0) + purged.requests,
        tokens_in=int(ev["t_in"] or 0) + purged.tokens_in,
        tokens_out=int(ev["t_out"] or 0) + purged.tokens_out,
        cost_usd=(ev["cost"] or _ZERO) + purged.cost_usd,
    )
    rollups = UsageRollup.objects.filter(
        tenant_id=tenant_id, bucket_start__gte=start, bucket_start__lt=end
    )
    statement = statement_build(tenant_id=tenant_id, start=start, end=end)
    return {
        "events": raw,
        "hour_rollups": _period_totals(rollups.filter(period=RollupPeriod.HOUR)),
        "day_rollups": _period_totals(rollups.filter(period=RollupPeriod.DAY)),
        "statement": PeriodTotals(
            requests=statement.total_requests,
            tokens_in=statement.total_tokens_in,
            tokens_out=statement.total_tokens_out,
            cost_usd=statement.total_usd,
        ),
    }


# -- dashboard -------------------------------------------------------------------------------

# Routing registers this at start-up (routing/wiring.py): route name -> model ids of its chain.
_route_models_loader: Callable[[], dict[str, list[int]]] | None = None


def route_models_loader_set(loader: Callable[[], dict[str, list[int]]] | None) -> None:
    global _route_models_loader
    _route_models_loader = loader


@dataclass(slots=True)
class RouteSavings:
    route: str
    cost_usd: Decimal
    ceiling_model: str
    ceiling_cost_usd: Decimal

    @property
    def savings_usd(self) -> Decimal:
        return self.ceiling_cost_usd - self.cost_usd


def route_savings(
    *, tenant_ids: Sequence[int] | None, start: datetime, end: datetime
) -> list[RouteSavings]:
    """What each route's traffic would have cost on the most expensive model of that route
    (at its current list price), against what it cost."""
    rows = list(
        _rollups(tenant_ids, start, end, hourly=False)
        .exclude(route="")
        .values("route", "model_id")
        .annotate(t_in=Sum("tokens_in"), t_out=Sum("tokens_out"), cost=Sum("cost_usd"))
    )
    return route_savings_from_rows(rows)


def route_savings_from_rows(rows: list[dict[str, Any]]) -> list[RouteSavings]:
    """Savings from rows of route, model_id, t_in, t_out and cost (rollups or raw events)."""
    configured = _route_models_loader() if _route_models_loader is not None else {}
    route_models: dict[str, set[int]] = {}
    for r in rows:
        route_models.setdefault(r["route"], set()).update(
            {r["model_id"], *configured.get(r["route"], ())} - {0}
        )
    models = Model.objects.in_bulk({m for ids in route_models.values() for m in ids})
    result = []
    for route, ids in sorted(route_models.items()):
        candidates = [models[m] for m in ids if m in models]
        if not candidates:
            continue
        ceiling = max(
            candidates, key=lambda m: (m.input_price_per_mtok + m.output_price_per_mtok, -m.id)
        )
        mine = [r for r in rows if r["route"] == route]
        t_in = sum(r["t_in"] for r in mine)
        t_out = sum(r["t_out"] for r in mine)
        result.append(
            RouteSavings(
                route=route,
                cost_usd=sum((r["cost"] for r in mine), _ZERO),
                ceiling_model=ceiling.name,
                ceiling_cost_usd=(
                    Decimal(t_in) * ceiling.input_price_per_mtok
                    + Decimal(t_out) * ceiling.output_price_per_mtok
                ).scaleb(-6),
            )
        )
    return result


@dataclass(slots=True)
class BudgetUse:
    label: str
    period: str
    budget_usd: Decimal
    spent_usd: Decimal

    @property
    def percent(self) -> Decimal:
        if not self.budget_usd:
            return _ZERO
        return (self.spent_usd * 100 / self.budget_usd).quantize(Decimal("0.1"))


def budget_uses(
    *, tenant_ids: Sequence[int] | None, now: datetime | None = None
) -> list[BudgetUse]:
    """Spend against budget for tenants and keys that have one, in their current period."""
    now = now or timezone.now()
    tenants = Tenant.objects.filter(budget_usd__isnull=False)
    keys = ApiKey.objects.filter(budget_usd__isnull=False, revoked_at__isnull=True)
    if tenant_ids is not None:
        tenants = tenants.filter(id__in=list(tenant_ids))
        keys = keys.filter(tenant_id__in=list(tenant_ids))
    uses = []
    for tenant in tenants.order_by("slug")[:50]:
        start = budget_period_start(tenant.budget_period, now)
        spent = spend_sum_sync(scope="tenant", scope_id=tenant.id, start=start, end=now)
        uses.append(
            BudgetUse(f"tenant {tenant.slug}", tenant.budget_period, tenant.budget_usd, spent)
        )
    for key in keys.select_related("tenant").order_by("tenant__slug", "id")[:100]:
        start = budget_period_start(key.budget_period, now)
        spent = spend_sum_sync(scope="key", scope_id=key.id, start=start, end=now)
        label = f"key {key.name or key.prefix} ({key.tenant.slug})"
        uses.append(BudgetUse(label, key.budget_period, key.budget_usd, spent))
    return uses


def spend_series(
    *,
    tenant_ids: Sequence[int] | None,
    start: datetime,
    end: datetime,
    dimension: str,
    top: int = 5,
) -> tuple[list[datetime], dict[str, list[Decimal]]]:
    """Daily spend per dimension value (the top N by spend, the rest as "other")."""
    column = {
        "tenant": "tenant_id",
        "key": "api_key_id",
        "model": "model_id",
        "provider": "provider_id",
    }[dimension]
    rollups = _rollups(
        tenant_ids,
        floor_day(start),
        floor_day(end - timedelta(microseconds=1)) + DAY,
        hourly=False,
    )
    # Ranked and summed in the database: with a million keys, the (day, key) rows are far too
    # many to bring into Python. Three grouped reads: the top N (+1, to know whether there is
    # an "other"), their days, and the days' totals.
    ranked = list(
        rollups.values(column).annotate(cost=Sum("cost_usd")).order_by("-cost", column)[: top + 1]
    )
    leaders = [r[column] for r in ranked[:top]]
    days: list[datetime] = []
    cursor = floor_day(start)
    while cursor < end and len(days) < 400:
        days.append(cursor)
        cursor += DAY
    index = {d: i for i, d in enumerate(days)}
    labels = report_labels([{column: k} for k in leaders], dimension)
    names = {k: labels.get(k, f"#{k}" if k else "(none)") for k in leaders}
    # Leaders first, costliest first (the charts' legend order), then "other".
    series: dict[str, list[Decimal]] = {names[k]: [_ZERO] * len(days) for k in leaders}
    leader_total = [_ZERO] * len(days)
    for r in (
        rollups.filter(**{f"{column}__in": leaders})
        .values("bucket_start", column)
        .annotate(cost=Sum("cost_usd"))
        .order_by()
    ):
        values = series[names[r[column]]]
        i = index.get(floor_day(r["bucket_start"]))
        if i is not None:
            values[i] += r["cost"]
            leader_total[i] += r["cost"]
    if len(ranked) > top:
        other = [_ZERO] * len(days)
        for r in rollups.values("bucket_start").annotate(cost=Sum("cost_usd")).order_by():
            i = index.get(floor_day(r["bucket_start"]))
            if i is not None:
                other[i] += r["cost"]
        series["other"] = [total - mine for total, mine in zip(other, leader_total, strict=True)]
    return days, series
