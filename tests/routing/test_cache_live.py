"""The response cache through a live gateway, with the official openai SDK: a second identical
request is answered without an upstream call and billed per the route's policy; another
tenant, or any output-changing parameter, is a miss; the controls and headers behave; a
streamed replay is a valid stream; a cache store that is down costs no request."""

from __future__ import annotations

import socket
import time
from decimal import Decimal

import httpx
import openai
import pytest

from providers.models import ProviderKind
from routing.models import Route
from tests.routing.support import (
    LIVE_ENV,
    caches_clear,
    fake_provider,
    model_on,
    route,
    tenant_key,
    usage_events_wait_sync,
)

PROMPT = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture
def cached(transactional_db, fake_upstream_thread):
    fake = fake_upstream_thread
    cheap = model_on(fake_provider(fake, ProviderKind.OPENAI, name="cache-up"), "cache-model")
    route("cached-chat", [cheap])
    route("plain-chat", [cheap])
    Route.objects.filter(name="cached-chat").update(
        options={"cache": {"enabled": True, "ttl_s": 300, "price_fraction": "0.5"}}
    )
    _, _, raw_a = tenant_key()
    _, _, raw_b = tenant_key()
    caches_clear()
    return {"fake": fake, "a": raw_a, "b": raw_b}


def _client(base: str, raw: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key=raw, max_retries=0)


def _ask(client: openai.OpenAI, **kw):
    fields = {"model": "cached-chat", "messages": PROMPT, "temperature": 0, **kw}
    return client.chat.completions.with_raw_response.create(**fields)


def _upstream_calls(fake) -> int:
    return len(fake.requests)


def _events(expected: int) -> list:
    deadline = time.monotonic() + 10
    while True:
        events = [e for e in usage_events_wait_sync(0) if e.route in ("cached-chat", "plain-chat")]
        if len(events) >= expected or time.monotonic() > deadline:
            return sorted(events, key=lambda e: e.created_at)
        time.sleep(0.05)


def test_second_identical_request_is_served_without_upstream_and_billed_per_policy(
    live_gateway, cached
):
    fake = cached["fake"]
    with live_gateway(env=LIVE_ENV) as base:
        client = _client(base, cached["a"])
        first = _ask(client)
        calls = _upstream_calls(fake)
        assert first.headers["x-gateway-cache"] == "miss"
        time.sleep(0.3)  # the write happens after the answer, off the request's path
        second = _ask(client)
        assert _upstream_calls(fake) == calls  # no upstream call
        assert second.headers["x-gateway-cache"] == "hit"
        assert int(second.headers["age"]) >= 0
        body_1, body_2 = first.parse(), second.parse()
        assert body_2.choices[0].message.content == body_1.choices[0].message.content
        assert body_2.usage.total_tokens == body_1.usage.total_tokens
        cost_1 = Decimal(first.headers["x-gateway-cost-usd"])
        cost_2 = Decimal(second.headers["x-gateway-cost-usd"])
        assert cost_1 > 0 and cost_2 == (cost_1 * Decimal("0.5")).quantize(Decimal("1e-9"))

        events = _events(2)
    assert [e.outcome for e in events] == ["ok", "cache_hit"]
    ok, hit = events
    assert hit.cost_usd == cost_2 and hit.response_cache_saved_usd == cost_1 - cost_2
    assert (hit.tokens_in, hit.tokens_out) == (ok.tokens_in, ok.tokens_out)


def test_another_tenant_and_output_changing_parameters_are_misses(live_gateway, cached):
    fake = cached["fake"]
    with live_gateway(env=LIVE_ENV) as base:
        a = _client(base, cached["a"])
        _ask(a)
        time.sleep(0.3)
        assert _ask(a).headers["x-gateway-cache"] == "hit"
        calls = _upstream_calls(fake)
        # The same prompt from another tenant never reads tenant A's entry.
        assert _ask(_client(base, cached["b"])).headers["x-gateway-cache"] == "miss"
        for change in ({"max_tokens": 7}, {"seed": 3}, {"stop": ["\n"]}, {"top_p": 0.5}):
            assert _ask(a, **change).headers["x-gateway-cache"] == "miss", change
        assert _upstream_calls(fake) == calls + 5


def test_controls_bypass_refresh_no_store_and_creative_requests(live_gateway, cached):
    fake = cached["fake"]
    with live_gateway(env=LIVE_ENV) as base:
        a = _client(base, cached["a"])
        _ask(a)
        time.sleep(0.3)
        calls = _upstream_calls(fake)
        bypass = _ask(a, extra_headers={"x-gateway-cache": "bypass"})
        assert bypass.headers["x-gateway-cache"] == "bypass"
        no_store = _ask(a, extra_headers={"cache-control": "no-store"})
        assert no_store.headers["x-gateway-cache"] == "bypass"
        refresh = _ask(a, extra_headers={"cache-control": "no-cache"})
        assert refresh.headers["x-gateway-cache"] == "miss"
        assert _upstream_calls(fake) == calls + 3
        # Above the route's temperature threshold (0 by default): not cached unless asked.
        assert _ask(a, temperature=0.9).headers["x-gateway-cache"] == "bypass"
        _ask(a, temperature=0.9, extra_headers={"x-gateway-cache": "use"})
        time.sleep(0.3)
        used = _ask(a, temperature=0.9, extra_headers={"x-gateway-cache": "use"})
        assert used.headers["x-gateway-cache"] == "hit"
        # A route that does not cache says nothing, unless a request opts in.
        plain = a.chat.completions.with_raw_response.create(model="plain-chat", messages=PROMPT)
        assert "x-gateway-cache" not in plain.headers


def test_a_streamed_request_replays_the_cached_answer_as_a_valid_stream(live_gateway, cached):
    fake = cached["fake"]
    with live_gateway(env=LIVE_ENV) as base:
        a = _client(base, cached["a"])
        answer = _ask(a).parse().choices[0].message.content
        time.sleep(0.3)
        calls = _upstream_calls(fake)
        with httpx.Client(base_url=base, timeout=10) as http:
            response = http.post(
                "/v1/chat/completions",
                json={
                    "model": "cached-chat",
                    "messages": PROMPT,
                    "temperature": 0,
                    "stream": True,
                    "stream_options": {"include_usage": True},
                },
                headers={"Authorization": f"Bearer {cached['a']}"},
            )
        assert response.headers["x-gateway-cache"] == "hit"
        lines = [line for line in response.text.splitlines() if line.startswith("data: ")]
        assert lines[-1] == "data: [DONE]"
        # The SDK reads the replay like any stream: same text, usage at the end.
        stream = a.chat.completions.create(
            model="cached-chat",
            messages=PROMPT,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        text, usage = "", None
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                text += chunk.choices[0].delta.content
            usage = chunk.usage or usage
        assert text == answer and usage is not None and usage.total_tokens > 0
        assert _upstream_calls(fake) == calls


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_cache_store_that_is_down_costs_no_request(live_gateway, cached):
    env = {**LIVE_ENV, "GATEWAY_CACHE_REDIS_URL": f"redis://127.0.0.1:{_closed_port()}/0"}
    with live_gateway(env=env) as base:
        a = _client(base, cached["a"])
        for _ in range(3):
            response = _ask(a)
            assert response.http_response.status_code == 200
            assert response.headers["x-gateway-cache"] == "bypass"
        events = _events(3)
    assert [e.outcome for e in events] == ["ok", "ok", "ok"]
