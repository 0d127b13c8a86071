"""The built-in mock provider: deterministic text, configurable latency, token-by-token
streams and real usage counts. Useful for demos, load tests and tenants' CI."""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import AsyncIterator

from providers.adapters.base import ProviderAdapter, register_adapter
from providers.tokens import count_message_tokens
from providers.types import (
    ChatRequest,
    ChatResponse,
    Chunk,
    EmbeddingRequest,
    EmbeddingResponse,
    Usage,
)

_WORDS = (
    "the gateway answers every request with care and counts each token it sends back "
    "so that budgets hold and finance trusts the totals to the cent"
).split()


def _last_user_text(request: ChatRequest) -> str:
    for message in reversed(request.messages):
        if message.get("role") == "user":
            content = message.get("content")
            return content if isinstance(content, str) else str(content)
    return ""


def mock_reply_tokens(request: ChatRequest, default_length: int = 12) -> list[str]:
    """Deterministic reply: the same prompt always gives the same words."""
    seed = int.from_bytes(hashlib.sha256(_last_user_text(request).encode()).digest()[:4], "big")
    length = default_length
    if request.max_tokens is not None:
        length = max(1, min(length, request.max_tokens))
    words = [_WORDS[(seed + i) % len(_WORDS)] for i in range(length)]
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


@register_adapter
class MockAdapter(ProviderAdapter):
    kind = "mock"

    @property
    def latency_s(self) -> float:
        return float(self.config.options.get("latency_ms", 0)) / 1000.0

    @property
    def reply_length(self) -> int:
        return int(self.config.options.get("reply_tokens", 12))

    async def chat(self, request: ChatRequest) -> ChatResponse:
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        tokens = mock_reply_tokens(request, self.reply_length)
        finish = (
            "length"
            if request.max_tokens is not None and len(tokens) >= request.max_tokens
            else "stop"
        )
        return ChatResponse(
            id=f"chatcmpl-mock-{uuid.uuid4().hex[:24]}",
            model=request.model,
            content="".join(tokens),
            finish_reason=finish,
            usage=Usage(
                prompt_tokens=count_message_tokens(request.messages),
                completion_tokens=len(tokens),
            ),
            created=int(time.time()),
        )

    async def stream_chat(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        tokens = mock_reply_tokens(request, self.reply_length)
        per_token = self.latency_s / max(len(tokens), 1)
        yield Chunk(role="assistant", content="")
        for token in tokens:
            if per_token:
                await asyncio.sleep(per_token)
            yield Chunk(content=token)
        finish = (
            "length"
            if request.max_tokens is not None and len(tokens) >= request.max_tokens
            else "stop"
        )
        yield Chunk(finish_reason=finish)
        yield Chunk(
            usage=Usage(
                prompt_tokens=count_message_tokens(request.messages),
                completion_tokens=len(tokens),
            )
        )

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResponse:
        vectors: list[list[float]] = []
        total = 0
        for item in request.input:
            text = item if isinstance(item, str) else " ".join(map(str, item))
            digest = hashlib.sha256(text.encode()).digest()
            vectors.append([round((b - 128) / 128, 6) for b in digest[:16]])
            total += max(1, len(text.split()))
        return EmbeddingResponse(
            model=request.model, data=vectors, usage=Usage(prompt_tokens=total)
        )
