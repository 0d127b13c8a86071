"""Budget-alert webhooks cannot be pointed at the gateway's own network (SSRF): refused when
written (service, management API, admin form) and when sent, before any connection is made;
redirects are not followed; tenants see only generic error text."""

from __future__ import annotations

import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from rest_framework.test import APIClient

from tenants import services, webhooks
from tenants.models import BudgetAlert, Tenant, TenantMembership
from tests.factories import TenantFactory, operator_token_for

pytestmark = pytest.mark.django_db

REFUSED_URLS = [
    "https://127.0.0.1/hook",
    "https://127.1.2.3:8443/hook",
    "https://10.0.0.5/hook",
    "https://172.16.3.4/hook",
    "https://192.168.1.1/hook",
    "https://100.64.0.1/hook",  # CGNAT
    "https://169.254.169.254/latest/meta-data/",  # cloud metadata (link-local)
    "https://0.0.0.0/hook",
    "https://224.0.0.1/hook",  # multicast
    "https://240.0.0.1/hook",  # reserved
    "https://[::1]/hook",
    "https://[::]/hook",
    "https://[fe80::1]/hook",
    "https://[fd00:ec2::254]/hook",  # AWS metadata over IPv6 (ULA)
    "https://[::ffff:127.0.0.1]/hook",  # v4-mapped loopback
    "https://[::ffff:169.254.169.254]/hook",
    "https://[64:ff9b::a00:1]/hook",  # NAT64 of 10.0.0.1
    "https://[2002:7f00:1::]/hook",  # 6to4 of 127.0.0.1
    "https://[::127.0.0.1]/hook",  # IPv4-compatible (deprecated ::/96) loopback
    "https://[::a9fe:a9fe]/hook",  # IPv4-compatible metadata address
    "https://[::ffff:0:7f00:1]/hook",  # IPv4-translated (SIIT ::ffff:0:0/96) loopback
    "https://[64:ff9b:1::a00:1]/hook",  # local-use NAT64 (RFC 8215) of 10.0.0.1
    "https://[fec0::1]/hook",  # site-local (deprecated, still routed on some networks)
    "https://localhost/hook",  # a name that resolves to loopback
    "http://example.com/hook",  # plain http
    "https://user:pw@example.com/hook",  # credentials in the URL
    "ftp://example.com/hook",
]


@pytest.fixture
def no_connections(monkeypatch):
    """Fails the test if anything opens a TCP connection (refusals happen before that)."""
    attempts: list[object] = []
    real_connect = socket.socket.connect

    def connect(self, address):
        attempts.append(address)
        raise AssertionError(f"connection attempted to {address!r}")

    monkeypatch.setattr(socket.socket, "connect", connect)
    yield attempts
    monkeypatch.setattr(socket.socket, "connect", real_connect)


class _Receiver(BaseHTTPRequestHandler):
    hits: list[tuple[str, str]] = []
    redirect_to = ""

    def do_POST(self):
        type(self).hits.append((self.path, self.headers.get("host", "")))
        self.rfile.read(int(self.headers.get("content-length") or 0))
        if type(self).redirect_to:
            self.send_response(302)
            self.send_header("Location", type(self).redirect_to)
        else:
            self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def receiver():
    """A webhook receiver on loopback that records what reached it."""

    class Handler(_Receiver):
        hits = []
        redirect_to = ""

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_port, Handler
    server.shutdown()
    server.server_close()


def _record(tenant: Tenant, period: str = "m1") -> BudgetAlert:
    try:
        services.budget_alerts_record(
            tenant_id=tenant.pk,
            scope="tenant",
            scope_id=tenant.pk,
            period_key=period,
            thresholds=[100],
            budget_usd="1",
            spend_usd="1",
        )
    except services.BudgetAlertDeliveryError:
        pass
    return BudgetAlert.objects.get(tenant=tenant, period_key=period)


# -- write time ------------------------------------------------------------------------------
@pytest.mark.parametrize("url", REFUSED_URLS)
def test_service_refuses_webhook_urls_into_private_networks(url, no_connections):
    tenant = TenantFactory()
    with pytest.raises(ValidationError) as caught:
        services.tenant_update_limits(tenant=tenant, alert_webhook_url=url)
    assert "alert_webhook_url" in caught.value.message_dict
    tenant.refresh_from_db()
    assert tenant.alert_webhook_url == ""
    with pytest.raises(ValidationError):
        services.tenant_create(slug="new-co", alert_webhook_url=url)
    assert no_connections == []


def test_management_api_refuses_loopback_and_metadata_webhooks():
    tenant = TenantFactory(slug="ours")
    user = get_user_model().objects.create_user("alice", password="pw-alice-123", is_staff=True)
    TenantMembership.objects.create(user=user, tenant=tenant)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {operator_token_for(user)}")
    for url in ("http://127.0.0.1:6379/", "https://169.254.169.254/", "https://[::1]/x"):
        answer = client.patch("/api/manage/tenants/ours/alerts/", {"alert_webhook_url": url})
        assert answer.status_code == 400, url
        assert "alert_webhook_url" in answer.json()
    tenant.refresh_from_db()
    assert tenant.alert_webhook_url == ""


def test_admin_form_refuses_a_private_webhook_url(client):
    tenant = TenantFactory(slug="ours")
    user = get_user_model().objects.create_user("alice", password="pw-alice-123", is_staff=True)
    TenantMembership.objects.create(user=user, tenant=tenant)
    client.force_login(user)
    answer = client.post(
        f"/admin/tenants/tenant/{tenant.pk}/change/",
        {
            "alert_thresholds": "[50, 80, 100]",
            "alert_webhook_url": "https://10.1.2.3/hook",
            "alert_email": "",
        },
    )
    assert answer.status_code == 200  # the form again, with the error
    assert "private, loopback or reserved" in answer.content.decode()
    tenant.refresh_from_db()
    assert tenant.alert_webhook_url == ""


# -- send time -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1/hook",
        "https://10.0.0.5/hook",
        "https://169.254.169.254/latest/meta-data/",
        "https://[::1]/hook",
        "https://[::ffff:127.0.0.1]/hook",
        "https://localhost/hook",
    ],
)
def test_a_stored_private_url_is_refused_at_send_time_before_connecting(url, no_connections):
    # Written before the checks existed (or by a direct DB edit): the send-time check holds.
    tenant = TenantFactory(alert_webhook_url=url)
    alert = _record(tenant)
    assert alert.webhook_sent_at is None
    assert alert.last_error == webhooks.WEBHOOK_FAILED_TEXT
    assert no_connections == []


def test_a_name_that_turns_private_after_it_was_saved_is_refused(monkeypatch, no_connections):
    """DNS answers are checked when sending, not only when the URL was saved."""
    tenant = TenantFactory(alert_webhook_url="https://hooks.example.com/budget")

    def resolve(host, port, *args, **kwargs):
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.9.8.7", port))]

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    alert = _record(tenant)
    assert alert.webhook_sent_at is None and no_connections == []


def test_the_connection_goes_to_the_validated_address_with_the_name_as_host_and_sni(
    monkeypatch,
):
    def resolve(host, port, *args, **kwargs):
        assert host == "hooks.example.com"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.215.14", port))]

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    target, headers, extensions = webhooks._pinned_target("https://hooks.example.com/b?x=1")
    assert target == "https://93.184.215.14/b?x=1"
    assert headers == {"Host": "hooks.example.com"}
    assert extensions == {"sni_hostname": "hooks.example.com"}


def test_a_redirect_is_not_followed(settings, receiver):
    port, handler = receiver
    settings.GATEWAY_WEBHOOK_ALLOW_HTTP = True
    settings.GATEWAY_WEBHOOK_ALLOWED_NETWORKS = ["127.0.0.1/32"]
    handler.redirect_to = f"http://127.0.0.1:{port}/metadata"
    tenant = TenantFactory(alert_webhook_url=f"http://127.0.0.1:{port}/hook")
    alert = _record(tenant)
    assert [path for path, _ in handler.hits] == ["/hook"]  # /metadata never requested
    assert alert.webhook_sent_at is None
    assert alert.last_error == webhooks.WEBHOOK_FAILED_TEXT


def test_a_receiver_in_an_operator_allowed_network_gets_the_alert_by_its_name(settings, receiver):
    port, handler = receiver
    settings.GATEWAY_WEBHOOK_ALLOW_HTTP = True
    settings.GATEWAY_WEBHOOK_ALLOWED_NETWORKS = ["127.0.0.0/8"]
    tenant = TenantFactory(alert_webhook_url=f"http://localhost:{port}/hook")
    alert = _record(tenant)
    assert alert.webhook_sent_at is not None and alert.last_error == ""
    assert handler.hits == [("/hook", f"localhost:{port}")]
    assert alert.delivery_claimed_until is None


def test_tenants_see_generic_error_text_and_operators_get_the_details(settings, caplog):
    settings.GATEWAY_WEBHOOK_ALLOW_HTTP = True
    settings.GATEWAY_WEBHOOK_ALLOWED_NETWORKS = ["127.0.0.1/32"]
    with socket.socket() as closed:  # a port with nothing listening
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    tenant = TenantFactory(alert_webhook_url=f"http://127.0.0.1:{port}/hook")
    caplog.set_level(logging.WARNING, logger="gateway.tenants")
    alert = _record(tenant)
    assert alert.last_error == webhooks.WEBHOOK_FAILED_TEXT
    assert "Connect" not in alert.last_error and str(port) not in alert.last_error
    failed = [r for r in caplog.records if r.getMessage() == "tenants.budget_alert_webhook_failed"]
    assert failed and "Connect" in failed[0].error


def test_an_alert_leased_by_another_run_is_not_sent_twice(settings, receiver):
    port, handler = receiver
    settings.GATEWAY_WEBHOOK_ALLOW_HTTP = True
    settings.GATEWAY_WEBHOOK_ALLOWED_NETWORKS = ["127.0.0.1/32"]
    tenant = TenantFactory(alert_webhook_url=f"http://127.0.0.1:{port}/hook")
    alert = _record(tenant)
    assert len(handler.hits) == 1
    # Another run holds a live lease on a second alert: this run leaves it alone.
    from datetime import timedelta

    from django.utils import timezone

    other = BudgetAlert.objects.create(
        tenant=tenant,
        scope="tenant",
        scope_id=tenant.pk,
        period_key="m2",
        threshold=100,
        budget_usd=1,
        spend_usd=1,
        delivery_claimed_until=timezone.now() + timedelta(minutes=1),
    )
    assert services._alert_deliver(other.pk) == ""
    assert len(handler.hits) == 1
    assert alert.webhook_sent_at is not None


def test_with_an_egress_proxy_the_proxy_gets_the_request_by_name(settings, receiver, monkeypatch):
    """GATEWAY_WEBHOOK_PROXY: the request goes to the proxy (which owns the network policy);
    the webhook's name is not resolved here. Literal private addresses are still refused."""
    port, proxy = receiver
    settings.GATEWAY_WEBHOOK_ALLOW_HTTP = True
    settings.GATEWAY_WEBHOOK_PROXY = f"http://127.0.0.1:{port}"
    real_getaddrinfo = socket.getaddrinfo
    resolved: list[str] = []

    def getaddrinfo(host, *args, **kwargs):
        resolved.append(host)
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    tenant = TenantFactory(alert_webhook_url="http://hooks.example.com/budget")
    alert = _record(tenant)
    assert alert.webhook_sent_at is not None
    assert proxy.hits == [("http://hooks.example.com/budget", "hooks.example.com")]
    assert "hooks.example.com" not in resolved
    blocked = TenantFactory(alert_webhook_url="http://10.0.0.7/budget")
    assert _record(blocked).webhook_sent_at is None
    assert len(proxy.hits) == 1


# -- key-rotation reminders go through the same sender -------------------------------------
@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1/hook",
        "https://169.254.169.254/latest/meta-data/",
        "https://[::ffff:127.0.0.1]/hook",
        "https://localhost/hook",
        "http://10.0.0.5/hook",
    ],
)
def test_key_expiry_reminders_refuse_private_urls_before_connecting(url, no_connections):
    """The reminder path (tenants.services._reminder_webhook_post) used a bare httpx client:
    a URL stored before the checks existed, or a name that turned private, was fetched."""
    from datetime import timedelta

    from django.utils import timezone

    from tenants.models import AuditEvent

    tenant = TenantFactory(alert_webhook_url=url, alert_email="ops@example.com")
    services.api_key_create(tenant=tenant, expires_at=timezone.now() + timedelta(days=1))
    assert services.api_key_reminders_send() == 1  # the email still goes out
    assert no_connections == []
    audit = AuditEvent.objects.get(action="api_key.expiry_reminder")
    # The tenant reads the generic text only (no error class: no port-scan oracle).
    assert audit.details["errors"] == [webhooks.WEBHOOK_FAILED_TEXT]


def test_key_expiry_reminders_do_not_follow_redirects(settings, receiver):
    from datetime import timedelta

    from django.utils import timezone

    port, handler = receiver
    settings.GATEWAY_WEBHOOK_ALLOW_HTTP = True
    settings.GATEWAY_WEBHOOK_ALLOWED_NETWORKS = ["127.0.0.1/32"]
    handler.redirect_to = f"http://127.0.0.1:{port}/metadata"
    tenant = TenantFactory(alert_webhook_url=f"http://127.0.0.1:{port}/hook")
    services.api_key_create(tenant=tenant, expires_at=timezone.now() + timedelta(days=1))
    assert services.api_key_reminders_send() == 0  # a redirect is not a delivery
    assert [path for path, _ in handler.hits] == ["/hook"]


@pytest.mark.django_db(transaction=True)
def test_key_reminders_are_sent_with_no_row_lock_held(settings):
    """A slow receiver must not hold the key's row lock: an admin revoking or rotating the key
    meanwhile is not blocked for the webhook timeout (issue 14: send after commit)."""
    from datetime import timedelta

    from django.db import OperationalError, connection
    from django.utils import timezone

    from tenants.models import ApiKey

    outcome: list[str] = []

    class Handler(_Receiver):
        hits = []
        redirect_to = ""

        def do_POST(self):
            try:
                with connection.cursor() as cursor:
                    cursor.execute("SET lock_timeout = '500ms'")
                ApiKey.objects.filter(pk=key.pk).update(name="renamed during send")
                outcome.append("updated")
            except OperationalError:
                outcome.append("blocked")
            finally:
                connection.close()
            super().do_POST()

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        settings.GATEWAY_WEBHOOK_ALLOW_HTTP = True
        settings.GATEWAY_WEBHOOK_ALLOWED_NETWORKS = ["127.0.0.1/32"]
        tenant = TenantFactory(alert_webhook_url=f"http://127.0.0.1:{server.server_port}/hook")
        key, _ = services.api_key_create(
            tenant=tenant, expires_at=timezone.now() + timedelta(days=1)
        )
        assert services.api_key_reminders_send() == 1
    finally:
        server.shutdown()
        server.server_close()
    assert outcome == ["updated"]
    key.refresh_from_db()
    assert key.expiry_reminded_at is not None


def test_a_failed_reminder_releases_its_claim_for_the_next_run():
    from datetime import timedelta

    from django.utils import timezone

    tenant = TenantFactory(alert_webhook_url="https://127.0.0.1/hook")
    key, _ = services.api_key_create(tenant=tenant, expires_at=timezone.now() + timedelta(days=1))
    assert services.api_key_reminders_send() == 0
    key.refresh_from_db()
    assert key.expiry_reminded_at is None
