"""Fields that change the upstream price are refused with a clear 400 (and one `rejected`
usage event) instead of being forwarded and charged at the flat catalog price."""

from __future__ import annotations

import pytest
from django.test import AsyncClient

from tests.factories import (
    ModelFactory,
    ProviderFactory,
    TenantFactory,
    api_key_create_for_test,
    route_create,
)
from tests.usage_helpers import usage_events_settled
from usage.models import UsageEvent

pytestmark = pytest.mark.django_db(transaction=True)

CHAT = {"model": "pp-chat", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def raw():
    from routing.snapshot import snapshot_invalidate
    from tenants.selectors import policy_cache_clear

    provider = ProviderFactory(name="mock-pp")
    route_create(name="pp-chat", models=[ModelFactory(name="pp-model", provider=provider)])
    _, raw = api_key_create_for_test(tenant=TenantFactory())
    snapshot_invalidate()
    policy_cache_clear()
    return raw


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"service_tier": "priority"}, "service_tier"),
        ({"service_tier": "auto"}, "service_tier"),
        ({"web_search_options": {}}, "web_search_options"),
        ({"modalities": ["text", "audio"], "audio": {"voice": "alloy"}}, "audio"),
        ({"tools": [{"type": "web_search_preview"}]}, "tools[0].type"),
    ],
)
async def test_price_changing_fields_are_refused_with_a_400_and_one_event(raw, fields, param):
    response = await AsyncClient().post(
        "/v1/chat/completions",
        {**CHAT, **fields},
        content_type="application/json",
        headers={"Authorization": f"Bearer {raw}"},
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "unsupported_parameter" and error["param"] == param
    assert await usage_events_settled(1) == 1
    event = await UsageEvent.objects.aget()
    assert event.outcome == "rejected" and event.cost_usd == 0


async def test_the_standard_tier_and_function_tools_pass(raw):
    response = await AsyncClient().post(
        "/v1/chat/completions",
        {
            **CHAT,
            "service_tier": "default",
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
        },
        content_type="application/json",
        headers={"Authorization": f"Bearer {raw}"},
    )
    assert response.status_code == 200


async def test_messages_api_refuses_provider_hosted_tools_in_anthropic_shape(raw):
    response = await AsyncClient().post(
        "/v1/messages",
        {
            **CHAT,
            "max_tokens": 10,
            "tools": [{"type": "web_search_20250305", "name": "web_search"}],
        },
        content_type="application/json",
        headers={"x-api-key": raw, "anthropic-version": "2023-06-01"},
    )
    assert response.status_code == 400
    assert response.json()["type"] == "error"
