"""The playground (`/`) in headless Chromium against a live gateway on the mock provider:
a key pasted into the page lists the models, a reply streams over /ws/v1/chat, a long one is
stopped mid-answer, the side-by-side mode answers from two models at once, and every cost and
served model the page shows is the one the usage event in the database recorded."""

from __future__ import annotations

import json
import re
from decimal import Decimal

import pytest
from playwright.sync_api import expect

from tests.browser import chromium_launch
from tests.routing.support import (
    LIVE_ENV,
    caches_clear,
    mock_provider,
    model_on,
    route,
    tenant_key,
    wait_until_sync,
)
from usage.models import UsageEvent

pytestmark = pytest.mark.live_server_process

KEY_STORAGE = "gateway.playground.apiKey"


@pytest.fixture
def playground_catalog(transactional_db, monkeypatch):
    # playwright's sync API runs an event loop in this thread; the ORM reads between page steps
    # are still plain sync calls (Django's documented escape hatch for such clients).
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    fast = mock_provider("pg-mock", reply_tokens=12)
    small = model_on(fast, "pg-small")
    large = model_on(fast, "pg-large")
    large.input_price_per_mtok, large.output_price_per_mtok = Decimal("3"), Decimal("9")
    large.save()
    route("pg-chat", [small, large])
    slow = mock_provider("pg-mock-slow", latency_ms=30_000, reply_tokens=600)
    model_on(slow, "pg-slow")
    tenant_id, key_id, raw = tenant_key()
    caches_clear()
    return {"raw": raw, "key_id": key_id, "tenant_id": tenant_id}


def _event(request_id: str) -> UsageEvent:
    assert wait_until_sync(
        lambda: UsageEvent.objects.filter(request_id=request_id).exists(), timeout_s=10
    ), request_id
    return UsageEvent.objects.get(request_id=request_id)


def _fact(page, pane: str, name: str) -> str:
    return page.locator(f"#pane-{pane} [data-fact={name}]").inner_text()


# The page's CSP forbids eval, so waits use locator expectations (no page.wait_for_function).
def _wait_fact(page, pane: str, name: str, value: str) -> None:
    expect(page.locator(f"#pane-{pane} [data-fact={name}]")).to_have_text(value, timeout=15_000)


def _wait_status(page, prefix: str) -> None:
    expect(page.locator("#key-status")).to_have_text(re.compile(f"^{prefix}"), timeout=10_000)


def _assert_matches_event(page, pane: str, *, route: str, outcome: str) -> UsageEvent:
    event = _event(_fact(page, pane, "request_id"))
    assert event.endpoint == "ws_chat" and event.outcome == outcome
    assert event.route == route
    assert Decimal(_fact(page, pane, "cost_usd")) == event.cost_usd
    assert _fact(page, pane, "model") == event.model
    assert int(_fact(page, pane, "prompt_tokens")) == event.tokens_in
    assert int(_fact(page, pane, "completion_tokens")) == event.tokens_out
    assert event.api_key_id is not None
    return event


def test_playground_streams_cancels_and_compares_with_costs_from_the_usage_events(
    live_gateway, playground_catalog, tmp_path
):
    from playwright.sync_api import sync_playwright

    raw = playground_catalog["raw"]
    with live_gateway(env=LIVE_ENV) as base, sync_playwright() as pw:
        browser = chromium_launch(pw)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            csp_violations: list[str] = []
            page.on("console", lambda m: csp_violations.append(m.text) if m.type == "error" else 0)
            sent: list[dict] = []
            page.on(
                "websocket",
                lambda ws: ws.on("framesent", lambda payload: sent.append(json.loads(payload))),
            )
            response = page.goto(f"{base}/")
            assert response is not None and response.status == 200
            assert "script-src 'self'" in response.headers["content-security-policy"]

            page.fill("#api-key", raw)
            page.click("#key-save")
            _wait_status(page, "Key accepted")
            names = page.locator("#model-a option").all_inner_texts()
            assert {"pg-chat", "pg-small", "pg-large", "pg-slow"} <= set(names)
            assert page.evaluate(f"sessionStorage.getItem('{KEY_STORAGE}')") == raw
            assert page.evaluate("localStorage.length") == 0
            assert all(raw not in c["value"] for c in page.context.cookies())

            # 1. one reply, streamed (a route: the served model is the first of its chain),
            # with routing options passed through as the `gateway` body object
            page.select_option("#model-a", "pg-chat")
            page.click("details.options summary")
            page.fill("#gw-strategy", "scored")
            page.select_option("#gw-preference", "cheap")
            page.fill("#prompt", "hello there")
            page.press("#prompt", "Control+Enter")
            _wait_fact(page, "a", "finish_reason", "stop")
            answer = page.locator("#pane-a .turn-assistant .text").last.inner_text()
            assert len(answer.split()) == 12
            assert _fact(page, "a", "model") == "pg-small"
            assert _fact(page, "a", "ttft").endswith(" ms")
            assert _fact(page, "a", "latency").endswith(" ms")
            first = _assert_matches_event(page, "a", route="pg-chat", outcome="ok")
            assert first.cost_usd > 0 and first.api_key_id == playground_catalog["key_id"]
            [auth] = [f for f in sent if f["type"] == "auth"]
            [request] = [f for f in sent if f["type"] == "request"]
            assert auth["api_key"] == raw and raw not in json.dumps(request)
            assert request["gateway"] == {"strategy": "scored", "preference": "cheap"}
            assert request["messages"] == [{"role": "user", "content": "hello there"}]
            page.fill("#gw-strategy", "")
            page.select_option("#gw-preference", "")

            # 2. a long answer, stopped mid-way: its partial cost is shown and billed
            page.click("#new-chat")
            page.select_option("#model-a", "pg-slow")
            page.fill("#prompt", "tell me a very long story")
            page.click("#send")
            expect(page.locator("#pane-a .turn-assistant .text")).to_have_text(
                re.compile(r"^\S+( \S+){3,}"), timeout=15_000
            )
            assert page.locator("#stop").is_enabled()
            page.keyboard.press("Escape")
            _wait_fact(page, "a", "finish_reason", "cancelled")
            stopped = _assert_matches_event(page, "a", route="pg-slow", outcome="cancelled")
            requests = [f for f in sent if f["type"] == "request"]
            assert "gateway" not in requests[-1]  # options cleared: no object
            assert [f["id"] for f in sent if f["type"] == "cancel"] == [requests[-1]["id"]]
            assert 0 < stopped.tokens_out < 600
            assert page.locator("#pane-a .cancelled").count() == 1
            assert page.locator("#send").is_enabled() and page.locator("#stop").is_disabled()

            # 3. side by side: one prompt, two models, two sockets, both costs
            page.click("#new-chat")
            page.check("#mode-compare")
            assert page.locator("#pane-b").is_visible()
            page.select_option("#model-a", "pg-small")
            page.select_option("#model-b", "pg-large")
            page.fill("#prompt", "compare this")
            page.click("#send")
            _wait_fact(page, "a", "finish_reason", "stop")
            _wait_fact(page, "b", "finish_reason", "stop")
            left = _assert_matches_event(page, "a", route="pg-small", outcome="ok")
            right = _assert_matches_event(page, "b", route="pg-large", outcome="ok")
            assert left.request_id != right.request_id
            assert right.cost_usd > left.cost_usd  # same tokens, dearer model
            texts = page.locator(".pane .turn-assistant .text").all_inner_texts()
            assert texts[0] == texts[1]  # the mock answers the same prompt the same way
            assert [e for e in csp_violations if "Content Security Policy" in e] == []
            page.screenshot(path=str(tmp_path / "side-by-side.png"), full_page=True)
        finally:
            browser.close()


def test_playground_is_usable_on_a_phone_and_every_control_has_a_label(
    live_gateway, playground_catalog, tmp_path
):
    from playwright.sync_api import sync_playwright

    with live_gateway(env=LIVE_ENV) as base, sync_playwright() as pw:
        browser = chromium_launch(pw)
        try:
            page = browser.new_page(viewport={"width": 375, "height": 740}, is_mobile=True)
            page.goto(f"{base}/playground/")
            unlabeled = page.evaluate(
                """[...document.querySelectorAll('input, select, textarea')]
                     .filter(el => el.type !== 'hidden' && el.labels.length === 0)
                     .map(el => el.id)"""
            )
            assert unlabeled == []
            assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
            # Keyboard only: Tab reaches the key field, Enter submits it.
            page.focus("#api-key")
            page.keyboard.type(playground_catalog["raw"])
            page.keyboard.press("Enter")
            _wait_status(page, "Key accepted")
            assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
            assert page.locator("#pane-a .transcript").get_attribute("aria-live") == "polite"
            page.screenshot(path=str(tmp_path / "phone.png"), full_page=True)
        finally:
            browser.close()


def test_playground_refuses_a_bad_key_and_renders_hostile_text_as_text(
    live_gateway, playground_catalog
):
    from playwright.sync_api import sync_playwright

    with live_gateway(env=LIVE_ENV) as base, sync_playwright() as pw:
        browser = chromium_launch(pw)
        try:
            page = browser.new_page()
            page.goto(f"{base}/")
            page.fill("#api-key", "gw-not-a-key")
            page.click("#key-save")
            _wait_status(page, "Key refused")
            assert "invalid_api_key" in page.inner_text("#key-status")
            assert page.locator("#model-a option").all_inner_texts() == ["(paste a key first)"]

            page.fill("#api-key", playground_catalog["raw"])
            page.click("#key-save")
            _wait_status(page, "Key accepted")
            page.select_option("#model-a", "pg-small")
            hostile = '<img src=x onerror="window.pwned=1"><b id="injected">x</b>'
            page.fill("#prompt", hostile)
            page.click("#send")
            _wait_fact(page, "a", "finish_reason", "stop")
            assert page.locator("#injected").count() == 0
            assert page.evaluate("window.pwned === undefined")
            assert page.locator("#pane-a .turn-user .text").inner_text() == hostile

            # A model the key may not use: the error is shown in the pane, nothing streams.
            page.evaluate(
                "(() => { const o = document.createElement('option');"
                " o.value = o.textContent = 'no-such-model';"
                " document.querySelector('#model-a').append(o); })()"
            )
            page.select_option("#model-a", "no-such-model")
            page.fill("#prompt", "hi")
            page.click("#send")
            page.wait_for_selector("#pane-a .pane-error:not([hidden])")
            assert "model_not_found" in page.inner_text("#pane-a .pane-error")
            assert page.locator("#send").is_enabled()
        finally:
            browser.close()
