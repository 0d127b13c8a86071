"""Budget alerts: once per (scope, threshold, period), webhook + email + a row in the admin."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from django.core import mail

from tenants import services
from tenants.admission import thresholds_crossed
from tenants.models import AuditEvent, BudgetAlert
from tenants.tasks import budget_alerts_dispatch
from tests.factories import TenantFactory

pytestmark = pytest.mark.django_db


class _Hook(BaseHTTPRequestHandler):
    status = 204
    received: list[dict] = []

    def do_POST(self):
        length = int(self.headers["content-length"])
        type(self).received.append(json.loads(self.rfile.read(length)))
        self.send_response(type(self).status)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def webhook(settings):
    # The receiver is on loopback over http: allowed here explicitly (refused by default).
    settings.GATEWAY_WEBHOOK_ALLOW_HTTP = True
    settings.GATEWAY_WEBHOOK_ALLOWED_NETWORKS = ["127.0.0.1/32"]
    _Hook.received, _Hook.status = [], 204
    server = HTTPServer(("127.0.0.1", 0), _Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/hook", _Hook
    server.shutdown()
    server.server_close()


def dispatch(tenant, key, thresholds, period="m2025-06"):
    return budget_alerts_dispatch.apply(
        kwargs={
            "tenant_id": tenant.pk,
            "scope": "key",
            "scope_id": key.pk,
            "period_key": period,
            "thresholds": thresholds,
            "budget_usd": "10.0000",
            "spend_usd": "8.5",
        }
    )


def test_alert_is_recorded_and_notified_once_per_threshold_and_period(webhook):
    url, hook = webhook
    tenant = TenantFactory(alert_webhook_url=url, alert_email="ops@example.com")
    key, _ = services.api_key_create(tenant=tenant)
    dispatch(tenant, key, [50, 80])
    dispatch(tenant, key, [50, 80])  # a retried or duplicated task
    assert BudgetAlert.objects.filter(api_key=key).count() == 2
    assert sorted(p["threshold_percent"] for p in hook.received) == [50, 80]
    assert hook.received[0]["type"] == "budget.threshold_crossed"
    assert hook.received[0]["api_key_prefix"] == key.prefix
    assert len(mail.outbox) == 2 and "80%" in mail.outbox[1].subject
    assert AuditEvent.objects.filter(action="budget.alert").count() == 2
    dispatch(tenant, key, [50], period="m2025-07")  # a new period alerts again
    assert BudgetAlert.objects.filter(api_key=key, threshold=50).count() == 2


def test_failed_webhook_is_retried_without_repeating_the_email(webhook):
    url, hook = webhook
    hook.status = 500
    tenant = TenantFactory(alert_webhook_url=url, alert_email="ops@example.com")
    key, _ = services.api_key_create(tenant=tenant)
    with pytest.raises(services.BudgetAlertDeliveryError):
        services.budget_alerts_record(
            tenant_id=tenant.pk,
            scope="key",
            scope_id=key.pk,
            period_key="m1",
            thresholds=[100],
            budget_usd="1",
            spend_usd="1",
        )
    alert = BudgetAlert.objects.get(api_key=key)
    assert alert.email_sent_at is not None and alert.webhook_sent_at is None
    assert "webhook" in alert.last_error
    hook.status = 204
    services.budget_alerts_record(
        tenant_id=tenant.pk,
        scope="key",
        scope_id=key.pk,
        period_key="m1",
        thresholds=[100],
        budget_usd="1",
        spend_usd="1",
    )
    alert.refresh_from_db()
    assert alert.webhook_sent_at is not None and alert.last_error == ""
    assert len(mail.outbox) == 1


def test_thresholds_crossed_only_by_the_charge_that_moves_past_them():
    budget = 1000
    assert (
        thresholds_crossed(
            thresholds=(50, 80, 100), budget_nano=budget, before_nano=0, after_nano=499
        )
        == []
    )
    assert thresholds_crossed(
        thresholds=(50, 80, 100), budget_nano=budget, before_nano=499, after_nano=500
    ) == [50]
    assert thresholds_crossed(
        thresholds=(50, 80, 100), budget_nano=budget, before_nano=500, after_nano=1000
    ) == [80, 100]
    assert (
        thresholds_crossed(thresholds=(50,), budget_nano=budget, before_nano=600, after_nano=900)
        == []
    )
