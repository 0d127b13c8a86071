"""The built-in mock provider: behaves like a small, deterministic model (see mock_model):
text from the prompt, tool calls when tools are offered, JSON for `response_format`,
embeddings of any dimension in float or base64, real usage counts, and streams in every
protocol the gateway speaks.

Options (Provider.options):
- latency_ms: total simulated latency of an answer (spread over a stream's tokens);
- ttft_ms: extra wait before the first token (or before a non-streamed answer);
- tokens_per_s: generation rate; a stream waits 1/rate between tokens, a non-streamed
  answer waits tokens/rate (on top of latency_ms);
- reply_tokens: length of a text answer (default 12; a request's max_tokens caps it);
- embedding_dimensions: vector size when a request does not ask for `dimensions` (16).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from providers.adapters.base import ProviderAdapter, register_adapter
from providers.adapters.mock_model import (
    DEFAULT_EMBEDDING_DIMENSIONS,
    embedding_base64,
    embedding_vector,
    json_reply,
    reply_words,
    tool_arguments,
    tool_to_call,
)
from providers.tokens import count_message_tokens, count_text_tokens
from providers.types import (
    ChatRequest,
    ChatResponse,
    Chunk,
    EmbeddingRequest,
    EmbeddingResponse,
    ProviderBadRequest,
    Usage,
)

# Arguments and JSON answers are streamed in pieces of this many characters.
_PIECE = 8


def mock_reply_tokens(request: ChatRequest, default_length: int = 12) -> list[str]:
    """Deterministic reply: the same prompt always gives the same words."""
    length = default_length
    if request.max_tokens is not None:
        length = max(1, min(length, request.max_tokens))
    return reply_words(request.messages, length=length)


def _pieces(text: str) -> list[str]:
    return [text[i : i + _PIECE] for i in range(0, len(text), _PIECE)] or [""]


class _Answer:
    """One decided answer: text (or JSON) tokens, or one tool call."""

    def __init__(self, request: ChatRequest, reply_length: int) -> None:
        self.tool_call: dict[str, Any] | None = None
        self.tokens: list[str] = []
        function = tool_to_call(request)
        if function is not None:
            self.tool_call = {
                "id": f"call_{uuid.uuid4().hex[:24]}",
                "type": "function",
                "function": {
                    "name": function["name"],
                    "arguments": tool_arguments(function, request.messages),
                },
            }
            self.finish_reason = "tool_calls"
            self.completion_tokens = count_text_tokens(
                self.tool_call["function"]["name"] + self.tool_call["function"]["arguments"]
            )
            return
        words = mock_reply_tokens(request, reply_length)
        as_json = json_reply(request, "".join(words))
        if as_json is not None:
            # Structured output is never cut short: a truncated JSON would not validate.
            self.tokens = _pieces(as_json)
            self.finish_reason = "stop"
            self.completion_tokens = count_text_tokens(as_json)
            return
        self.tokens = words
        self.finish_reason = (
            "length"
            if request.max_tokens is not None and len(words) >= request.max_tokens
            else "stop"
        )
        self.completion_tokens = len(words)

    @property
    def steps(self) -> int:
        if self.tool_call is not None:
            return len(_pieces(self.tool_call["function"]["arguments"])) + 1
        return len(self.tokens)


@register_adapter
class MockAdapter(ProviderAdapter):
    kind = "mock"

    def _option(self, name: str, default: float) -> float:
        try:
            return max(0.0, float(self.config.options.get(name, default)))
        except (TypeError, ValueError):
            return default

    @property
    def latency_s(self) -> float:
        return self._option("latency_ms", 0) / 1000.0

    @property
    def ttft_s(self) -> float:
        return self._option("ttft_ms", 0) / 1000.0

    @property
    def tokens_per_s(self) -> float:
        return self._option("tokens_per_s", 0)

    @property
    def reply_length(self) -> int:
        return int(self._option("reply_tokens", 12)) or 12

    def _usage(self, request: ChatRequest, answer: _Answer) -> Usage:
        return Usage(
            prompt_tokens=count_message_tokens(request.messages),
            completion_tokens=answer.completion_tokens,
        )

    def _per_step_s(self, steps: int) -> float:
        per_step = self.latency_s / max(steps, 1)
        if self.tokens_per_s:
            per_step += 1.0 / self.tokens_per_s
        return per_step

    async def chat(self, request: ChatRequest) -> ChatResponse:
        answer = _Answer(request, self.reply_length)
        wait = self.ttft_s + self._per_step_s(answer.steps) * answer.steps
        if wait:
            await asyncio.sleep(wait)
        return ChatResponse(
            id=f"chatcmpl-mock-{uuid.uuid4().hex[:24]}",
            model=request.model,
            content=None if answer.tool_call else "".join(answer.tokens),
            finish_reason=answer.finish_reason,
            usage=self._usage(request, answer),
            tool_calls=[answer.tool_call] if answer.tool_call else None,
            created=int(time.time()),
        )

    async def stream_chat(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        answer = _Answer(request, self.reply_length)
        per_step = self._per_step_s(answer.steps)
        if self.ttft_s:
            await asyncio.sleep(self.ttft_s)
        yield Chunk(role="assistant", content=None if answer.tool_call else "")
        if answer.tool_call is not None:
            function = answer.tool_call["function"]
            yield Chunk(
                tool_calls=[
                    {
                        "index": 0,
                        "id": answer.tool_call["id"],
                        "type": "function",
                        "function": {"name": function["name"], "arguments": ""},
                    }
                ]
            )
            for piece in _pieces(function["arguments"]):
                if per_step:
                    await asyncio.sleep(per_step)
                yield Chunk(tool_calls=[{"index": 0, "function": {"arguments": piece}}])
        else:
            for token in answer.tokens:
                if per_step:
                    await asyncio.sleep(per_step)
                yield Chunk(content=token)
        yield Chunk(finish_reason=answer.finish_reason)
        yield Chunk(usage=self._usage(request, answer))

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResponse:
        extra = request.extra or {}
        dimensions = extra.get("dimensions")
        if dimensions is None:
            dimensions = self.config.options.get(
                "embedding_dimensions", DEFAULT_EMBEDDING_DIMENSIONS
            )
        if (
            not isinstance(dimensions, int)
            or isinstance(dimensions, bool)
            or not (1 <= dimensions <= 8192)
        ):
            raise ProviderBadRequest("dimensions must be an integer between 1 and 8192")
        encoding = extra.get("encoding_format") or "float"
        if encoding not in ("float", "base64"):
            raise ProviderBadRequest("encoding_format must be 'float' or 'base64'")
        data: list[Any] = []
        total = 0
        for item in request.input:
            text = item if isinstance(item, str) else " ".join(map(str, item))
            vector = embedding_vector(text, dimensions)
            data.append(embedding_base64(vector) if encoding == "base64" else vector)
            total += count_text_tokens(text) if isinstance(item, str) else len(item)
        return EmbeddingResponse(model=request.model, data=data, usage=Usage(prompt_tokens=total))
