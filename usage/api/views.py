"""Reporting API (DRF) under /api/reports/. Tenant admins see only their tenants; superusers
see all. JSON or CSV (?format=csv); raw event exports always stream."""

from __future__ import annotations

from datetime import date

from django.core.exceptions import PermissionDenied
from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.exceptions import PermissionDenied as ApiPermissionDenied
from rest_framework.renderers import BaseRenderer, BrowsableAPIRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from tenants.api.auth import request_tenant_limit
from tenants.models import Tenant
from usage.access import parse_range, tenant_scope
from usage.exports import csv_lines, event_rows, report_row, statement_rows
from usage.selectors import (
    GROUPINGS,
    month_bounds,
    report_labels,
    statement_build,
    usage_events_export,
    usage_report,
)


class CSVRenderer(BaseRenderer):
    """Lets ?format=csv through DRF's content negotiation. Successful CSV answers are
    StreamingHttpResponses built by the views; this only renders errors (as JSON text)."""

    media_type = "text/csv"
    format = "csv"
    charset = "utf-8"

    def render(self, data, accepted_media_type=None, renderer_context=None) -> bytes:
        return JSONRenderer().render(data)


class ReportView(APIView):
    renderer_classes = [JSONRenderer, BrowsableAPIRenderer, CSVRenderer]


class RangeParams(serializers.Serializer):
    start = serializers.CharField(required=False)
    end = serializers.CharField(required=False)
    tenant = serializers.IntegerField(required=False, min_value=1)
    group_by = serializers.ChoiceField(choices=GROUPINGS, required=False, default="day")


def _scope(request: Request, tenant: int | None):
    """The user's tenants, narrowed to the one a tenant-limited operator token names."""
    limit = request_tenant_limit(request)
    if limit is not None and tenant not in (None, limit):
        raise ApiPermissionDenied("this token is limited to another tenant")
    try:
        return tenant_scope(request.user, limit if limit is not None else tenant)
    except PermissionDenied as exc:
        raise ApiPermissionDenied(str(exc)) from exc


def _range(params: dict):
    try:
        return parse_range(params.get("start"), params.get("end"))
    except ValueError as exc:
        raise ValidationError({"start": str(exc)}) from exc


def _wants_csv(request: Request) -> bool:
    return request.query_params.get("format") == "csv"


def _csv_response(lines, filename: str) -> StreamingHttpResponse:
    response = StreamingHttpResponse(lines, content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


_FORMAT = OpenApiParameter(
    "format", str, enum=["json", "csv"], required=False, description="csv for a CSV download"
)
_CSV_OR_JSON = {(200, "application/json"): OpenApiTypes.OBJECT, (200, "text/csv"): OpenApiTypes.STR}


class UsageReportView(ReportView):
    """GET /api/reports/usage/?start=YYYY-MM-DD&end=YYYY-MM-DD&group_by=...&tenant=<id>"""

    @extend_schema(parameters=[RangeParams, _FORMAT], responses=_CSV_OR_JSON)
    def get(self, request: Request, *args, **kwargs):
        params = RangeParams(data=request.query_params)
        params.is_valid(raise_exception=True)
        data = params.validated_data
        tenant_ids = _scope(request, data.get("tenant"))
        start, end = _range(data)
        group_by = data["group_by"]
        rows = list(usage_report(tenant_ids=tenant_ids, start=start, end=end, group_by=group_by))
        labels = report_labels(rows, group_by)
        shaped = [report_row(r, group_by, labels) for r in rows]
        if _wants_csv(request):
            header = list(shaped[0]) if shaped else ["group"]
            lines = csv_lines([header, *([row[c] for c in header] for row in shaped)])
            return _csv_response(lines, f"usage-{group_by}-{start:%Y%m%d}-{end:%Y%m%d}.csv")
        return Response(
            {
                "start": start.isoformat(),
                "end": end.isoformat(),
                "group_by": group_by,
                "results": shaped,
            }
        )


class UsageEventsExportView(ReportView):
    """GET /api/reports/events/?start&end&tenant — every raw event of the range as CSV,
    streamed from a server-side cursor (constant memory, any size)."""

    @extend_schema(parameters=[RangeParams], responses={(200, "text/csv"): OpenApiTypes.STR})
    def get(self, request: Request, *args, **kwargs):
        params = RangeParams(data=request.query_params)
        params.is_valid(raise_exception=True)
        data = params.validated_data
        tenant_ids = _scope(request, data.get("tenant"))
        start, end = _range(data)
        rows = usage_events_export(tenant_ids=tenant_ids, start=start, end=end)
        return _csv_response(
            csv_lines(event_rows(rows)), f"usage-events-{start:%Y%m%d}-{end:%Y%m%d}.csv"
        )


class StatementView(ReportView):
    """GET /api/reports/statements/<tenant_id>/<YYYY-MM>/ (JSON, or CSV with ?format=csv)."""

    @extend_schema(parameters=[_FORMAT], responses=_CSV_OR_JSON)
    def get(self, request: Request, tenant_id: int, month: str, *args, **kwargs):
        _scope(request, tenant_id)
        try:
            start, end = month_bounds(date.fromisoformat(f"{month}-01"))
        except ValueError as exc:  # also 9999-12, whose end is in year 10000
            raise ValidationError({"month": "use YYYY-MM"}) from exc
        try:
            statement = statement_build(tenant_id=tenant_id, start=start, end=end)
        except Tenant.DoesNotExist as exc:
            raise NotFound("no such tenant") from exc
        if _wants_csv(request):
            return _csv_response(
                csv_lines(statement_rows(statement)),
                f"statement-{statement.tenant_slug}-{month}.csv",
            )
        return Response(
            {
                "tenant_id": statement.tenant_id,
                "tenant": statement.tenant_slug,
                "start": start.isoformat(),
                "end": end.isoformat(),
                "currency": "USD",
                "rounding_rule": statement.rounding_rule,
                "lines": [
                    {
                        "api_key_id": line.api_key_id,
                        "key": line.key_label,
                        "model_id": line.model_id,
                        "model": line.model,
                        "input_price_per_mtok": format(line.input_price_per_mtok, "f"),
                        "output_price_per_mtok": format(line.output_price_per_mtok, "f"),
                        "requests": line.requests,
                        "tokens_in": line.tokens_in,
                        "tokens_out": line.tokens_out,
                        "cost_usd": format(line.cost_usd, "f"),
                        "cost_usd_cents": format(line.cost_cents, "f"),
                    }
                    for line in statement.lines
                ],
                "per_key": [_subtotal(e) for e in statement.per_key],
                "per_model": [_subtotal(e) for e in statement.per_model],
                "total_requests": statement.total_requests,
                "total_usd": format(statement.total_usd, "f"),
                "total_usd_cents": format(statement.total_cents, "f"),
            }
        )


def _subtotal(entry: dict) -> dict:
    return {
        "label": entry["label"],
        "requests": entry["requests"],
        "tokens_in": entry["tokens_in"],
        "tokens_out": entry["tokens_out"],
        "cost_usd": format(entry["cost_usd"], "f"),
        "cost_usd_cents": format(entry["cost_cents"], "f"),
    }
