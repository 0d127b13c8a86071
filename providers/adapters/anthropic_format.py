"""Pure conversions between our OpenAI-shaped types and Anthropic's Messages API (the
upstream direction: ChatRequest -> Messages request; Messages response and stream events ->
ChatResponse and Chunks). No I/O here, so other modules can reuse them."""

from __future__ import annotations

from typing import Any

import orjson

from providers.types import ChatRequest, ChatResponse, Chunk, ProviderBadRequest, Usage

DEFAULT_MAX_TOKENS = 4096

# Fields the Messages API accepts that have no OpenAI equivalent; a client may send them as
# extra body fields. OpenAI-only extras (n, seed, logprobs...) are not forwarded: Anthropic
# rejects unknown fields.
PASS_THROUGH_FIELDS = frozenset({"top_k", "metadata", "thinking", "service_tier"})

STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

# The HTTP status an Anthropic error type stands for (in-stream `error` events carry no
# status of their own).
ERROR_TYPE_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


# -- request -----------------------------------------------------------------------------


def _text_of(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return str(content)


def image_block(url: str) -> dict[str, Any]:
    """An OpenAI image URL (data: URL or http(s)) as an Anthropic image block."""
    if url.startswith("data:"):
        header, _, data = url.partition(",")
        media_type = header[5:].split(";", 1)[0] or "image/png"
        if ";base64" not in header:
            raise ProviderBadRequest("image data URLs must be base64-encoded")
        return {
            "type": "image",
            "source": {"type": "base64", "media_type": media_type, "data": data},
        }
    return {"type": "image", "source": {"type": "url", "url": url}}


def content_blocks(content: Any) -> list[dict[str, Any]]:
    """OpenAI message content (a string or a list of parts) as Anthropic content blocks;
    empty text is dropped (Anthropic rejects empty text blocks)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks: list[dict[str, Any]] = []
    for part in content:
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        block: dict[str, Any] | None = None
        if kind == "text":
            text = part.get("text") or ""
            if text:
                block = {"type": "text", "text": text}
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if url:
                block = image_block(str(url))
        elif kind in ("image", "document", "tool_use", "tool_result"):
            block = dict(part)  # already Anthropic-shaped; pass through
        if block is not None:
            if "cache_control" in part and "cache_control" not in block:
                block["cache_control"] = part["cache_control"]
            blocks.append(block)
    return blocks


def _tool_input(arguments: Any) -> dict[str, Any]:
    if isinstance(arguments, dict):
        return arguments
    if arguments in (None, ""):
        return {}
    try:
        value = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        raise ProviderBadRequest("tool call arguments must be a JSON object") from None
    if not isinstance(value, dict):
        raise ProviderBadRequest("tool call arguments must be a JSON object")
    return value


def _message_blocks(message: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """(Anthropic role, blocks) of one OpenAI non-system message."""
    role = message.get("role")
    if role == "tool":
        content = message.get("content")
        result: dict[str, Any] = {
            "type": "tool_result",
            "tool_use_id": str(message.get("tool_call_id") or ""),
        }
        if isinstance(content, list):
            result["content"] = content_blocks(content)
        else:
            result["content"] = _text_of(content)
        return "user", [result]
    if role == "assistant":
        blocks = content_blocks(message.get("content"))
        for call in message.get("tool_calls") or ():
            function = call.get("function") or {}
            blocks.append(
                {
                    "type": "tool_use",
                    "id": str(call.get("id") or ""),
                    "name": str(function.get("name") or ""),
                    "input": _tool_input(function.get("arguments")),
                }
            )
        return "assistant", blocks
    return "user", content_blocks(message.get("content"))


def _system_of(messages: list[dict[str, Any]]) -> str | list[dict[str, Any]] | None:
    parts = [m.get("content") for m in messages if m.get("role") in ("system", "developer")]
    if not parts:
        return None
    if all(isinstance(p, str) for p in parts):
        return "\n\n".join(p for p in parts if p) or None
    blocks: list[dict[str, Any]] = []
    for part in parts:
        blocks.extend(b for b in content_blocks(part) if b.get("type") == "text")
    return blocks or None


def _tool_choice(choice: Any, *, parallel: bool | None) -> dict[str, Any] | None:
    result: dict[str, Any] | None
    if choice is None:
        result = None
    elif choice == "auto":
        result = {"type": "auto"}
    elif choice == "none":
        result = {"type": "none"}
    elif choice == "required":
        result = {"type": "any"}
    elif isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name") or choice.get("name")
        result = {"type": "tool", "name": str(name)} if name else {"type": "auto"}
    else:
        raise ProviderBadRequest("unsupported tool_choice")
    if parallel is False:
        result = result or {"type": "auto"}
        if result["type"] != "none":
            result["disable_parallel_tool_use"] = True
    return result


def _tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    converted = []
    for tool in tools:
        if tool.get("type") != "function":
            converted.append(tool)  # an Anthropic server tool, passed as is
            continue
        function = tool.get("function") or {}
        item: dict[str, Any] = {
            "name": function.get("name"),
            "input_schema": function.get("parameters") or {"type": "object", "properties": {}},
        }
        if function.get("description"):
            item["description"] = function["description"]
        if "cache_control" in tool:
            item["cache_control"] = tool["cache_control"]
        converted.append(item)
    return converted


def anthropic_request_from_chat(
    request: ChatRequest, *, stream: bool, default_max_tokens: int = DEFAULT_MAX_TOKENS
) -> dict[str, Any]:
    """A Messages API request body for an OpenAI-shaped chat request."""
    messages: list[dict[str, Any]] = []
    for message in request.messages:
        if message.get("role") in ("system", "developer"):
            continue
        role, blocks = _message_blocks(message)
        if not blocks:
            continue
        if messages and messages[-1]["role"] == role:
            # The Messages API wants user and assistant turns to alternate.
            messages[-1]["content"].extend(blocks)
        else:
            messages.append({"role": role, "content": blocks})
    body: dict[str, Any] = {
        "model": request.model,
        "messages": messages,
        "max_tokens": request.max_tokens or default_max_tokens,
    }
    system = _system_of(request.messages)
    if system:
        body["system"] = system
    if request.stop:
        body["stop_sequences"] = [request.stop] if isinstance(request.stop, str) else request.stop
    if request.temperature is not None:
        # OpenAI's range is 0..2, Anthropic's 0..1.
        body["temperature"] = min(float(request.temperature), 1.0)
    if request.top_p is not None:
        body["top_p"] = request.top_p
    if request.tools:
        body["tools"] = _tools(request.tools)
    tool_choice = _tool_choice(
        request.tool_choice, parallel=request.extra.get("parallel_tool_calls")
    )
    if tool_choice is not None and (request.tools or tool_choice["type"] == "none"):
        body["tool_choice"] = tool_choice
    if request.user:
        body["metadata"] = {"user_id": request.user}
    for name in PASS_THROUGH_FIELDS.intersection(request.extra):
        body[name] = request.extra[name]
    if stream:
        body["stream"] = True
    return body


# -- native pass-through ---------------------------------------------------------------
# What /v1/messages/count_tokens accepts (a Messages request without the output settings).
COUNT_TOKENS_FIELDS = frozenset(
    {
        "model",
        "messages",
        "system",
        "tools",
        "tool_choice",
        "thinking",
        "mcp_servers",
        "context_management",
        "output_config",
        "output_format",
        "cache_control",
    }
)


def native_messages_body(
    body: dict[str, Any], *, model: str, stream: bool, max_tokens: int | None
) -> dict[str, Any]:
    """A Messages client's own request, sent on as it is: every documented field (and any
    future one) kept, only the upstream model id, the stream flag and max_tokens set."""
    sent = dict(body)
    sent["model"] = model
    if stream:
        sent["stream"] = True
    else:
        sent.pop("stream", None)
    if not isinstance(sent.get("max_tokens"), int):
        sent["max_tokens"] = max_tokens or DEFAULT_MAX_TOKENS
    return sent


def merged_headers(base: dict[str, str], extra: dict[str, str]) -> dict[str, str]:
    """The provider's headers plus a client's; `anthropic-beta` values are joined, not
    replaced (the provider's `beta` option and the client's flags both apply)."""
    headers = dict(base)
    for name, value in extra.items():
        if name.lower() == "anthropic-beta" and headers.get("anthropic-beta"):
            flags = [f.strip() for f in f"{headers['anthropic-beta']},{value}".split(",")]
            headers["anthropic-beta"] = ",".join(dict.fromkeys(f for f in flags if f))
        else:
            headers[name] = value
    return headers


def sse_frame(name: str | bytes, payload: bytes) -> bytes:
    event = name if isinstance(name, bytes) else name.encode()
    return b"event: " + event + b"\ndata: " + payload + b"\n\n"


# -- response ----------------------------------------------------------------------------


def usage_from_anthropic(data: dict[str, Any]) -> Usage:
    """Anthropic counts cache reads and writes apart from input_tokens; our prompt_tokens is
    the whole prompt (as OpenAI's is), with the cached parts broken out."""
    cache_read = int(data.get("cache_read_input_tokens") or 0)
    cache_write = int(data.get("cache_creation_input_tokens") or 0)
    return Usage(
        prompt_tokens=int(data.get("input_tokens") or 0) + cache_read + cache_write,
        completion_tokens=int(data.get("output_tokens") or 0),
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
    )


def tool_call_from_block(block: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": block.get("id"),
        "type": "function",
        "function": {
            "name": block.get("name"),
            "arguments": orjson.dumps(block.get("input") or {}).decode(),
        },
    }


def chat_response_from_anthropic(body: dict[str, Any], *, created: int = 0) -> ChatResponse:
    texts: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    for block in body.get("content") or ():
        kind = block.get("type")
        if kind == "text":
            texts.append(block.get("text") or "")
        elif kind == "tool_use":
            tool_calls.append(tool_call_from_block(block))
    stop_reason = body.get("stop_reason")
    return ChatResponse(
        id=str(body.get("id") or ""),
        model=str(body.get("model") or ""),
        content="".join(texts) if texts or not tool_calls else None,
        finish_reason=STOP_REASONS.get(stop_reason, "stop") if stop_reason else None,
        usage=usage_from_anthropic(body.get("usage") or {}),
        tool_calls=tool_calls or None,
        created=created,
    )


class AnthropicStreamTranslator:
    """Turns Messages stream events into OpenAI-shaped chunks, keeping the state the
    translation needs (tool call indexes by content block, usage so far)."""

    __slots__ = ("_tool_index", "_next_tool", "_input_usage", "output_tokens", "finished")

    def __init__(self) -> None:
        self._tool_index: dict[int, int] = {}
        self._next_tool = 0
        self._input_usage: dict[str, Any] = {}
        self.output_tokens = 0
        self.finished = False

    def usage(self) -> Usage:
        return usage_from_anthropic({**self._input_usage, "output_tokens": self.output_tokens})

    def translate(self, event: dict[str, Any]) -> Chunk | None:
        """The chunk for one event, or None for events that carry nothing for the client.
        `error` events are returned to the caller as is (see `error_of`)."""
        kind = event.get("type")
        if kind == "content_block_delta":
            delta = event.get("delta") or {}
            delta_type = delta.get("type")
            if delta_type == "text_delta":
                text = delta.get("text") or ""
                return Chunk(content=text) if text else None
            if delta_type == "input_json_delta":
                partial = delta.get("partial_json") or ""
                index = self._tool_index.get(int(event.get("index", 0)))
                if not partial or index is None:
                    return None
                return Chunk(tool_calls=[{"index": index, "function": {"arguments": partial}}])
            return None  # thinking, signature and citation deltas have no OpenAI form
        if kind == "content_block_start":
            block = event.get("content_block") or {}
            if block.get("type") == "tool_use":
                index = self._next_tool
                self._next_tool += 1
                self._tool_index[int(event.get("index", 0))] = index
                return Chunk(
                    tool_calls=[
                        {
                            "index": index,
                            "id": block.get("id"),
                            "type": "function",
                            "function": {"name": block.get("name"), "arguments": ""},
                        }
                    ]
                )
            if block.get("type") == "text" and block.get("text"):
                return Chunk(content=block["text"])
            return None
        if kind == "message_start":
            message = event.get("message") or {}
            self._input_usage = dict(message.get("usage") or {})
            self.output_tokens = int(self._input_usage.get("output_tokens") or 0)
            return Chunk(role="assistant", content="")
        if kind == "message_delta":
            usage = event.get("usage") or {}
            if usage.get("output_tokens") is not None:
                self.output_tokens = int(usage["output_tokens"])
            for field in ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens"):
                if usage.get(field) is not None:
                    self._input_usage[field] = usage[field]
            stop_reason = (event.get("delta") or {}).get("stop_reason")
            if stop_reason:
                return Chunk(finish_reason=STOP_REASONS.get(stop_reason, "stop"))
            return None
        if kind == "message_stop":
            self.finished = True
            return Chunk(usage=self.usage())
        return None  # ping, content_block_stop, unknown future events


def error_of(event: dict[str, Any]) -> tuple[int, dict[str, Any]] | None:
    """(status, error body) of an in-stream `error` event, else None."""
    if event.get("type") != "error":
        return None
    error = event.get("error") or {}
    return ERROR_TYPE_STATUS.get(str(error.get("type")), 500), event
