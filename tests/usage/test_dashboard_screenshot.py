"""The cost dashboard and the statement render with real data in headless Chromium, served by
a live gateway process; a tenant admin logged in by session cookie sees their totals."""

from __future__ import annotations

import shutil
from decimal import Decimal
from urllib.parse import urlparse

import pytest
from django.contrib.auth.models import User
from django.test import Client

from tenants.models import TenantMembership
from tests.usage.conftest import at
from usage.rollups import usage_rollup
from usage.selectors import to_cents
from usage.services import usage_events_write

pytestmark = pytest.mark.live_server_process

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
]


def _session_cookie(user) -> str:
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


def test_dashboard_and_statement_render_real_totals_in_headless_chromium(
    usage_world, maker, live_gateway, tmp_path
):
    if shutil.which(CHROMIUM) is None:
        pytest.fail("chromium is missing: apt-get install -y chromium")
    from playwright.sync_api import sync_playwright

    payloads = []
    for key in ("key_a", "key_b", "key_g"):
        m = maker(usage_world[key])
        payloads += [
            m.payload(
                created_at=at(d, h),
                tokens_in=90_000 + d * 1000,
                tokens_out=20_000 + h,
                target_index=(d // 2 + h) % 2,
                cache_read_tokens=1000 if h == 3 else 0,
            )
            for d in range(1, 29, 2)
            for h in (3, 15)
        ]
    usage_events_write(payloads=payloads)
    usage_rollup()
    acme_payloads = [p for p in payloads if p["tenant_id"] == usage_world["acme"].id]
    acme_total = to_cents(sum((Decimal(p["cost_usd"]) for p in acme_payloads), Decimal(0)))

    user = User.objects.create_user("acme-finance", password="pw-123456789", is_staff=True)
    TenantMembership.objects.create(user=user, tenant=usage_world["acme"])
    cookie = _session_cookie(user)

    with live_gateway() as base, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 1800})
            context.add_cookies(
                [
                    {
                        "name": "sessionid",
                        "value": cookie,
                        "domain": urlparse(base).hostname,
                        "path": "/",
                    }
                ]
            )
            page = context.new_page()
            response = page.goto(
                f"{base}/admin/usage/usageevent/dashboard/?start=2026-10-01&end=2026-10-31"
            )
            assert response is not None and response.status == 200
            assert page.locator("#total-spend").inner_text() == f"${acme_total}"
            assert page.locator("#total-requests").inner_text() == str(len(acme_payloads))
            assert page.locator("svg.usage-chart").count() == 5
            assert page.locator("#top-keys").get_by_text("acme-prod").count() >= 1
            assert "globex" not in page.content()
            # The route's most expensive model is u-dear (configured in the chain).
            assert page.locator("#route-savings").get_by_text("u-dear").count() == 1
            shot = tmp_path / "dashboard.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 30_000

            page.goto(
                f"{base}/admin/usage/usageevent/statement/?tenant={usage_world['acme'].id}&month=2026-10"
            )
            assert page.locator("#statement-total").inner_text() == str(acme_total)
            statement_shot = tmp_path / "statement.png"
            page.screenshot(path=str(statement_shot), full_page=True)
            assert statement_shot.stat().st_size > 10_000
            page.emulate_media(media="print")
            assert page.locator(".statement-controls").is_hidden()
        finally:
            browser.close()
