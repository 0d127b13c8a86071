"""Hostile clients and injected faults against the money path (a reviewer's attack list):
each test pins one way a request could be billed less than the upstream bills us, or leave
other than exactly one usage event."""

from __future__ import annotations

import pytest
from django.test import AsyncClient

from providers.models import ProviderKind
from providers.tokens import count_text_tokens
from tests.routing.support import caches_clear, fake_provider, model_on, route, tenant_key
from tests.usage_helpers import usage_events_settled
from usage.models import UsageEvent

pytestmark = pytest.mark.django_db(transaction=True)

HELLO = [{"role": "user", "content": "hello there, how are you today?"}]


@pytest.fixture
def catalog(fake_upstream):
    anthropic = fake_provider(fake_upstream, ProviderKind.ANTHROPIC, name="atk-anthropic")
    route("atk-anthropic", [model_on(anthropic, "atk-anthropic-model")])
    openai = fake_provider(fake_upstream, ProviderKind.OPENAI, name="atk-openai")
    route("atk-openai", [model_on(openai, "atk-openai-model")])
    _, _, raw = tenant_key()
    caches_clear()
    return {"raw": raw, "fake": fake_upstream}


async def _post(raw: str, body: dict, path: str = "/v1/chat/completions", **headers: str):
    return await AsyncClient().post(
        path,
        body,
        content_type="application/json",
        headers={"Authorization": f"Bearer {raw}", **headers},
    )


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"messages": HELLO, "n": 3}),
        ("/v1/completions", {"prompt": ["first prompt", "second", "third one here"]}),
    ],
    ids=["chat-n3", "completions-prompt-list"],
)
async def test_a_fan_out_without_usage_bills_every_choice_output(catalog, path, body):
    """n > 1 (or a prompt list) served by fan-out, upstream answers carrying no usage: each
    choice's output is estimated, not only the last answer's."""
    catalog["fake"].script("no_usage", "no_usage", "no_usage")
    response = await _post(
        catalog["raw"], {"model": "atk-anthropic", "max_tokens": 40, **body}, path
    )
    assert response.status_code == 200, response.content
    choices = response.json()["choices"]
    assert len(choices) == 3
    texts = [c.get("text") or (c.get("message") or {}).get("content") or "" for c in choices]
    answered = sum(count_text_tokens(t) for t in texts)
    assert answered > 0
    assert await usage_events_settled(1) == 1
    event = await UsageEvent.objects.aget()
    assert event.outcome == "ok" and event.usage_estimated is True
    assert event.tokens_out >= answered
    assert response.json()["usage"]["completion_tokens"] == event.tokens_out


async def test_a_native_n_answer_without_usage_bills_every_choice_output(catalog):
    """n > 1 answered natively (one OpenAI-kind upstream call) without usage: the estimate
    counts every choice's text, not only the first one's."""
    catalog["fake"].script("no_usage")
    response = await _post(
        catalog["raw"], {"model": "atk-openai", "max_tokens": 40, "messages": HELLO, "n": 3}
    )
    assert response.status_code == 200, response.content
    choices = response.json()["choices"]
    assert len(choices) == 3
    answered = sum(count_text_tokens(c["message"]["content"] or "") for c in choices)
    assert await usage_events_settled(1) == 1
    event = await UsageEvent.objects.aget()
    assert event.usage_estimated is True
    assert event.tokens_out >= answered > 0

