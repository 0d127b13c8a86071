"""Routes of the management API (included at /api/manage/ by gateway_project/urls.py)."""

from __future__ import annotations

from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView
from rest_framework.routers import DefaultRouter

from tenants.api.views import ApiKeyViewSet, TenantViewSet

app_name = "manage"

router = DefaultRouter()
router.register("tenants", TenantViewSet, basename="tenant")
router.register("keys", ApiKeyViewSet, basename="apikey")

# The schema describes this API only, under its public prefix.
_schema_patterns = [path("api/manage/", include((router.urls, "manage")))]

urlpatterns = [
    path("schema/", SpectacularAPIView.as_view(patterns=_schema_patterns), name="schema"),
    path("", include(router.urls)),
]
