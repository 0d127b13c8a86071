"""Reservations are an upper bound: no request's real usage (the mock's tiktoken count)
exceeds what admission took, whatever the client sends (CJK, emoji, digits, tools, images,
token arrays), and a prompt too large for a TPM limit is refused however it is written."""

from __future__ import annotations

from decimal import Decimal

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

TPM = 1_000_000


@pytest.fixture
def catalog():
    from routing.snapshot import snapshot_invalidate
    from tenants.selectors import policy_cache_clear

    provider = ProviderFactory(name="mock-resv")
    model = ModelFactory(
        name="resv-small",
        provider=provider,
        context_window=200_000,
        input_price_per_mtok=Decimal("1.000000"),
        output_price_per_mtok=Decimal("2.000000"),
        supports_embeddings=True,
        supports_vision=True,
    )
    route_create(name="resv-chat", models=[model])
    tenant = TenantFactory()
    _, raw = api_key_create_for_test(tenant=tenant, tpm_limit=TPM)
    _, tight_raw = api_key_create_for_test(tenant=tenant, tpm_limit=2_000)
    snapshot_invalidate()
    policy_cache_clear()
    return {"raw": raw, "tight_raw": tight_raw}


async def _chat(raw: str, body: dict):
    return await AsyncClient().post(
        "/v1/chat/completions",
        {"model": "resv-chat", "max_tokens": 20, **body},
        content_type="application/json",
        headers={"Authorization": f"Bearer {raw}"},
    )


HOSTILE = {
    "cjk": [{"role": "user", "content": "漢字仮名交じり文と한국어 문장과 中文句子。" * 120}],
    "emoji": [{"role": "user", "content": "🦄🧑‍🚀👩🏽‍🔬🏳️‍🌈🤌🏿" * 150}],
    "digits": [{"role": "user", "content": "".join(str(i) for i in range(2_000))}],
    "tool_calls": [
        {"role": "user", "content": "go"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "f", "arguments": '{"q": "' + "東京" * 400 + '"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "🧾" * 300},
    ],
    "image": [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "describe 画像 " * 50},
                {"type": "image_url", "image_url": {"url": "https://example.com/x.png"}},
            ],
        }
    ],
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
async def test_real_usage_never_exceeds_the_reservation(catalog, name):
    tools = None
    if name == "tool_calls":
        tools = [
            {
                "type": "function",
                "function": {"name": "f", "description": "検索 " * 100, "parameters": {}},
            }
        ]
    body = {"messages": HOSTILE[name], **({"tools": tools} if tools else {})}
    response = await _chat(catalog["raw"], body)
    assert response.status_code == 200, response.content
    reserved_tokens = TPM - int(response["x-ratelimit-remaining-tokens"])
    assert await usage_events_settled(1) == 1
    event = await UsageEvent.objects.aget()
    assert event.tokens_in + event.tokens_out <= reserved_tokens, (name, event.tokens_in)
    assert not event.usage_estimated


async def test_a_cjk_prompt_over_the_tpm_limit_is_refused_as_too_large(catalog):
    # ~6,000 real tokens in ~2,000 characters: characters/3 would have let it through.
    text = "漢字仮名交じり文と한국어 문장과 中文句子。" * 100
    response = await _chat(catalog["tight_raw"], {"messages": [{"role": "user", "content": text}]})
    assert response.status_code == 429
    assert "too large" in response.json()["error"]["message"]


async def test_embedding_token_arrays_are_reserved_by_their_length(catalog):
    response = await AsyncClient().post(
        "/v1/embeddings",
        {"model": "resv-chat", "input": [list(range(3_000))]},
        content_type="application/json",
        headers={"Authorization": f"Bearer {catalog['tight_raw']}"},
    )
    assert response.status_code == 429
    assert "too large" in response.json()["error"]["message"]
