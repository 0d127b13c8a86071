"""Anthropic fidelity through a live gateway with the official anthropic SDK: a Claude
Code-style request (cache_control on system, blocks and tools, thinking with a signed
thinking block in the history, server tools, top_k, tool_choice, metadata, output_config,
anthropic-beta) reaches an Anthropic upstream with every field intact, its thinking and
signatures come back (JSON and stream), and cache reads and writes are billed at their own
prices. Other kinds translate what they can and refuse the rest in Anthropic's shape."""

from __future__ import annotations

import copy
import time
from decimal import Decimal

import anthropic
import pytest

from providers.models import ProviderKind
from providers.pricing import usage_cost_usd
from tests.fake_upstream.server import FAKE_THINKING, fake_count_tokens
from tests.routing.support import (
    LIVE_ENV,
    caches_clear,
    fake_provider,
    mock_provider,
    model_on,
    route,
    tenant_key,
    usage_events_wait_sync,
)

pytestmark = pytest.mark.live_server_process

EPHEMERAL = {"type": "ephemeral"}
READ_TOOL = {
    "name": "Read",
    "description": "Read a file",
    "input_schema": {
        "type": "object",
        "properties": {"path": {"type": "string"}},
        "required": ["path"],
    },
    "cache_control": EPHEMERAL,
}
CLAUDE_CODE = {
    "max_tokens": 2048,
    "system": [
        {"type": "text", "text": "You are a coding agent."},
        {"type": "text", "text": "Project notes...", "cache_control": {**EPHEMERAL, "ttl": "1h"}},
    ],
    "messages": [
        {
            "role": "user",
            "content": [{"type": "text", "text": "Read a.py", "cache_control": EPHEMERAL}],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "I should read it.", "signature": "sig-1"},
                {"type": "redacted_thinking", "data": "opaque"},
                {"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {"path": "a.py"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_1",
                    "content": "print(1)",
                    "cache_control": EPHEMERAL,
                }
            ],
        },
    ],
    "tools": [READ_TOOL, {"type": "web_search_20250305", "name": "web_search", "max_uses": 2}],
    "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
    "thinking": {"type": "enabled", "budget_tokens": 1024},
    "metadata": {"user_id": "user-7"},
    "output_config": {"effort": "high"},
}
# Not a parameter of the SDK's typed methods any more: sent as an extra body field.
TOP_K = {"top_k": 40}
BETA = "interleaved-thinking-2025-05-14,context-1m-2025-08-07"


@pytest.fixture
def catalog(transactional_db, fake_upstream_thread):
    fake = fake_upstream_thread
    claude = model_on(
        fake_provider(fake, ProviderKind.ANTHROPIC, options={"beta": "prompt-caching-2024-07-31"}),
        "cc-claude-model",
        upstream="claude-upstream-id",
    )
    claude.cache_read_price_per_mtok = Decimal("0.100000")
    claude.cache_write_price_per_mtok = Decimal("1.250000")
    claude.save()
    route("cc-claude", [claude])
    route("cc-openai", [model_on(fake_provider(fake, ProviderKind.OPENAI), "cc-openai-model")])
    route("cc-mock", [model_on(mock_provider("cc-mock"), "cc-mock-model")])
    _, _, raw = tenant_key()
    caches_clear()
    return {"raw": raw, "fake": fake, "claude": claude}


def _client(base: str, raw: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=base, api_key=raw, max_retries=0)


def test_claude_code_request_reaches_anthropic_intact_and_is_billed_at_cache_prices(
    live_gateway, catalog
):
    fake = catalog["fake"]
    fake.prompt_tokens, fake.cache_read_tokens, fake.cache_write_tokens = 11, 3000, 500
    with live_gateway(env=LIVE_ENV) as base:
        client = _client(base, catalog["raw"])
        sent = copy.deepcopy(CLAUDE_CODE)
        with client.messages.stream(
            model="cc-claude", extra_headers={"anthropic-beta": BETA}, extra_body=TOP_K, **sent
        ) as stream:
            kinds = [event.type for event in stream]
            message = stream.get_final_message()
        assert "thinking" in [b.type for b in message.content]
        thinking = next(b for b in message.content if b.type == "thinking")
        assert thinking.signature == FAKE_THINKING["signature"]
        assert thinking.thinking == FAKE_THINKING["thinking"]
        assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
        assert message.usage.cache_read_input_tokens == 3000
        assert message.usage.cache_creation_input_tokens == 500

        answer = client.messages.create(
            model="cc-claude", extra_body=TOP_K, **copy.deepcopy(CLAUDE_CODE)
        )
        assert answer.content[0].type == "thinking"
        assert answer.content[0].signature == FAKE_THINKING["signature"]

    upstream = [r for r in fake.requests if r.path == "/v1/messages"]
    assert len(upstream) == 2
    streamed, plain = upstream
    expected = dict(CLAUDE_CODE, model="claude-upstream-id", **TOP_K)
    assert streamed.body == dict(expected, stream=True)  # every field, every block, intact
    assert plain.body == expected
    flags = streamed.headers["anthropic-beta"].split(",")
    assert flags == ["prompt-caching-2024-07-31", *BETA.split(",")]
    assert (
        "anthropic-beta" in plain.headers and "interleaved" not in plain.headers["anthropic-beta"]
    )

    # this test's events (a previous test's server may still be writing its own)
    deadline = time.monotonic() + 10
    events = []
    while len(events) < 2 and time.monotonic() < deadline:
        events = [e for e in usage_events_wait_sync(0) if e.route == "cc-claude"]
        time.sleep(0.05)
    assert len(events) == 2
    assert {e.outcome for e in events} == {"ok"}
    for event in events:
        assert (event.cache_read_tokens, event.cache_write_tokens) == (3000, 500)
        assert event.tokens_in == 11 + 3000 + 500
        expected_cost = usage_cost_usd(
            prompt_tokens=event.tokens_in,
            completion_tokens=event.tokens_out,
            cache_read_tokens=3000,
            cache_write_tokens=500,
            input_price_per_mtok=Decimal(1),
            output_price_per_mtok=Decimal(2),
            cache_read_price_per_mtok=Decimal("0.1"),
            cache_write_price_per_mtok=Decimal("1.25"),
        )
        assert event.cost_usd == expected_cost
        # cheaper than billing every prompt token at the input price
        assert expected_cost < Decimal(event.tokens_in + 2 * event.tokens_out) / 1_000_000


def test_other_kinds_translate_or_refuse_anthropic_only_fields(live_gateway, catalog):
    fake = catalog["fake"]
    with live_gateway(env=LIVE_ENV) as base:
        client = _client(base, catalog["raw"])
        with pytest.raises(anthropic.BadRequestError) as refused:
            client.messages.create(
                model="cc-openai", extra_body=TOP_K, **copy.deepcopy(CLAUDE_CODE)
            )
        assert "top_k" in str(refused.value) and refused.value.body["type"] == "error"
        before = len(fake.requests)

        request = copy.deepcopy(CLAUDE_CODE)
        request["tools"] = [READ_TOOL]
        request["messages"][1]["content"] = request["messages"][1]["content"][2:]
        answer = client.messages.create(model="cc-openai", **request)
        assert answer.type == "message"
        body = fake.requests[-1].body
        assert len(fake.requests) == before + 1
        assert body["reasoning_effort"] == "high"  # thinking / output_config.effort
        assert body["user"] == "user-7"

        structured = client.messages.create(
            model="cc-mock",
            max_tokens=256,
            messages=[{"role": "user", "content": "forecast"}],
            output_config={
                "format": {
                    "type": "json_schema",
                    "schema": {"type": "object", "properties": {"ok": {"type": "boolean"}}},
                }
            },
            extra_body={"top_k": 5},  # the mock ignores what it cannot simulate
        )
        assert structured.content[0].text.startswith('{"ok":')


def test_count_tokens_exact_for_anthropic_estimated_otherwise_and_models_in_anthropic_shape(
    live_gateway, catalog
):
    fake = catalog["fake"]
    with live_gateway(env=LIVE_ENV) as base:
        client = _client(base, catalog["raw"])
        request = {
            k: v
            for k, v in copy.deepcopy(CLAUDE_CODE).items()
            if k not in ("max_tokens", "metadata")
        }
        counted = client.messages.with_raw_response.count_tokens(model="cc-claude", **request)
        assert counted.headers["x-gateway-token-count"] == "exact"
        sent = fake.requests[-1]
        assert (
            sent.path == "/v1/messages/count_tokens" and sent.body["model"] == "claude-upstream-id"
        )
        assert counted.parse().input_tokens == fake_count_tokens(sent.body)

        estimate = client.messages.with_raw_response.count_tokens(
            model="cc-openai", messages=[{"role": "user", "content": "hello there"}]
        )
        assert estimate.headers["x-gateway-token-count"] == "estimated"
        assert estimate.parse().input_tokens > 0
        with pytest.raises(anthropic.NotFoundError):
            client.messages.count_tokens(model="nope", messages=[{"role": "user", "content": "x"}])

        page = client.models.list()
        assert {"cc-claude", "cc-openai", "cc-mock"} <= {m.id for m in page.data}
        assert all(m.type == "model" for m in page.data)
        assert client.models.retrieve("cc-claude").id == "cc-claude"
        with pytest.raises(anthropic.NotFoundError):
            client.models.retrieve("nope")
        with pytest.raises(anthropic.AuthenticationError):
            anthropic.Anthropic(base_url=base, api_key="gw-wrong", max_retries=0).models.list()
