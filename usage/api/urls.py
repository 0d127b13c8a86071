from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView

from usage.api.views import StatementView, UsageEventsExportView, UsageReportView

app_name = "usage_reports"

_report_patterns = [
    path("usage/", UsageReportView.as_view(), name="usage"),
    path("events/", UsageEventsExportView.as_view(), name="events"),
    path("statements/<int:tenant_id>/<str:month>/", StatementView.as_view(), name="statement"),
]

# The schema describes this API only, under its public prefix.
_schema_patterns = [path("api/reports/", include((_report_patterns, "usage_reports")))]

urlpatterns = [
    path("schema/", SpectacularAPIView.as_view(patterns=_schema_patterns), name="schema"),
    *_report_patterns,
]
