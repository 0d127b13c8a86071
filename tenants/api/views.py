"""Management API (DRF) under /api/manage/: tenants, keys (issue, rotate, revoke), limits and
budgets. Operators authenticate with DRF tokens; tenant admins are scoped to their tenants
exactly like in the admin (another tenant's objects are 404), superusers see everything.
Views parse, call one service, shape the answer."""

from __future__ import annotations

from asgiref.sync import async_to_sync
from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, permissions, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import PermissionDenied, ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from tenants import services
from tenants.admission import budget_status_get
from tenants.api.auth import TokenScopeAllows, request_tenant_limit
from tenants.api.serializers import (
    ApiKeyIssuedSerializer,
    ApiKeyIssueSerializer,
    ApiKeyRotateSerializer,
    ApiKeySerializer,
    ApiKeyUpdateSerializer,
    AuditEventSerializer,
    BudgetStatusSerializer,
    LimitsSerializer,
    TenantAlertsSerializer,
    TenantCreateSerializer,
    TenantSerializer,
)
from tenants.models import ApiKey, AuditEvent
from tenants.selectors import api_keys_visible_to, tenant_ids_visible_to, tenants_visible_to


class IsOperator(permissions.BasePermission):
    """Superusers, or users who administer at least one tenant."""

    def has_permission(self, request, view) -> bool:
        user = request.user
        if not (user and user.is_authenticated and user.is_active):
            return False
        return user.is_superuser or bool(tenant_ids_visible_to(user=user))


def _tenants(request: Request):
    """The tenants this request may touch: the user's, narrowed to the token's tenant."""
    tenants = tenants_visible_to(user=request.user)
    limit = request_tenant_limit(request)
    return tenants if limit is None else tenants.filter(pk=limit)


def _actor(request: Request) -> str:
    return f"api:{request.user.get_username()}"


def _service_call(fn, **kwargs):
    try:
        return fn(**kwargs)
    except DjangoValidationError as exc:
        detail = exc.message_dict if hasattr(exc, "error_dict") else exc.messages
        raise ValidationError(detail) from exc


def _require_superuser(request: Request, what: str) -> None:
    if not request.user.is_superuser or request_tenant_limit(request) is not None:
        raise PermissionDenied(f"Only platform staff may {what}.")


class TenantViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    serializer_class = TenantSerializer
    permission_classes = (IsOperator, TokenScopeAllows)
    lookup_field = "slug"

    def get_queryset(self):
        return _tenants(self.request).order_by("slug")

    @extend_schema(request=TenantCreateSerializer, responses={201: TenantSerializer})
    def create(self, request: Request) -> Response:
        _require_superuser(request, "create tenants")
        data = TenantCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = dict(data.validated_data)
        tenant = _service_call(
            services.tenant_create,
            actor=_actor(request),
            timezone_name=values.pop("timezone"),
            **values,
        )
        return Response(TenantSerializer(tenant).data, status=status.HTTP_201_CREATED)

    @extend_schema(methods=["GET"], responses=LimitsSerializer)
    @extend_schema(methods=["PATCH"], request=LimitsSerializer, responses=LimitsSerializer)
    @action(detail=True, methods=["get", "patch"])
    def limits(self, request: Request, slug: str | None = None) -> Response:
        """The tenant's limits and budget (the platform's cap: only superusers change it)."""
        tenant = self.get_object()
        if request.method == "PATCH":
            _require_superuser(request, "change a tenant's limits")
            data = LimitsSerializer(data=request.data, partial=True)
            data.is_valid(raise_exception=True)
            tenant = _service_call(
                services.tenant_update_limits,
                tenant=tenant,
                actor=_actor(request),
                **data.validated_data,
            )
        return Response(LimitsSerializer(tenant).data)

    @extend_schema(request=TenantAlertsSerializer, responses=TenantSerializer)
    @action(detail=True, methods=["patch"])
    def alerts(self, request: Request, slug: str | None = None) -> Response:
        """Budget alert thresholds, webhook and email (tenant admins may change these)."""
        tenant = self.get_object()
        data = TenantAlertsSerializer(data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        tenant = _service_call(
            services.tenant_update_limits,
            tenant=tenant,
            actor=_actor(request),
            **data.validated_data,
        )
        return Response(TenantSerializer(tenant).data)

    @extend_schema(responses=BudgetStatusSerializer)
    @action(detail=True, methods=["get"])
    def budget(self, request: Request, slug: str | None = None) -> Response:
        """The tenant's budget and its spend in the current period."""
        tenant = self.get_object()
        report = async_to_sync(budget_status_get)(
            scope="tenant", scope_id=tenant.pk, tenant=tenant, owner=tenant
        )
        return Response(BudgetStatusSerializer(report).data)

    @extend_schema(responses=AuditEventSerializer(many=True))
    @action(detail=True, methods=["get"])
    def audit(self, request: Request, slug: str | None = None) -> Response:
        tenant = self.get_object()
        events = self.paginate_queryset(AuditEvent.objects.filter(tenant=tenant))
        return self.get_paginated_response(AuditEventSerializer(events, many=True).data)


class ApiKeyViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    serializer_class = ApiKeySerializer
    permission_classes = (IsOperator, TokenScopeAllows)

    def get_queryset(self):
        keys = api_keys_visible_to(user=self.request.user).order_by("-created_at")
        limit = request_tenant_limit(self.request)
        if limit is not None:
            keys = keys.filter(tenant_id=limit)
        params = self.request.query_params
        if params.get("tenant"):
            keys = keys.filter(tenant__slug=params["tenant"])
        if params.get("revoked") in ("true", "false"):
            keys = keys.filter(revoked_at__isnull=params["revoked"] == "false")
        return keys

    @extend_schema(request=ApiKeyIssueSerializer, responses={201: ApiKeyIssuedSerializer})
    def create(self, request: Request) -> Response:
        """Issue a key. The raw key is in this answer once; only its hash is stored."""
        data = ApiKeyIssueSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = dict(data.validated_data)
        tenant = _tenants(request).filter(slug=values.pop("tenant")).first()
        if tenant is None:
            raise ValidationError({"tenant": "no tenant with this slug that you manage"})
        key, raw = _service_call(
            services.api_key_create, tenant=tenant, actor=_actor(request), **values
        )
        body = {"key": ApiKeySerializer(key).data, "raw_key": raw}
        return Response(body, status=status.HTTP_201_CREATED)

    @extend_schema(request=ApiKeyUpdateSerializer, responses=ApiKeySerializer)
    def partial_update(self, request: Request, pk: str | None = None) -> Response:
        """Change a key's name, limits, budget, models or expiry."""
        key = self.get_object()
        data = ApiKeyUpdateSerializer(data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        key = _service_call(
            services.api_key_update_limits, key=key, actor=_actor(request), **data.validated_data
        )
        return Response(ApiKeySerializer(key).data)

    @extend_schema(request=ApiKeyRotateSerializer, responses={201: ApiKeyIssuedSerializer})
    @action(detail=True, methods=["post"])
    def rotate(self, request: Request, pk: str | None = None) -> Response:
        """Give this key a new secret (same key record, id and settings); the old secret keeps
        working for the grace period."""
        key = self.get_object()
        data = ApiKeyRotateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        new, raw = _service_call(
            services.api_key_rotate, key=key, actor=_actor(request), **data.validated_data
        )
        body = {"key": ApiKeySerializer(new).data, "raw_key": raw}
        return Response(body, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses=ApiKeySerializer)
    @action(detail=True, methods=["post"])
    def revoke(self, request: Request, pk: str | None = None) -> Response:
        key = _service_call(services.api_key_revoke, key=self.get_object(), actor=_actor(request))
        return Response(ApiKeySerializer(key).data)

    @extend_schema(methods=["GET"], responses=LimitsSerializer)
    @extend_schema(methods=["PATCH"], request=LimitsSerializer, responses=LimitsSerializer)
    @action(detail=True, methods=["get", "patch"])
    def limits(self, request: Request, pk: str | None = None) -> Response:
        key = self.get_object()
        if request.method == "PATCH":
            data = LimitsSerializer(data=request.data, partial=True)
            data.is_valid(raise_exception=True)
            key = _service_call(
                services.api_key_update_limits,
                key=key,
                actor=_actor(request),
                **data.validated_data,
            )
        return Response(LimitsSerializer(key).data)

    @extend_schema(responses=BudgetStatusSerializer)
    @action(detail=True, methods=["get"])
    def budget(self, request: Request, pk: str | None = None) -> Response:
        """The key's budget and its spend in the current period."""
        key: ApiKey = self.get_object()
        report = async_to_sync(budget_status_get)(
            scope="key", scope_id=key.pk, tenant=key.tenant, owner=key
        )
        return Response(BudgetStatusSerializer(report).data)
