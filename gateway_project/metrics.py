"""GET /metrics (Prometheus): per-route and per-model counts and cost are not public.

With GATEWAY_METRICS_TOKEN set, a scrape must send `Authorization: Bearer <token>` (compared in
constant time); without it the endpoint answers 404, except with DEBUG on (development)."""

from __future__ import annotations

import hmac

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django_prometheus.exports import ExportToDjangoView


def metrics_view(request: HttpRequest) -> HttpResponse:
    token = settings.GATEWAY_METRICS_TOKEN
    if not token:
        if settings.DEBUG:
            return ExportToDjangoView(request)
        return HttpResponse("Not Found", status=404, content_type="text/plain")
    presented = request.headers.get("Authorization", "")
    scheme, _, value = presented.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        value.strip().encode(), token.encode()
    ):
        response = HttpResponse("Unauthorized", status=401, content_type="text/plain")
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    return ExportToDjangoView(request)
