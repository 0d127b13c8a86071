"""Usage in Django admin: read-only events and rollups, the cost dashboard and the monthly
statement. Tenant admins (TenantMembership, not superusers) see only their own tenants."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.db import connection
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.template.response import TemplateResponse
from django.urls import path
from django.utils import timezone

from tenants.models import Tenant
from tenants.paging import EstimatedCountPaginator
from usage import charts
from usage.access import parse_range, tenant_scope, visible_tenant_ids
from usage.exports import csv_lines, report_row, statement_rows
from usage.models import UsageEvent, UsageRollup
from usage.selectors import (
    ROUNDING_RULE,
    budget_uses,
    month_bounds,
    report_labels,
    route_savings,
    spend_series,
    statement_build,
    to_cents,
    usage_report,
)


class TenantScopedReadOnlyAdmin(admin.ModelAdmin):
    """Read-only; superusers see all rows, tenant admins their tenants' rows. Built for a
    hundred million rows: no COUNT(*) of the table (EstimatedCountPaginator), no
    date_hierarchy (its year/month links are a DISTINCT over every row), filters that each
    have an index."""

    paginator = EstimatedCountPaginator
    show_full_result_count = False
    list_per_page = 100

    def _member(self, request: HttpRequest) -> bool:
        return (
            request.user.is_active
            and request.user.is_staff
            and bool(visible_tenant_ids(request.user) or request.user.is_superuser)
        )

    def has_module_permission(self, request: HttpRequest) -> bool:
        return self._member(request)

    def has_view_permission(self, request: HttpRequest, obj=None) -> bool:
        return self._member(request)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def get_queryset(self, request: HttpRequest):
        qs = super().get_queryset(request)
        visible = visible_tenant_ids(request.user)
        return qs if visible is None else qs.filter(tenant_id__in=visible)


class RecentFilter(admin.SimpleListFilter):
    """A time window on created_at (its index), instead of date_hierarchy."""

    title = "created"
    parameter_name = "recent"
    _windows = {"1h": timedelta(hours=1), "24h": timedelta(days=1), "7d": timedelta(days=7)}

    def lookups(self, request, model_admin):
        return [("1h", "Last hour"), ("24h", "Last 24 hours"), ("7d", "Last 7 days")]

    def queryset(self, request, queryset):
        window = self._windows.get(self.value() or "")
        if window is None:
            return queryset
        return queryset.filter(created_at__gte=timezone.now() - window)


_ENDPOINTS_SQL = (
    "WITH RECURSIVE e AS (SELECT MIN(endpoint) AS v FROM usage_usageevent UNION ALL "
    "SELECT (SELECT MIN(endpoint) FROM usage_usageevent WHERE endpoint > e.v) FROM e "
    "WHERE e.v IS NOT NULL) SELECT v FROM e WHERE v IS NOT NULL LIMIT 100"
)


class EndpointFilter(admin.SimpleListFilter):
    """The endpoints present, found by a loose index scan of usage_endpoint_time (one index
    descent per distinct value) instead of Django's SELECT DISTINCT over every event."""

    title = "endpoint"
    parameter_name = "endpoint"

    def lookups(self, request, model_admin):
        if connection.vendor != "postgresql":
            values = UsageEvent.objects.order_by().values_list("endpoint", flat=True).distinct()
            return [(v, v) for v in sorted(values)]
        with connection.cursor() as cursor:
            cursor.execute(_ENDPOINTS_SQL)
            return [(row[0], row[0]) for row in cursor.fetchall()]

    def queryset(self, request, queryset):
        return queryset.filter(endpoint=self.value()) if self.value() else queryset


# The dashboard's and statement's tenant <select> lists at most this many tenants (ten
# thousand <option>s cost more than the page's queries); any tenant is reachable by
# ?tenant=<id>, which the tenant list links to.
TENANT_CHOICES_MAX = 200


def _tenant_choices(request: HttpRequest) -> list[Tenant]:
    visible = visible_tenant_ids(request.user)
    tenants = Tenant.objects.order_by("slug").only("id", "slug")
    if visible is not None:
        tenants = tenants.filter(id__in=visible)
    choices = list(tenants[:TENANT_CHOICES_MAX])
    selected = _tenant_param(request)
    if selected is not None and selected not in {t.id for t in choices}:
        choices += list(tenants.filter(id=selected))
    return choices


def _tenant_param(request: HttpRequest) -> int | None:
    raw = request.GET.get("tenant") or ""
    # isascii: str.isdigit() accepts "²" and "①", which int() refuses (a 500).
    return int(raw) if raw.isascii() and raw.isdigit() else None


@admin.register(UsageEvent)
class UsageEventAdmin(TenantScopedReadOnlyAdmin):
    list_display = (
        "request_id",
        "created_at",
        "tenant_id",
        "api_key_id",
        "model",
        "tokens_in",
        "tokens_out",
        "cost_usd",
        "outcome",
        "status_code",
    )
    list_filter = (RecentFilter, "outcome", EndpointFilter, "stream")
    # Exact request id (the unique index); a substring search would read every event.
    search_fields = ("request_id__exact", "client_request_id__exact")
    change_list_template = "admin/usage/usageevent/change_list.html"

    def get_urls(self):
        view = self.admin_site.admin_view
        return [
            path("dashboard/", view(self.dashboard_view), name="usage_dashboard"),
            path("statement/", view(self.statement_view), name="usage_statement"),
            path("statement.csv", view(self.statement_csv_view), name="usage_statement_csv"),
            *super().get_urls(),
        ]

    # -- dashboard -------------------------------------------------------------------------
    def dashboard_view(self, request: HttpRequest) -> HttpResponse:
        if not self._member(request):
            raise PermissionDenied
        tenant_ids = tenant_scope(request.user, _tenant_param(request))
        try:
            start, end = parse_range(request.GET.get("start"), request.GET.get("end"))
        except ValueError as exc:
            return HttpResponse(str(exc), status=400, content_type="text/plain")
        daily = list(usage_report(tenant_ids=tenant_ids, start=start, end=end, group_by="day"))
        days, totals_series = spend_series(
            tenant_ids=tenant_ids, start=start, end=end, dimension="tenant", top=0
        )
        # top=0: every tenant is "other", i.e. the daily total, summed in the database.
        by_day = [
            sum((values[i] for values in totals_series.values()), Decimal(0))
            for i in range(len(days))
        ]
        dimension_charts = []
        for dimension in ("tenant", "key", "model", "provider"):
            d_days, series = spend_series(
                tenant_ids=tenant_ids, start=start, end=end, dimension=dimension
            )
            dimension_charts.append(
                (dimension, charts.line_chart(d_days, series, title=f"Spend per {dimension}"))
            )
        # The ten costliest keys, ranked in the database (not every key brought into Python).
        keys = list(
            usage_report(tenant_ids=tenant_ids, start=start, end=end, group_by="key").order_by(
                "-cost_usd", "tenant_id", "api_key_id"
            )[:10]
        )
        key_labels = report_labels(keys[:10], "key")
        top_keys = [report_row(r, "key", key_labels) for r in keys[:10]]
        total_cost = sum((r["cost_usd"] for r in daily), Decimal(0))
        savings = route_savings(tenant_ids=tenant_ids, start=start, end=end)
        tenants = _tenant_choices(request)
        context = {
            **self.admin_site.each_context(request),
            "title": "Cost dashboard",
            "opts": self.model._meta,
            "start": start,
            "end_inclusive": end - timedelta(days=1),
            "tenants": tenants,
            "selected_tenant": _tenant_param(request),
            "total_cost": total_cost,
            "total_cost_cents": to_cents(total_cost),
            "total_requests": sum(r["requests"] for r in daily),
            "total_errors": sum(r["errors"] for r in daily),
            "total_tokens": sum(r["tokens_in"] + r["tokens_out"] for r in daily),
            "total_savings": sum((r["cache_savings_usd"] for r in daily), Decimal(0)),
            "spend_chart": charts.bar_chart(days, by_day, title="Daily spend"),
            "dimension_charts": dimension_charts,
            "top_keys": top_keys,
            "budgets": budget_uses(tenant_ids=tenant_ids),
            "route_savings": savings,
            "rounding_rule": ROUNDING_RULE,
        }
        return TemplateResponse(request, "admin/usage/dashboard.html", context)

    # -- statement -------------------------------------------------------------------------
    def _statement(self, request: HttpRequest):
        if not self._member(request):
            raise PermissionDenied
        tenant_id = _tenant_param(request)
        visible = visible_tenant_ids(request.user)
        if tenant_id is None and visible:
            tenant_id = visible[0]
        if tenant_id is None:
            return None, None
        tenant_scope(request.user, tenant_id)
        raw_month = request.GET.get("month") or timezone.now().strftime("%Y-%m")
        try:
            month = date.fromisoformat(f"{raw_month}-01")
            start, end = month_bounds(month)  # 9999-12 ends in year 10000: a ValueError
        except ValueError:
            month = timezone.now().date().replace(day=1)
            start, end = month_bounds(month)
        return statement_build(tenant_id=tenant_id, start=start, end=end), month

    def statement_view(self, request: HttpRequest) -> HttpResponse:
        statement, month = self._statement(request)
        tenants = _tenant_choices(request)
        context = {
            **self.admin_site.each_context(request),
            "title": "Monthly statement",
            "opts": self.model._meta,
            "statement": statement,
            "month": month,
            "tenants": tenants,
        }
        return TemplateResponse(request, "admin/usage/statement.html", context)

    def statement_csv_view(self, request: HttpRequest) -> HttpResponse:
        statement, month = self._statement(request)
        if statement is None:
            return HttpResponse("tenant required", status=400, content_type="text/plain")
        response = StreamingHttpResponse(
            csv_lines(statement_rows(statement)), content_type="text/csv; charset=utf-8"
        )
        response["Content-Disposition"] = (
            f'attachment; filename="statement-{statement.tenant_slug}-{month:%Y-%m}.csv"'
        )
        return response


@admin.register(UsageRollup)
class UsageRollupAdmin(TenantScopedReadOnlyAdmin):
    list_display = (
        "period",
        "bucket_start",
        "tenant_id",
        "api_key_id",
        "model",
        "requests",
        "errors",
        "tokens_in",
        "tokens_out",
        "cost_usd",
    )
    list_filter = ("period",)
