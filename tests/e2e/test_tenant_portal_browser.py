"""The tenant portal (the tenant-scoped admin, docs/tenant-portal.md) in headless Chromium
against a live gateway: a tenant member logs in with password and TOTP code, sees only their
tenant (keys, limits read-only, dashboard totals, statement), issues, rotates and revokes a
key, and the keys they get work (and stop) through the gateway with the openai SDK."""

from __future__ import annotations

import re
from decimal import Decimal

import openai
import pytest
from django.contrib.auth import get_user_model
from django_otp.oath import totp
from playwright.sync_api import expect

from tenants import services
from tenants.keys import api_key_hash
from tenants.models import ApiKey, TenantMembership
from tests.browser import chromium_launch
from tests.routing.support import (
    LIVE_ENV,
    caches_clear,
    mock_provider,
    model_on,
    usage_events_wait_sync,
)
from usage.models import UsageEvent
from usage.rollups import usage_rollup
from usage.selectors import to_cents

pytestmark = pytest.mark.live_server_process

PASSWORD = "portal-member-passphrase-7"
ENV = {**LIVE_ENV, "GATEWAY_ADMIN_REQUIRE_2FA": "1", "GATEWAY_ENVIRONMENT_NAME": "staging-eu"}
HELLO = [{"role": "user", "content": "hello"}]
RAW_KEY = re.compile(r"gw-[A-Za-z0-9_-]{20,}")


@pytest.fixture
def portal(transactional_db, monkeypatch):
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # ORM between playwright steps
    model_on(mock_provider("portal-mock"), "portal-model")
    acme = services.tenant_create(slug="acme", budget_usd=Decimal("250"), rpm_limit=600)
    globex = services.tenant_create(slug="globex")
    acme_key, acme_raw = services.api_key_create(tenant=acme, name="acme-prod")
    globex_key, globex_raw = services.api_key_create(tenant=globex, name="globex-main")
    member = get_user_model().objects.create_user("acme-admin", password=PASSWORD, is_staff=True)
    TenantMembership.objects.create(user=member, tenant=acme)
    device = services.staff_totp_device_create(user=member)
    caches_clear()
    return {
        "acme": acme,
        "globex": globex,
        "acme_key": acme_key,
        "acme_raw": acme_raw,
        "globex_key": globex_key,
        "globex_raw": globex_raw,
        "device": device,
    }


def _code(device) -> str:
    return f"{totp(device.bin_key, step=device.step, t0=device.t0, digits=device.digits):06d}"


def _login(page, base: str, device) -> None:
    page.goto(f"{base}/admin/login/?next=/admin/")
    expect(page.locator("#environment-banner")).to_have_text("Environment: staging-eu")
    page.fill("#id_username", "acme-admin")
    page.fill("#id_password", PASSWORD)
    page.fill("#id_otp_token", _code(device))
    page.click("input[type=submit]")
    # django-otp's second step: the user's devices are listed; pick one, type the code.
    page.select_option("#id_otp_device", device.persistent_id)
    page.fill("#id_otp_token", _code(device))
    page.click("input[type=submit]")
    expect(page).to_have_url(f"{base}/admin/")


def _not_found(page, url: str) -> None:
    """Another tenant's object by URL: the admin says it does not exist (redirect + message)."""
    response = page.goto(url)
    base = url.split("/admin/")[0]
    assert response.status == 404 or page.url == f"{base}/admin/", page.url
    if response.status != 404:
        assert "doesn’t exist" in page.locator("ul.messagelist").inner_text()


def _action(page, key_id: int, action: str) -> str:
    page.check(f"input[name=_selected_action][value='{key_id}']")
    page.select_option("select[name=action]", action)
    page.click("button[name=index]")
    return page.locator("ul.messagelist").inner_text()


def test_tenant_member_sees_only_their_tenant_and_manages_its_keys(live_gateway, portal, tmp_path):
    from playwright.sync_api import sync_playwright

    with live_gateway(env=ENV) as base, sync_playwright() as pw:

        def sdk(raw):
            return openai.OpenAI(base_url=f"{base}/v1", api_key=raw, max_retries=0)

        for raw in (portal["acme_raw"], portal["acme_raw"], portal["globex_raw"]):
            sdk(raw).chat.completions.create(model="portal-model", messages=HELLO)
        usage_events_wait_sync(3)
        usage_rollup()
        acme_events = UsageEvent.objects.filter(tenant_id=portal["acme"].id)
        acme_total = to_cents(sum((e.cost_usd for e in acme_events), Decimal(0)))

        browser = chromium_launch(pw)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            # Without the second factor there is no admin session.
            assert page.goto(f"{base}/admin/tenants/apikey/").url.startswith(f"{base}/admin/login/")
            _login(page, base, portal["device"])
            index = page.content()
            assert "Shortcuts" in index and "Your tenant" in index
            assert "Providers" not in index and "TOTP" not in index
            page.screenshot(path=str(tmp_path / "portal-index.png"), full_page=True)

            # Keys: only this tenant's.
            page.goto(f"{base}/admin/tenants/apikey/")
            listing = page.content()
            assert portal["acme_key"].prefix in listing
            assert portal["globex_key"].prefix not in listing and "globex" not in listing
            _not_found(page, f"{base}/admin/tenants/apikey/{portal['globex_key'].pk}/change/")
            assert "globex-main" not in page.content()

            # Issue a key: the raw key is shown once.
            page.goto(f"{base}/admin/tenants/apikey/add/")
            assert page.locator("#id_tenant option").all_inner_texts()[-1] == "acme"
            assert "globex" not in page.locator("#id_tenant").inner_html()
            page.select_option("#id_tenant", label="acme")
            page.fill("#id_name", "portal-key")
            page.click("input[name=_save]")
            issued = RAW_KEY.search(page.locator("ul.messagelist").inner_text()).group(0)
            key = ApiKey.objects.get(key_hash=api_key_hash(issued))
            assert key.tenant_id == portal["acme"].id and key.name == "portal-key"
            sdk(issued).chat.completions.create(model="portal-model", messages=HELLO)

            # Rotate with the grace period: both secrets work, billed to the same key.
            page.goto(f"{base}/admin/tenants/apikey/")
            message = _action(page, key.pk, "rotate_selected")
            assert "works until" in message and key.public_id in message
            rotated = RAW_KEY.search(message).group(0)
            assert rotated != issued
            for raw in (issued, rotated):
                sdk(raw).chat.completions.create(model="portal-model", messages=HELLO)
            billed = UsageEvent.objects.filter(api_key_id=key.pk, outcome="ok")
            assert usage_events_wait_sync(6) and billed.count() == 3

            # Revoke: both secrets stop.
            page.goto(f"{base}/admin/tenants/apikey/")
            assert "Revoked 1 key" in _action(page, key.pk, "revoke_selected")
            for raw in (issued, rotated):
                with pytest.raises(openai.AuthenticationError):
                    sdk(raw).chat.completions.create(model="portal-model", messages=HELLO)

            # Limits and budget set by the operator: visible, read-only; alerts editable.
            page.goto(f"{base}/admin/tenants/tenant/{portal['acme'].id}/change/")
            assert page.locator("input[name=budget_usd]").count() == 0
            assert "250" in page.locator(".field-budget_usd").inner_text()
            assert page.locator("input[name=alert_email]").count() == 1
            _not_found(page, f"{base}/admin/tenants/tenant/{portal['globex'].id}/change/")

            # Usage and cost: only this tenant's totals; another tenant's statement is refused.
            page.goto(f"{base}/admin/usage/usageevent/dashboard/")
            assert page.locator("#total-spend").inner_text() == f"${acme_total}"
            assert page.locator("#total-requests").inner_text() == "2"
            assert "globex" not in page.content()
            page.goto(f"{base}/admin/usage/usageevent/statement/")
            assert "acme" in page.content() and "globex" not in page.content()
            refused = page.goto(
                f"{base}/admin/usage/usageevent/statement/?tenant={portal['globex'].id}"
            )
            assert refused.status == 403
            events = page.goto(f"{base}/admin/usage/usageevent/")
            assert events.status == 200
            rows = page.locator("#result_list").inner_text()
            for event in UsageEvent.objects.exclude(tenant_id=portal["acme"].id):
                assert event.request_id not in rows
            assert all(e.request_id in rows for e in acme_events)
        finally:
            browser.close()
