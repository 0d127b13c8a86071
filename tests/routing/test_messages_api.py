"""POST /v1/messages in-process: Anthropic's shapes in and out (JSON, the SSE event sequence,
errors), over the same routes, limits and usage path as chat completions."""

from __future__ import annotations

import orjson
import pytest
from django.test import AsyncClient

from providers.models import ProviderKind
from tests.routing.support import (
    caches_clear,
    fake_provider,
    mock_provider,
    model_on,
    route,
    tenant_key,
    usage_events_wait,
)

pytestmark = pytest.mark.django_db(transaction=True)

ANTHROPIC_ERROR_TYPES = {
    "invalid_request_error",
    "authentication_error",
    "billing_error",
    "permission_error",
    "not_found_error",
    "request_too_large",
    "rate_limit_error",
    "api_error",
    "timeout_error",
    "overloaded_error",
}


@pytest.fixture
def catalog(settings):
    settings.GATEWAY_USAGE_WRITE_MODE = "direct"
    provider = mock_provider()
    small = model_on(provider, "msg-small")
    other = model_on(provider, "msg-other")
    route("msg-chat", [small])
    tenant_id, key_id, raw = tenant_key()
    _, _, limited = tenant_key(allowed_models=["msg-other"])
    caches_clear()
    return {"raw": raw, "limited": limited, "other": other, "tenant_id": tenant_id}


@pytest.fixture
def fake_catalog(settings, fake_upstream):
    """Routes on the fake upstream: one per provider kind (`msg-<kind>`)."""
    settings.GATEWAY_USAGE_WRITE_MODE = "direct"
    for kind in (ProviderKind.OPENAI, ProviderKind.ANTHROPIC):
        provider = fake_provider(fake_upstream, kind)
        route(f"msg-{kind}", [model_on(provider, f"msg-{kind}-model")])
    _, _, raw = tenant_key()
    caches_clear()
    return {"raw": raw, "fake": fake_upstream}


def _headers(raw: str, *, bearer: bool = False) -> dict[str, str]:
    if bearer:
        return {"Authorization": f"Bearer {raw}"}
    return {"x-api-key": raw, "anthropic-version": "2023-06-01"}


def _body(**fields) -> dict:
    return {
        "model": "msg-chat",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "hello"}],
        **fields,
    }


async def _post(body, headers) -> object:
    return await AsyncClient().post(
        "/v1/messages",
        data=body if isinstance(body, bytes) else orjson.dumps(body),
        content_type="application/json",
        headers=headers,
    )


def _assert_anthropic_error(response, status: int, error_type: str) -> dict:
    assert response.status_code == status, response.content
    body = orjson.loads(response.content)
    assert set(body) == {"type", "error"}
    assert body["type"] == "error"
    assert set(body["error"]) == {"type", "message"}
    assert body["error"]["type"] == error_type
    assert body["error"]["type"] in ANTHROPIC_ERROR_TYPES
    assert "Traceback" not in response.content.decode()
    return body


def _sse_events(raw: bytes) -> list[tuple[str, dict]]:
    events = []
    for block in raw.decode().split("\n\n"):
        name, data = None, None
        for line in block.splitlines():
            if line.startswith("event: "):
                name = line[len("event: ") :]
            elif line.startswith("data: "):
                data = orjson.loads(line[len("data: ") :])
        if name is not None:
            events.append((name, data))
    return events


async def test_message_answers_an_anthropic_message_with_usage_and_headers(catalog):
    response = await _post(_body(system="Be brief."), _headers(catalog["raw"]))
    assert response.status_code == 200, response.content
    body = orjson.loads(response.content)
    assert body["type"] == "message"
    assert body["role"] == "assistant"
    assert body["id"].startswith("msg_")
    assert body["model"] == "msg-chat"
    assert body["content"][0]["type"] == "text" and body["content"][0]["text"]
    assert body["stop_reason"] == "end_turn"
    assert body["stop_sequence"] is None
    assert body["usage"]["input_tokens"] > 0
    assert body["usage"]["output_tokens"] > 0
    assert body["usage"]["cache_read_input_tokens"] == 0
    assert response["request-id"] == response["x-request-id"]
    assert response["x-gateway-model"] == "msg-small"
    assert response["x-gateway-fallbacks"] == "0"
    [event] = await usage_events_wait(1)
    assert event.endpoint == "messages"
    assert event.outcome == "ok"
    assert event.tokens_out == body["usage"]["output_tokens"]
    assert event.request_id == response["x-request-id"]


async def test_message_accepts_bearer_authorization_too(catalog):
    response = await _post(_body(), _headers(catalog["raw"], bearer=True))
    assert response.status_code == 200, response.content


async def test_message_max_tokens_stops_with_max_tokens_reason(catalog):
    response = await _post(_body(max_tokens=3), _headers(catalog["raw"]))
    body = orjson.loads(response.content)
    assert body["stop_reason"] == "max_tokens"
    assert body["usage"]["output_tokens"] == 3


async def test_message_stream_emits_the_anthropic_event_sequence(catalog):
    plain = orjson.loads((await _post(_body(), _headers(catalog["raw"]))).content)
    response = await _post(_body(stream=True), _headers(catalog["raw"]))
    assert response.status_code == 200
    assert response["content-type"].startswith("text/event-stream")
    raw = b"".join([part async for part in response.streaming_content])
    events = _sse_events(raw)
    names = [name for name, _ in events]
    assert names[0] == "message_start"
    assert names[1] == "content_block_start"
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(names[2:-3]) == {"content_block_delta"}
    start = events[0][1]["message"]
    assert start["role"] == "assistant" and start["content"] == [] and start["stop_reason"] is None
    text = "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta")
    assert text == plain["content"][0]["text"]
    delta = events[-2][1]
    assert delta["delta"]["stop_reason"] == "end_turn"
    assert delta["usage"]["output_tokens"] == plain["usage"]["output_tokens"]
    events_stored = await usage_events_wait(2)
    assert [e.outcome for e in events_stored] == ["ok", "ok"]
    assert events_stored[1].stream is True


@pytest.mark.parametrize(
    ("body", "headers_kind", "status", "error_type"),
    [
        (_body(), "none", 401, "authentication_error"),
        (_body(), "wrong", 401, "authentication_error"),
        (
            {"model": "msg-chat", "messages": [{"role": "user", "content": "x"}]},
            "ok",
            400,
            "invalid_request_error",
        ),
        (_body(messages=[]), "ok", 400, "invalid_request_error"),
        (_body(messages=[{"role": "system", "content": "x"}]), "ok", 400, "invalid_request_error"),
        (b"{not json", "ok", 400, "invalid_request_error"),
        (_body(model="no-such-model"), "ok", 404, "not_found_error"),
        (_body(model="msg-small"), "limited", 403, "permission_error"),
        (
            _body(tools=[{"type": "web_search_20250305", "name": "web_search"}]),
            "ok",
            400,
            "invalid_request_error",
        ),
    ],
    ids=[
        "no-key",
        "bad-key",
        "no-max-tokens",
        "no-messages",
        "bad-role",
        "bad-json",
        "unknown-model",
        "model-not-allowed",
        "server-tool",
    ],
)
async def test_message_refusals_use_anthropic_error_shape_and_known_keys_leave_one_event(
    catalog, body, headers_kind, status, error_type
):
    headers = {
        "none": {},
        "wrong": _headers("gw-not-a-key"),
        "ok": _headers(catalog["raw"]),
        "limited": _headers(catalog["limited"]),
    }[headers_kind]
    response = await _post(body, headers)
    _assert_anthropic_error(response, status, error_type)
    if headers_kind in ("none", "wrong"):
        # Without a known key nothing is written (metrics and logs only).
        assert await usage_events_wait(0) == []
        return
    [event] = await usage_events_wait(1)
    assert event.outcome == "rejected"
    assert event.status_code == status
    assert event.endpoint == "messages"


async def test_message_upstream_failure_maps_to_anthropic_error_without_secrets(fake_catalog):
    fake_upstream, raw = fake_catalog["fake"], fake_catalog["raw"]
    fake_upstream.script("500")
    response = await _post(_body(model="msg-openai"), _headers(raw))
    body = _assert_anthropic_error(response, 502, "api_error")
    assert "sk-fake" not in response.content.decode()
    assert body["error"]["message"]
    fake_upstream.script("429:retry_after=30")
    response = await _post(_body(model="msg-openai"), _headers(raw))
    _assert_anthropic_error(response, 429, "rate_limit_error")
    assert response["retry-after"] == "30"
    events = await usage_events_wait(2)
    assert [(e.outcome, e.status_code) for e in events] == [("error", 502), ("error", 429)]


async def test_message_stream_failing_before_first_byte_gets_a_real_status(fake_catalog):
    fake_upstream, raw = fake_catalog["fake"], fake_catalog["raw"]
    fake_upstream.script("503")
    response = await _post(_body(model="msg-openai", stream=True), _headers(raw))
    _assert_anthropic_error(response, 502, "api_error")
    [event] = await usage_events_wait(1)
    assert event.outcome == "error"


@pytest.mark.parametrize("kind", [ProviderKind.OPENAI, ProviderKind.ANTHROPIC])
async def test_message_tool_use_round_trip_through_fake_upstream(fake_catalog, kind):
    fake_upstream, raw = fake_catalog["fake"], fake_catalog["raw"]
    tool = {
        "name": "get_weather",
        "description": "Weather of a city",
        "input_schema": {"type": "object", "properties": {"location": {"type": "string"}}},
    }
    body = _body(
        model=f"msg-{kind}", tools=[tool], tool_choice={"type": "tool", "name": "get_weather"}
    )
    response = await _post(body, _headers(raw))
    assert response.status_code == 200, response.content
    message = orjson.loads(response.content)
    [block] = [b for b in message["content"] if b["type"] == "tool_use"]
    assert block["name"] == "get_weather"
    assert block["input"] == fake_upstream.tool_arguments
    assert message["stop_reason"] == "tool_use"

    # The tool result goes back as Anthropic blocks; upstream sees OpenAI's (or Anthropic's) shape.
    follow_up = _body(
        model=f"msg-{kind}",
        tools=[tool],
        tool_choice={"type": "none"},
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": [block]},
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": block["id"], "content": "18C sunny"}
                ],
            },
        ],
    )
    response = await _post(follow_up, _headers(raw))
    assert response.status_code == 200, response.content
    assert orjson.loads(response.content)["content"][0]["type"] == "text"
    sent = fake_upstream.last_request.body
    if kind == ProviderKind.OPENAI:
        assert sent["messages"][1]["tool_calls"][0]["id"] == block["id"]
        assert sent["messages"][2] == {
            "role": "tool",
            "tool_call_id": block["id"],
            "content": "18C sunny",
        }
    else:
        blocks = sent["messages"][-1]["content"]
        assert blocks[0]["type"] == "tool_result" and blocks[0]["tool_use_id"] == block["id"]

    stream = await _post({**body, "stream": True}, _headers(raw))
    events = _sse_events(b"".join([p async for p in stream.streaming_content]))
    starts = [d["content_block"] for n, d in events if n == "content_block_start"]
    assert starts[-1]["type"] == "tool_use" and starts[-1]["name"] == "get_weather"
    partial = "".join(
        d["delta"]["partial_json"]
        for n, d in events
        if n == "content_block_delta" and d["delta"]["type"] == "input_json_delta"
    )
    assert orjson.loads(partial) == fake_upstream.tool_arguments
    assert [d for n, d in events if n == "message_delta"][0]["delta"]["stop_reason"] == "tool_use"
    assert len(await usage_events_wait(3)) == 3
