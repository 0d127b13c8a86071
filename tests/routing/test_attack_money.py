"""Hostile clients and injected faults against the money path (a reviewer's attack list):
each test pins one way a request could be billed less than the upstream bills us, or leave
other than exactly one usage event."""

from __future__ import annotations

import pytest
from django.test import AsyncClient

from providers.models import ProviderKind
from providers.tokens import count_text_tokens
from tests.routing.support import caches_clear, fake_provider, model_on, route, tenant_key
from tests.usage_helpers import usage_events_settled
from usage.models import UsageEvent

pytestmark = pytest.mark.django_db(transaction=True)

HELLO = [{"role": "user", "content": "hello there, how are you today?"}]


@pytest.fixture
def catalog(fake_upstream):
    anthropic = fake_provider(fake_upstream, ProviderKind.ANTHROPIC, name="atk-anthropic")
    route("atk-anthropic", [model_on(anthropic, "atk-anthropic-model")])
    openai = fake_provider(fake_upstream, ProviderKind.OPENAI, name="atk-openai")
    route("atk-openai", [model_on(openai, "atk-openai-model", supports_embeddings=True)])
    _, _, raw = tenant_key()
    caches_clear()
    return {"raw": raw, "fake": fake_upstream}


async def _post(raw: str, body: dict, path: str = "/v1/chat/completions", **headers: str):
    return await AsyncClient().post(
        path,
        body,
        content_type="application/json",
        headers={"Authorization": f"Bearer {raw}", **headers},
    )


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"messages": HELLO, "n": 3}),
        ("/v1/completions", {"prompt": ["first prompt", "second", "third one here"]}),
    ],
    ids=["chat-n3", "completions-prompt-list"],
)
async def test_a_fan_out_without_usage_bills_every_choice_output(catalog, path, body):
    """n > 1 (or a prompt list) served by fan-out, upstream answers carrying no usage: each
    choice's output is estimated, not only the last answer's."""
    catalog["fake"].script("no_usage", "no_usage", "no_usage")
    response = await _post(
        catalog["raw"], {"model": "atk-anthropic", "max_tokens": 40, **body}, path
    )
    assert response.status_code == 200, response.content
    choices = response.json()["choices"]
    assert len(choices) == 3
    texts = [c.get("text") or (c.get("message") or {}).get("content") or "" for c in choices]
    answered = sum(count_text_tokens(t) for t in texts)
    assert answered > 0
    assert await usage_events_settled(1) == 1
    event = await UsageEvent.objects.aget()
    assert event.outcome == "ok" and event.usage_estimated is True
    assert event.tokens_out >= answered
    assert response.json()["usage"]["completion_tokens"] == event.tokens_out


async def test_a_native_n_answer_without_usage_bills_every_choice_output(catalog):
    """n > 1 answered natively (one OpenAI-kind upstream call) without usage: the estimate
    counts every choice's text, not only the first one's."""
    catalog["fake"].script("no_usage")
    response = await _post(
        catalog["raw"], {"model": "atk-openai", "max_tokens": 40, "messages": HELLO, "n": 3}
    )
    assert response.status_code == 200, response.content
    choices = response.json()["choices"]
    assert len(choices) == 3
    answered = sum(count_text_tokens(c["message"]["content"] or "") for c in choices)
    assert await usage_events_settled(1) == 1
    event = await UsageEvent.objects.aget()
    assert event.usage_estimated is True
    assert event.tokens_out >= answered > 0


async def test_a_fan_out_choice_failing_bills_the_prompts_of_siblings_already_sent(catalog):
    """n = 3 by fan-out: one upstream call fails while the other two are in flight. Those two
    are cancelled, but they went out: the upstream bills their prompts, so do we (the
    documented policy for a cancel after dispatch), flagged as estimated."""
    fake = catalog["fake"]
    fake.script("slow_headers:delay_ms=3000", "slow_headers:delay_ms=3000", "500")
    response = await _post(
        catalog["raw"], {"model": "atk-anthropic", "max_tokens": 40, "messages": HELLO, "n": 3}
    )
    assert response.status_code >= 500 and "error" in response.json()
    assert await usage_events_settled(1) == 1
    event = await UsageEvent.objects.aget()
    assert event.outcome == "error"
    assert event.usage_estimated is True
    assert event.tokens_in > 0 and event.cost_usd > 0
    assert event.model == "atk-anthropic-model"


NO_USAGE_CASES = {
    "messages-native": ("/v1/messages", "atk-anthropic", {"messages": HELLO}),
    "responses": ("/v1/responses", "atk-openai", {"input": "hello"}),
    "completions": ("/v1/completions", "atk-openai", {"prompt": "hello"}),
    "messages-on-openai": ("/v1/messages", "atk-openai", {"messages": HELLO}),
}


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("case", sorted(NO_USAGE_CASES))
async def test_an_answer_without_usage_is_estimated_on_every_endpoint(catalog, case, stream):
    path, model, body = NO_USAGE_CASES[case]
    catalog["fake"].script("no_usage")
    response = await _post(
        catalog["raw"],
        {"model": model, "max_tokens": 40, "stream": stream, **body},
        path,
        **{"x-api-key": catalog["raw"]},
    )
    assert response.status_code == 200, response.content
    if stream:
        b"".join([chunk async for chunk in response.streaming_content])
    assert await usage_events_settled(1) == 1
    event = await UsageEvent.objects.aget()
    assert event.outcome == "ok"
    assert event.usage_estimated is True
    assert event.tokens_in > 0 and event.tokens_out > 0 and event.cost_usd > 0


async def test_count_tokens_does_not_hold_an_idempotency_key(mock_catalog):
    """count_tokens is free and has no answer to replay: an Idempotency-Key on it must not
    leave a pending record that turns its retry (or the real request) into a 409."""
    body = {"model": "atk-mock", "messages": HELLO}
    headers = {"Idempotency-Key": "count-then-send", "x-api-key": mock_catalog}
    for _ in range(2):
        response = await _post(mock_catalog, body, "/v1/messages/count_tokens", **headers)
        assert response.status_code == 200, response.content
        assert response.json()["input_tokens"] > 0
    sent = await _post(mock_catalog, {**body, "max_tokens": 10}, "/v1/messages", **headers)
    assert sent.status_code == 200, sent.content


@pytest.mark.parametrize(("fields", "param"), [({"service_tier": "auto"}, "service_tier")])
async def test_the_native_messages_pass_through_refuses_price_changing_fields(
    catalog, fields, param
):
    """On an Anthropic route the client's own body goes upstream: a tier billed at its own
    prices must be refused there too (as on other kinds), not forwarded and charged at the
    flat catalog price."""
    response = await _post(
        catalog["raw"],
        {"model": "atk-anthropic", "max_tokens": 10, "messages": HELLO, **fields},
        "/v1/messages",
        **{"x-api-key": catalog["raw"], "anthropic-version": "2023-06-01"},
    )
    assert response.status_code == 400, response.content
    assert response.json()["type"] == "error"
    assert param in response.json()["error"]["message"]
    assert catalog["fake"].requests == []  # nothing went upstream
    assert await usage_events_settled(1) == 1
    event = await UsageEvent.objects.aget()
    assert event.outcome == "rejected" and event.cost_usd == 0


@pytest.fixture
def tools_key(fake_upstream):
    anthropic = fake_provider(fake_upstream, ProviderKind.ANTHROPIC, name="atk-tools")
    route("atk-tools", [model_on(anthropic, "atk-tools-model")])
    _, _, raw = tenant_key(tpm_limit=RESV_TPM)
    caches_clear()
    return raw


async def test_native_server_and_client_tools_are_in_the_reservation(tools_key):
    """Tools only Anthropic understands (bash, computer use, text editor...) go upstream in
    the client's own body, and Anthropic adds their system prompts to the input: admission
    reserves for them as for any tool, not as if the request had none."""
    from providers.tokens import TOOLS_OVERHEAD_TOKENS

    raw = tools_key
    tools = [
        {"type": "bash_20250124", "name": "bash"},
        {"type": "computer_20250124", "name": "computer", "display_width_px": 1024},
    ]
    response = await _post(
        raw,
        {"model": "atk-tools", "max_tokens": 10, "messages": HELLO, "tools": tools},
        "/v1/messages",
        **{"x-api-key": raw},
    )
    assert response.status_code == 200, response.content
    reserved_tokens = RESV_TPM - int(response["x-ratelimit-remaining-tokens"])
    assert reserved_tokens >= TOOLS_OVERHEAD_TOKENS


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
async def test_a_crash_of_ours_after_the_answer_leaves_one_event_and_a_clean_error(
    mock_catalog, monkeypatch, stream
):
    """A bug in the shaping code after the upstream answered: the client gets the documented
    error shape (no trace), the call leaves exactly one event, and its Idempotency-Key is not
    left pending (a retry is not told 'in progress' for the hold TTL)."""
    from routing.endpoints import responses as endpoint

    def broken(*args, **kwargs):
        raise RuntimeError("shaping bug")

    monkeypatch.setattr(endpoint, "response_object", broken)
    monkeypatch.setattr(endpoint, "ResponsesStreamEncoder", broken)
    body = {"model": "atk-mock", "input": "hello", "max_output_tokens": 10, "stream": stream}
    headers = {"Idempotency-Key": f"crash-{stream}"}
    response = await _post(mock_catalog, body, "/v1/responses", **headers)
    if stream and response.status_code == 200:
        with pytest.raises(RuntimeError):
            b"".join([chunk async for chunk in response.streaming_content])
    else:
        assert response.status_code == 500
        assert "error" in response.json() and "Traceback" not in response.text
    assert await usage_events_settled(1) == 1
    assert await UsageEvent.objects.acount() == 1
    retry = await _post(mock_catalog, body, "/v1/responses", **headers)
    assert retry.status_code != 409, retry.content


async def test_embeddings_without_usage_are_estimated(catalog):
    catalog["fake"].script("no_usage")
    response = await _post(
        catalog["raw"], {"model": "atk-openai", "input": ["hello world", "漢字"]}, "/v1/embeddings"
    )
    assert response.status_code == 200, response.content
    assert await usage_events_settled(1) == 1
    event = await UsageEvent.objects.aget()
    assert event.outcome == "ok" and event.tokens_in > 0 and event.cost_usd > 0
    assert event.usage_estimated is True


# -- reservations stay an upper bound on every endpoint --------------------------------------
CJK = "漢字仮名交じり文と한국어 문장과 中文句子。🦄🧑‍🚀" * 60
RESV_TPM = 1_000_000


@pytest.fixture
def mock_catalog():
    from decimal import Decimal

    from routing.snapshot import snapshot_invalidate
    from tenants.selectors import policy_cache_clear
    from tests.factories import (
        ModelFactory,
        ProviderFactory,
        TenantFactory,
        api_key_create_for_test,
        route_create,
    )

    provider = ProviderFactory(name="mock-atk")
    model = ModelFactory(
        name="atk-small",
        provider=provider,
        context_window=200_000,
        max_output_tokens=64,
        input_price_per_mtok=Decimal("1.000000"),
        output_price_per_mtok=Decimal("2.000000"),
        supports_embeddings=True,
    )
    route_create(name="atk-mock", models=[model])
    _, raw = api_key_create_for_test(tenant=TenantFactory(), tpm_limit=RESV_TPM)
    snapshot_invalidate()
    policy_cache_clear()
    return raw


RESERVATION_CASES = {
    "chat-n3": ("/v1/chat/completions", {"messages": [{"role": "user", "content": CJK}], "n": 3}),
    "completions-list": ("/v1/completions", {"prompt": [CJK, CJK[:200], "🦄" * 300]}),
    "completions-n2": ("/v1/completions", {"prompt": CJK, "n": 2}),
    "responses-items": (
        "/v1/responses",
        {
            "instructions": "答えは日本語で。" * 40,
            "input": [
                {"role": "user", "content": [{"type": "input_text", "text": CJK}]},
                {"type": "function_call", "call_id": "c1", "name": "f", "arguments": CJK},
                {"type": "function_call_output", "call_id": "c1", "output": "🧾" * 300},
            ],
            "tools": [{"type": "function", "name": "f", "description": "検索 " * 100}],
        },
    ),
    "messages": (
        "/v1/messages",
        {"system": "答えは日本語で。" * 40, "messages": [{"role": "user", "content": CJK}]},
    ),
    "embeddings": ("/v1/embeddings", {"input": [CJK, "🦄" * 300]}),
}


@pytest.mark.parametrize("case", sorted(RESERVATION_CASES))
async def test_real_usage_never_exceeds_the_reservation_on_any_endpoint(mock_catalog, case):
    path, body = RESERVATION_CASES[case]
    extra = {} if path == "/v1/embeddings" else {"max_tokens": 30}
    if path == "/v1/responses":
        extra = {"max_output_tokens": 30}
    response = await _post(mock_catalog, {"model": "atk-mock", **extra, **body}, path)
    assert response.status_code == 200, response.content
    reserved_tokens = RESV_TPM - int(response["x-ratelimit-remaining-tokens"])
    assert await usage_events_settled(1) == 1
    event = await UsageEvent.objects.aget()
    assert event.outcome == "ok"
    assert event.tokens_in + event.tokens_out <= reserved_tokens, (
        case,
        event.tokens_in,
        event.tokens_out,
        reserved_tokens,
    )


# -- a client leaving mid-stream, on each streaming endpoint, against a live gateway ---------
STREAMS = {
    "chat": ("/v1/chat/completions", "atk-live-openai", {"messages": HELLO}),
    "responses": ("/v1/responses", "atk-live-openai", {"input": "hello"}),
    "completions": ("/v1/completions", "atk-live-openai", {"prompt": "hello"}),
    "messages": ("/v1/messages", "atk-live-anthropic", {"messages": HELLO, "max_tokens": 50}),
}


def _reconciles() -> None:
    from datetime import timedelta

    from django.core.management import call_command
    from django.utils import timezone

    call_command("usage_rollup")
    today = timezone.now().date()
    call_command(
        "reconcile_usage",
        "--from",
        today.isoformat(),
        "--to",
        (today + timedelta(days=1)).isoformat(),
    )  # raises CommandError (non-zero exit) on any difference


@pytest.mark.live_server_process
@pytest.mark.parametrize("endpoint", sorted(STREAMS))
def test_a_client_leaving_mid_stream_frees_the_slot_and_leaves_one_event(
    live_gateway, fake_upstream_thread, redis_url, endpoint
):
    from decimal import Decimal

    import httpx

    from tests.factories import TenantFactory, api_key_create_for_test
    from tests.routing.support import usage_events_wait_sync

    fake = fake_upstream_thread
    openai = fake_provider(fake, ProviderKind.OPENAI, name="atk-live-openai-p")
    route("atk-live-openai", [model_on(openai, "atk-live-openai-model")])
    anthropic = fake_provider(fake, ProviderKind.ANTHROPIC, name="atk-live-anthropic-p")
    route("atk-live-anthropic", [model_on(anthropic, "atk-live-anthropic-model")])
    _, raw = api_key_create_for_test(
        tenant=TenantFactory(), max_concurrency=1, budget_usd=Decimal("10")
    )
    caches_clear()
    path, model, body = STREAMS[endpoint]
    env = {
        "REDIS_URL": redis_url,
        "GATEWAY_STATE_BACKEND": "redis",
        "GATEWAY_USAGE_WRITE_MODE": "direct",
    }
    headers = {"authorization": f"Bearer {raw}", "x-api-key": raw}
    with live_gateway(env=env) as base, httpx.Client(base_url=base, timeout=30) as http:
        fake.script("hang_stream:after=3")
        with http.stream(
            "POST", path, headers=headers, json={"model": model, "stream": True, **body}
        ) as response:
            assert response.status_code == 200, response.read()
            lines = response.iter_lines()
            received = [line for _, line in zip(range(4), lines, strict=False)]
            assert any(line.startswith("data: ") for line in received)
            response.close()  # the client goes away mid-stream
        events = usage_events_wait_sync(1)
        assert [(e.outcome, e.error_type) for e in events] == [("cancelled", "client_disconnected")]
        # The only slot of the key is free again: the next request is served at once.
        again = http.post(path, headers=headers, json={"model": model, **body})
        assert again.status_code == 200, again.text
        events = usage_events_wait_sync(2)
        assert len(events) == 2 and len({e.request_id for e in events}) == 2
        assert events[0].cost_usd > 0
    _reconciles()


# -- the client's x-request-id, hostile, against a live gateway ------------------------------
HOSTILE_IDS = {
    "latin1-bytes": b"caf\xe9-\xff-id",
    "long": b"r" * 4000,
    "utf8-bytes": "заказ-注文-🦄".encode(),
}


@pytest.mark.live_server_process
def test_hostile_client_request_ids_never_break_an_answer_or_its_event(live_gateway):
    import httpx

    from tests.factories import TenantFactory, api_key_create_for_test
    from tests.routing.support import mock_provider, usage_events_wait_sync

    route("atk-ids", [model_on(mock_provider("atk-ids-mock"), "atk-ids-model")])
    _, raw = api_key_create_for_test(tenant=TenantFactory())
    caches_clear()
    body = {"model": "atk-ids", "messages": HELLO, "max_tokens": 5}
    with live_gateway(env={"GATEWAY_USAGE_WRITE_MODE": "direct"}) as base:
        with httpx.Client(base_url=base, timeout=30) as http:
            for name, value in HOSTILE_IDS.items():
                for stream in (False, True):
                    response = http.post(
                        "/v1/chat/completions",
                        headers={"authorization": f"Bearer {raw}", "x-request-id": value},
                        json={**body, "stream": stream},
                    )
                    assert response.status_code == 200, (name, response.text)
                    assert response.headers["x-request-id"].startswith("req_")
                    echoed = response.headers.get("x-client-request-id", "")
                    assert len(echoed) <= 128, name
    events = usage_events_wait_sync(2 * len(HOSTILE_IDS))
    assert len(events) == 2 * len(HOSTILE_IDS)
    assert all(e.outcome == "ok" and len(e.client_request_id) <= 128 for e in events)
