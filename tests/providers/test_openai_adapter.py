"""The OpenAI adapter (and the OpenAI-compatible one) over real HTTP against the fake upstream."""

from __future__ import annotations

import orjson
import pytest

from providers.adapters.base import adapter_class_for, registered_kinds
from providers.types import ChatRequest, EmbeddingRequest
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
    }
]


def chat(**fields) -> ChatRequest:
    fields.setdefault("model", "gpt-test")
    fields.setdefault("messages", [{"role": "user", "content": "hello"}])
    return ChatRequest(**fields)


def test_every_provider_kind_is_registered():
    assert {"openai", "openai_compatible", "azure_openai", "anthropic", "mock"} <= set(
        registered_kinds()
    )
    assert adapter_class_for("openai_compatible").__mro__[1] is adapter_class_for("openai")


async def test_chat_returns_content_usage_and_the_upstream_body_as_raw(fake_upstream):
    response = await adapter(fake_upstream, "openai").chat(chat(max_tokens=50))

    assert response.content == DEFAULT_REPLY
    assert response.finish_reason == "stop"
    assert response.usage.prompt_tokens == 12
    assert response.usage.completion_tokens == len(DEFAULT_REPLY.split(" "))
    assert response.raw is not None and response.raw["id"] == response.id
    assert response.raw["choices"][0]["message"]["content"] == DEFAULT_REPLY


async def test_chat_sends_bearer_secret_and_the_request_fields(fake_upstream):
    request = chat(
        max_tokens=7,
        temperature=0.2,
        top_p=0.9,
        stop=["\n\n"],
        user="end-user-1",
        extra={"seed": 42, "response_format": {"type": "json_object"}, "n": 1},
    )
    await adapter(fake_upstream, "openai").chat(request)

    received = fake_upstream.last_request
    assert received.headers["authorization"] == "Bearer " + fake_upstream.api_key
    assert received.path == "/v1/chat/completions"
    assert received.body == {
        "model": "gpt-test",
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": 7,
        "temperature": 0.2,
        "top_p": 0.9,
        "stop": ["\n\n"],
        "user": "end-user-1",
        "seed": 42,
        "response_format": {"type": "json_object"},
        "n": 1,
    }


async def test_max_tokens_goes_out_as_max_completion_tokens_when_the_option_says_so(
    fake_upstream,
):
    openai = adapter(fake_upstream, "openai", options={"max_tokens_param": "max_completion_tokens"})
    response = await openai.chat(chat(max_tokens=3))

    assert fake_upstream.last_request.body["max_completion_tokens"] == 3
    assert "max_tokens" not in fake_upstream.last_request.body
    assert response.finish_reason == "length"
    assert response.usage.completion_tokens == 3


async def test_stream_yields_raw_payloads_and_a_usage_only_last_chunk(fake_upstream):
    chunks = [c async for c in adapter(fake_upstream, "openai").stream_chat(chat(stream=True))]

    assert chunks[0].role == "assistant"
    assert "".join(c.content or "" for c in chunks) == DEFAULT_REPLY
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["stop"]
    last = chunks[-1]
    assert last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (12, 10)
    assert (last.content, last.role, last.finish_reason, last.tool_calls) == (None,) * 4
    # Every chunk carries the upstream payload bytes, to be forwarded verbatim.
    for chunk in chunks:
        assert chunk.raw is not None
        assert orjson.loads(chunk.raw)["object"] == "chat.completion.chunk"
    assert orjson.loads(last.raw)["usage"]["total_tokens"] == 22


async def test_stream_always_asks_the_upstream_for_usage(fake_upstream):
    request = chat(stream=True, extra={"stream_options": {"include_usage": False}})
    chunks = [c async for c in adapter(fake_upstream, "openai").stream_chat(request)]

    body = fake_upstream.last_request.body
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert chunks[-1].usage is not None


async def test_chat_with_tools_returns_tool_calls(fake_upstream):
    response = await adapter(fake_upstream, "openai").chat(chat(tools=TOOLS, tool_choice="auto"))

    assert response.finish_reason == "tool_calls"
    assert response.content is None
    (call,) = response.tool_calls
    assert call["function"]["name"] == "get_weather"
    assert orjson.loads(call["function"]["arguments"]) == fake_upstream.tool_arguments
    assert fake_upstream.last_request.body["tools"] == TOOLS


async def test_stream_with_tools_yields_tool_call_deltas(fake_upstream):
    chunks = [
        c
        async for c in adapter(fake_upstream, "openai").stream_chat(chat(stream=True, tools=TOOLS))
    ]

    deltas = [call for c in chunks for call in (c.tool_calls or [])]
    assert deltas[0]["id"] == "call_fake_1"
    assert deltas[0]["function"]["name"] == "get_weather"
    arguments = "".join(d["function"].get("arguments", "") for d in deltas)
    assert orjson.loads(arguments) == fake_upstream.tool_arguments
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["tool_calls"]


async def test_cached_prompt_tokens_are_reported_as_cache_reads(fake_upstream):
    fake_upstream.cached_tokens = 8
    response = await adapter(fake_upstream, "openai").chat(chat())
    chunks = [c async for c in adapter(fake_upstream, "openai").stream_chat(chat(stream=True))]

    assert response.usage.cache_read_tokens == 8
    assert chunks[-1].usage.cache_read_tokens == 8
    assert chunks[-1].usage.prompt_tokens == 12


async def test_embeddings_come_back_in_input_order_with_usage(fake_upstream):
    openai = adapter(fake_upstream, "openai")
    response = await openai.embed(
        EmbeddingRequest(model="text-embedding-test", input=["one", "two words", "three"])
    )
    single = await openai.embed(EmbeddingRequest(model="text-embedding-test", input=["two words"]))

    assert len(response.data) == 3
    assert response.data[1] == single.data[0]
    assert len(response.data[0]) == fake_upstream.embedding_dims
    assert response.usage.prompt_tokens == 4
    assert fake_upstream.last_request.path == "/v1/embeddings"
    assert response.raw is not None


async def test_embeddings_forward_extra_fields(fake_upstream):
    response = await adapter(fake_upstream, "openai").embed(
        EmbeddingRequest(model="emb", input=["x"], extra={"encoding_format": "base64"})
    )

    assert fake_upstream.last_request.body["encoding_format"] == "base64"
    assert isinstance(response.data[0], str)


async def test_compatible_provider_without_a_key_sends_no_authorization(fake_upstream):
    fake_upstream.api_key = None
    compatible = adapter(fake_upstream, "openai_compatible", secret="")
    response = await compatible.chat(chat())

    assert response.content == DEFAULT_REPLY
    assert "authorization" not in fake_upstream.last_request.headers


async def test_compatible_stream_without_usage_leaves_usage_unset(fake_upstream):
    compatible = adapter(fake_upstream, "openai_compatible", options={"stream_usage": False})
    chunks = [c async for c in compatible.stream_chat(chat(stream=True))]

    assert "stream_options" not in fake_upstream.last_request.body
    assert "".join(c.content or "" for c in chunks) == DEFAULT_REPLY
    assert all(c.usage is None for c in chunks)


async def test_stream_from_a_server_that_ignores_include_usage_has_no_usage(fake_upstream):
    compatible = adapter(fake_upstream, "openai_compatible")
    chunks = [c async for c in compatible.stream_chat(chat(model="fault:no_usage", stream=True))]

    assert "".join(c.content or "" for c in chunks) == DEFAULT_REPLY
    assert all(c.usage is None for c in chunks)


async def test_compatible_provider_without_base_url_is_unavailable(fake_upstream):
    from providers.types import ProviderUnavailable

    compatible = adapter(fake_upstream, "openai_compatible", base_url="")
    with pytest.raises(ProviderUnavailable, match="no base URL"):
        await compatible.chat(chat())


async def test_extra_headers_and_organization_are_sent(fake_upstream):
    openai = adapter(
        fake_upstream,
        "openai",
        options={"organization": "org-1", "project": "proj-1", "headers": {"X-Team": "a"}},
    )
    await openai.chat(chat())

    headers = fake_upstream.last_request.headers
    assert headers["openai-organization"] == "org-1"
    assert headers["openai-project"] == "proj-1"
    assert headers["x-team"] == "a"
