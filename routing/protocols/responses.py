"""OpenAI's Responses API (`POST /v1/responses`) over our normalized chat types, as pure
functions: request -> ChatRequest, ChatResponse -> Response object, chunks -> the Responses
SSE event sequence. No I/O here; the endpoint (routing/endpoints/responses.py) only
authenticates, calls these and the inference call.

Stateless: the gateway stores no responses. `store: true` and `previous_response_id` are
refused with a 400 that says so (send the whole conversation as `input` items instead, as
with `store: false`); every response says `"store": false`."""

from __future__ import annotations

import random
import time
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field
from pydantic import ValidationError as PydanticValidationError

from providers.types import ChatRequest, ChatResponse, Chunk, ProviderError, Usage
from routing.errors import GatewayError

# Fields forwarded to the chat request as they are (OpenAI chat has the same ones).
_FORWARDED = ("parallel_tool_calls", "seed", "service_tier", "top_logprobs", "prompt_cache_key")
# Hosted tools only OpenAI's own Responses backend runs.
_HOSTED_TOOLS = (
    "web_search",
    "web_search_preview",
    "file_search",
    "computer_use_preview",
    "code_interpreter",
    "image_generation",
    "mcp",
    "local_shell",
)


class ResponsesInvalid(GatewayError):
    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(
            status=400,
            message=message,
            code=code or ("invalid_value" if param else "invalid_request"),
            param=param,
        )


class ResponsesIn(BaseModel):
    """The request. Unknown fields are accepted and ignored (`include`, `truncation`...)."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=256)
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    text: dict[str, Any] | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    metadata: dict[str, str] | None = None
    stream: bool = False
    store: bool | None = None
    previous_response_id: str | None = None
    user: str | None = None
    reasoning: dict[str, Any] | None = None


def responses_request_parse(body: bytes | dict) -> ResponsesIn:
    try:
        data = body if isinstance(body, dict) else orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ResponsesInvalid("Request body is not valid JSON", code="invalid_json") from None
    if not isinstance(data, dict):
        raise ResponsesInvalid("Request body must be a JSON object")
    try:
        payload = ResponsesIn.model_validate(data)
    except PydanticValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first.get("loc", ())) or None
        raise ResponsesInvalid(
            f"{first.get('msg', 'Invalid value')}" + (f" ({param})" if param else ""), param=param
        ) from None
    if payload.previous_response_id:
        raise ResponsesInvalid(
            "previous_response_id is not supported: this gateway does not store responses. "
            "Send the whole conversation as input items (the store=false way).",
            param="previous_response_id",
            code="unsupported_parameter",
        )
    if payload.store:
        raise ResponsesInvalid(
            "store=true is not supported: this gateway does not store responses. Omit store "
            "or set it to false, and send the conversation as input items.",
            param="store",
            code="unsupported_parameter",
        )
    return payload


# -- request -----------------------------------------------------------------------------
def _part(part: Any, *, where: str) -> dict[str, Any] | None:
    if isinstance(part, str):
        return {"type": "text", "text": part}
    if not isinstance(part, dict):
        raise ResponsesInvalid(f"{where}: a content part must be an object", param=where)
    kind = part.get("type")
    if kind in ("input_text", "output_text", "text"):
        return {"type": "text", "text": str(part.get("text") or "")}
    if kind == "refusal":
        return {"type": "text", "text": str(part.get("refusal") or "")}
    if kind == "input_image":
        url = part.get("image_url")
        if not url:
            raise ResponsesInvalid(
                f"{where}: only image_url images are supported (no file_id: nothing is stored)",
                param=where,
            )
        image: dict[str, Any] = {"url": url}
        if part.get("detail"):
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    if kind == "input_file":
        if not part.get("file_data"):
            raise ResponsesInvalid(
                f"{where}: only inline files (file_data) are supported", param=where
            )
        file = {"file_data": part["file_data"], "filename": part.get("filename") or "file"}
        return {"type": "file", "file": file}
    raise ResponsesInvalid(f"{where}: unsupported content part type {kind!r}", param=where)


def _content(content: Any, *, where: str) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise ResponsesInvalid(f"{where}: content must be a string or a list", param=where)
    parts = [_part(p, where=f"{where}.{i}") for i, p in enumerate(content)]
    kept = [p for p in parts if p is not None]
    if all(p["type"] == "text" for p in kept):
        return "".join(p["text"] for p in kept)
    return kept


def _output_text(output: Any) -> str | list[dict[str, Any]]:
    if isinstance(output, str):
        return output
    if isinstance(output, list):
        return _content(output, where="function_call_output.output")
    return orjson.dumps(output).decode()


def chat_messages_from_input(payload: ResponsesIn) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    if payload.instructions:
        messages.append({"role": "system", "content": payload.instructions})
    if isinstance(payload.input, str):
        messages.append({"role": "user", "content": payload.input})
        return messages
    for position, item in enumerate(payload.input):
        where = f"input.{position}"
        kind = item.get("type") or ("message" if "role" in item else None)
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise ResponsesInvalid(f"{where}.role: unsupported role {role!r}", param=where)
            content = _content(item.get("content", ""), where=f"{where}.content")
            if role == "assistant" and not isinstance(content, str):
                content = "".join(p.get("text", "") for p in content)
            messages.append({"role": role, "content": content})
        elif kind == "function_call":
            if not item.get("call_id") or not item.get("name"):
                raise ResponsesInvalid(
                    f"{where}: function_call needs call_id and name", param=where
                )
            call = {
                "id": str(item["call_id"]),
                "type": "function",
                "function": {"name": str(item["name"]), "arguments": item.get("arguments") or "{}"},
            }
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            if not item.get("call_id"):
                raise ResponsesInvalid(f"{where}: function_call_output needs call_id", param=where)
            messages.append(
                {
                    "role": "tool",
                    "tool_call_id": str(item["call_id"]),
                    "content": _output_text(item.get("output", "")),
                }
            )
        elif kind == "reasoning":
            continue  # reasoning of an earlier turn: chat upstreams cannot take it back
        elif kind == "item_reference":
            raise ResponsesInvalid(
                f"{where}: item_reference is not supported (nothing is stored)",
                param=where,
                code="unsupported_parameter",
            )
        else:
            raise ResponsesInvalid(f"{where}: unsupported input item type {kind!r}", param=where)
    return messages


def _chat_tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    converted = []
    for position, tool in enumerate(tools):
        kind = tool.get("type")
        if kind != "function":
            hosted = kind in _HOSTED_TOOLS or str(kind).startswith("web_search")
            raise ResponsesInvalid(
                f"tools.{position}: {'hosted ' if hosted else ''}tool type {kind!r} is not "
                "supported by this gateway (function tools only)",
                param=f"tools.{position}.type",
                code="unsupported_parameter",
            )
        if not tool.get("name"):
            raise ResponsesInvalid(f"tools.{position}.name is required", param=f"tools.{position}")
        function: dict[str, Any] = {
            "name": tool["name"],
            "parameters": tool.get("parameters") or {"type": "object", "properties": {}},
        }
        if tool.get("description"):
            function["description"] = tool["description"]
        if tool.get("strict") is not None:
            function["strict"] = tool["strict"]
        converted.append({"type": "function", "function": function})
    return converted


def _chat_tool_choice(
    choice: Any, tools: list[dict[str, Any]] | None
) -> tuple[Any, list[dict[str, Any]] | None]:
    """(chat tool_choice, tools) — allowed_tools narrows the tool list."""
    if choice is None or choice in ("auto", "none", "required"):
        return choice, tools
    if isinstance(choice, dict):
        kind = choice.get("type")
        if kind == "function" and choice.get("name"):
            return {"type": "function", "function": {"name": choice["name"]}}, tools
        if kind == "allowed_tools":
            names = {t.get("name") for t in choice.get("tools") or () if isinstance(t, dict)}
            narrowed = [t for t in tools or () if t["function"]["name"] in names]
            mode = choice.get("mode") or "auto"
            if mode not in ("auto", "required"):
                raise ResponsesInvalid("tool_choice.mode must be auto or required")
            return mode, narrowed or None
    raise ResponsesInvalid(
        "tool_choice: expected auto, none, required, a function or allowed_tools",
        param="tool_choice",
    )


def _response_format(text: dict[str, Any] | None) -> dict[str, Any] | None:
    spec = (text or {}).get("format")
    if not spec:
        return None
    if not isinstance(spec, dict):
        raise ResponsesInvalid("text.format must be an object", param="text.format")
    kind = spec.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        if not isinstance(spec.get("schema"), dict):
            raise ResponsesInvalid("text.format.schema is required", param="text.format.schema")
        json_schema = {"name": spec.get("name") or "response", "schema": spec["schema"]}
        for key in ("strict", "description"):
            if spec.get(key) is not None:
                json_schema[key] = spec[key]
        return {"type": "json_schema", "json_schema": json_schema}
    raise ResponsesInvalid(f"text.format.type {kind!r} is not supported", param="text.format")


def chat_request_from_responses(payload: ResponsesIn) -> ChatRequest:
    tools = _chat_tools(payload.tools) if payload.tools else None
    tool_choice, tools = _chat_tool_choice(payload.tool_choice, tools)
    extra: dict[str, Any] = {}
    response_format = _response_format(payload.text)
    if response_format is not None:
        extra["response_format"] = response_format
    model_extra = payload.model_extra or {}
    for name in _FORWARDED:
        if model_extra.get(name) is not None:
            extra[name] = model_extra[name]
    if payload.reasoning and payload.reasoning.get("effort"):
        extra["reasoning_effort"] = payload.reasoning["effort"]
    return ChatRequest(
        model=payload.model,
        messages=chat_messages_from_input(payload),
        stream=payload.stream,
        max_tokens=payload.max_output_tokens,
        temperature=payload.temperature,
        top_p=payload.top_p,
        tools=tools,
        tool_choice=tool_choice,
        include_usage=True,
        user=payload.user,
        extra=extra,
    )


# -- response ----------------------------------------------------------------------------
def new_id(prefix: str) -> str:
    return f"{prefix}_{random.getrandbits(192):048x}"


def responses_usage(usage: Usage) -> dict[str, Any]:
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": usage.cache_read_tokens},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.total_tokens,
    }


def _status_of(finish_reason: str | None) -> tuple[str, dict[str, str] | None]:
    if finish_reason == "length":
        return "incomplete", {"reason": "max_output_tokens"}
    if finish_reason == "content_filter":
        return "incomplete", {"reason": "content_filter"}
    return "completed", None


def message_item(item_id: str, text: str, *, status: str = "completed") -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": [output_text_part(text)],
    }


def output_text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def function_call_item(
    item_id: str, call_id: str, name: str, arguments: str, *, status: str = "completed"
) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "function_call",
        "status": status,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
    }


class ResponseShell:
    """The parts of a Response object that come from the request (echoed back)."""

    def __init__(self, payload: ResponsesIn, *, response_id: str, chat: ChatRequest) -> None:
        self.id = response_id
        self.created_at = int(time.time())
        self.payload = payload
        self.chat = chat

    def body(
        self,
        *,
        status: str,
        output: list[dict[str, Any]],
        usage: Usage | None,
        incomplete: dict[str, str] | None = None,
        error: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        p = self.payload
        text = p.text or {"format": {"type": "text"}}
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "error": error,
            "incomplete_details": incomplete,
            "instructions": p.instructions,
            "max_output_tokens": p.max_output_tokens,
            "model": p.model,
            "output": output,
            "parallel_tool_calls": bool(
                (p.model_extra or {}).get("parallel_tool_calls", True) is not False
            ),
            "previous_response_id": None,
            "reasoning": {"effort": (p.reasoning or {}).get("effort"), "summary": None},
            "store": False,
            "temperature": p.temperature if p.temperature is not None else 1.0,
            "text": text,
            "tool_choice": p.tool_choice if p.tool_choice is not None else "auto",
            "tools": p.tools or [],
            "top_p": p.top_p if p.top_p is not None else 1.0,
            "truncation": "disabled",
            "usage": responses_usage(usage) if usage is not None else None,
            "user": p.user,
            "metadata": p.metadata or {},
        }


def response_object(shell: ResponseShell, response: ChatResponse) -> dict[str, Any]:
    output: list[dict[str, Any]] = []
    if response.content:
        output.append(message_item(new_id("msg"), response.content))
    for call in response.tool_calls or ():
        function = call.get("function") or {}
        arguments = function.get("arguments")
        if not isinstance(arguments, str):
            arguments = orjson.dumps(arguments or {}).decode()
        output.append(
            function_call_item(
                new_id("fc"),
                str(call.get("id") or new_id("call")),
                str(function.get("name") or ""),
                arguments,
            )
        )
    status, incomplete = _status_of(response.finish_reason)
    return shell.body(status=status, output=output, usage=response.usage, incomplete=incomplete)


# -- stream ------------------------------------------------------------------------------
class _OpenItem:
    __slots__ = ("index", "item", "text")

    def __init__(self, index: int, item: dict[str, Any]) -> None:
        self.index = index
        self.item = item
        self.text: list[str] = []


class ResponsesStreamEncoder:
    """Normalized chunks -> the Responses SSE sequence: response.created, response.in_progress,
    then per output item output_item.added, (content_part.added, output_text.delta...,
    output_text.done, content_part.done) or (function_call_arguments.delta...,
    function_call_arguments.done), output_item.done, and at the end response.completed (or
    response.incomplete) carrying the settled usage. Every event has a sequence_number; ids
    are fixed when an item opens and repeated in every event about it."""

    def __init__(self, shell: ResponseShell) -> None:
        self.shell = shell
        self._sequence = 0
        self._started = False
        self._output: list[dict[str, Any]] = []
        self._message: _OpenItem | None = None
        self._calls: dict[int, _OpenItem] = {}
        self._finish_reason: str | None = None

    def _event(self, kind: str, **data: Any) -> bytes:
        payload = {"type": kind, "sequence_number": self._sequence, **data}
        self._sequence += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"

    def _start(self) -> bytes:
        self._started = True
        snapshot = self.shell.body(status="in_progress", output=[], usage=None)
        return self._event("response.created", response=snapshot) + self._event(
            "response.in_progress", response=snapshot
        )

    def _open_message(self) -> bytes:
        item = message_item(new_id("msg"), "", status="in_progress")
        item["content"] = []
        self._message = _OpenItem(len(self._output), item)
        self._output.append(item)
        return self._event(
            "response.output_item.added", output_index=self._message.index, item=item
        ) + self._event(
            "response.content_part.added",
            item_id=item["id"],
            output_index=self._message.index,
            content_index=0,
            part=output_text_part(""),
        )

    def _close_message(self) -> bytes:
        open_item, self._message = self._message, None
        if open_item is None:
            return b""
        text = "".join(open_item.text)
        item_id = open_item.item["id"]
        done = message_item(item_id, text)
        self._output[open_item.index] = done
        return (
            self._event(
                "response.output_text.done",
                item_id=item_id,
                output_index=open_item.index,
                content_index=0,
                text=text,
                logprobs=[],
            )
            + self._event(
                "response.content_part.done",
                item_id=item_id,
                output_index=open_item.index,
                content_index=0,
                part=output_text_part(text),
            )
            + self._event("response.output_item.done", output_index=open_item.index, item=done)
        )

    def _tool_delta(self, call: dict[str, Any]) -> bytes:
        out = b""
        position = int(call.get("index") or 0)
        function = call.get("function") or {}
        open_item = self._calls.get(position)
        if open_item is None:
            out += self._close_message()
            item = function_call_item(
                new_id("fc"),
                str(call.get("id") or new_id("call")),
                str(function.get("name") or ""),
                "",
                status="in_progress",
            )
            open_item = _OpenItem(len(self._output), item)
            self._calls[position] = open_item
            self._output.append(item)
            out += self._event(
                "response.output_item.added", output_index=open_item.index, item=item
            )
        arguments = function.get("arguments")
        if arguments:
            open_item.text.append(arguments)
            out += self._event(
                "response.function_call_arguments.delta",
                item_id=open_item.item["id"],
                output_index=open_item.index,
                delta=arguments,
            )
        return out

    def _close_calls(self) -> bytes:
        out = b""
        for open_item in sorted(self._calls.values(), key=lambda o: o.index):
            item = dict(open_item.item, arguments="".join(open_item.text), status="completed")
            self._output[open_item.index] = item
            out += self._event(
                "response.function_call_arguments.done",
                item_id=item["id"],
                output_index=open_item.index,
                name=item["name"],
                arguments=item["arguments"],
            ) + self._event("response.output_item.done", output_index=open_item.index, item=item)
        self._calls = {}
        return out

    def encode(self, chunk: Chunk) -> bytes | None:
        out = b"" if self._started else self._start()
        if chunk.content:
            if self._message is None:
                out += self._open_message()
            assert self._message is not None
            self._message.text.append(chunk.content)
            out += self._event(
                "response.output_text.delta",
                item_id=self._message.item["id"],
                output_index=self._message.index,
                content_index=0,
                delta=chunk.content,
                logprobs=[],
            )
        for call in chunk.tool_calls or ():
            out += self._tool_delta(call)
        if chunk.finish_reason:
            self._finish_reason = chunk.finish_reason
        return out or None

    def error(self, exc: ProviderError) -> bytes:
        out = b"" if self._started else self._start()
        error = {"code": exc.code, "message": exc.message}
        failed = self.shell.body(status="failed", output=self._output, usage=None, error=error)
        return (
            out
            + self._event("error", code=exc.code, message=exc.message, param=None)
            + self._event("response.failed", response=failed)
        )

    def finish(self, call: Any, failure: ProviderError | None) -> bytes | None:
        if failure is not None:
            return None
        out = b"" if self._started else self._start()
        out += self._close_message() + self._close_calls()
        usage = getattr(call, "settled_usage", None) or Usage()
        status, incomplete = _status_of(self._finish_reason)
        final = self.shell.body(
            status=status, output=self._output, usage=usage, incomplete=incomplete
        )
        kind = "response.completed" if status == "completed" else "response.incomplete"
        return out + self._event(kind, response=final)
