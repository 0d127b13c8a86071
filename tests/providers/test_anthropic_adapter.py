"""The Anthropic adapter over real HTTP against the fake upstream, which validates requests the
way the Messages API does (alternating roles, max_tokens, no unknown fields...)."""

from __future__ import annotations

import orjson
import pytest

from providers.types import (
    ChatRequest,
    ContextTooLong,
    EmbeddingRequest,
    EmbeddingsNotSupported,
    ProviderRateLimited,
    ProviderUnavailable,
)
from tests.fake_upstream.server import DEFAULT_REPLY
from tests.providers.support import adapter

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": {"type": "object", "properties": {"location": {"type": "string"}}},
        },
    },
    {"type": "function", "function": {"name": "get_time"}},
]


def chat(**fields) -> ChatRequest:
    fields.setdefault("model", "claude-test")
    fields.setdefault("messages", [{"role": "user", "content": "hello"}])
    fields.setdefault("max_tokens", 256)
    return ChatRequest(**fields)


async def test_chat_sends_messages_api_headers_and_returns_content(fake_upstream):
    response = await adapter(fake_upstream, "anthropic").chat(chat())

    received = fake_upstream.last_request
    assert received.path == "/v1/messages"
    assert received.headers["x-api-key"] == fake_upstream.api_key
    assert received.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in received.headers
    assert response.content == DEFAULT_REPLY
    assert response.finish_reason == "stop"
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (12, 10)
    assert response.raw is None


async def test_a_whole_conversation_converts_to_a_valid_messages_request(fake_upstream):
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "developer", "content": "Answer in French."},
        {"role": "user", "content": "Weather?"},
        {"role": "user", "content": [{"type": "text", "text": "In Paris please."}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"location": "Paris"}'},
                },
                {
                    "id": "call_2",
                    "type": "function",
                    "function": {"name": "get_time", "arguments": ""},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18C and sunny"},
        {"role": "tool", "tool_call_id": "call_2", "content": "noon"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "And this picture?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
            ],
        },
    ]
    request = chat(
        messages=messages,
        stop=["END"],
        temperature=1.5,
        top_p=0.8,
        tools=TOOLS,
        tool_choice="required",
        user="u-1",
        extra={"top_k": 5, "seed": 1, "parallel_tool_calls": False},
    )
    await adapter(fake_upstream, "anthropic").chat(request)

    body = fake_upstream.last_request.body
    assert body["system"] == "You are terse.\n\nAnswer in French."
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert body["messages"][0]["content"] == [
        {"type": "text", "text": "Weather?"},
        {"type": "text", "text": "In Paris please."},
    ]
    assert body["messages"][1]["content"] == [
        {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"location": "Paris"}},
        {"type": "tool_use", "id": "call_2", "name": "get_time", "input": {}},
    ]
    assert body["messages"][2]["content"] == [
        {"type": "tool_result", "tool_use_id": "call_1", "content": "18C and sunny"},
        {"type": "tool_result", "tool_use_id": "call_2", "content": "noon"},
        {"type": "text", "text": "And this picture?"},
        {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
        },
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]
    assert body["max_tokens"] == 256
    assert body["stop_sequences"] == ["END"]
    assert body["temperature"] == 1.0
    assert body["top_p"] == 0.8
    assert body["top_k"] == 5
    assert "seed" not in body
    assert body["metadata"] == {"user_id": "u-1"}
    assert body["tools"][0] == {
        "name": "get_weather",
        "description": "Weather in a city",
        "input_schema": {"type": "object", "properties": {"location": {"type": "string"}}},
    }
    assert body["tools"][1]["input_schema"] == {"type": "object", "properties": {}}
    assert body["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}


@pytest.mark.parametrize(
    ("tool_choice", "expected"),
    [
        ("auto", {"type": "auto"}),
        ("none", {"type": "none"}),
        ("required", {"type": "any"}),
        (
            {"type": "function", "function": {"name": "get_time"}},
            {"type": "tool", "name": "get_time"},
        ),
    ],
)
async def test_tool_choice_maps_to_anthropic(fake_upstream, tool_choice, expected):
    await adapter(fake_upstream, "anthropic").chat(chat(tools=TOOLS, tool_choice=tool_choice))

    assert fake_upstream.last_request.body["tool_choice"] == expected


async def test_max_tokens_defaults_when_the_request_has_none(fake_upstream):
    await adapter(fake_upstream, "anthropic").chat(chat(max_tokens=None))

    assert fake_upstream.last_request.body["max_tokens"] == 4096


async def test_tool_use_response_becomes_openai_tool_calls(fake_upstream):
    response = await adapter(fake_upstream, "anthropic").chat(
        chat(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_time"}})
    )

    assert response.finish_reason == "tool_calls"
    assert response.content == DEFAULT_REPLY
    (call,) = response.tool_calls
    assert call["id"] == "toolu_fake_1"
    assert call["type"] == "function"
    assert call["function"]["name"] == "get_time"
    assert orjson.loads(call["function"]["arguments"]) == fake_upstream.tool_arguments


async def test_max_tokens_stop_reason_is_length(fake_upstream):
    response = await adapter(fake_upstream, "anthropic").chat(chat(max_tokens=2))

    assert response.finish_reason == "length"
    assert response.content == "Hello from"


async def test_cache_tokens_are_reported_and_counted_in_the_prompt(fake_upstream):
    fake_upstream.cache_read_tokens = 100
    fake_upstream.cache_write_tokens = 30
    response = await adapter(fake_upstream, "anthropic").chat(chat())
    chunks = [c async for c in adapter(fake_upstream, "anthropic").stream_chat(chat())]

    for usage in (response.usage, chunks[-1].usage):
        assert usage.cache_read_tokens == 100
        assert usage.cache_write_tokens == 30
        assert usage.prompt_tokens == 12 + 100 + 30
        assert usage.completion_tokens == 10


async def test_stream_translates_events_to_openai_chunks(fake_upstream):
    chunks = [c async for c in adapter(fake_upstream, "anthropic").stream_chat(chat(stream=True))]

    assert chunks[0].role == "assistant" and chunks[0].content == ""
    assert "".join(c.content or "" for c in chunks) == DEFAULT_REPLY
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["stop"]
    last = chunks[-1]
    assert (last.content, last.role, last.finish_reason, last.tool_calls) == (None,) * 4
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (12, 10)
    assert all(c.raw is None for c in chunks)
    assert fake_upstream.last_request.body["stream"] is True


async def test_stream_tool_use_gives_index_id_and_name_on_the_first_delta(fake_upstream):
    chunks = [
        c
        async for c in adapter(fake_upstream, "anthropic").stream_chat(
            chat(stream=True, tools=TOOLS)
        )
    ]

    deltas = [call for c in chunks for call in (c.tool_calls or [])]
    assert deltas[0] == {
        "index": 0,
        "id": "toolu_fake_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    assert all(d["index"] == 0 and "id" not in d for d in deltas[1:])
    arguments = "".join(d["function"]["arguments"] for d in deltas)
    assert orjson.loads(arguments) == fake_upstream.tool_arguments
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["tool_calls"]


async def test_error_event_mid_stream_raises_the_typed_error(fake_upstream):
    anthropic = adapter(fake_upstream, "anthropic")
    received = []
    with pytest.raises(ProviderUnavailable) as caught:
        async for chunk in anthropic.stream_chat(chat(model="fault:stream_error:after=4")):
            received.append(chunk)

    assert caught.value.upstream_status == 529
    assert received and received[0].role == "assistant"


async def test_rate_limit_error_event_mid_stream_is_rate_limited(fake_upstream):
    anthropic = adapter(fake_upstream, "anthropic")
    with pytest.raises(ProviderRateLimited):
        async for _ in anthropic.stream_chat(
            chat(model="fault:stream_error:after=3,type=rate_limit_error")
        ):
            pass


async def test_prompt_too_long_is_context_too_long(fake_upstream):
    with pytest.raises(ContextTooLong):
        await adapter(fake_upstream, "anthropic").chat(chat(model="fault:context_length"))


async def test_anthropic_has_no_embeddings(fake_upstream):
    with pytest.raises(EmbeddingsNotSupported):
        await adapter(fake_upstream, "anthropic").embed(EmbeddingRequest(model="x", input=["a"]))
