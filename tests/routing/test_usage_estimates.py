"""Missing or partial usage is estimated and flagged, never billed as zero: an answer without
`usage`, a stream cut before its usage chunk (tool calls included), an upstream timeout after
the request went out, a client that leaves a non-stream call or an embeddings call."""

from __future__ import annotations

import asyncio

import pytest
from django.test import AsyncClient

from providers.models import ProviderKind
from tests.routing.support import caches_clear, fake_provider, model_on, route, tenant_key
from tests.usage_helpers import usage_events_settled
from usage.models import UsageEvent

pytestmark = pytest.mark.django_db(transaction=True)

HELLO = [{"role": "user", "content": "hello there, how are you today?"}]


@pytest.fixture
def catalog(fake_upstream):
    provider = fake_provider(fake_upstream, ProviderKind.OPENAI, first_byte_timeout_s=0.5)
    route("est-chat", [model_on(provider, "est-model")])
    anthropic = fake_provider(fake_upstream, ProviderKind.ANTHROPIC, name="est-anthropic")
    route("est-anthropic", [model_on(anthropic, "est-anthropic-model")])
    _, _, raw = tenant_key()
    caches_clear()
    return {"raw": raw, "fake": fake_upstream}


async def _post(raw: str, body: dict, path: str = "/v1/chat/completions"):
    return await AsyncClient().post(
        path, body, content_type="application/json", headers={"Authorization": f"Bearer {raw}"}
    )


@pytest.mark.parametrize("model", ["est-chat", "est-anthropic"])
@pytest.mark.parametrize("stream", [False, True])
async def test_an_answer_without_usage_is_estimated_and_charged(catalog, model, stream):
    catalog["fake"].script("no_usage")
    response = await _post(
        catalog["raw"],
        {"model": model, "messages": HELLO, "stream": stream, "max_tokens": 50},
    )
    assert response.status_code == 200
    if stream:
        b"".join([chunk async for chunk in response.streaming_content])
    assert await usage_events_settled(1) == 1
    event = await UsageEvent.objects.aget()
    assert event.outcome == "ok"
    assert event.usage_estimated is True
    assert event.tokens_in > 0 and event.tokens_out > 0
    assert event.cost_usd > 0


async def test_an_upstream_timeout_after_dispatch_bills_the_prompt(catalog):
    catalog["fake"].script("hang_headers")
    response = await _post(catalog["raw"], {"model": "est-chat", "messages": HELLO})
    assert response.status_code == 504
    assert await usage_events_settled(1) == 1
    event = await UsageEvent.objects.aget()
    assert event.outcome == "error" and event.status_code == 504
    assert event.usage_estimated is True
    assert event.tokens_in > 0 and event.tokens_out == 0
    assert event.cost_usd > 0 and event.model == "est-model"


async def test_a_client_leaving_a_non_stream_call_is_recorded_as_disconnected(catalog):
    catalog["fake"].script("slow_headers:delay_ms=3000")
    task = asyncio.ensure_future(_post(catalog["raw"], {"model": "est-chat", "messages": HELLO}))
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await usage_events_settled(1) == 1
    event = await UsageEvent.objects.aget()
    assert event.outcome == "cancelled"
    assert event.error_type == "client_disconnected"
    # The request was on the wire: the prompt is billed, flagged as an estimate.
    assert event.usage_estimated and event.tokens_in > 0 and event.cost_usd > 0


async def test_a_client_leaving_an_embeddings_call_frees_its_slot_and_leaves_an_event(
    fake_upstream,
):
    from asgiref.sync import sync_to_async

    provider = await sync_to_async(fake_provider)(fake_upstream, ProviderKind.OPENAI)
    model = await sync_to_async(model_on)(provider, "est-embed", supports_embeddings=True)
    await sync_to_async(route)("est-embed-route", [model])
    _, _, raw = await sync_to_async(tenant_key)(max_concurrency=1)
    caches_clear()
    fake_upstream.script("slow_headers:delay_ms=3000")
    task = asyncio.ensure_future(
        _post(raw, {"model": "est-embed-route", "input": ["hello"]}, "/v1/embeddings")
    )
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await usage_events_settled(1) == 1
    event = await UsageEvent.objects.aget()
    assert event.endpoint == "embeddings" and event.outcome == "cancelled"
    assert event.error_type == "client_disconnected"
    # The slot is free at once: the next call is admitted (the fake answers it normally).
    response = await _post(raw, {"model": "est-embed-route", "input": ["again"]}, "/v1/embeddings")
    assert response.status_code == 200


async def test_a_call_never_outlives_its_hold_deadline(settings):
    """A provider that never answers within the route's derived hold: the call ends itself
    (504 gateway_timeout) before its hold could expire, billing the prompt in flight."""
    from asgiref.sync import sync_to_async

    from tests.routing.support import mock_provider

    settings.GATEWAY_HOLD_MARGIN_SECONDS = 0.2

    def build():
        provider = mock_provider("est-stuck", latency_ms=10_000)
        provider.total_timeout_s = 0.5
        provider.max_retries = 0
        provider.save()
        route("est-stuck-route", [model_on(provider, "est-stuck-model")], max_attempts=1)
        return tenant_key()

    _, _, raw = await sync_to_async(build)()
    caches_clear()
    response = await _post(raw, {"model": "est-stuck-route", "messages": HELLO})
    assert response.status_code == 504
    assert await usage_events_settled(1) == 1
    event = await UsageEvent.objects.aget()
    assert event.error_type == "gateway_timeout"
    assert event.usage_estimated and event.tokens_in > 0 and event.cost_usd > 0
