"""End to end against a live gateway process (uvicorn on loopback) with the official `openai`
and `anthropic` SDKs and a websocket client, over every provider kind (the built-in mock and
the fake upstream speaking OpenAI, Anthropic, Azure and OpenAI-compatible wire formats):
answers, streams, tools, fallbacks, retries, each fault's client-visible result, disconnects,
and exactly one usage event per request."""

from __future__ import annotations

import json
import time

import anthropic
import httpx
import openai
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from providers.models import ProviderKind
from tests.routing.support import (
    LIVE_ENV,
    caches_clear,
    fake_provider,
    mock_provider,
    model_on,
    route,
    tenant_key,
    usage_events_wait_sync,
    wait_until_sync,
)

pytestmark = pytest.mark.live_server_process

KINDS = [
    ProviderKind.MOCK,
    ProviderKind.OPENAI,
    ProviderKind.ANTHROPIC,
    ProviderKind.AZURE_OPENAI,
    ProviderKind.OPENAI_COMPATIBLE,
]
TOOL_OPENAI = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather of a city",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}}},
    },
}
TOOL_ANTHROPIC = {
    "name": "get_weather",
    "description": "Weather of a city",
    "input_schema": {"type": "object", "properties": {"location": {"type": "string"}}},
}
HELLO = [{"role": "user", "content": "hello"}]


@pytest.fixture
def catalog(transactional_db, fake_upstream_thread):
    """`live-<kind>` for every kind; `live-fallback` (two fake OpenAI deployments);
    `live-retry` (one deployment whose provider retries once); `live-timeout` (answers
    slower than its first-byte timeout)."""
    fake = fake_upstream_thread
    for kind in KINDS:
        provider = (
            mock_provider("live-mock") if kind == ProviderKind.MOCK else fake_provider(fake, kind)
        )
        route(f"live-{kind}", [model_on(provider, f"live-{kind}-model")])
    primary = fake_provider(fake, ProviderKind.OPENAI, name="live-primary")
    secondary = fake_provider(fake, ProviderKind.OPENAI, name="live-secondary")
    route(
        "live-fallback",
        [model_on(primary, "live-primary-model"), model_on(secondary, "live-secondary-model")],
    )
    retrying = fake_provider(fake, ProviderKind.OPENAI, name="live-retrying", max_retries=1)
    route("live-retry", [model_on(retrying, "live-retry-model")])
    slow = fake_provider(fake, ProviderKind.OPENAI, name="live-slow", first_byte_timeout_s=0.5)
    route("live-timeout", [model_on(slow, "live-timeout-model")])
    slow_mock = mock_provider("live-mock-slow", latency_ms=20_000, reply_tokens=400)
    route("live-slow-mock", [model_on(slow_mock, "live-slow-mock-model")])
    tenant_id, key_id, raw = tenant_key()
    caches_clear()
    return {"raw": raw, "fake": fake, "tenant_id": tenant_id}


def _usage_exactly(expected: int) -> list:
    events = usage_events_wait_sync(expected)
    assert len(events) == expected, [(e.endpoint, e.outcome, e.error_type) for e in events]
    assert len({e.request_id for e in events}) == expected
    return events


# -- the SDKs over every provider kind ----------------------------------------------------
def test_openai_sdk_over_every_provider_kind_streams_answers_and_calls_tools(live_gateway, catalog):
    with live_gateway(env=LIVE_ENV) as base:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key=catalog["raw"], max_retries=0)
        for kind in KINDS:
            model = f"live-{kind}"
            completion = client.chat.completions.create(model=model, messages=HELLO)
            text = completion.choices[0].message.content
            assert text, kind
            assert completion.usage.completion_tokens > 0, kind

            stream = client.chat.completions.create(
                model=model,
                messages=HELLO,
                stream=True,
                stream_options={"include_usage": True},
            )
            chunks = list(stream)
            streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            assert streamed == text, kind
            assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0, kind

            if kind == ProviderKind.MOCK:
                continue  # the mock answers text only
            called = client.chat.completions.create(
                model=model, messages=HELLO, tools=[TOOL_OPENAI], tool_choice="required"
            )
            [tool_call] = called.choices[0].message.tool_calls
            assert tool_call.function.name == "get_weather", kind
            assert json.loads(tool_call.function.arguments) == catalog["fake"].tool_arguments
            assert called.choices[0].finish_reason == "tool_calls", kind
            streamed_call = client.chat.completions.create(
                model=model, messages=HELLO, tools=[TOOL_OPENAI], stream=True
            )
            arguments = "".join(
                (c.choices[0].delta.tool_calls or [None])[0].function.arguments or ""
                for c in streamed_call
                if c.choices and c.choices[0].delta.tool_calls
            )
            assert json.loads(arguments) == catalog["fake"].tool_arguments, kind
        requests = len(KINDS) * 2 + (len(KINDS) - 1) * 2
        events = _usage_exactly(requests)
        assert {e.outcome for e in events} == {"ok"}


def test_anthropic_sdk_over_every_provider_kind_streams_answers_and_calls_tools(
    live_gateway, catalog
):
    with live_gateway(env=LIVE_ENV) as base:
        client = anthropic.Anthropic(base_url=base, api_key=catalog["raw"], max_retries=0)
        bearer = anthropic.Anthropic(base_url=base, auth_token=catalog["raw"], max_retries=0)
        for kind in KINDS:
            model = f"live-{kind}"
            message = client.messages.create(
                model=model, max_tokens=200, system="Be brief.", messages=HELLO
            )
            assert message.type == "message" and message.role == "assistant"
            text = message.content[0].text
            assert text, kind
            assert message.stop_reason == "end_turn", kind
            assert message.usage.output_tokens > 0, kind

            with client.messages.stream(model=model, max_tokens=200, messages=HELLO) as stream:
                streamed = "".join(stream.text_stream)
                final = stream.get_final_message()
            assert streamed == text, kind
            assert final.stop_reason == "end_turn", kind
            assert final.usage.output_tokens == message.usage.output_tokens, kind

            assert bearer.messages.create(model=model, max_tokens=20, messages=HELLO).content

            if kind == ProviderKind.MOCK:
                continue
            called = client.messages.create(
                model=model,
                max_tokens=200,
                messages=[{"role": "user", "content": "Weather in Paris?"}],
                tools=[TOOL_ANTHROPIC],
                tool_choice={"type": "any"},
            )
            [tool_use] = [b for b in called.content if b.type == "tool_use"]
            assert tool_use.name == "get_weather", kind
            assert tool_use.input == catalog["fake"].tool_arguments, kind
            assert called.stop_reason == "tool_use", kind
            answered = client.messages.create(
                model=model,
                max_tokens=200,
                tools=[TOOL_ANTHROPIC],
                tool_choice={"type": "none"},
                messages=[
                    {"role": "user", "content": "Weather in Paris?"},
                    {"role": "assistant", "content": called.content},
                    {
                        "role": "user",
                        "content": [
                            {"type": "tool_result", "tool_use_id": tool_use.id, "content": "18C"}
                        ],
                    },
                ],
            )
            assert answered.content[0].type == "text", kind
            with client.messages.stream(
                model=model,
                max_tokens=200,
                messages=HELLO,
                tools=[TOOL_ANTHROPIC],
                tool_choice={"type": "tool", "name": "get_weather"},
            ) as stream:
                final = stream.get_final_message()
            [tool_use] = [b for b in final.content if b.type == "tool_use"]
            assert tool_use.input == catalog["fake"].tool_arguments, kind
        requests = len(KINDS) * 3 + (len(KINDS) - 1) * 3
        events = _usage_exactly(requests)
        assert {e.endpoint for e in events} == {"messages"}
        assert {e.outcome for e in events} == {"ok"}


# -- fallbacks and retries -------------------------------------------------------------------
@pytest.mark.parametrize("fault", ["500", "503", "429:retry_after=30", "reset"])
def test_fallback_to_the_next_step_reports_it_in_headers(live_gateway, catalog, fault):
    fake = catalog["fake"]
    with live_gateway(env=LIVE_ENV) as base:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key=catalog["raw"], max_retries=0)
        fake.script(fault)
        raw = client.chat.completions.with_raw_response.create(
            model="live-fallback", messages=HELLO
        )
        assert raw.headers["x-gateway-fallbacks"] == "1"
        assert raw.headers["x-gateway-model"] == "live-secondary-model"
        assert raw.parse().choices[0].message.content

        fake.script(fault)
        with client.chat.completions.with_streaming_response.create(
            model="live-fallback", messages=HELLO, stream=True
        ) as streamed:
            assert streamed.headers["x-gateway-fallbacks"] == "1"
            assert streamed.headers["x-gateway-model"] == "live-secondary-model"
            assert "".join(c.choices[0].delta.content or "" for c in streamed.parse() if c.choices)
        events = _usage_exactly(2)
        assert [e.fallbacks for e in events] == [1, 1]
        assert [e.outcome for e in events] == ["ok", "ok"]


def test_retry_honours_retry_after_on_the_same_deployment(live_gateway, catalog):
    fake = catalog["fake"]
    with live_gateway(env=LIVE_ENV) as base:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key=catalog["raw"], max_retries=0)
        fake.reset()
        fake.script("429:retry_after=1")
        raw = client.chat.completions.with_raw_response.create(model="live-retry", messages=HELLO)
        assert raw.http_response.status_code == 200
        assert raw.headers["x-gateway-fallbacks"] == "0"
        assert len(fake.requests) == 2  # the 429, then the retry after the pause it asked for

        # A pause longer than the gateway will hold a client: no retry, the 429 goes back.
        fake.reset()
        fake.script("429:retry_after=60")
        with pytest.raises(openai.RateLimitError) as caught:
            client.chat.completions.create(model="live-retry", messages=HELLO)
        assert caught.value.response.headers["retry-after"] == "60"
        assert len(fake.requests) == 1
        events = _usage_exactly(2)
        assert [(e.outcome, e.status_code) for e in events] == [("ok", 200), ("error", 429)]


# -- faults, as each client sees them --------------------------------------------------------
FAULTS = [
    # fault, route, OpenAI-side status, error code, Anthropic error type
    ("500", "live-openai", 502, "upstream_unavailable", "api_error"),
    ("529", "live-anthropic", 502, "upstream_unavailable", "api_error"),
    ("429:retry_after=7", "live-openai", 429, "upstream_rate_limited", "rate_limit_error"),
    ("401", "live-openai", 502, "upstream_auth_failed", "api_error"),
    ("reset", "live-openai", 502, "upstream_unavailable", "api_error"),
    ("malformed", "live-openai", 502, "upstream_malformed_response", "api_error"),
    ("context_length", "live-openai", 400, "context_length_exceeded", "invalid_request_error"),
    ("hang_headers", "live-timeout", 504, "upstream_timeout", "timeout_error"),
]


def test_each_fault_gives_the_right_status_and_error_shape_never_a_trace(live_gateway, catalog):
    fake = catalog["fake"]
    # 32 failures in a row on one deployment: keep its breaker out of this test.
    with live_gateway(env={**LIVE_ENV, "GATEWAY_BREAKER_MIN_VOLUME": "1000"}) as base:
        http = httpx.Client(base_url=base, timeout=30)
        auth = {"authorization": f"Bearer {catalog['raw']}"}
        for fault, model, status, code, anthropic_type in FAULTS:
            for stream in (False, True):
                fake.script(fault)
                response = http.post(
                    "/v1/chat/completions",
                    headers=auth,
                    json={"model": model, "messages": HELLO, "stream": stream},
                )
                if stream and fault == "malformed":
                    # Broken after the first event: the stream has begun, the error is in-band.
                    assert response.status_code == 200
                    events = [
                        line[6:] for line in response.text.splitlines() if line.startswith("data: ")
                    ]
                    assert events[-1] == "[DONE]"
                    assert json.loads(events[-2])["error"]["code"] == code
                    fake.script(fault)
                    response = http.post(
                        "/v1/messages",
                        headers={"x-api-key": catalog["raw"]},
                        json={"model": model, "max_tokens": 50, "messages": HELLO, "stream": True},
                    )
                    assert response.status_code == 200
                    last = response.text.strip().split("\n\n")[-1]
                    assert last.startswith("event: error")
                    assert json.loads(last.split("data: ", 1)[1])["error"]["type"] == anthropic_type
                    continue
                assert response.status_code == status, (fault, stream, response.text)
                body = response.json()
                assert set(body) == {"error"}, fault
                assert set(body["error"]) == {"message", "type", "param", "code"}, fault
                assert body["error"]["code"] == code, (fault, body)
                assert "Traceback" not in response.text
                assert "sk-fake" not in response.text  # the upstream's key never leaks
                if status == 429:
                    assert response.headers["retry-after"] == "7"

                fake.script(fault)
                response = http.post(
                    "/v1/messages",
                    headers={"x-api-key": catalog["raw"]},
                    json={"model": model, "max_tokens": 50, "messages": HELLO, "stream": stream},
                )
                assert response.status_code == status, (fault, stream, response.text)
                body = response.json()
                assert body == {
                    "type": "error",
                    "error": {"type": anthropic_type, "message": body["error"]["message"]},
                }, fault
                assert "sk-fake" not in response.text
        events = _usage_exactly(len(FAULTS) * 4)
        assert {e.outcome for e in events} == {"error"}


def test_sdks_raise_their_own_typed_errors(live_gateway, catalog):
    fake = catalog["fake"]
    with live_gateway(env=LIVE_ENV) as base:
        oa = openai.OpenAI(base_url=f"{base}/v1", api_key=catalog["raw"], max_retries=0)
        an = anthropic.Anthropic(base_url=base, api_key=catalog["raw"], max_retries=0)
        with pytest.raises(openai.NotFoundError):
            oa.chat.completions.create(model="nope", messages=HELLO)
        with pytest.raises(anthropic.NotFoundError) as caught:
            an.messages.create(model="nope", max_tokens=10, messages=HELLO)
        assert caught.value.body["error"]["type"] == "not_found_error"
        with pytest.raises(anthropic.AuthenticationError):
            anthropic.Anthropic(base_url=base, api_key="gw-wrong", max_retries=0).messages.create(
                model="live-mock", max_tokens=10, messages=HELLO
            )
        with pytest.raises(anthropic.BadRequestError):
            an.messages.create(model="live-mock", max_tokens=0, messages=HELLO)
        fake.script("500")
        with pytest.raises(anthropic.InternalServerError):
            an.messages.create(model="live-openai", max_tokens=10, messages=HELLO)
        fake.script("429:retry_after=5")
        with pytest.raises(anthropic.RateLimitError):
            an.messages.create(model="live-openai", max_tokens=10, messages=HELLO)
        # Dies mid-stream: the SDK raises on the in-band error event, after some text.
        fake.script("cut:after=4")
        received = []
        with pytest.raises(anthropic.APIStatusError):  # noqa: PT012 - the error comes mid-iteration
            with an.messages.stream(model="live-openai", max_tokens=100, messages=HELLO) as stream:
                for text in stream.text_stream:
                    received.append(text)
        assert received
        fake.script("cut:after=4")
        with pytest.raises(openai.APIError):  # noqa: PT012
            for _chunk in oa.chat.completions.create(
                model="live-openai", messages=HELLO, stream=True
            ):
                pass
        # The wrong key's 401 leaves no row; the other refusals one each.
        events = _usage_exactly(7)
        assert [e.outcome for e in events].count("rejected") == 3


# -- disconnects -----------------------------------------------------------------------------
def test_client_disconnect_closes_the_upstream_at_once_and_records_partial_usage(
    live_gateway, catalog
):
    fake = catalog["fake"]
    with live_gateway(env=LIVE_ENV) as base:
        fake.script("hang_stream:after=3")
        assert fake.open_connections == 0
        with httpx.Client(base_url=base, timeout=30) as http:
            with http.stream(
                "POST",
                "/v1/chat/completions",
                headers={"authorization": f"Bearer {catalog['raw']}"},
                json={"model": "live-openai", "messages": HELLO, "stream": True},
            ) as response:
                assert response.status_code == 200
                lines = response.iter_lines()
                received = [line for _, line in zip(range(3), lines, strict=False)]
                assert any(line.startswith("data: ") for line in received)
                assert fake.open_connections == 1
                response.close()  # the client goes away mid-stream
                closed_at = time.monotonic()
        assert wait_until_sync(lambda: fake.open_connections == 0, timeout_s=5)
        elapsed = time.monotonic() - closed_at
        assert elapsed < 0.1, f"upstream still open {elapsed * 1000:.0f} ms after the client left"
        [event] = _usage_exactly(1)
        assert event.outcome == "cancelled"
        assert event.error_type == "client_disconnected"
        # The fake sent 3 events (role, then 2 words) before hanging: those tokens were made.
        assert event.tokens_out >= 1
        assert event.cost_usd > 0


# -- websocket ---------------------------------------------------------------------------------
def _ws_until_terminal(ws, request_id: str) -> list[dict]:
    messages = []
    for _ in range(2000):
        message = json.loads(ws.recv(timeout=10))
        if message.get("id") == request_id:
            messages.append(message)
            if message["type"] in ("done", "error"):
                return messages
    raise AssertionError("no terminal message")


def test_websocket_chat_survives_idle_periods_and_cancels(live_gateway, catalog):
    """An idle socket is held longer than redis-py's default 5 s socket timeout (channels_redis
    #422 would tear it down with 1011), then used: requests stream, cancel settles."""
    with live_gateway(env=LIVE_ENV) as base:
        url = base.replace("http://", "ws://") + "/ws/v1/chat"
        with ws_connect(url, additional_headers={"x-api-key": catalog["raw"]}) as ws:
            assert json.loads(ws.recv(timeout=10)) == {"type": "auth_ok"}
            with pytest.raises(TimeoutError):
                ws.recv(timeout=6.5)  # nothing arrives, and the socket is not closed

            ws.send(
                json.dumps(
                    {"type": "request", "id": "1", "model": "live-openai", "messages": HELLO}
                )
            )
            messages = _ws_until_terminal(ws, "1")
            assert messages[-1]["type"] == "done"
            text = "".join(m.get("content", "") for m in messages[:-1])
            assert text == catalog["fake"].reply_text
            assert messages[-1]["usage"]["completion_tokens"] > 0

            ws.send(
                json.dumps(
                    {"type": "request", "id": "2", "model": "live-slow-mock", "messages": HELLO}
                )
            )
            for _ in range(3):
                assert json.loads(ws.recv(timeout=10))["type"] == "delta"
            ws.send(json.dumps({"type": "cancel", "id": "2"}))
            done = _ws_until_terminal(ws, "2")[-1]
            assert done["type"] == "done" and done["finish_reason"] == "cancelled"

            ws.send(json.dumps({"type": "request", "id": "3", "model": "nope", "messages": HELLO}))
            error = _ws_until_terminal(ws, "3")[-1]
            assert error["type"] == "error" and error["error"]["code"] == "model_not_found"
        events = _usage_exactly(3)
        assert [e.outcome for e in events] == ["ok", "cancelled", "rejected"]
        assert events[1].tokens_out >= 3


def test_websocket_auth_by_first_message_and_refusal(live_gateway, catalog):
    with live_gateway(env=LIVE_ENV) as base:
        url = base.replace("http://", "ws://") + "/ws/v1/chat"
        with ws_connect(url) as ws:
            ws.send(json.dumps({"type": "auth", "api_key": catalog["raw"]}))
            assert json.loads(ws.recv(timeout=10)) == {"type": "auth_ok"}
            ws.send(
                json.dumps({"type": "request", "id": 7, "model": "live-mock", "messages": HELLO})
            )
            assert _ws_until_terminal(ws, 7)[-1]["type"] == "done"
        with ws_connect(url, additional_headers={"authorization": "Bearer gw-wrong"}) as ws:
            message = json.loads(ws.recv(timeout=10))
            assert message["error"]["code"] == "invalid_api_key"
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=10)
            assert closed.value.rcvd.code == 4401
        _usage_exactly(1)
