"""The inference API's contract in-process: error shapes and statuses for bad input, headers,
and exactly one usage event per request."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import AsyncClient
from django.utils import timezone

from tests.factories import (
    ModelFactory,
    ProviderFactory,
    TenantFactory,
    api_key_create_for_test,
    route_create,
)
from tests.usage_helpers import usage_events_settled
from usage.models import UsageEvent

pytestmark = pytest.mark.django_db(transaction=True)

CHAT = {"model": "contract-chat", "messages": [{"role": "user", "content": "hello"}]}


@pytest.fixture
def catalog():
    from routing.snapshot import snapshot_invalidate
    from tenants.selectors import policy_cache_clear

    provider = ProviderFactory(name="mock-contract")
    small = ModelFactory(name="contract-small", provider=provider)
    other = ModelFactory(name="contract-other", provider=provider)
    route_create(name="contract-chat", models=[small])
    tenant = TenantFactory()
    key, raw = api_key_create_for_test(tenant=tenant)
    limited, limited_raw = api_key_create_for_test(tenant=tenant, allowed_models=["contract-other"])
    snapshot_invalidate()
    policy_cache_clear()
    return {"raw": raw, "key": key, "tenant": tenant, "limited_raw": limited_raw, "other": other}


def _auth(raw: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {raw}"}


def _assert_openai_error(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    if code is not None:
        assert body["error"]["code"] == code
    assert "Traceback" not in response.content.decode()
    assert response["x-request-id"]
    return body


async def test_chat_completion_answers_in_openai_shape_with_gateway_headers(catalog):
    client = AsyncClient()
    response = await client.post(
        "/v1/chat/completions", CHAT, content_type="application/json", headers=_auth(catalog["raw"])
    )
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert (
        body["usage"]["total_tokens"]
        == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    )
    assert response["x-gateway-model"] == "contract-small"
    assert response["x-gateway-fallbacks"] == "0"
    assert response["x-request-id"].startswith("req_")
    await usage_events_settled(1)
    event = await UsageEvent.objects.aget()
    assert event.request_id == response["x-request-id"]
    assert event.outcome == "ok" and event.tokens_out == body["usage"]["completion_tokens"]
    assert str(event.cost_usd) == response["x-gateway-cost-usd"]


async def test_x_api_key_header_authenticates_too(catalog):
    response = await AsyncClient().post(
        "/v1/chat/completions",
        CHAT,
        content_type="application/json",
        headers={"X-API-Key": catalog["raw"]},
    )
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 400, "invalid_json"),
        (b'{"model": "contract-chat"}', 400, None),
        (b'{"model": "contract-chat", "messages": "hi"}', 400, None),
        (
            b'{"model": "contract-chat", "messages": [{"role": "wizard", "content": "x"}]}',
            400,
            None,
        ),
        (
            b'{"model": "contract-chat", "messages": [{"role": "user", "content": "x"}], "temperature": 9}',
            400,
            None,
        ),
        (
            b'{"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]}',
            404,
            "model_not_found",
        ),
    ],
)
async def test_bad_requests_get_openai_errors_never_500(catalog, body, status, code):
    response = await AsyncClient().post(
        "/v1/chat/completions", body, content_type="application/json", headers=_auth(catalog["raw"])
    )
    _assert_openai_error(response, status, code)


async def test_missing_wrong_revoked_and_expired_keys_get_401(catalog):
    client = AsyncClient()
    _assert_openai_error(
        await client.post("/v1/chat/completions", CHAT, content_type="application/json"),
        401,
        "missing_api_key",
    )
    _assert_openai_error(
        await client.post(
            "/v1/chat/completions", CHAT, content_type="application/json", headers=_auth("gw-wrong")
        ),
        401,
        "invalid_api_key",
    )
    tenant = catalog["tenant"]
    revoked, revoked_raw = await api_key_create_async(tenant, revoked_at=timezone.now())
    expired, expired_raw = await api_key_create_async(
        tenant, expires_at=timezone.now() - timedelta(seconds=1)
    )
    _assert_openai_error(
        await client.post(
            "/v1/chat/completions",
            CHAT,
            content_type="application/json",
            headers=_auth(revoked_raw),
        ),
        401,
        "revoked_api_key",
    )
    _assert_openai_error(
        await client.post(
            "/v1/chat/completions",
            CHAT,
            content_type="application/json",
            headers=_auth(expired_raw),
        ),
        401,
        "expired_api_key",
    )


async def api_key_create_async(tenant, **fields):
    from asgiref.sync import sync_to_async

    return await sync_to_async(api_key_create_for_test)(tenant=tenant, **fields)


async def test_model_outside_the_allow_list_gets_403_and_models_lists_only_allowed(catalog):
    client = AsyncClient()
    response = await client.post(
        "/v1/chat/completions",
        CHAT,
        content_type="application/json",
        headers=_auth(catalog["limited_raw"]),
    )
    _assert_openai_error(response, 403, "model_not_allowed")
    listing = await client.get("/v1/models", headers=_auth(catalog["limited_raw"]))
    assert [m["id"] for m in listing.json()["data"]] == ["contract-other"]
    full = await client.get("/v1/models", headers=_auth(catalog["raw"]))
    assert {"contract-chat", "contract-small", "contract-other"} <= {
        m["id"] for m in full.json()["data"]
    }


async def test_body_over_the_limit_gets_413(catalog, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1024
    big = {"model": "contract-chat", "messages": [{"role": "user", "content": "x" * 4096}]}
    response = await AsyncClient().post(
        "/v1/chat/completions", big, content_type="application/json", headers=_auth(catalog["raw"])
    )
    _assert_openai_error(response, 413, "request_too_large")


async def test_every_refused_request_with_a_known_key_leaves_exactly_one_usage_event(catalog):
    """Bad JSON, a schema error, an unknown model and a model outside the allow-list each
    leave one `rejected` event; a wrong key leaves none (a stranger writes no rows)."""
    client = AsyncClient()
    stranger = await client.post(
        "/v1/chat/completions", CHAT, content_type="application/json", headers=_auth("gw-wrong")
    )
    assert stranger.status_code == 401
    refused = [
        await client.post(
            "/v1/chat/completions",
            b"{not json",
            content_type="application/json",
            headers=_auth(catalog["raw"]),
        ),
        await client.post(
            "/v1/chat/completions",
            {**CHAT, "temperature": 9},
            content_type="application/json",
            headers=_auth(catalog["raw"]),
        ),
        await client.post(
            "/v1/chat/completions",
            {**CHAT, "model": "nope"},
            content_type="application/json",
            headers=_auth(catalog["raw"]),
        ),
        await client.post(
            "/v1/chat/completions",
            CHAT,
            content_type="application/json",
            headers=_auth(catalog["limited_raw"]),
        ),
    ]
    await usage_events_settled(4)
    ids = {r["x-request-id"] for r in refused}
    events = [e async for e in UsageEvent.objects.all()]
    assert {e.request_id for e in events} == ids
    assert {e.outcome for e in events} == {"rejected"}
    assert sorted(e.status_code for e in events) == [400, 400, 403, 404]
    assert stranger["x-request-id"] not in {e.request_id for e in events}


async def test_streamed_chat_ends_with_done_and_reports_usage_when_asked(catalog):
    response = await AsyncClient().post(
        "/v1/chat/completions",
        {**CHAT, "stream": True, "stream_options": {"include_usage": True}},
        content_type="application/json",
        headers=_auth(catalog["raw"]),
    )
    assert response.status_code == 200
    assert response["content-type"].startswith("text/event-stream")
    payload = b"".join([chunk async for chunk in response.streaming_content]).decode()
    events = [line[6:] for line in payload.split("\n\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    import json

    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0
    await usage_events_settled(1)
    event = await UsageEvent.objects.aget()
    assert event.stream and event.outcome == "ok"


async def test_request_id_from_the_client_is_echoed_apart_and_health_answers(catalog):
    client = AsyncClient()
    response = await client.get("/health", headers={"X-Request-Id": "abc-123"})
    assert response.status_code == 200 and response["x-client-request-id"] == "abc-123"
    assert response["x-request-id"].startswith("req_")
    ready = await client.get("/health/ready")
    assert ready.status_code == 200 and ready.json()["checks"]["database"] == "ok"


def test_metrics_and_openapi_docs_are_served(client, catalog, settings):
    assert client.get("/metrics").status_code == 401  # a bearer token is required
    wrong = client.get("/metrics", headers={"Authorization": "Bearer not-the-token"})
    assert wrong.status_code == 401
    scrape = client.get(
        "/metrics", headers={"Authorization": f"Bearer {settings.GATEWAY_METRICS_TOKEN}"}
    )
    assert scrape.status_code == 200 and b"django_http_requests" in scrape.content
    settings.GATEWAY_METRICS_TOKEN = ""
    assert client.get("/metrics").status_code == 404  # no token configured: off
    schema = client.get("/v1/openapi.json").json()
    assert "/v1/chat/completions" in schema["paths"]
    assert client.get("/v1/docs").status_code == 200


async def test_each_request_is_charged_the_price_in_force_when_it_arrived(catalog):
    from datetime import timedelta
    from decimal import Decimal

    from asgiref.sync import sync_to_async

    from providers.models import Model
    from providers.prices import model_price_set
    from routing.snapshot import snapshot_invalidate

    model = await Model.objects.aget(name="contract-small")
    # A price change scheduled for later does not touch today's requests...
    await sync_to_async(model_price_set)(
        model=model,
        input_price_per_mtok="100",
        output_price_per_mtok="200",
        effective_from=timezone.now() + timedelta(hours=1),
    )
    snapshot_invalidate()
    client = AsyncClient()
    before = await client.post(
        "/v1/chat/completions", CHAT, content_type="application/json", headers=_auth(catalog["raw"])
    )
    # ...and one in force now applies to the next request.
    await sync_to_async(model_price_set)(
        model=model,
        input_price_per_mtok="3",
        output_price_per_mtok="5",
        effective_from=timezone.now(),
    )
    snapshot_invalidate()
    after = await client.post(
        "/v1/chat/completions", CHAT, content_type="application/json", headers=_auth(catalog["raw"])
    )
    await usage_events_settled(2)
    first = await UsageEvent.objects.aget(request_id=before["x-request-id"])
    second = await UsageEvent.objects.aget(request_id=after["x-request-id"])
    assert (first.input_price_per_mtok, first.output_price_per_mtok) == (Decimal("1"), Decimal("2"))
    assert (second.input_price_per_mtok, second.output_price_per_mtok) == (
        Decimal("3"),
        Decimal("5"),
    )
    assert second.cost_usd == (
        Decimal(second.tokens_in) * 3 + Decimal(second.tokens_out) * 5
    ) / Decimal(10**6)
