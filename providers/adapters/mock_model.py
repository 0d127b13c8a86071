"""What the built-in mock "model" answers, as pure functions (no I/O, no clock): the mock
adapter turns these decisions into responses, chunks and vectors.

It behaves like a small, very predictable model:
- text: deterministic words chosen from the prompt's hash (same prompt, same answer);
- tools: when tools are offered and `tool_choice` allows it, it calls one, with arguments
  generated from the tool's JSON schema (so they validate); after a tool result it answers
  text, which lets agent loops terminate;
- structured output: `response_format` `json_object` gives a small object, `json_schema` a
  value generated from the schema;
- embeddings: deterministic unit vectors of any dimension.
"""

from __future__ import annotations

import base64
import hashlib
import math
import struct
from typing import Any

import orjson

from providers.types import ChatRequest

_WORDS = (
    "the gateway answers every request with care and counts each token it sends back "
    "so that budgets hold and finance trusts the totals to the cent"
).split()

DEFAULT_EMBEDDING_DIMENSIONS = 16
# Bounds that keep a hostile schema from making the generator large or slow.
_MAX_DEPTH = 8
_MAX_ITEMS = 8


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(part.get("text", "")) for part in content if isinstance(part, dict)
        ).strip()
    return "" if content is None else str(content)


def last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            return _content_text(message.get("content"))
    return ""


def seed_of(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big")


def reply_words(messages: list[dict[str, Any]], *, length: int) -> list[str]:
    """Deterministic reply tokens: the same prompt always gives the same words."""
    seed = seed_of(last_user_text(messages))
    words = [_WORDS[(seed + i) % len(_WORDS)] for i in range(max(1, length))]
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


# -- tools ---------------------------------------------------------------------------------
def _function_tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    found = []
    for tool in tools or ():
        if isinstance(tool, dict) and tool.get("type", "function") == "function":
            function = tool.get("function")
            if isinstance(function, dict) and function.get("name"):
                found.append(function)
    return found


def _after_tool_result(messages: list[dict[str, Any]]) -> bool:
    for message in reversed(messages):
        role = message.get("role")
        if role in ("system", "developer"):
            continue
        return role == "tool"
    return False


def tool_to_call(request: ChatRequest) -> dict[str, Any] | None:
    """The function tool the mock calls for this request, or None to answer text.

    `none` never calls; `required` and a named choice always call (the named one, else a
    tool not called yet in the conversation, the one the prompt names first, else the
    first); `auto` (or no choice) calls when the conversation ends with a user turn, not
    right after a tool result."""
    functions = _function_tools(request.tools)
    if not functions:
        return None
    choice = request.tool_choice
    if choice == "none":
        return None
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name") or choice.get("name")
        for function in functions:
            if function["name"] == name:
                return function
        if choice.get("type") in ("function", "tool") and name:
            return None  # names a tool that was not offered: answer text
    elif choice != "required" and _after_tool_result(request.messages):
        return None
    # Like a model working through a task: a tool it has not called yet in this conversation
    # first (so `required` after a tool result moves on, e.g. to a final-answer tool), the
    # one the prompt names first among those.
    called = _called_tools(request.messages)
    candidates = [f for f in functions if f["name"] not in called] or functions
    prompt = last_user_text(request.messages).lower()
    for function in candidates:
        if str(function["name"]).lower() in prompt:
            return function
    return candidates[0]


def _called_tools(messages: list[dict[str, Any]]) -> set[str]:
    names = set()
    for message in messages:
        for call in message.get("tool_calls") or ():
            if isinstance(call, dict):
                names.add(str((call.get("function") or {}).get("name") or ""))
    return names


def tool_arguments(function: dict[str, Any], messages: list[dict[str, Any]]) -> str:
    schema = function.get("parameters") or {"type": "object", "properties": {}}
    words = [w for w in last_user_text(messages).split() if w.isalnum()] or _WORDS
    value = schema_instance(schema, seed=seed_of(function.get("name", "")), words=words)
    if not isinstance(value, dict):
        value = {}
    return orjson.dumps(value).decode()


# -- structured output -----------------------------------------------------------------------
def json_reply(request: ChatRequest, text: str) -> str | None:
    """The JSON answer `response_format` asks for, or None when it asks for plain text."""
    response_format = request.extra.get("response_format")
    if not isinstance(response_format, dict):
        return None
    kind = response_format.get("type")
    words = [w for w in last_user_text(request.messages).split() if w.isalnum()] or _WORDS
    if kind == "json_object":
        return orjson.dumps({"answer": text.strip()}).decode()
    if kind == "json_schema":
        spec = response_format.get("json_schema") or {}
        schema = spec.get("schema") if isinstance(spec, dict) else None
        value = schema_instance(
            schema if isinstance(schema, dict) else {}, seed=seed_of(text), words=words
        )
        return orjson.dumps(value).decode()
    return None


def _resolve(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if not isinstance(ref, str) or not ref.startswith("#/"):
        return schema
    node: Any = root
    for part in ref[2:].split("/"):
        node = node.get(part) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else {}


_FORMATS = {
    "date-time": "2026-01-01T00:00:00Z",
    "date": "2026-01-01",
    "time": "00:00:00",
    "email": "mock@example.com",
    "uri": "https://example.com/mock",
    "url": "https://example.com/mock",
    "uuid": "00000000-0000-4000-8000-000000000000",
    "ipv4": "127.0.0.1",
}


def _string(schema: dict[str, Any], seed: int, words: list[str]) -> str:
    if schema.get("format") in _FORMATS:
        return _FORMATS[schema["format"]]
    text = words[seed % len(words)]
    min_length = int(schema.get("minLength") or 0)
    max_length = schema.get("maxLength")
    while len(text) < min_length:
        text += "x"
    if isinstance(max_length, int):
        text = text[: max(max_length, 0)]
    return text


def _number(schema: dict[str, Any], seed: int, integer: bool) -> int | float:
    low = schema.get("minimum", schema.get("exclusiveMinimum"))
    high = schema.get("maximum", schema.get("exclusiveMaximum"))
    low = low if isinstance(low, int | float) else None
    high = high if isinstance(high, int | float) else None
    if low is None and high is None:
        value: float = seed % 100
    elif low is None:
        value = float(high) - 1  # type: ignore[arg-type]
    elif high is None:
        value = float(low) + 1
    else:
        value = (float(low) + float(high)) / 2
    if integer:
        candidate = math.floor(value)
        if low is not None and candidate <= low and "exclusiveMinimum" in schema:
            candidate += 1
        if low is not None and candidate < low:
            candidate = math.ceil(low)
        return int(candidate)
    return value


def schema_instance(
    schema: dict[str, Any],
    *,
    seed: int = 0,
    words: list[str] | None = None,
    root: dict[str, Any] | None = None,
    depth: int = 0,
) -> Any:
    """A value valid against a JSON schema (the subset structured outputs and tool schemas
    use: object, array, string, number, integer, boolean, null, enum, const, anyOf/oneOf/
    allOf, local $ref, string formats, length, range and item bounds). Deterministic."""
    words = words or _WORDS
    root = root if root is not None else schema
    schema = _resolve(schema, root) if isinstance(schema, dict) else {}
    if depth > _MAX_DEPTH:
        return None
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][seed % len(schema["enum"])]
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            non_null = [o for o in options if isinstance(o, dict) and o.get("type") != "null"]
            chosen = (non_null or options)[0]
            return schema_instance(chosen, seed=seed, words=words, root=root, depth=depth + 1)
    if isinstance(schema.get("allOf"), list) and schema["allOf"]:
        merged: dict[str, Any] = {}
        for part in schema["allOf"]:
            part = _resolve(part, root) if isinstance(part, dict) else {}
            for name, value in part.items():
                if name in ("properties",) and isinstance(value, dict):
                    merged.setdefault("properties", {}).update(value)
                elif name == "required" and isinstance(value, list):
                    merged.setdefault("required", []).extend(value)
                else:
                    merged.setdefault(name, value)
        return schema_instance(merged, seed=seed, words=words, root=root, depth=depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else ("array" if "items" in schema else "string")
    if kind == "object":
        properties = schema.get("properties") or {}
        result: dict[str, Any] = {}
        for offset, (name, sub) in enumerate(properties.items()):
            result[name] = schema_instance(
                sub if isinstance(sub, dict) else {},
                seed=seed + offset + seed_of(name),
                words=words,
                root=root,
                depth=depth + 1,
            )
        return result
    if kind == "array":
        items = schema.get("items")
        items = items if isinstance(items, dict) else {}
        count = int(schema.get("minItems") or 1)
        max_items = schema.get("maxItems")
        if isinstance(max_items, int):
            count = min(count, max_items)
        count = max(0, min(count, _MAX_ITEMS))
        return [
            schema_instance(items, seed=seed + i, words=words, root=root, depth=depth + 1)
            for i in range(count)
        ]
    if kind == "string":
        return _string(schema, seed, words)
    if kind == "integer":
        return _number(schema, seed, integer=True)
    if kind == "number":
        return _number(schema, seed, integer=False)
    if kind == "boolean":
        return seed % 2 == 0
    return None


# -- embeddings ------------------------------------------------------------------------------
def embedding_vector(text: str, dimensions: int) -> list[float]:
    """A deterministic unit vector of `dimensions` floats for a text."""
    values: list[float] = []
    counter = 0
    while len(values) < dimensions:
        digest = hashlib.sha256(f"{counter}:{text}".encode()).digest()
        values.extend((b - 127.5) / 127.5 for b in digest)
        counter += 1
    values = values[:dimensions]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [round(v / norm, 6) for v in values]


def embedding_base64(vector: list[float]) -> str:
    """OpenAI's `encoding_format: base64`: little-endian float32 values, base64-encoded."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
