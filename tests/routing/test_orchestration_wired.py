"""The orchestration parts wired into real requests, over real HTTP against the fake upstream
through the endpoints: capabilities honoured per step, auth refusals never retried, a chain's
attempt and wait caps, the route's default message, and the x-gateway-strategy/attempts
headers on every answer."""

from __future__ import annotations

import orjson
import pytest
from django.test import AsyncClient

from providers.models import ProviderKind
from tests.routing.support import (
    caches_clear,
    fake_provider,
    model_on,
    route,
    tenant_key,
    usage_events_wait,
)


@pytest.fixture
def env(transactional_db, settings, fake_upstream):
    settings.GATEWAY_USAGE_WRITE_MODE = "direct"
    _, _, raw = tenant_key()
    return {"auth": {"Authorization": f"Bearer {raw}"}, "fake": fake_upstream}


async def _post(path: str, body: dict, auth: dict[str, str]):
    return await AsyncClient().post(
        path, data=orjson.dumps(body), content_type="application/json", headers=auth
    )


def _chat(model: str, **fields) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **fields}


# -- 1. capabilities ------------------------------------------------------------------------------
@pytest.fixture
def capable(env):
    fake = env["fake"]
    plain = fake_provider(fake, ProviderKind.OPENAI, name="cap-plain")
    rich = fake_provider(fake, ProviderKind.OPENAI, name="cap-rich")
    bare = model_on(
        plain, "cap-bare", supports_tools=False, supports_json_mode=False, supports_embeddings=False
    )
    full = model_on(rich, "cap-full", supports_vision=True, supports_embeddings=True)
    route("cap-chain", [bare, full])
    route("cap-bare-only", [model_on(plain, "cap-bare-2", upstream="cap-bare", **_NOTHING)])
    caches_clear()
    return env


_NOTHING = {"supports_tools": False, "supports_json_mode": False, "supports_embeddings": False}
TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
IMAGE = [
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "what is this"},
            {"type": "image_url", "image_url": {"url": "https://example.com/x.png"}},
        ],
    }
]


async def test_embeddings_skip_steps_that_do_not_declare_them(capable):
    fake = capable["fake"]
    response = await _post(
        "/v1/embeddings", {"model": "cap-chain", "input": ["a"]}, capable["auth"]
    )
    assert response.status_code == 200, response.content
    assert response["x-gateway-model"] == "cap-full"
    assert response["x-gateway-fallbacks"] == "0"
    assert [r.body["model"] for r in fake.requests] == ["cap-full"]


@pytest.mark.parametrize(
    ("fields", "needed"),
    [
        ({"tools": TOOLS}, "tools"),
        ({"response_format": {"type": "json_object"}}, "json_mode"),
        ({"messages": IMAGE}, "vision"),
    ],
)
async def test_chat_needing_a_capability_goes_only_to_models_declaring_it(capable, fields, needed):
    fake = capable["fake"]
    response = await _post("/v1/chat/completions", _chat("cap-chain", **fields), capable["auth"])
    assert response.status_code == 200, response.content
    assert response["x-gateway-model"] == "cap-full"
    assert [r.body["model"] for r in fake.requests] == ["cap-full"]


async def test_a_plain_chat_still_starts_with_the_first_step(capable):
    response = await _post("/v1/chat/completions", _chat("cap-chain"), capable["auth"])
    assert response.status_code == 200
    assert response["x-gateway-model"] == "cap-bare"


@pytest.mark.parametrize(
    ("path", "body", "needed"),
    [
        ("/v1/embeddings", {"model": "cap-bare-only", "input": ["a"]}, "embeddings"),
        ("/v1/chat/completions", _chat("cap-bare-only", tools=TOOLS), "tools"),
        ("/v1/chat/completions", _chat("cap-bare-only", messages=IMAGE), "vision"),
        (
            "/v1/chat/completions",
            _chat("cap-bare-only", response_format={"type": "json_schema", "json_schema": {}}),
            "json_mode",
        ),
    ],
)
async def test_no_capable_step_is_a_400_without_an_upstream_call(capable, path, body, needed):
    fake = capable["fake"]
    response = await _post(path, body, capable["auth"])
    assert response.status_code == 400
    error = orjson.loads(response.content)["error"]
    assert error["code"] == "model_capability_missing"
    assert needed in error["message"] and "cap-bare-2" in error["message"]
    assert fake.requests == []
    [event] = await usage_events_wait(1)
    assert (event.outcome, event.status_code, event.error_type) == (
        "rejected",
        400,
        "model_capability_missing",
    )
    assert event.cost_usd == 0


# -- 2. retries never multiply ------------------------------------------------------------------
def _route_set(name: str, **fields) -> None:
    from routing.models import Route

    Route.objects.filter(name=name).update(**fields)


@pytest.fixture
def chain(env):
    """Three steps on three providers of the fake upstream, each allowed two retries."""
    fake = env["fake"]
    models = [
        model_on(fake_provider(fake, ProviderKind.OPENAI, name=f"ch-{i}", max_retries=2), f"ch-{i}")
        for i in range(3)
    ]
    route("ch-chain", models)
    route("ch-capped", models)
    _route_set("ch-capped", options={"max_attempts": 2, "max_total_wait_ms": 100})
    caches_clear()
    return env


async def test_an_upstream_401_is_not_retried_on_the_same_deployment(chain):
    fake = chain["fake"]
    fake.script("401")
    response = await _post("/v1/chat/completions", _chat("ch-chain"), chain["auth"])
    assert response.status_code == 200
    # Not retried on ch-0 (it had two retries left): straight to the next step.
    assert [r.body["model"] for r in fake.requests] == ["ch-0", "ch-1"]
    assert response["x-gateway-model"] == "ch-1"
    assert response["x-should-retry"] == "false"


async def test_a_403_on_every_step_tries_each_once_and_says_do_not_retry(chain):
    fake = chain["fake"]
    fake.script("403", "403", "403")
    response = await _post("/v1/chat/completions", _chat("ch-chain"), chain["auth"])
    assert response.status_code >= 400
    assert [r.body["model"] for r in fake.requests] == ["ch-0", "ch-1", "ch-2"]
    assert response["x-should-retry"] == "false"


async def test_a_chain_stops_at_the_routes_attempt_cap(chain):
    fake = chain["fake"]
    fake.script(*["500"] * 9)
    response = await _post("/v1/chat/completions", _chat("ch-capped"), chain["auth"])
    assert response.status_code == 502
    # 3 steps x 3 tries would be 9 attempts; the route caps the chain at 2.
    assert len(fake.requests) == 2
    assert response["x-should-retry"] == "false"
    assert response["x-gateway-attempts"] == "2"
    [event] = await usage_events_wait(1)
    assert event.outcome == "error"
    assert await event.attempts.acount() == 2


async def test_a_backoff_over_the_total_wait_cap_falls_back_at_once(chain):
    fake = chain["fake"]
    # ch-0 asks for a 1 s pause: over the route's 100 ms of total wait, so no retry on ch-0.
    fake.script("429:retry_after=1")
    response = await _post("/v1/chat/completions", _chat("ch-capped"), chain["auth"])
    assert response.status_code == 200
    assert [r.body["model"] for r in fake.requests] == ["ch-0", "ch-1"]
    assert response["x-should-retry"] == "false"


async def test_without_a_cap_the_same_pause_is_waited_on_the_same_deployment(chain):
    fake = chain["fake"]
    fake.script("429:retry_after=0")
    response = await _post("/v1/chat/completions", _chat("ch-chain"), chain["auth"])
    assert response.status_code == 200
    assert [r.body["model"] for r in fake.requests] == ["ch-0", "ch-0"]


async def test_a_first_hand_answer_does_not_tell_the_client_anything_about_retrying(chain):
    response = await _post("/v1/chat/completions", _chat("ch-chain"), chain["auth"])
    assert response.status_code == 200
    assert "x-should-retry" not in response


# -- 3. the route's default message -------------------------------------------------------------
SORRY = "We are busy right now; please try again in a minute."


@pytest.fixture
def defaulted(env):
    fake = env["fake"]
    models = [
        model_on(fake_provider(fake, ProviderKind.OPENAI, name=f"dm-{i}"), f"dm-{i}")
        for i in range(2)
    ]
    route("dm-chain", models)
    _route_set("dm-chain", default_message=SORRY)
    route("dm-plain", models)
    anthropic = fake_provider(fake, ProviderKind.ANTHROPIC, name="dm-claude")
    route("dm-claude", [model_on(anthropic, "dm-claude-model")])
    _route_set("dm-claude", default_message=SORRY)
    caches_clear()
    return env


async def test_every_step_failing_answers_the_default_message_billed_zero(defaulted):
    fake = defaulted["fake"]
    fake.script("500", "503")
    response = await _post("/v1/chat/completions", _chat("dm-chain"), defaulted["auth"])
    assert response.status_code == 200, response.content
    body = orjson.loads(response.content)
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"] == SORRY
    assert response["x-gateway-default-message"] == "true"
    assert response["x-gateway-cost-usd"] == "0"
    assert response["x-gateway-attempts"] == "2"
    assert len(fake.requests) == 2
    [event] = await usage_events_wait(1)
    assert (event.outcome, event.status_code, event.error_type) == ("error", 200, "default_message")
    assert event.cost_usd == 0
    assert await event.attempts.acount() == 2


async def test_the_default_message_streams_in_the_endpoints_shape(defaulted):
    fake = defaulted["fake"]
    fake.script("500", "500")
    response = await _post(
        "/v1/chat/completions", _chat("dm-chain", stream=True), defaulted["auth"]
    )
    assert response.status_code == 200
    assert response["x-gateway-default-message"] == "true"
    text = b"".join([part async for part in response.streaming_content]).decode()
    deltas = [
        orjson.loads(line[6:])["choices"][0]["delta"].get("content")
        for line in text.splitlines()
        if line.startswith("data: {")
    ]
    assert "".join(d for d in deltas if d) == SORRY
    assert text.rstrip().endswith("data: [DONE]")
    [event] = await usage_events_wait(1)
    assert (event.outcome, event.status_code, event.cost_usd) == ("error", 200, 0)


async def test_the_default_message_answers_in_anthropics_shape_on_messages(defaulted):
    fake = defaulted["fake"]
    fake.script("529")
    response = await _post(
        "/v1/messages",
        {"model": "dm-claude", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]},
        defaulted["auth"],
    )
    assert response.status_code == 200, response.content
    body = orjson.loads(response.content)
    assert body["type"] == "message" and body["content"][0]["text"] == SORRY
    assert response["x-gateway-default-message"] == "true"


async def test_without_a_default_message_the_last_error_says_do_not_retry(defaulted):
    fake = defaulted["fake"]
    fake.script("500", "503")
    response = await _post("/v1/chat/completions", _chat("dm-plain"), defaulted["auth"])
    assert response.status_code in (502, 503)
    assert response["x-should-retry"] == "false"
    assert "x-gateway-default-message" not in response


async def test_a_request_the_upstream_refuses_as_invalid_is_not_hidden_by_the_default(defaulted):
    fake = defaulted["fake"]
    fake.script("400")
    response = await _post("/v1/chat/completions", _chat("dm-chain"), defaulted["auth"])
    assert response.status_code == 400
    assert "x-gateway-default-message" not in response
    assert len(fake.requests) == 1


# -- 4. every answer says how it was routed -------------------------------------------------------
@pytest.fixture
def explained(env):
    fake = env["fake"]
    first = fake_provider(fake, ProviderKind.OPENAI, name="ex-a")
    second = fake_provider(fake, ProviderKind.OPENAI, name="ex-b")
    models = [
        model_on(first, "ex-a", supports_embeddings=True),
        model_on(second, "ex-b", supports_embeddings=True),
    ]
    route("ex-chain", models)
    route("ex-split", models, strategy="loadbalance")
    anthropic = fake_provider(fake, ProviderKind.ANTHROPIC, name="ex-claude")
    route("ex-claude", [model_on(anthropic, "ex-claude-model")])
    caches_clear()
    return env


def _routing_headers(response) -> tuple[str, str, str, str]:
    return (
        response["x-gateway-strategy"],
        response["x-gateway-attempts"],
        response["x-gateway-fallbacks"],
        response["x-gateway-model"],
    )


async def test_a_fallback_answer_names_its_strategy_and_counts_its_attempts(explained):
    explained["fake"].script("502")
    response = await _post("/v1/chat/completions", _chat("ex-chain"), explained["auth"])
    assert response.status_code == 200
    assert _routing_headers(response) == ("fallback", "2", "1", "ex-b")
    assert response["x-gateway-provider"] == "ex-b"


async def test_a_first_hand_answer_counts_one_attempt(explained):
    response = await _post("/v1/chat/completions", _chat("ex-chain"), explained["auth"])
    assert _routing_headers(response) == ("fallback", "1", "0", "ex-a")


async def test_a_loadbalanced_answer_names_loadbalance(explained):
    response = await _post("/v1/chat/completions", _chat("ex-split"), explained["auth"])
    assert response.status_code == 200
    assert response["x-gateway-strategy"] == "loadbalance"
    assert response["x-gateway-attempts"] == "1"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", _chat("ex-chain", stream=True)),
        ("/v1/embeddings", {"model": "ex-chain", "input": ["a"]}),
        ("/api/v1/generate", {"model": "ex-chain", "prompt": "hi"}),
        (
            "/v1/messages",
            {"model": "ex-claude", "max_tokens": 9, "messages": [{"role": "user", "content": "x"}]},
        ),
    ],
)
async def test_every_endpoint_carries_the_routing_headers(explained, path, body):
    response = await _post(path, body, explained["auth"])
    assert response.status_code == 200, response.content
    if getattr(response, "streaming", False):
        _ = [part async for part in response.streaming_content]
    assert response["x-gateway-strategy"] == "fallback"
    assert response["x-gateway-attempts"] == "1"
    assert response["x-gateway-model"] in ("ex-a", "ex-claude-model")


async def test_an_error_answer_carries_them_too(explained):
    explained["fake"].script("500", "500")
    response = await _post("/v1/chat/completions", _chat("ex-chain"), explained["auth"])
    assert response.status_code == 502
    assert response["x-gateway-strategy"] == "fallback"
    assert response["x-gateway-attempts"] == "2"
    assert response["x-gateway-fallbacks"] == "1"


# -- 5. the orchestration seed's native API --------------------------------------------------------
@pytest.fixture
def seeded(env):
    from decimal import Decimal

    from tests.factories import ModelFactory

    fake = env["fake"]

    def model(name: str, price_in: str, price_out: str, quality: float):
        return ModelFactory(
            name=name,
            provider=fake_provider(fake, ProviderKind.OPENAI, name=f"p-{name}"),
            upstream_model=name,
            input_price_per_mtok=Decimal(price_in),
            output_price_per_mtok=Decimal(price_out),
            quality={"summarize": quality, "sentiment": quality},
        )

    cheap = model("seed-mini", "0.15", "0.60", 0.6)
    dear = model("seed-large", "5.00", "15.00", 0.95)
    route("seed-route", [dear, cheap])
    caches_clear()
    return env


TEXT = "The quarterly report shows revenue grew 12% while costs fell. " * 5


async def test_the_seed_request_without_a_model_is_routed_by_preference(seeded):
    fake = seeded["fake"]
    body = {"task": "summarize", "model_preference": "cheap", "text": TEXT}
    response = await _post("/api/v1/generate", body, seeded["auth"])
    assert response.status_code == 200, response.content
    answer = orjson.loads(response.content)
    assert answer["success"] is True and answer["result"]
    assert answer["request_id"].startswith("req_")
    routing = answer["routing"]
    assert routing["selected_model"] == "seed-mini"
    assert routing["task"] == "summarize" and routing["strategy"] == "scored"
    for name in ("reason", "cost_score", "latency_score", "quality_score", "final_score"):
        assert name in routing
    assert {c["model"] for c in routing["candidates"]} == {"seed-mini", "seed-large"}
    usage = answer["usage"]
    assert usage["input_tokens"] > 0 and usage["total_cost_usd"] > 0
    # Against the dearest candidate that could have served it.
    assert usage["savings_usd"] > 0
    assert set(answer["performance"]) == {"total_time_ms", "routing_time_ms", "inference_time_ms"}
    # The task's template went upstream: our system prompt, then the text.
    sent = fake.requests[0].body["messages"]
    assert sent[0]["role"] == "system" and "summarize" in sent[0]["content"]
    assert TEXT.strip() in sent[-1]["content"]
    assert response["x-gateway-model"] == "seed-mini"
    [event] = await usage_events_wait(1)
    assert event.route == "auto" and event.endpoint == "generate" and event.outcome == "ok"


async def test_best_prefers_the_higher_quality_model(seeded):
    body = {"task": "summarize", "model_preference": "best", "text": TEXT}
    response = await _post("/api/v1/generate", body, seeded["auth"])
    assert orjson.loads(response.content)["routing"]["selected_model"] == "seed-large"


async def test_the_task_is_classified_when_the_request_names_none(seeded):
    body = {"model_preference": "cheap", "text": "Please summarize this article for me: " + TEXT}
    answer = orjson.loads((await _post("/api/v1/generate", body, seeded["auth"])).content)
    assert answer["routing"]["task"] == "summarize"
    assert answer["routing"]["task_rule"] == "patterns"


async def test_a_named_route_with_messages_keeps_its_candidates(seeded):
    body = {
        "model": "seed-route",
        "task": "chat",
        "messages": [{"role": "user", "content": "hello"}],
    }
    response = await _post("/api/v1/generate", body, seeded["auth"])
    assert response.status_code == 200, response.content
    answer = orjson.loads(response.content)
    # No preference on a fallback route: the chain as written.
    assert answer["routing"]["selected_model"] == "seed-large"
    assert answer["routing"]["strategy"] == "fallback"
    assert answer["usage"]["savings_usd"] == 0


async def test_the_prompt_shape_of_today_is_unchanged(seeded):
    response = await _post(
        "/api/v1/generate", {"model": "seed-route", "prompt": "hi"}, seeded["auth"]
    )
    answer = orjson.loads(response.content)
    assert set(answer) == {"id", "model", "text", "finish_reason", "usage"}


async def test_constraints_nothing_satisfies_are_a_400_naming_each_candidate(seeded):
    fake = seeded["fake"]
    body = {"task": "summarize", "text": TEXT, "constraints": {"max_cost_usd": 0.0000001}}
    response = await _post("/api/v1/generate", body, seeded["auth"])
    assert response.status_code == 400
    error = orjson.loads(response.content)["error"]
    assert error["code"] == "no_candidate_satisfies_constraints"
    assert {c["model"] for c in error["candidates"]} == {"seed-mini", "seed-large"}
    assert fake.requests == []


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"task": "poetry", "text": "x"}, "task"),
        ({"model_preference": "fastest", "text": "x"}, "model_preference"),
        ({"text": "x", "prompt": "y"}, "text"),
        ({"task": "chat"}, "prompt"),
        ({"text": "x", "constraints": {"max_cost_usd": -1}}, "constraints"),
        ({"text": "x", "constraints": "cheap"}, "constraints"),
    ],
)
async def test_hostile_seed_bodies_are_400s_naming_the_field(seeded, body, param):
    response = await _post("/api/v1/generate", body, seeded["auth"])
    assert response.status_code == 400, response.content
    assert orjson.loads(response.content)["error"]["param"] == param
    assert seeded["fake"].requests == []


async def test_the_seed_shape_flags_a_default_message(seeded):
    fake = seeded["fake"]
    from routing.models import Route

    await Route.objects.filter(name="seed-route").aupdate(default_message=SORRY)
    caches_clear()
    fake.script("500", "500")
    body = {"model": "seed-route", "task": "chat", "text": "hello"}
    response = await _post("/api/v1/generate", body, seeded["auth"])
    assert response.status_code == 200
    answer = orjson.loads(response.content)
    assert answer["result"] == SORRY
    assert answer["is_default_message"] is True and answer["success"] is False
    assert answer["usage"]["total_cost_usd"] == 0
    assert response["x-gateway-default-message"] == "true"
