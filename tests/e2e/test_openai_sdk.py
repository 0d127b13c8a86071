"""The official openai SDK against a live gateway process (uvicorn, real HTTP on loopback)."""

from __future__ import annotations

import openai
import pytest

from tests.factories import ModelFactory, ProviderFactory, TenantFactory, api_key_create_for_test, route_create

pytestmark = pytest.mark.live_server_process


@pytest.fixture
def demo_catalog(transactional_db):
    provider = ProviderFactory(name="mock-e2e")
    small = ModelFactory(name="e2e-small", provider=provider)
    route_create(name="e2e-chat", models=[small])
    tenant = TenantFactory()
    key, raw = api_key_create_for_test(tenant=tenant)
    return {"tenant": tenant, "key": key, "raw": raw}


def test_openai_sdk_completes_and_streams_a_chat(live_gateway, demo_catalog):
    with live_gateway() as base:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key=demo_catalog["raw"], max_retries=0)
        completion = client.chat.completions.create(
            model="e2e-chat", messages=[{"role": "user", "content": "hello"}]
        )
        assert completion.choices[0].message.content
        assert completion.usage.total_tokens > 0

        stream = client.chat.completions.create(
            model="e2e-chat",
            messages=[{"role": "user", "content": "hello"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == completion.choices[0].message.content
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_openai_sdk_raises_authentication_error_for_unknown_key(live_gateway, demo_catalog):
    with live_gateway() as base:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="gw-not-a-key", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            client.chat.completions.create(
                model="e2e-chat", messages=[{"role": "user", "content": "hello"}]
            )
