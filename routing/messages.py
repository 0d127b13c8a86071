"""Anthropic-compatible ingress: `POST /v1/messages`, so the official `anthropic` SDK (and
anything that speaks the Messages API) works against the gateway with a gateway key.

The request is converted to our normalized ChatRequest and runs through exactly the same
path as `/v1/chat/completions`: the same key authentication, catalog and routes, admission
(limits and budgets), strategy, retries, breakers and settlement with one usage event. Only
the edges differ: Anthropic's request shape in, an Anthropic Message (or the real Messages
SSE event sequence) out, and errors in Anthropic's shape
`{"type": "error", "error": {"type": ..., "message": ...}}`.

Mapping notes (what a Messages client may notice):
- Anthropic upstreams get the client's own request and headers, verbatim (see
  routing/protocols/anthropic_native.py); other kinds get the conversion below, with
  Anthropic-only fields translated or refused with a 400.
- `system` (string or text blocks) becomes one system message.
- `tool_result` blocks become `tool` messages placed right after the assistant turn that
  asked for them; images inside a tool result follow as a user message.
- `usage.input_tokens` excludes cached tokens, as Anthropic counts them; the cache fields
  carry the cached parts the upstream reported.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field
from pydantic import ValidationError as PydanticValidationError

from providers.types import ChatRequest, ChatResponse, Chunk, ProviderError, Usage
from routing.errors import (  # noqa: F401 - the error shape is re-exported for its users
    GatewayError,
    anthropic_error_body,
    anthropic_error_response,
    anthropic_error_type,
)
from routing.inference import InferenceCall

logger = logging.getLogger("gateway.api.messages")

ENDPOINT = "messages"

_STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


# -- errors --------------------------------------------------------------------------------
class MessagesInvalid(GatewayError):
    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(status=400, message=message, code="invalid_request", param=param)


# -- request ---------------------------------------------------------------------------------
class AnthropicMessageIn(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["user", "assistant"]
    content: str | list[dict[str, Any]]


class MessagesIn(BaseModel):
    """The Messages API request. Unknown fields are accepted and ignored."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=256)
    max_tokens: int = Field(ge=1)
    messages: list[AnthropicMessageIn] = Field(min_length=1)
    system: str | list[dict[str, Any]] | None = None
    stop_sequences: list[str] | None = None
    stream: bool = False
    temperature: float | None = Field(default=None, ge=0, le=1)
    top_p: float | None = Field(default=None, ge=0, le=1)
    top_k: int | None = Field(default=None, ge=0)
    tools: list[dict[str, Any]] | None = None
    tool_choice: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None


def messages_payload_parse(body: bytes) -> MessagesIn:
    """The validated request, or MessagesInvalid with Anthropic-style wording."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise MessagesInvalid("Request body is not valid JSON") from None
    return messages_payload_validate(data)


def messages_payload_validate(data: Any) -> MessagesIn:
    """The decoded body validated, or MessagesInvalid with Anthropic-style wording."""
    if not isinstance(data, dict):
        raise MessagesInvalid("Request body must be a JSON object")
    try:
        return MessagesIn.model_validate(data)
    except PydanticValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first.get("loc", ()))
        raise MessagesInvalid(
            f"{param}: {first.get('msg', 'invalid value')}", param=param
        ) from None


def _text_of_blocks(blocks: list[dict[str, Any]], *, where: str) -> str:
    texts = []
    for block in blocks:
        if block.get("type") != "text":
            raise MessagesInvalid(f"{where}: only text blocks are allowed here")
        texts.append(str(block.get("text", "")))
    return "\n\n".join(texts)


def _source_url(source: dict[str, Any], *, where: str) -> str:
    kind = source.get("type")
    if kind == "base64":
        media_type = source.get("media_type") or "application/octet-stream"
        return f"data:{media_type};base64,{source.get('data', '')}"
    if kind == "url" and source.get("url"):
        return str(source["url"])
    raise MessagesInvalid(f"{where}: unsupported source type {kind!r}")


def _user_part(block: dict[str, Any], *, where: str) -> dict[str, Any] | None:
    """One non-tool-result user block as an OpenAI content part (None: dropped)."""
    kind = block.get("type")
    if kind == "text":
        return {"type": "text", "text": str(block.get("text", ""))}
    if kind == "image":
        url = _source_url(block.get("source") or {}, where=where)
        return {"type": "image_url", "image_url": {"url": url}}
    if kind == "document":
        source = block.get("source") or {}
        if source.get("type") == "text":
            return {"type": "text", "text": str(source.get("data", ""))}
        filename = str(block.get("title") or "document.pdf")
        return {
            "type": "file",
            "file": {"filename": filename, "file_data": _source_url(source, where=where)},
        }
    if kind in ("thinking", "redacted_thinking"):
        return None
    raise MessagesInvalid(f"{where}: unsupported content block type {kind!r}")


def _user_content(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    if len(parts) == 1 and parts[0]["type"] == "text":
        return parts[0]["text"]
    return parts


def _tool_result_messages(block: dict[str, Any], *, where: str) -> list[dict[str, Any]]:
    """A tool_result block as a `tool` message (plus a user message for its images)."""
    tool_use_id = block.get("tool_use_id")
    if not tool_use_id:
        raise MessagesInvalid(f"{where}: tool_result needs a tool_use_id")
    content = block.get("content")
    images: list[dict[str, Any]] = []
    if content is None:
        text = ""
    elif isinstance(content, str):
        text = content
    elif isinstance(content, list):
        texts = []
        for inner in content:
            part = _user_part(inner, where=where)
            if part is None:
                continue
            if part["type"] == "text":
                texts.append(part["text"])
            else:
                images.append(part)
        text = "\n\n".join(texts)
    else:
        raise MessagesInvalid(f"{where}: tool_result content must be a string or blocks")
    messages: list[dict[str, Any]] = [
        {"role": "tool", "tool_call_id": str(tool_use_id), "content": text}
    ]
    if images:
        messages.append({"role": "user", "content": images})
    return messages


def _assistant_message(blocks: list[dict[str, Any]], *, where: str) -> dict[str, Any]:
    texts: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    for block in blocks:
        kind = block.get("type")
        if kind == "text":
            texts.append(str(block.get("text", "")))
        elif kind == "tool_use":
            tool_calls.append(
                {
                    "id": str(block.get("id") or f"toolu_{uuid.uuid4().hex[:24]}"),
                    "type": "function",
                    "function": {
                        "name": str(block.get("name", "")),
                        "arguments": orjson.dumps(block.get("input") or {}).decode(),
                    },
                }
            )
        elif kind in ("thinking", "redacted_thinking"):
            continue
        else:
            raise MessagesInvalid(f"{where}: unsupported assistant block type {kind!r}")
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return message


def openai_messages_from_anthropic(payload: MessagesIn) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    if payload.system:
        system = (
            payload.system
            if isinstance(payload.system, str)
            else _text_of_blocks(payload.system, where="system")
        )
        messages.append({"role": "system", "content": system})
    for position, message in enumerate(payload.messages):
        where = f"messages.{position}.content"
        content = message.content
        if message.role == "assistant":
            if isinstance(content, str):
                messages.append({"role": "assistant", "content": content})
            else:
                messages.append(_assistant_message(content, where=where))
            continue
        if isinstance(content, str):
            messages.append({"role": "user", "content": content})
            continue
        # Tool results first: OpenAI wants them right after the assistant's tool calls.
        parts: list[dict[str, Any]] = []
        for block in content:
            if block.get("type") == "tool_result":
                messages.extend(_tool_result_messages(block, where=where))
            else:
                part = _user_part(block, where=where)
                if part is not None:
                    parts.append(part)
        if parts:
            messages.append({"role": "user", "content": _user_content(parts)})
    return messages


def _openai_tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    converted = []
    for position, tool in enumerate(tools):
        kind = tool.get("type")
        if kind not in (None, "custom"):
            raise MessagesInvalid(
                f"tools.{position}: server tools ({kind}) are not supported by this gateway",
                param=f"tools.{position}.type",
            )
        if not tool.get("name"):
            raise MessagesInvalid(f"tools.{position}.name: Field required")
        function: dict[str, Any] = {
            "name": tool["name"],
            "parameters": tool.get("input_schema") or {"type": "object", "properties": {}},
        }
        if tool.get("description"):
            function["description"] = tool["description"]
        converted.append({"type": "function", "function": function})
    return converted


def _openai_tool_choice(choice: dict[str, Any]) -> Any:
    kind = choice.get("type")
    if kind == "auto":
        return "auto"
    if kind == "any":
        return "required"
    if kind == "none":
        return "none"
    if kind == "tool" and choice.get("name"):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise MessagesInvalid("tool_choice: expected auto, any, none or tool (with a name)")


def chat_request_from_anthropic(payload: MessagesIn) -> ChatRequest:
    """The Messages request as our normalized (OpenAI-shaped) ChatRequest."""
    extra: dict[str, Any] = {}
    tools = _openai_tools(payload.tools) if payload.tools else None
    tool_choice = None
    if payload.tool_choice:
        tool_choice = _openai_tool_choice(payload.tool_choice)
        if tools and payload.tool_choice.get("disable_parallel_tool_use"):
            extra["parallel_tool_calls"] = False
    user = None
    if payload.metadata and isinstance(payload.metadata.get("user_id"), str):
        user = payload.metadata["user_id"]
    return ChatRequest(
        model=payload.model,
        messages=openai_messages_from_anthropic(payload),
        stream=payload.stream,
        max_tokens=payload.max_tokens,
        temperature=payload.temperature,
        top_p=payload.top_p,
        stop=list(payload.stop_sequences) if payload.stop_sequences else None,
        tools=tools,
        tool_choice=tool_choice,
        include_usage=True,
        user=user,
        extra=extra,
    )


# -- response --------------------------------------------------------------------------------
def anthropic_stop_reason(finish_reason: str | None) -> str:
    return _STOP_REASONS.get(finish_reason or "stop", "end_turn")


def anthropic_usage(usage: Usage) -> dict[str, int]:
    """Anthropic counts cached prompt tokens apart from input_tokens."""
    cached = usage.cache_read_tokens + usage.cache_write_tokens
    return {
        "input_tokens": max(0, usage.prompt_tokens - cached),
        "output_tokens": usage.completion_tokens,
        "cache_creation_input_tokens": usage.cache_write_tokens,
        "cache_read_input_tokens": usage.cache_read_tokens,
    }


def _tool_input(arguments: Any) -> dict[str, Any]:
    if isinstance(arguments, dict):
        return arguments
    if not arguments:
        return {}
    try:
        parsed = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        logger.warning("messages.tool_arguments_unparsable")
        return {}
    return parsed if isinstance(parsed, dict) else {"value": parsed}


def anthropic_message_from(*, response: ChatResponse, model: str, message_id: str) -> dict:
    content: list[dict[str, Any]] = []
    if response.content:
        content.append({"type": "text", "text": response.content})
    for call in response.tool_calls or ():
        function = call.get("function") or {}
        content.append(
            {
                "type": "tool_use",
                "id": call.get("id") or f"toolu_{uuid.uuid4().hex[:24]}",
                "name": function.get("name", ""),
                "input": _tool_input(function.get("arguments")),
            }
        )
    stop_reason = anthropic_stop_reason(response.finish_reason)
    if response.tool_calls and stop_reason == "end_turn":
        stop_reason = "tool_use"
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": anthropic_usage(response.usage),
    }


def _event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class AnthropicStreamEncoder:
    """Normalized chunks -> the Messages SSE sequence: message_start, per content block
    content_block_start / content_block_delta (text_delta, input_json_delta) /
    content_block_stop, then message_delta (stop_reason, usage) and message_stop."""

    def __init__(self, *, message_id: str, model: str, input_tokens_estimate: int) -> None:
        self.message_id = message_id
        self.model = model
        self._input_estimate = input_tokens_estimate
        self._started = False
        self._index = -1
        self._open: str | None = None  # kind of the open block: "text" | "tool_use"
        self._tool_blocks: dict[int, int] = {}  # OpenAI tool call index -> block index
        self._finish_reason: str | None = None
        self._saw_tool_use = False
        self._native = False

    def _start(self) -> bytes:
        self._started = True
        message = {
            "id": self.message_id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": self._input_estimate, "output_tokens": 0},
        }
        return _event("message_start", {"type": "message_start", "message": message})

    def _close_block(self) -> bytes:
        if self._open is None:
            return b""
        self._open = None
        return _event("content_block_stop", {"type": "content_block_stop", "index": self._index})

    def _open_block(self, block: dict[str, Any]) -> bytes:
        out = self._close_block()
        self._index += 1
        self._open = block["type"]
        return out + _event(
            "content_block_start",
            {"type": "content_block_start", "index": self._index, "content_block": block},
        )

    def encode(self, chunk: Chunk) -> bytes | None:
        if chunk.native is not None:
            self._native = True  # an Anthropic upstream's own events, forwarded verbatim
            return chunk.native
        out = b"" if self._started else self._start()
        if chunk.content:
            if self._open != "text":
                out += self._open_block({"type": "text", "text": ""})
            out += _event(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": self._index,
                    "delta": {"type": "text_delta", "text": chunk.content},
                },
            )
        for call in chunk.tool_calls or ():
            out += self._tool_delta(call)
        if chunk.finish_reason:
            self._finish_reason = chunk.finish_reason
        return out or None

    def _tool_delta(self, call: dict[str, Any]) -> bytes:
        out = b""
        position = int(call.get("index") or 0)
        function = call.get("function") or {}
        if position not in self._tool_blocks:
            self._saw_tool_use = True
            out += self._open_block(
                {
                    "type": "tool_use",
                    "id": call.get("id") or f"toolu_{uuid.uuid4().hex[:24]}",
                    "name": function.get("name") or "",
                    "input": {},
                }
            )
            self._tool_blocks[position] = self._index
        arguments = function.get("arguments")
        if arguments:
            out += _event(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": self._tool_blocks[position],
                    "delta": {"type": "input_json_delta", "partial_json": arguments},
                },
            )
        return out

    def error(self, exc: ProviderError) -> bytes:
        return _event("error", anthropic_error_body(status=exc.status, message=exc.message))

    def finish(self, call: InferenceCall, failure: ProviderError | None) -> bytes | None:
        if failure is not None or self._native:
            return None  # an Anthropic stream ends at its error event (or the upstream's end)
        out = b"" if self._started else self._start()
        out += self._close_block()
        stop_reason = anthropic_stop_reason(self._finish_reason)
        if self._saw_tool_use and stop_reason == "end_turn":
            stop_reason = "tool_use"
        usage = call.settled_usage or Usage()
        out += _event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                "usage": anthropic_usage(usage),
            },
        )
        return out + _event("message_stop", {"type": "message_stop"})
