"""OpenAI-shaped response bodies and SSE framing."""

from __future__ import annotations

import time
from typing import Any

import orjson

from providers.types import ChatResponse, Chunk, Usage

DONE = b"data: [DONE]\n\n"


def sse_event(payload: bytes) -> bytes:
    return b"data: " + payload + b"\n\n"


def completion_body(*, response: ChatResponse, model: str, include_raw: bool = True) -> dict:
    if include_raw and response.raw is not None:
        return response.raw
    message: dict[str, Any] = {"role": "assistant", "content": response.content}
    if response.tool_calls:
        message["tool_calls"] = response.tool_calls
    return {
        "id": response.id,
        "object": "chat.completion",
        "created": response.created or int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": response.finish_reason,
            }
        ],
        "usage": response.usage.to_openai(),
    }


class ChunkEncoder:
    """Turns normalized chunks into `data:` events of one completion id."""

    def __init__(self, *, completion_id: str, model: str) -> None:
        self.completion_id = completion_id
        self.model = model
        self.created = int(time.time())

    def _envelope(self, choices: list[dict[str, Any]], usage: Usage | None = None) -> bytes:
        body: dict[str, Any] = {
            "id": self.completion_id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if usage is not None:
            body["usage"] = usage.to_openai()
        return sse_event(orjson.dumps(body))

    def encode(self, chunk: Chunk) -> bytes:
        if chunk.raw is not None:
            return sse_event(chunk.raw)
        delta: dict[str, Any] = {}
        if chunk.role is not None:
            delta["role"] = chunk.role
        if chunk.content is not None:
            delta["content"] = chunk.content
        if chunk.tool_calls:
            delta["tool_calls"] = chunk.tool_calls
        if not delta and chunk.finish_reason is None and chunk.usage is not None:
            return self._envelope([], chunk.usage)
        return self._envelope(
            [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": chunk.finish_reason}]
        )

    def error(self, *, message: str, error_type: str, code: str | None) -> bytes:
        body = {"error": {"message": message, "type": error_type, "param": None, "code": code}}
        return sse_event(orjson.dumps(body))


def is_usage_only(chunk: Chunk) -> bool:
    return (
        chunk.usage is not None
        and not chunk.content
        and not chunk.tool_calls
        and chunk.finish_reason is None
        and chunk.role is None
    )
