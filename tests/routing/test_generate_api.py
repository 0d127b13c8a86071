"""POST /api/v1/generate: prompt in, text out, through the same path as chat."""

from __future__ import annotations

import orjson
import pytest
from django.test import AsyncClient

from tests.routing.support import (
    caches_clear,
    mock_provider,
    model_on,
    route,
    tenant_key,
    usage_events_wait,
)

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def auth(settings):
    settings.GATEWAY_USAGE_WRITE_MODE = "direct"
    route("gen-chat", [model_on(mock_provider("mock-gen"), "gen-model")])
    _, _, raw = tenant_key()
    caches_clear()
    return {"Authorization": f"Bearer {raw}"}


async def _post(body, headers):
    return await AsyncClient().post(
        "/api/v1/generate",
        data=orjson.dumps(body),
        content_type="application/json",
        headers=headers,
    )


async def test_generate_answers_text_finish_reason_and_usage(auth):
    response = await _post({"model": "gen-chat", "prompt": "hello", "max_tokens": 4}, auth)
    assert response.status_code == 200, response.content
    body = orjson.loads(response.content)
    assert set(body) == {"id", "model", "text", "finish_reason", "usage"}
    assert body["id"].startswith("gen-")
    assert body["model"] == "gen-chat"
    assert len(body["text"].split()) == 4
    assert body["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 4
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + 4
    assert response["x-gateway-model"] == "gen-model"
    [event] = await usage_events_wait(1)
    assert (event.endpoint, event.outcome, event.tokens_out) == ("generate", "ok", 4)


@pytest.mark.parametrize(
    ("body", "headers", "status", "code"),
    [
        ({"model": "gen-chat", "prompt": "x"}, {}, 401, "missing_api_key"),
        ({"model": "gen-chat"}, None, 400, "invalid_value"),
        ({"model": "gen-chat", "prompt": "x", "max_tokens": 0}, None, 400, "invalid_value"),
        ({"model": "nope", "prompt": "x"}, None, 404, "model_not_found"),
    ],
    ids=["no-key", "no-prompt", "bad-max-tokens", "unknown-model"],
)
async def test_generate_errors_use_openai_shape(auth, body, headers, status, code):
    response = await _post(body, auth if headers is None else headers)
    assert response.status_code == status
    error = orjson.loads(response.content)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code
