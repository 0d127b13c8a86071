from django.contrib import admin
from django.urls import include, path

from gateway_project import health
from gateway_project.metrics import metrics_view
from gateway_project.outage import inference_outage_handlers_install
from routing.api import api as inference_api
from routing.cache_api import CachePurgeView
from usage.api.metrics import metrics_api

inference_outage_handlers_install(inference_api)

urlpatterns = [
    path("health", health.liveness),
    path("health/ready", health.readiness),
    path("metrics", metrics_view, name="prometheus-django-metrics"),
    path("admin/", admin.site.urls),
    path("api/manage/cache/purge", CachePurgeView.as_view(), name="cache-purge"),
    path("api/manage/", include("tenants.api.urls")),
    path("api/reports/", include("usage.api.urls")),
    path("", include("routing.urls")),  # the playground (/ and /playground/)
    path("", metrics_api.urls),
    path("", inference_api.urls),
]
