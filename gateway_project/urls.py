from django.contrib import admin
from django.urls import include, path

from gateway_project import health
from routing.api import api as inference_api

urlpatterns = [
    path("health", health.liveness),
    path("health/ready", health.readiness),
    path("", include("django_prometheus.urls")),
    path("admin/", admin.site.urls),
    path("api/manage/", include("tenants.api.urls")),
    path("api/reports/", include("usage.api.urls")),
    path("", include("routing.urls")),  # the playground (/ and /playground/)
    path("", inference_api.urls),
]
