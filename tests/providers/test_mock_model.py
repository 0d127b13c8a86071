"""The mock provider behaves like a small deterministic model: text from the prompt, tool
calls honouring tool_choice with schema-valid arguments, JSON for response_format,
embeddings of any dimension in float or base64, streams that agree with the JSON answer."""

from __future__ import annotations

import base64
import struct

import orjson
import pytest

from providers.adapters.base import ProviderConfig
from providers.adapters.mock import MockAdapter
from providers.adapters.mock_model import embedding_vector, schema_instance
from providers.types import ChatRequest, EmbeddingRequest, ProviderBadRequest

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "minLength": 2},
                "unit": {"type": "string", "enum": ["c", "f"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}},
}
HELLO = [{"role": "user", "content": "What is the weather in Paris?"}]


def _adapter(**options) -> MockAdapter:
    return MockAdapter(ProviderConfig(id=1, name="mock", kind="mock", base_url="", options=options))


def _chat(**fields) -> ChatRequest:
    return ChatRequest(model="m", messages=fields.pop("messages", HELLO), **fields)


async def _stream(adapter: MockAdapter, request: ChatRequest) -> list:
    return [chunk async for chunk in adapter.stream_chat(request)]


async def test_text_answer_is_deterministic_for_a_prompt_and_differs_between_prompts():
    adapter = _adapter()
    first = await adapter.chat(_chat())
    again = await adapter.chat(_chat())
    other = await adapter.chat(_chat(messages=[{"role": "user", "content": "something else"}]))
    assert first.content == again.content and first.content
    assert other.content != first.content
    assert first.tool_calls is None and first.finish_reason == "stop"


async def test_offered_tool_is_called_with_arguments_valid_against_its_schema():
    response = await _adapter().chat(_chat(tools=[TIME, WEATHER]))
    [call] = response.tool_calls
    assert response.finish_reason == "tool_calls" and response.content is None
    # "weather" in the prompt does not name a tool; the first offered one is called
    assert call["function"]["name"] == "get_time"
    named = await _adapter().chat(
        _chat(
            tools=[TIME, WEATHER],
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
        )
    )
    arguments = orjson.loads(named.tool_calls[0]["function"]["arguments"])
    assert set(arguments) == {"city", "unit", "days"}
    assert len(arguments["city"]) >= 2 and arguments["unit"] in ("c", "f")
    assert isinstance(arguments["days"], int) and 1 <= arguments["days"] <= 7
    assert named.usage.completion_tokens > 0


async def test_tool_choice_none_answers_text_and_auto_answers_text_after_a_tool_result():
    none = await _adapter().chat(_chat(tools=[WEATHER], tool_choice="none"))
    assert none.tool_calls is None and none.content
    after_result = HELLO + [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": "{}"},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]
    auto = await _adapter().chat(_chat(messages=after_result, tools=[WEATHER]))
    assert auto.tool_calls is None and auto.content
    required = await _adapter().chat(
        _chat(messages=after_result, tools=[WEATHER], tool_choice="required")
    )
    assert required.tool_calls and required.tool_calls[0]["function"]["name"] == "get_weather"


async def test_a_named_tool_that_was_not_offered_is_never_invented():
    response = await _adapter().chat(
        _chat(tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "rm_rf"}})
    )
    assert response.tool_calls is None and response.content


async def test_streamed_tool_call_arguments_join_to_the_same_json():
    adapter = _adapter()
    request = _chat(tools=[WEATHER], tool_choice="required")
    chunks = await _stream(adapter, request)
    deltas = [c.tool_calls[0] for c in chunks if c.tool_calls]
    assert deltas[0]["id"].startswith("call_") and deltas[0]["function"]["name"] == "get_weather"
    arguments = "".join(d["function"].get("arguments") or "" for d in deltas)
    assert orjson.loads(arguments) == orjson.loads(
        (await adapter.chat(request)).tool_calls[0]["function"]["arguments"]
    )
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["tool_calls"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 3},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2, "maxItems": 3},
        "score": {"type": "number", "minimum": 0.5, "maximum": 1},
        "ok": {"type": "boolean"},
        "kind": {"$ref": "#/$defs/kind"},
        "maybe": {"anyOf": [{"type": "null"}, {"type": "integer", "exclusiveMinimum": 3}]},
        "when": {"type": "string", "format": "date"},
        "fixed": {"const": 42},
        "nested": {"type": "object", "properties": {"inner": {"type": ["integer", "null"]}}},
    },
    "required": ["name", "tags", "score", "ok", "kind", "maybe", "when", "fixed", "nested"],
    "$defs": {"kind": {"type": "string", "enum": ["a", "b"]}},
}


def test_schema_instance_honours_types_bounds_refs_and_formats():
    value = schema_instance(SCHEMA, seed=7, words=["alpha", "beta"])
    assert set(value) == set(SCHEMA["required"])
    assert isinstance(value["name"], str) and len(value["name"]) <= 3
    assert 2 <= len(value["tags"]) <= 3 and all(isinstance(t, str) for t in value["tags"])
    assert 0.5 <= value["score"] <= 1
    assert isinstance(value["ok"], bool)
    assert value["kind"] in ("a", "b")
    assert isinstance(value["maybe"], int) and value["maybe"] > 3
    assert value["when"] == "2026-01-01" and value["fixed"] == 42
    assert isinstance(value["nested"]["inner"], int)


def test_schema_instance_of_a_self_referencing_schema_is_bounded():
    schema = {
        "type": "object",
        "properties": {"child": {"$ref": "#"}, "items": {"type": "array", "minItems": 10**9}},
    }
    value = schema_instance(schema)
    depth = 0
    while isinstance(value, dict) and value.get("child") is not None:
        value, depth = value["child"], depth + 1
    assert depth <= 9
    assert len(schema_instance(schema)["items"]) <= 8


async def test_response_format_json_schema_and_json_object_answer_json_streamed_alike():
    adapter = _adapter()
    request = _chat(
        max_tokens=2,  # structured output is never cut short
        extra={
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": SCHEMA},
            }
        },
    )
    response = await adapter.chat(request)
    assert set(orjson.loads(response.content)) == set(SCHEMA["required"])
    streamed = "".join(c.content or "" for c in await _stream(adapter, request))
    assert orjson.loads(streamed) == orjson.loads(response.content)
    as_object = await adapter.chat(_chat(extra={"response_format": {"type": "json_object"}}))
    assert isinstance(orjson.loads(as_object.content)["answer"], str)
    as_text = await adapter.chat(_chat(extra={"response_format": {"type": "text"}}))
    assert not as_text.content.startswith("{")


async def test_embeddings_have_the_requested_dimensions_in_float_and_base64():
    adapter = _adapter()
    floats = await adapter.embed(
        EmbeddingRequest(model="m", input=["a", "b"], extra={"dimensions": 64})
    )
    assert [len(v) for v in floats.data] == [64, 64]
    assert floats.data[0] != floats.data[1]
    assert abs(sum(x * x for x in floats.data[0]) - 1) < 1e-3
    encoded = await adapter.embed(
        EmbeddingRequest(
            model="m", input=["a"], extra={"dimensions": 64, "encoding_format": "base64"}
        )
    )
    decoded = struct.unpack("<64f", base64.b64decode(encoded.data[0]))
    assert [round(x, 5) for x in decoded] == [round(x, 5) for x in floats.data[0]]
    default = await _adapter(embedding_dimensions=8).embed(EmbeddingRequest(model="m", input=["a"]))
    assert len(default.data[0]) == 8
    assert embedding_vector("a", 8) == default.data[0]


@pytest.mark.parametrize(
    "extra", [{"dimensions": 0}, {"dimensions": 10**6}, {"encoding_format": "hex"}]
)
async def test_embeddings_refuse_impossible_dimensions_and_unknown_encodings(extra):
    with pytest.raises(ProviderBadRequest):
        await _adapter().embed(EmbeddingRequest(model="m", input=["a"], extra=extra))


async def test_required_after_a_tool_result_moves_on_to_a_tool_not_called_yet():
    final = {"type": "function", "function": {"name": "final_result", "parameters": SCHEMA}}
    history = HELLO + [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": "{}"},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]
    response = await _adapter().chat(
        _chat(messages=history, tools=[WEATHER, final], tool_choice="required")
    )
    assert response.tool_calls[0]["function"]["name"] == "final_result"
