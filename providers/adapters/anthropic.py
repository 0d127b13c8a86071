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
    COUNT_TOKENS_FIELDS,
    DEFAULT_MAX_TOKENS,
    AnthropicStreamTranslator,
    anthropic_request_from_chat,
    chat_response_from_anthropic,
    error_of,
    merged_headers,
    native_messages_body,
    sse_frame,
)
from providers.adapters.base import ProviderAdapter, ProviderConfig, register_adapter
from providers.types import (
    ChatRequest,
    ChatResponse,
    Chunk,
    NativeRequest,
    ProviderProtocolError,
)
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

    def _native(self, request: ChatRequest) -> NativeRequest | None:
        native = request.native
        return native if native is not None and native.protocol == "anthropic" else None

    def _body(self, request: ChatRequest, *, stream: bool) -> bytes:
        native = self._native(request)
        if native is not None:
            return http.json_body(
                native_messages_body(
                    native.body, model=request.model, stream=stream, max_tokens=request.max_tokens
                )
            )
        return http.json_body(
            anthropic_request_from_chat(
                request, stream=stream, default_max_tokens=self.default_max_tokens
            )
        )

    def _headers(self, request: ChatRequest) -> dict[str, str]:
        native = self._native(request)
        if native is None or not native.headers:
            return self.headers
        return merged_headers(self.headers, native.headers)

    async def chat(self, request: ChatRequest) -> ChatResponse:
        body = await http.post_json(
            self.config,
            self.messages_url,
            headers=self._headers(request),
            body=self._body(request, stream=False),
        )
        if not isinstance(body, dict) or body.get("type") == "error":
            status_body = error_of(body) if isinstance(body, dict) else None
            if status_body is not None:
                raise http.error_for_status(self.config, status_body[0], body=status_body[1])
            raise ProviderProtocolError(
                f"Upstream provider '{self.config.name}' answered without a message"
            )
        response = chat_response_from_anthropic(body, created=int(time.time()))
        if self._native(request) is not None:
            response.native = body
        return response

    async def count_tokens(self, request: ChatRequest) -> int:
        """Anthropic's exact count (`POST /v1/messages/count_tokens`) of a native request."""
        native = self._native(request)
        source = (
            native.body
            if native is not None
            else anthropic_request_from_chat(
                request, stream=False, default_max_tokens=self.default_max_tokens
            )
        )
        body = {k: v for k, v in source.items() if k in COUNT_TOKENS_FIELDS}
        body["model"] = request.model
        answer = await http.post_json(
            self.config,
            f"{self.messages_url}/count_tokens",
            headers=self._headers(request),
            body=http.json_body(body),
        )
        if not isinstance(answer, dict) or not isinstance(answer.get("input_tokens"), int):
            raise ProviderProtocolError(
                f"Upstream provider '{self.config.name}' answered count_tokens without a count"
            )
        return answer["input_tokens"]

    async def stream_chat(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        native = self._native(request) is not None
        events = http.post_sse(
            self.config,
            self.messages_url,
            headers=self._headers(request),
            body=self._body(request, stream=True),
        )
        translator = AnthropicStreamTranslator()
        async with contextlib.aclosing(events):
            async for name, payload in events:
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
                if native:
                    # The event itself goes to a Messages client verbatim (thinking, signatures,
                    # citations...); the translation still feeds usage and finish reasons.
                    chunk = chunk or Chunk()
                    chunk.native = sse_frame(name or str(event.get("type") or ""), payload)
                if chunk is not None:
                    yield chunk
        if not translator.finished:
            raise ProviderProtocolError(
                f"Upstream provider '{self.config.name}' ended the stream without message_stop"
            )
