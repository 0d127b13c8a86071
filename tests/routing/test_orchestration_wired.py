"""The orchestration parts wired into real requests, over real HTTP against the fake upstream
through the endpoints: capabilities honoured per step, auth refusals never retried, a chain's
attempt and wait caps, the route's default message, and the x-gateway-strategy/attempts
headers on every answer."""

from __future__ import annotations

import orjson
import pytest
from django.test import AsyncClient

from providers.models import ProviderKind
from tests.routing.support import (
    caches_clear,
    fake_provider,
    model_on,
    route,
    tenant_key,
    usage_events_wait,
)


@pytest.fixture
def env(transactional_db, settings, fake_upstream):
    settings.GATEWAY_USAGE_WRITE_MODE = "direct"
    _, _, raw = tenant_key()
    return {"auth": {"Authorization": f"Bearer {raw}"}, "fake": fake_upstream}


async def _post(path: str, body: dict, auth: dict[str, str]):
    return await AsyncClient().post(
        path, data=orjson.dumps(body), content_type="application/json", headers=auth
    )


def _chat(model: str, **fields) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **fields}


# -- 1. capabilities ------------------------------------------------------------------------------
@pytest.fixture
def capable(env):
    fake = env["fake"]
    plain = fake_provider(fake, ProviderKind.OPENAI, name="cap-plain")
    rich = fake_provider(fake, ProviderKind.OPENAI, name="cap-rich")
    bare = model_on(
        plain, "cap-bare", supports_tools=False, supports_json_mode=False, supports_embeddings=False
    )
    full = model_on(rich, "cap-full", supports_vision=True, supports_embeddings=True)
    route("cap-chain", [bare, full])
    route("cap-bare-only", [model_on(plain, "cap-bare-2", upstream="cap-bare", **_NOTHING)])
    caches_clear()
    return env


_NOTHING = {"supports_tools": False, "supports_json_mode": False, "supports_embeddings": False}
TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
IMAGE = [
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "what is this"},
            {"type": "image_url", "image_url": {"url": "https://example.com/x.png"}},
        ],
    }
]


async def test_embeddings_skip_steps_that_do_not_declare_them(capable):
    fake = capable["fake"]
    response = await _post(
        "/v1/embeddings", {"model": "cap-chain", "input": ["a"]}, capable["auth"]
    )
    assert response.status_code == 200, response.content
    assert response["x-gateway-model"] == "cap-full"
    assert response["x-gateway-fallbacks"] == "0"
    assert [r.body["model"] for r in fake.requests] == ["cap-full"]


@pytest.mark.parametrize(
    ("fields", "needed"),
    [
        ({"tools": TOOLS}, "tools"),
        ({"response_format": {"type": "json_object"}}, "json_mode"),
        ({"messages": IMAGE}, "vision"),
    ],
)
async def test_chat_needing_a_capability_goes_only_to_models_declaring_it(capable, fields, needed):
    fake = capable["fake"]
    response = await _post("/v1/chat/completions", _chat("cap-chain", **fields), capable["auth"])
    assert response.status_code == 200, response.content
    assert response["x-gateway-model"] == "cap-full"
    assert [r.body["model"] for r in fake.requests] == ["cap-full"]


async def test_a_plain_chat_still_starts_with_the_first_step(capable):
    response = await _post("/v1/chat/completions", _chat("cap-chain"), capable["auth"])
    assert response.status_code == 200
    assert response["x-gateway-model"] == "cap-bare"


@pytest.mark.parametrize(
    ("path", "body", "needed"),
    [
        ("/v1/embeddings", {"model": "cap-bare-only", "input": ["a"]}, "embeddings"),
        ("/v1/chat/completions", _chat("cap-bare-only", tools=TOOLS), "tools"),
        ("/v1/chat/completions", _chat("cap-bare-only", messages=IMAGE), "vision"),
        (
            "/v1/chat/completions",
            _chat("cap-bare-only", response_format={"type": "json_schema", "json_schema": {}}),
            "json_mode",
        ),
    ],
)
async def test_no_capable_step_is_a_400_without_an_upstream_call(capable, path, body, needed):
    fake = capable["fake"]
    response = await _post(path, body, capable["auth"])
    assert response.status_code == 400
    error = orjson.loads(response.content)["error"]
    assert error["code"] == "model_capability_missing"
    assert needed in error["message"] and "cap-bare-2" in error["message"]
    assert fake.requests == []
    [event] = await usage_events_wait(1)
    assert (event.outcome, event.status_code, event.error_type) == (
        "rejected",
        400,
        "model_capability_missing",
    )
    assert event.cost_usd == 0
