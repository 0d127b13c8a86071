"""The Responses API, legacy completions, models.retrieve and n > 1, driven by the official
openai SDK through a live gateway, over the mock and over the fake upstream (OpenAI and
Anthropic kinds): one usage event per request, billed per choice."""

from __future__ import annotations

import json
import time

import openai
import pytest
from pydantic import BaseModel

from providers.models import ProviderKind
from providers.tokens import count_message_tokens
from tests.routing.support import (
    LIVE_ENV,
    caches_clear,
    fake_provider,
    mock_provider,
    model_on,
    route,
    tenant_key,
    usage_events_wait_sync,
)

pytestmark = pytest.mark.live_server_process

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
}


class Forecast(BaseModel):
    city: str
    high: int


@pytest.fixture
def catalog(transactional_db, fake_upstream_thread):
    fake = fake_upstream_thread
    route("r-mock", [model_on(mock_provider("resp-mock"), "r-mock-model")])
    route("r-openai", [model_on(fake_provider(fake, ProviderKind.OPENAI), "r-openai-model")])
    route("r-claude", [model_on(fake_provider(fake, ProviderKind.ANTHROPIC), "r-claude-model")])
    _, _, raw = tenant_key()
    caches_clear()
    return {"raw": raw, "fake": fake}


def _events(expected: int, timeout_s: float = 10.0) -> list:
    """This test's usage events, waited for (bounded): a previous test's server may still be
    writing its own, which are left out."""
    deadline = time.monotonic() + timeout_s
    while True:
        events = [
            e
            for e in usage_events_wait_sync(0)
            if e.route in ("r-mock", "r-openai", "r-claude", "no-such-model") or not e.route
        ]
        if len(events) >= expected or time.monotonic() > deadline:
            return events
        time.sleep(0.05)


def _client(base: str, raw: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key=raw, max_retries=0)


def test_responses_create_and_stream_over_every_kind(live_gateway, catalog):
    with live_gateway(env=LIVE_ENV) as base:
        client = _client(base, catalog["raw"])
        for model in ("r-mock", "r-openai", "r-claude"):
            response = client.responses.create(
                model=model, instructions="Be brief.", input="Say hello", max_output_tokens=64
            )
            assert response.status == "completed", model
            assert response.output_text, model
            assert response.usage.output_tokens > 0 and response.id.startswith("resp_")

            with client.responses.stream(model=model, input="Say hello") as stream:
                deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
                final = stream.get_final_response()
            assert "".join(deltas) == final.output_text == response.output_text, model
            assert final.usage.total_tokens > 0

            raw_events = list(client.responses.create(model=model, input="Say hello", stream=True))
            kinds = [e.type for e in raw_events]
            assert kinds[:2] == ["response.created", "response.in_progress"]
            assert kinds[-1] == "response.completed"
            assert [e.sequence_number for e in raw_events] == list(range(len(raw_events)))
            assert len({e.response.id for e in raw_events if hasattr(e, "response")}) == 1
        events = _events(9)
        assert len(events) == 9
        assert {e.endpoint for e in events} == {"responses"}
        assert {e.outcome for e in events} == {"ok"}


def test_responses_tool_loop_with_function_call_output_items(live_gateway, catalog):
    with live_gateway(env=LIVE_ENV) as base:
        client = _client(base, catalog["raw"])
        for model in ("r-mock", "r-openai", "r-claude"):
            first = client.responses.create(
                model=model, input="Weather in Paris?", tools=[WEATHER], tool_choice="required"
            )
            [call] = [item for item in first.output if item.type == "function_call"]
            assert call.name == "get_weather" and isinstance(json.loads(call.arguments), dict)

            with client.responses.stream(
                model=model, input="Weather in Paris?", tools=[WEATHER], tool_choice="required"
            ) as stream:
                final = stream.get_final_response()
            [streamed] = [item for item in final.output if item.type == "function_call"]
            assert json.loads(streamed.arguments) == json.loads(call.arguments), model

            second = client.responses.create(
                model=model,
                input=[
                    {"role": "user", "content": "Weather in Paris?"},
                    {
                        "type": "function_call",
                        "call_id": call.call_id,
                        "name": call.name,
                        "arguments": call.arguments,
                    },
                    {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"},
                ],
                tools=[WEATHER],
            )
            assert second.status == "completed"
            if model == "r-mock":
                assert second.output_text  # after a tool result the mock answers text
        # the tool result reached the Anthropic upstream as a tool_result block
        sent = [r.body for r in catalog["fake"].requests if r.path == "/v1/messages"][-1]
        blocks = [b for m in sent["messages"] for b in m["content"] if isinstance(b, dict)]
        assert any(
            b.get("type") == "tool_result" and b["tool_use_id"] == call.call_id for b in blocks
        )


def test_responses_structured_output_over_the_mock(live_gateway, catalog):
    with live_gateway(env=LIVE_ENV) as base:
        client = _client(base, catalog["raw"])
        parsed = client.responses.parse(model="r-mock", input="Forecast?", text_format=Forecast)
        assert isinstance(parsed.output_parsed, Forecast)
        client.responses.create(
            model="r-openai",
            input="Forecast?",
            text={
                "format": {
                    "type": "json_schema",
                    "name": "f",
                    "schema": Forecast.model_json_schema(),
                }
            },
        )
        sent = catalog["fake"].requests[-1].body
        assert sent["response_format"]["type"] == "json_schema"
        assert sent["response_format"]["json_schema"]["name"] == "f"


def test_responses_refuse_stored_state_and_hosted_tools_with_a_clear_400(live_gateway, catalog):
    with live_gateway(env=LIVE_ENV) as base:
        client = _client(base, catalog["raw"])
        with pytest.raises(openai.BadRequestError, match="does not store responses"):
            client.responses.create(model="r-mock", input="hi", previous_response_id="resp_1")
        with pytest.raises(openai.BadRequestError, match="store=true is not supported"):
            client.responses.create(model="r-mock", input="hi", store=True)
        with pytest.raises(openai.BadRequestError, match="web_search"):
            client.responses.create(model="r-mock", input="hi", tools=[{"type": "web_search"}])
        with pytest.raises(openai.BadRequestError):
            client.responses.create(model="r-mock", input=[{"type": "item_reference", "id": "x"}])
        with pytest.raises(openai.NotFoundError):
            client.responses.create(model="no-such-model", input="hi")
        with pytest.raises(openai.NotFoundError, match="does not store responses"):
            client.responses.retrieve("resp_123")
        with pytest.raises(openai.NotFoundError, match="does not store responses"):
            client.responses.delete("resp_123")
        bad = openai.OpenAI(base_url=f"{base}/v1", api_key="sk-wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.responses.create(model="r-mock", input="hi")
        # Five refusals with the tenant's key; the stranger's key leaves no row (metrics only).
        events = [e for e in _events(5) if e.endpoint == "responses"]
        assert len(events) == 5
        assert {e.outcome for e in events} == {"rejected"}


def test_completions_models_retrieve_and_n_choices(live_gateway, catalog):
    with live_gateway(env=LIVE_ENV) as base:
        client = _client(base, catalog["raw"])
        for model in ("r-mock", "r-openai", "r-claude"):
            completion = client.completions.create(model=model, prompt="Once upon", max_tokens=8)
            assert completion.object == "text_completion" and completion.choices[0].text
            streamed = client.completions.create(
                model=model, prompt="Once upon", max_tokens=8, stream=True
            )
            text = "".join(c.choices[0].text for c in streamed if c.choices)
            assert text == completion.choices[0].text, model

            many = client.completions.create(model=model, prompt=["a", "b"], n=2, max_tokens=4)
            assert [c.index for c in many.choices] == [0, 1, 2, 3]

            chat = client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "hi"}], n=3
            )
            assert [c.index for c in chat.choices] == [0, 1, 2]
            assert all(c.message.content for c in chat.choices)

        assert client.models.retrieve("r-mock").id == "r-mock"
        with pytest.raises(openai.NotFoundError):
            client.models.retrieve("nope")

        with pytest.raises(openai.BadRequestError, match="fan-out"):
            client.chat.completions.create(
                model="r-claude", messages=[{"role": "user", "content": "hi"}], n=2, stream=True
            )
        with pytest.raises(openai.BadRequestError, match="token-array"):
            client.completions.create(model="r-mock", prompt=[1, 2, 3])
    # The OpenAI-kind upstream got n natively (one call), the Anthropic one a fan-out.
    sent = [
        r.body
        for r in catalog["fake"].requests
        if isinstance(r.body, dict) and r.body.get("n") == 3
    ]
    assert len(sent) == 1
    events = _events(3 * 4 + 2)
    chats = {e.route: e for e in events if e.endpoint == "chat" and e.outcome == "ok"}
    one_prompt = count_message_tokens([{"role": "user", "content": "hi"}])
    # billed per choice: a fan-out bills three calls, each with its prompt and its answer
    assert chats["r-mock"].tokens_in == 3 * one_prompt
    assert chats["r-claude"].tokens_in == 3 * catalog["fake"].prompt_tokens
    # native n: one call, the prompt once and three answers (as the upstream reports)
    assert chats["r-openai"].tokens_in == catalog["fake"].prompt_tokens
    assert chats["r-openai"].tokens_out > 0 and chats["r-openai"].tokens_out % 3 == 0
    assert all(e.cost_usd > 0 for e in chats.values())


def test_responses_upstream_failures_before_and_during_the_stream(live_gateway, catalog):
    import httpx

    fake = catalog["fake"]
    with live_gateway(env=LIVE_ENV) as base:
        client = _client(base, catalog["raw"])
        fake.script("500")
        with pytest.raises(openai.InternalServerError) as caught:
            client.responses.create(model="r-openai", input="hi", stream=True)
        assert caught.value.status_code == 502
        assert caught.value.body["code"] == "upstream_unavailable"

        fake.script("cut:after=3")
        http = httpx.Client(base_url=base, timeout=30)
        response = http.post(
            "/v1/responses",
            headers={"authorization": f"Bearer {catalog['raw']}"},
            json={"model": "r-openai", "input": "hi", "stream": True},
        )
        assert response.status_code == 200
        kinds = [
            json.loads(line[6:])["type"]
            for line in response.text.splitlines()
            if line.startswith("data: ")
        ]
        assert kinds[0] == "response.created" and kinds[-2:] == ["error", "response.failed"]
        assert "response.completed" not in kinds
        events = [e for e in _events(2) if e.route == "r-openai"]
        assert [e.outcome for e in events] == ["error", "error"]
        assert {e.endpoint for e in events} == {"responses"}
