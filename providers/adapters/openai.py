"""OpenAI's Chat Completions and Embeddings APIs (kind "openai"); the base of the
OpenAI-compatible and Azure adapters, which differ only in URLs, headers and options.

Options (Provider.options):
- organization, project: sent as OpenAI-Organization / OpenAI-Project;
- max_tokens_param: "max_tokens" (default) or "max_completion_tokens" (o-series, gpt-5);
- stream_usage: send stream_options.include_usage upstream (default true);
- headers: extra request headers (a dict of strings);
- max_connections, keepalive_s, verify_tls: the connection pool (providers.http).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson

from providers import http
from providers.adapters.base import ProviderAdapter, ProviderConfig, register_adapter
from providers.types import (
    ChatRequest,
    ChatResponse,
    Chunk,
    EmbeddingRequest,
    EmbeddingResponse,
    ProviderProtocolError,
    Usage,
)
from providers.urls import base_url_normalize

_DONE = b"[DONE]"


def usage_from_openai(data: dict[str, Any]) -> Usage:
    details = data.get("prompt_tokens_details") or {}
    return Usage(
        prompt_tokens=int(data.get("prompt_tokens") or 0),
        completion_tokens=int(data.get("completion_tokens") or 0),
        cache_read_tokens=int(details.get("cached_tokens") or 0),
    )


def chunk_from_openai(payload: bytes, obj: dict[str, Any]) -> Chunk:
    """A normalized chunk of one OpenAI `chat.completion.chunk` (first choice), keeping the
    payload bytes for verbatim forwarding."""
    chunk = Chunk(raw=payload)
    choices = obj.get("choices")
    if choices:
        choice = choices[0]
        delta = choice.get("delta")
        if delta:
            chunk.role = delta.get("role")
            chunk.content = delta.get("content")
            chunk.tool_calls = delta.get("tool_calls") or None
        chunk.finish_reason = choice.get("finish_reason")
    usage = obj.get("usage")
    if usage:
        chunk.usage = usage_from_openai(usage)
    return chunk


def chat_response_from_openai(body: Any, *, config: ProviderConfig) -> ChatResponse:
    if isinstance(body, dict) and body.get("error") and not body.get("choices"):
        # An error object in a 200 answer (some proxies and compatible servers do this).
        raise http.error_for_status(config, _status_of(body), body=body)
    if not isinstance(body, dict) or not isinstance(body.get("choices"), list):
        raise ProviderProtocolError(f"Upstream provider '{config.name}' answered without choices")
    choice = body["choices"][0] if body["choices"] else {}
    message = choice.get("message") or {}
    usage = body.get("usage")
    return ChatResponse(
        id=str(body.get("id") or ""),
        model=str(body.get("model") or ""),
        content=message.get("content"),
        finish_reason=choice.get("finish_reason"),
        usage=usage_from_openai(usage) if usage else Usage(),
        tool_calls=message.get("tool_calls") or None,
        created=int(body.get("created") or time.time()),
        raw=body,
    )


@register_adapter
class OpenAIAdapter(ProviderAdapter):
    kind = "openai"
    default_base_url = "https://api.openai.com/v1"

    def __init__(self, config: ProviderConfig) -> None:
        super().__init__(config)
        options = config.options
        self.base_url = base_url_normalize(self.kind, config.base_url or self.default_base_url)[0]
        self.max_tokens_param = str(options.get("max_tokens_param") or "max_tokens")
        self.stream_usage = bool(options.get("stream_usage", True))
        # Built once per configuration: the adapter is rebuilt when the provider changes.
        self.headers = self.build_headers()

    # -- wire details subclasses change ----------------------------------------------------
    def build_headers(self) -> dict[str, str]:
        headers = {"Content-Type": http.JSON_CONTENT_TYPE, "Accept": "application/json"}
        if self.config.secret:
            headers["Authorization"] = f"Bearer {self.config.secret}"
        options = self.config.options
        if options.get("organization"):
            headers["OpenAI-Organization"] = str(options["organization"])
        if options.get("project"):
            headers["OpenAI-Project"] = str(options["project"])
        for name, value in (options.get("headers") or {}).items():
            headers[str(name)] = str(value)
        return headers

    def chat_url(self, model: str) -> str:
        return f"{self.base_url}/chat/completions"

    def embeddings_url(self, model: str) -> str:
        return f"{self.base_url}/embeddings"

    def chat_body(self, request: ChatRequest, *, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {"model": request.model, "messages": request.messages}
        if request.max_tokens is not None:
            body[self.max_tokens_param] = request.max_tokens
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.top_p is not None:
            body["top_p"] = request.top_p
        if request.stop:
            body["stop"] = request.stop
        if request.tools:
            body["tools"] = request.tools
        if request.tool_choice is not None:
            body["tool_choice"] = request.tool_choice
        if request.user:
            body["user"] = request.user
        if request.extra:
            body.update(request.extra)
        if stream:
            body["stream"] = True
            if self.stream_usage:
                # Always ask for usage: the gateway bills from it even when the client did
                # not ask to see it (the API drops the usage chunk for such clients).
                options = dict(body.get("stream_options") or {})
                options["include_usage"] = True
                body["stream_options"] = options
        else:
            body.pop("stream", None)
            body.pop("stream_options", None)
        return body

    # -- the interface ---------------------------------------------------------------------
    async def chat(self, request: ChatRequest) -> ChatResponse:
        body = await http.post_json(
            self.config,
            self.chat_url(request.model),
            headers=self.headers,
            body=http.json_body(self.chat_body(request, stream=False)),
        )
        return chat_response_from_openai(body, config=self.config)

    async def stream_chat(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        events = http.post_sse(
            self.config,
            self.chat_url(request.model),
            headers=self.headers,
            body=http.json_body(self.chat_body(request, stream=True)),
        )
        done = False
        async with contextlib.aclosing(events):
            async for _event, payload in events:
                if done:
                    continue  # drain to EOF so the connection goes back to the pool
                if payload == _DONE:
                    done = True
                    continue
                if not payload:
                    continue
                try:
                    obj = orjson.loads(payload)
                except orjson.JSONDecodeError:
                    raise ProviderProtocolError(
                        f"Upstream provider '{self.config.name}' sent a malformed stream chunk"
                    ) from None
                if not isinstance(obj, dict):
                    raise ProviderProtocolError(
                        f"Upstream provider '{self.config.name}' sent a malformed stream chunk"
                    )
                if "error" in obj:
                    # An error reported inside a 200 stream (vLLM, proxies, OpenAI itself).
                    raise http.error_for_status(self.config, _status_of(obj), body=obj)
                yield chunk_from_openai(payload, obj)
        if not done:
            raise ProviderProtocolError(
                f"Upstream provider '{self.config.name}' ended the stream without [DONE]"
            )

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResponse:
        payload: dict[str, Any] = {"model": request.model, "input": request.input}
        if request.extra:
            payload.update(request.extra)
        body = await http.post_json(
            self.config,
            self.embeddings_url(request.model),
            headers=self.headers,
            body=http.json_body(payload),
        )
        if not isinstance(body, dict) or not isinstance(body.get("data"), list):
            raise ProviderProtocolError(
                f"Upstream provider '{self.config.name}' answered embeddings without data"
            )
        items = sorted(body["data"], key=lambda item: item.get("index", 0))
        usage = body.get("usage") or {}
        return EmbeddingResponse(
            model=str(body.get("model") or request.model),
            data=[item.get("embedding") for item in items],
            usage=Usage(prompt_tokens=int(usage.get("prompt_tokens") or 0)),
            raw=body,
        )


def _status_of(obj: dict[str, Any]) -> int:
    """The HTTP status an in-stream error event stands for: its own status field when it has
    one, else inferred from its code (rate limit 429, invalid request 400), else 500."""
    error = obj.get("error")
    if isinstance(error, dict):
        for key in ("status", "status_code", "code"):
            value = error.get(key)
            if isinstance(value, int) and 400 <= value <= 599:
                return value
    code = http.error_detail(obj).code.lower()
    if "rate_limit" in code:
        return 429
    if "invalid" in code or "context_length" in code or "content_filter" in code:
        return 400
    return 500
