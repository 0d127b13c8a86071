from django.urls import path

from usage.api.views import StatementView, UsageEventsExportView, UsageReportView

app_name = "usage_reports"

urlpatterns = [
    path("usage/", UsageReportView.as_view(), name="usage"),
    path("events/", UsageEventsExportView.as_view(), name="events"),
    path("statements/<int:tenant_id>/<str:month>/", StatementView.as_view(), name="statement"),
]
