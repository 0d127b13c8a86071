"""The official openai SDK against a live gateway process (uvicorn, real HTTP on loopback),
with a key issued by the operator command, exactly as an operator would hand it out."""

from __future__ import annotations

import io
import time

import openai
import pytest
from django.core.management import call_command

from tests.factories import ModelFactory, ProviderFactory, TenantFactory, route_create

pytestmark = pytest.mark.live_server_process


@pytest.fixture
def issued_key(transactional_db) -> str:
    provider = ProviderFactory(name="mock-e2e")
    small = ModelFactory(name="e2e-small", provider=provider)
    route_create(name="e2e-chat", models=[small])
    tenant = TenantFactory(slug="e2e")
    out = io.StringIO()
    call_command("create_api_key", "--tenant", tenant.slug, "--name", "sdk", stdout=out)
    return out.getvalue().strip().splitlines()[-1]


def test_openai_sdk_completes_and_streams_a_chat(live_gateway, issued_key):
    with live_gateway() as base:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key=issued_key, max_retries=0)
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

        models = client.models.list()
        assert {"e2e-chat", "e2e-small"} <= {m.id for m in models.data}


def test_openai_sdk_raises_authentication_error_for_a_revoked_key(live_gateway, issued_key):
    with live_gateway() as base:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key=issued_key, max_retries=0)
        client.chat.completions.create(
            model="e2e-chat", messages=[{"role": "user", "content": "hello"}]
        )
        call_command("revoke_api_key", issued_key, stdout=io.StringIO())
        revoked_at = time.monotonic()
        # Revocation reaches the server process within a second (at once with Redis, through
        # the shared config version; by the policy cache's TTL in the embedded mode).
        with pytest.raises(openai.AuthenticationError):
            while time.monotonic() - revoked_at < 1.0:
                client.chat.completions.create(
                    model="e2e-chat", messages=[{"role": "user", "content": "hello"}]
                )


def test_openai_sdk_raises_authentication_error_for_an_unknown_key(live_gateway, issued_key):
    with live_gateway() as base:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="gw-not-a-key", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            client.chat.completions.create(
                model="e2e-chat", messages=[{"role": "user", "content": "hello"}]
            )
