from django.contrib import admin
from django.urls import include, path

from gateway_project import health
from gateway_project.metrics import metrics_view
from routing.api import api as inference_api

urlpatterns = [
    path("health", health.liveness),
    path("health/ready", health.readiness),
    path("metrics", metrics_view, name="prometheus-django-metrics"),
    path("admin/", admin.site.urls),
    path("api/manage/", include("tenants.api.urls")),
    path("api/reports/", include("usage.api.urls")),
    path("", inference_api.urls),
]
