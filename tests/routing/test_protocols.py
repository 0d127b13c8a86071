"""Pure translations of routing/protocols: Responses and legacy completions requests and
streams, Anthropic-only fields on other kinds, n > 1 planning, cache-priced costs."""

from __future__ import annotations

from decimal import Decimal
from types import SimpleNamespace

import orjson
import pytest

from providers.pricing import cost_usd, usage_cost_usd
from providers.types import Chunk, ProviderUnavailable, Usage
from routing.errors import GatewayError
from routing.protocols.anthropic_native import translated_extra, untranslatable_refuse
from routing.protocols.choices import usage_sum
from routing.protocols.completions import completions_request_parse
from routing.protocols.responses import (
    ResponseShell,
    ResponsesStreamEncoder,
    chat_request_from_responses,
    responses_request_parse,
)


def _responses(**body) -> bytes:
    return orjson.dumps({"model": "m", "input": "hi", **body})


def _events(raw: bytes) -> list[dict]:
    return [
        orjson.loads(line[6:]) for line in raw.decode().splitlines() if line.startswith("data: ")
    ]


def test_responses_input_items_become_a_chat_conversation():
    payload = responses_request_parse(
        _responses(
            instructions="Be brief.",
            input=[
                {"role": "user", "content": [{"type": "input_text", "text": "weather?"}]},
                {
                    "type": "message",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": "checking"}],
                },
                {"type": "function_call", "call_id": "c1", "name": "w", "arguments": "{}"},
                {"type": "function_call", "call_id": "c2", "name": "t", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
                {
                    "type": "function_call_output",
                    "call_id": "c2",
                    "output": [{"type": "input_text", "text": "noon"}],
                },
                {"type": "reasoning", "id": "rs_1", "summary": []},
            ],
            tools=[
                {"type": "function", "name": "w", "parameters": {"type": "object"}},
                {"type": "function", "name": "t"},
            ],
            tool_choice={
                "type": "allowed_tools",
                "mode": "required",
                "tools": [{"type": "function", "name": "t"}],
            },
            text={
                "format": {
                    "type": "json_schema",
                    "name": "x",
                    "schema": {"type": "object"},
                    "strict": True,
                }
            },
            max_output_tokens=50,
            parallel_tool_calls=False,
        )
    )
    chat = chat_request_from_responses(payload)
    assert [m["role"] for m in chat.messages] == ["system", "user", "assistant", "tool", "tool"]
    assistant = chat.messages[2]
    assert assistant["content"] == "checking"
    assert [c["id"] for c in assistant["tool_calls"]] == ["c1", "c2"]
    assert chat.messages[4]["content"] == "noon"
    assert [t["function"]["name"] for t in chat.tools] == ["t"] and chat.tool_choice == "required"
    assert chat.extra["response_format"]["json_schema"] == {
        "name": "x",
        "schema": {"type": "object"},
        "strict": True,
    }
    assert chat.extra["parallel_tool_calls"] is False and chat.max_tokens == 50


@pytest.mark.parametrize(
    "body",
    [
        {"input": 5},
        {"input": [{"type": "function_call", "name": "x"}]},
        {"input": [{"type": "computer_call_output"}]},
        {"input": [{"role": "tool", "content": "x"}]},
        {"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]},
        {"tools": [{"type": "file_search"}]},
        {"tool_choice": {"type": "hosted"}},
        {"text": {"format": {"type": "json_schema"}}},
        {"store": True},
        {"previous_response_id": "resp_x"},
        {"temperature": 3},
    ],
)
def test_responses_refuses_what_it_cannot_honour_with_a_400(body):
    with pytest.raises(GatewayError) as caught:
        chat_request_from_responses(responses_request_parse(_responses(**body)))
    assert caught.value.status == 400 and caught.value.message


def test_responses_stream_has_the_documented_sequence_and_stable_ids():
    payload = responses_request_parse(_responses(stream=True))
    shell = ResponseShell(payload, response_id="resp_1", chat=chat_request_from_responses(payload))
    encoder = ResponsesStreamEncoder(shell)
    out = b""
    for chunk in [
        Chunk(role="assistant", content=""),
        Chunk(content="Hel"),
        Chunk(content="lo"),
        Chunk(
            tool_calls=[{"index": 0, "id": "call_a", "function": {"name": "f", "arguments": ""}}]
        ),
        Chunk(
            tool_calls=[{"index": 1, "id": "call_b", "function": {"name": "g", "arguments": "{}"}}]
        ),
        Chunk(tool_calls=[{"index": 0, "function": {"arguments": '{"x":1}'}}]),
        Chunk(finish_reason="tool_calls"),
        Chunk(usage=Usage(prompt_tokens=3, completion_tokens=4)),
    ]:
        out += encoder.encode(chunk) or b""
    out += encoder.finish(
        SimpleNamespace(settled_usage=Usage(prompt_tokens=3, completion_tokens=4)), None
    )
    events = _events(out)
    kinds = [e["type"] for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-1] == "response.completed"
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    final = events[-1]["response"]
    assert final["id"] == "resp_1" and final["usage"]["total_tokens"] == 7
    message, call_a, call_b = final["output"]
    assert message["content"][0]["text"] == "Hello"
    assert (call_a["call_id"], call_a["arguments"]) == ("call_a", '{"x":1}')
    assert (call_b["call_id"], call_b["arguments"]) == ("call_b", "{}")
    for item in final["output"]:  # every event about an item names the id it was opened with
        about = [
            e
            for e in events
            if e.get("item_id") == item["id"] or e.get("item", {}).get("id") == item["id"]
        ]
        assert about[0]["type"] == "response.output_item.added"
        assert about[-1]["type"] == "response.output_item.done" and about[-1]["item"] == item


def test_responses_stream_failure_ends_with_error_and_response_failed():
    payload = responses_request_parse(_responses(stream=True))
    encoder = ResponsesStreamEncoder(
        ResponseShell(payload, response_id="resp_2", chat=chat_request_from_responses(payload))
    )
    out = (encoder.encode(Chunk(content="par")) or b"") + encoder.error(ProviderUnavailable("gone"))
    assert encoder.finish(SimpleNamespace(settled_usage=None), ProviderUnavailable("gone")) is None
    kinds = [e["type"] for e in _events(out)]
    assert kinds[-2:] == ["error", "response.failed"]
    assert _events(out)[-1]["response"]["status"] == "failed"


@pytest.mark.parametrize(
    "body",
    [
        {"prompt": [1, 2]},
        {"prompt": [[1], [2]]},
        {"prompt": "x", "suffix": "y"},
        {"prompt": ["a", "b"], "stream": True},
        {"prompt": "a", "n": 2, "stream": True},
        {"prompt": ["p"] * 33},
        {"prompt": "a", "n": 17},
        {"prompt": ["p"] * 3, "n": 11},  # 33 upstream answers: fan-out is bounded
    ],
)
def test_completions_refuses_token_arrays_suffix_and_multi_choice_streams(body):
    with pytest.raises(GatewayError) as caught:
        completions_request_parse(orjson.dumps({"model": "m", **body}))
    assert caught.value.status == 400


def _route(*kinds: str):
    targets = tuple(SimpleNamespace(provider=SimpleNamespace(kind=k)) for k in kinds)
    return SimpleNamespace(name="r", targets=targets)


def test_anthropic_only_fields_are_translated_or_refused_per_target_kind():
    body = {
        "thinking": {"type": "enabled", "budget_tokens": 5000},
        "output_format": {"type": "json_schema", "schema": {"type": "object"}},
        "service_tier": "standard_only",
    }
    extra = translated_extra(body)
    assert extra["reasoning_effort"] == "medium" and extra["service_tier"] == "default"
    assert extra["response_format"]["json_schema"]["schema"] == {"type": "object"}
    assert translated_extra({"output_config": {"effort": "max"}}) == {"reasoning_effort": "high"}
    with pytest.raises(GatewayError, match="top_k"):
        untranslatable_refuse(
            {"top_k": 5}, route=_route("anthropic", "openai"), kinds={"anthropic", "openai"}
        )
    untranslatable_refuse({"top_k": 5}, route=_route("anthropic"), kinds={"anthropic"})
    untranslatable_refuse({"top_k": 5}, route=_route("mock"), kinds={"mock"})
    with pytest.raises(GatewayError):
        translated_extra({"output_config": {"format": {"type": "regex"}}})


def test_cache_priced_cost_and_summed_choices():
    # Without cache prices it is exactly the plain cost.
    plain = usage_cost_usd(
        prompt_tokens=1000,
        completion_tokens=10,
        cache_read_tokens=600,
        cache_write_tokens=100,
        input_price_per_mtok=Decimal("3"),
        output_price_per_mtok=Decimal("15"),
    )
    assert plain == cost_usd(
        tokens_in=1000,
        tokens_out=10,
        input_price_per_mtok=Decimal("3"),
        output_price_per_mtok=Decimal("15"),
    )
    priced = usage_cost_usd(
        prompt_tokens=1000,
        completion_tokens=10,
        cache_read_tokens=600,
        cache_write_tokens=100,
        input_price_per_mtok=Decimal("3"),
        output_price_per_mtok=Decimal("15"),
        cache_read_price_per_mtok=Decimal("0.3"),
        cache_write_price_per_mtok=Decimal("3.75"),
    )
    assert priced == (
        Decimal(300 * 3 + 600 * Decimal("0.3") + 100 * Decimal("3.75") + 10 * 15) / 1_000_000
    ).quantize(Decimal("0.000000000001"))
    # Hostile usage (cache counts above the prompt) never bills negative input.
    odd = usage_cost_usd(
        prompt_tokens=10,
        completion_tokens=0,
        cache_read_tokens=50,
        cache_write_tokens=50,
        input_price_per_mtok=Decimal("3"),
        output_price_per_mtok=Decimal("15"),
        cache_read_price_per_mtok=Decimal("0.3"),
    )
    assert odd == (Decimal(10) * Decimal("0.3") / 1_000_000).quantize(Decimal("0.000000000001"))
    total = usage_sum([Usage(1, 2, 0, 0), Usage(3, 4, 1, 0, estimated=True)])
    assert (
        total.prompt_tokens,
        total.completion_tokens,
        total.cache_read_tokens,
        total.estimated,
    ) == (4, 6, 1, True)
