"""`POST /api/manage/cache/purge` (management API, operator tokens): drop cached answers of
the response cache for one tenant, narrowed to a route or a key. A tenant admin purges only
their tenants; platform staff may purge a route across every tenant."""

from __future__ import annotations

from asgiref.sync import async_to_sync
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.exceptions import NotFound, PermissionDenied
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from routing.cache import response_cache_purge_now
from tenants.api.auth import TokenScopeAllows, request_tenant_limit
from tenants.api.views import IsOperator
from tenants.models import ApiKey, Tenant
from tenants.selectors import tenant_ids_visible_to


class CachePurgeIn(serializers.Serializer):
    tenant = serializers.SlugField(required=False, help_text="tenant slug")
    route = serializers.CharField(required=False, max_length=128)
    key = serializers.CharField(required=False, max_length=32, help_text="API key prefix")


class CachePurgeOut(serializers.Serializer):
    purged = serializers.IntegerField()


class CachePurgeView(APIView):
    permission_classes = (IsOperator, TokenScopeAllows)

    @extend_schema(request=CachePurgeIn, responses={200: CachePurgeOut}, tags=["cache"])
    def post(self, request: Request) -> Response:
        data = CachePurgeIn(data=request.data)
        data.is_valid(raise_exception=True)
        slug, route, prefix = (data.validated_data.get(f) for f in ("tenant", "route", "key"))
        visible = tenant_ids_visible_to(user=request.user)
        limit = request_tenant_limit(request)
        tenant_id: int | None = None
        key_id: int | None = None
        if slug:
            tenant_id = Tenant.objects.filter(slug=slug).values_list("id", flat=True).first()
            if tenant_id is None or (visible is not None and tenant_id not in visible):
                raise NotFound("No such tenant")
        if prefix:
            key = ApiKey.objects.filter(prefix=prefix).values("id", "tenant_id").first()
            if key is None or (visible is not None and key["tenant_id"] not in visible):
                raise NotFound("No such key")
            if tenant_id is not None and key["tenant_id"] != tenant_id:
                raise NotFound("No such key")
            tenant_id, key_id = key["tenant_id"], key["id"]
        if limit is not None:
            if tenant_id not in (None, limit):
                raise NotFound("No such tenant")
            tenant_id = limit
        if tenant_id is None:
            if visible is not None:
                if len(visible) != 1:
                    raise PermissionDenied("Name the tenant to purge")
                tenant_id = visible[0]
            elif not route:
                raise PermissionDenied("Name a tenant, a route or a key")
        purged = async_to_sync(response_cache_purge_now)(
            tenant_id=tenant_id, route=route, key_id=key_id
        )
        return Response({"purged": purged})
