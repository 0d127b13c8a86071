"""Anthropic Messages <-> our normalized chat types: pure conversions, no I/O."""

from __future__ import annotations

import orjson
import pytest

from providers.types import ChatResponse, Chunk, Usage
from routing.errors import GatewayError
from routing.messages import (
    AnthropicStreamEncoder,
    MessagesIn,
    anthropic_message_from,
    anthropic_usage,
    chat_request_from_anthropic,
    messages_payload_parse,
)


def _payload(**fields) -> MessagesIn:
    return MessagesIn.model_validate(
        {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}], **fields}
    )


def test_system_blocks_tools_choice_stops_and_user_become_openai_fields():
    chat = chat_request_from_anthropic(
        _payload(
            system=[{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Be kind."}],
            stop_sequences=["END"],
            temperature=0.2,
            top_k=5,
            metadata={"user_id": "u-1"},
            tools=[{"name": "f", "description": "d", "input_schema": {"type": "object"}}],
            tool_choice={"type": "any", "disable_parallel_tool_use": True},
        )
    )
    assert chat.messages[0] == {"role": "system", "content": "Be brief.\n\nBe kind."}
    assert chat.messages[1] == {"role": "user", "content": "hi"}
    assert chat.stop == ["END"]
    assert chat.max_tokens == 10 and chat.temperature == 0.2
    assert chat.user == "u-1"
    assert chat.tools == [
        {
            "type": "function",
            "function": {"name": "f", "parameters": {"type": "object"}, "description": "d"},
        }
    ]
    assert chat.tool_choice == "required"
    assert chat.extra == {"parallel_tool_calls": False}
    assert "top_k" not in chat.extra


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ({"type": "auto"}, "auto"),
        ({"type": "none"}, "none"),
        ({"type": "tool", "name": "f"}, {"type": "function", "function": {"name": "f"}}),
    ],
)
def test_tool_choice_maps(choice, expected):
    chat = chat_request_from_anthropic(
        _payload(tools=[{"name": "f", "input_schema": {}}], tool_choice=choice)
    )
    assert chat.tool_choice == expected


def test_tool_use_and_tool_result_history_becomes_tool_calls_and_tool_messages():
    chat = chat_request_from_anthropic(
        _payload(
            messages=[
                {"role": "user", "content": "weather?"},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "thinking", "thinking": "hmm", "signature": "s"},
                        {"type": "text", "text": "Let me look."},
                        {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"a": 1}},
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": "toolu_1",
                            "content": [{"type": "text", "text": "sunny"}],
                        },
                        {
                            "type": "text",
                            "text": "And tomorrow?",
                            "cache_control": {"type": "ephemeral"},
                        },
                    ],
                },
            ]
        )
    )
    assert chat.messages[1] == {
        "role": "assistant",
        "content": "Let me look.",
        "tool_calls": [
            {"id": "toolu_1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}
        ],
    }
    assert chat.messages[2] == {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"}
    assert chat.messages[3] == {"role": "user", "content": "And tomorrow?"}


def test_images_and_documents_become_openai_content_parts():
    chat = chat_request_from_anthropic(
        _payload(
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is this?"},
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"},
                        },
                        {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}},
                        {
                            "type": "document",
                            "source": {
                                "type": "base64",
                                "media_type": "application/pdf",
                                "data": "JVBE",
                            },
                        },
                    ],
                }
            ]
        )
    )
    assert chat.messages[0]["content"] == [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
        {
            "type": "file",
            "file": {"filename": "document.pdf", "file_data": "data:application/pdf;base64,JVBE"},
        },
    ]


@pytest.mark.parametrize(
    "body",
    [
        b"[]",
        b'{"model": "m", "messages": [{"role": "user", "content": "x"}]}',
        b'{"model": "m", "max_tokens": 0, "messages": [{"role": "user", "content": "x"}]}',
        b'{"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "video"}]}]}',
        b'{"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "tool_result"}]}]}',
    ],
    ids=["not-object", "no-max-tokens", "zero-max-tokens", "unknown-block", "result-without-id"],
)
def test_invalid_requests_are_400_invalid_request(body):
    with pytest.raises(GatewayError) as caught:
        chat_request_from_anthropic(messages_payload_parse(body))
    assert caught.value.status == 400


def test_response_becomes_an_anthropic_message_with_cache_split_usage():
    message = anthropic_message_from(
        response=ChatResponse(
            id="x",
            model="up",
            content="Hi",
            finish_reason="tool_calls",
            usage=Usage(
                prompt_tokens=100, completion_tokens=7, cache_read_tokens=60, cache_write_tokens=10
            ),
            tool_calls=[
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "f", "arguments": '{"a": 2}'},
                }
            ],
        ),
        model="alias",
        message_id="msg_1",
    )
    assert message == {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "alias",
        "content": [
            {"type": "text", "text": "Hi"},
            {"type": "tool_use", "id": "call_1", "name": "f", "input": {"a": 2}},
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 30,
            "output_tokens": 7,
            "cache_creation_input_tokens": 10,
            "cache_read_input_tokens": 60,
        },
    }
    assert anthropic_usage(Usage(prompt_tokens=5, completion_tokens=1))["input_tokens"] == 5


class _SettledCall:
    settled_usage = Usage(prompt_tokens=9, completion_tokens=3)


def _events(raw: bytes) -> list[tuple[str, dict]]:
    out = []
    for block in raw.decode().strip().split("\n\n"):
        name, data = block.split("\n", 1)
        out.append((name[len("event: ") :], orjson.loads(data[len("data: ") :])))
    return out


def test_stream_encoder_emits_text_then_tool_blocks_in_order():
    encoder = AnthropicStreamEncoder(message_id="msg_1", model="alias", input_tokens_estimate=9)
    raw = b"".join(
        part or b""
        for part in (
            encoder.encode(Chunk(role="assistant", content="")),
            encoder.encode(Chunk(content="Hel")),
            encoder.encode(Chunk(content="lo")),
            encoder.encode(
                Chunk(
                    tool_calls=[
                        {
                            "index": 0,
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "f", "arguments": ""},
                        }
                    ]
                )
            ),
            encoder.encode(Chunk(tool_calls=[{"index": 0, "function": {"arguments": '{"a":'}}])),
            encoder.encode(Chunk(tool_calls=[{"index": 0, "function": {"arguments": "1}"}}])),
            encoder.encode(Chunk(finish_reason="tool_calls")),
            encoder.encode(Chunk(usage=Usage(prompt_tokens=9, completion_tokens=3))),
            encoder.finish(_SettledCall(), None),
        )
    )
    events = _events(raw)
    assert [name for name, _ in events] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert events[1][1]["content_block"] == {"type": "text", "text": ""}
    assert events[5][1] == {
        "type": "content_block_start",
        "index": 1,
        "content_block": {"type": "tool_use", "id": "call_1", "name": "f", "input": {}},
    }
    assert events[7][1]["delta"] == {"type": "input_json_delta", "partial_json": "1}"}
    assert events[9][1]["delta"]["stop_reason"] == "tool_use"
    assert events[9][1]["usage"]["output_tokens"] == 3
