"""Pure OpenAI <-> Anthropic conversions (no I/O)."""

from __future__ import annotations

import pytest

from providers.adapters.anthropic_format import (
    AnthropicStreamTranslator,
    anthropic_request_from_chat,
    chat_response_from_anthropic,
    error_of,
    image_block,
)
from providers.types import ChatRequest, ProviderBadRequest


def request(messages, **fields) -> ChatRequest:
    return ChatRequest(model="claude", messages=messages, **fields)


def test_system_parts_with_cache_control_stay_blocks():
    body = anthropic_request_from_chat(
        request(
            [
                {
                    "role": "system",
                    "content": [
                        {"type": "text", "text": "long doc", "cache_control": {"type": "ephemeral"}}
                    ],
                },
                {"role": "user", "content": "q"},
            ]
        ),
        stream=False,
    )

    assert body["system"] == [
        {"type": "text", "text": "long doc", "cache_control": {"type": "ephemeral"}}
    ]


def test_empty_assistant_text_is_dropped_and_turns_still_alternate():
    body = anthropic_request_from_chat(
        request(
            [
                {"role": "user", "content": "a"},
                {"role": "assistant", "content": ""},
                {"role": "user", "content": "b"},
            ]
        ),
        stream=True,
    )

    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}
    ]
    assert body["stream"] is True


def test_string_stop_becomes_a_list_and_openai_only_extras_are_dropped():
    body = anthropic_request_from_chat(
        request(
            [{"role": "user", "content": "x"}],
            stop="END",
            extra={"logprobs": True, "thinking": {"type": "enabled", "budget_tokens": 1024}},
        ),
        stream=False,
    )

    assert body["stop_sequences"] == ["END"]
    assert "logprobs" not in body
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 1024}


def test_invalid_tool_arguments_are_a_bad_request():
    messages = [
        {"role": "user", "content": "x"},
        {
            "role": "assistant",
            "tool_calls": [{"id": "1", "function": {"name": "f", "arguments": "{oops"}}],
        },
    ]
    with pytest.raises(ProviderBadRequest):
        anthropic_request_from_chat(request(messages), stream=False)


def test_image_blocks_from_data_and_http_urls():
    assert image_block("data:image/jpeg;base64,AAAA") == {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/jpeg", "data": "AAAA"},
    }
    assert image_block("https://x/y.png")["source"] == {"type": "url", "url": "https://x/y.png"}
    with pytest.raises(ProviderBadRequest):
        image_block("data:image/png,rawbytes")


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
    ],
)
def test_stop_reasons_map_to_finish_reasons(stop_reason, finish):
    response = chat_response_from_anthropic(
        {
            "id": "m",
            "content": [{"type": "text", "text": "x"}],
            "stop_reason": stop_reason,
            "usage": {},
        }
    )

    assert response.finish_reason == finish


def test_translator_numbers_tool_calls_in_order_of_their_blocks():
    translator = AnthropicStreamTranslator()
    events = [
        {"type": "message_start", "message": {"usage": {"input_tokens": 5, "output_tokens": 1}}},
        {
            "type": "content_block_start",
            "index": 0,
            "content_block": {"type": "thinking", "thinking": ""},
        },
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "thinking_delta", "thinking": "hm"},
        },
        {
            "type": "content_block_start",
            "index": 1,
            "content_block": {"type": "tool_use", "id": "a", "name": "f"},
        },
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": "{}"},
        },
        {
            "type": "content_block_start",
            "index": 2,
            "content_block": {"type": "tool_use", "id": "b", "name": "g"},
        },
        {
            "type": "content_block_delta",
            "index": 2,
            "delta": {"type": "input_json_delta", "partial_json": '{"k":1}'},
        },
        {
            "type": "message_delta",
            "delta": {"stop_reason": "tool_use"},
            "usage": {"output_tokens": 9},
        },
        {"type": "message_stop"},
    ]
    chunks = [c for c in map(translator.translate, events) if c is not None]

    calls = [call for c in chunks for call in (c.tool_calls or [])]
    assert [(c["index"], c.get("id")) for c in calls] == [(0, "a"), (0, None), (1, "b"), (1, None)]
    assert chunks[-2].finish_reason == "tool_calls"
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (5, 9)
    assert translator.finished


def test_error_events_carry_the_status_of_their_type():
    assert error_of({"type": "error", "error": {"type": "overloaded_error"}})[0] == 529
    assert error_of({"type": "error", "error": {"type": "rate_limit_error"}})[0] == 429
    assert error_of({"type": "ping"}) is None
