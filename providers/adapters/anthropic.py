"""Anthropic's Messages API (kind "anthropic"): OpenAI-shaped requests in, OpenAI-shaped
responses and chunks out; the conversions live in anthropic_format.

Options: anthropic_version (default 2023-06-01), beta (anthropic-beta header value),
default_max_tokens (when a request has none; routing normally sets it), headers, pool settings.
Anthropic has no embeddings endpoint."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator

import orjson

from providers import http
from providers.adapters.anthropic_format import (
    DEFAULT_MAX_TOKENS,
    AnthropicStreamTranslator,
    anthropic_request_from_chat,
    chat_response_from_anthropic,
    error_of,
)
from providers.adapters.base import ProviderAdapter, ProviderConfig, register_adapter
from providers.types import ChatRequest, ChatResponse, Chunk, ProviderProtocolError
from providers.urls import base_url_normalize

ANTHROPIC_VERSION = "2023-06-01"


@register_adapter
class AnthropicAdapter(ProviderAdapter):
    kind = "anthropic"
    default_base_url = "https://api.anthropic.com/v1"

    def __init__(self, config: ProviderConfig) -> None:
        super().__init__(config)
        options = config.options
        self.base_url = base_url_normalize(self.kind, config.base_url or self.default_base_url)[0]
        self.default_max_tokens = int(options.get("default_max_tokens") or DEFAULT_MAX_TOKENS)
        headers = {
            "Content-Type": http.JSON_CONTENT_TYPE,
            "Accept": "application/json",
            "anthropic-version": str(options.get("anthropic_version") or ANTHROPIC_VERSION),
        }
        if config.secret:
            headers["x-api-key"] = config.secret
        if options.get("beta"):
            headers["anthropic-beta"] = str(options["beta"])
        for name, value in (options.get("headers") or {}).items():
            headers[str(name)] = str(value)
        self.headers = headers
        self.messages_url = f"{self.base_url}/messages"

    def _body(self, request: ChatRequest, *, stream: bool) -> bytes:
        return http.json_body(
            anthropic_request_from_chat(
                request, stream=stream, default_max_tokens=self.default_max_tokens
            )
        )

    async def chat(self, request: ChatRequest) -> ChatResponse:
        body = await http.post_json(
            self.config,
            self.messages_url,
            headers=self.headers,
            body=self._body(request, stream=False),
        )
        if not isinstance(body, dict) or body.get("type") == "error":
            status_body = error_of(body) if isinstance(body, dict) else None
            if status_body is not None:
                raise http.error_for_status(self.config, status_body[0], body=status_body[1])
            raise ProviderProtocolError(
                f"Upstream provider '{self.config.name}' answered without a message"
            )
        return chat_response_from_anthropic(body, created=int(time.time()))

    async def stream_chat(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        events = http.post_sse(
            self.config,
            self.messages_url,
            headers=self.headers,
            body=self._body(request, stream=True),
        )
        translator = AnthropicStreamTranslator()
        async with contextlib.aclosing(events):
            async for _name, payload in events:
                if translator.finished or not payload:
                    continue  # drain to EOF so the connection goes back to the pool
                try:
                    event = orjson.loads(payload)
                except orjson.JSONDecodeError:
                    raise ProviderProtocolError(
                        f"Upstream provider '{self.config.name}' sent a malformed stream event"
                    ) from None
                if not isinstance(event, dict):
                    raise ProviderProtocolError(
                        f"Upstream provider '{self.config.name}' sent a malformed stream event"
                    )
                failure = error_of(event)
                if failure is not None:
                    raise http.error_for_status(self.config, failure[0], body=failure[1])
                chunk = translator.translate(event)
                if chunk is not None:
                    yield chunk
        if not translator.finished:
            raise ProviderProtocolError(
                f"Upstream provider '{self.config.name}' ended the stream without message_stop"
            )
