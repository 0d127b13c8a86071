"""Billing identity under hostile clients: the usage event's id is always the gateway's, the
client's x-request-id is only a searchable label, and Idempotency-Key (scoped to the key) is
the one way to retry without a second charge."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest
from django.test import AsyncClient

from tenants.state import state_store
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

CHAT = {"model": "ident-chat", "messages": [{"role": "user", "content": "hello there"}]}


@pytest.fixture
def catalog():
    from routing.snapshot import snapshot_invalidate
    from tenants.selectors import policy_cache_clear

    provider = ProviderFactory(name="mock-ident")
    model = ModelFactory(
        name="ident-small",
        provider=provider,
        input_price_per_mtok=Decimal("1.000000"),
        output_price_per_mtok=Decimal("2.000000"),
    )
    slow = ProviderFactory(name="mock-ident-slow", options={"latency_ms": 600})
    slow_model = ModelFactory(name="ident-slow", provider=slow)
    route_create(name="ident-chat", models=[model])
    route_create(name="ident-slow-chat", models=[slow_model])
    tenant = TenantFactory()
    key, raw = api_key_create_for_test(tenant=tenant, budget_usd=Decimal("100"))
    other, other_raw = api_key_create_for_test(tenant=tenant)
    snapshot_invalidate()
    policy_cache_clear()
    return {"raw": raw, "key": key, "other_raw": other_raw, "tenant": tenant}


def _auth(raw: str, **headers: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {raw}", **headers}


async def _post(raw: str, body=CHAT, **headers: str):
    return await AsyncClient().post(
        "/v1/chat/completions", body, content_type="application/json", headers=_auth(raw, **headers)
    )


async def _key_spend_nano(key) -> int | None:
    from tenants.admission import _scopes_for
    from tenants.selectors import api_key_policy_reload

    policy = await api_key_policy_reload(key_id=key.id)
    from datetime import UTC, datetime

    scopes, _ = _scopes_for(state_store(), policy, datetime.now(tz=UTC))
    return await state_store().spend_get(keys=scopes[0].keys)


async def test_one_client_request_id_five_times_is_five_events_and_five_matching_charges(catalog):
    responses = [await _post(catalog["raw"], **{"X-Request-Id": "dup-1"}) for _ in range(5)]
    assert [r.status_code for r in responses] == [200] * 5
    ids = {r["x-request-id"] for r in responses}
    assert len(ids) == 5 and all(i.startswith("req_") for i in ids)
    assert {r["x-client-request-id"] for r in responses} == {"dup-1"}
    assert await usage_events_settled(5) == 5
    events = [e async for e in UsageEvent.objects.all()]
    assert {e.request_id for e in events} == ids
    assert {e.client_request_id for e in events} == {"dup-1"}
    charged = sum(Decimal(r["x-gateway-cost-usd"]) for r in responses)
    assert sum(e.cost_usd for e in events) == charged > 0
    spend = await _key_spend_nano(catalog["key"])
    assert spend == int(charged * 10**9)


async def test_client_ids_up_to_128_chars_are_kept_longer_cut_and_unprintable_dropped(catalog):
    exact = "a" * 128
    longer = "b" * 300
    r1 = await _post(catalog["raw"], **{"X-Request-Id": exact})
    r2 = await _post(catalog["raw"], **{"X-Request-Id": longer})
    r3 = await _post(catalog["raw"], **{"X-Request-Id": "tab\there"})
    assert [r.status_code for r in (r1, r2, r3)] == [200, 200, 200]
    assert await usage_events_settled(3) == 3
    by_id = {e.request_id: e async for e in UsageEvent.objects.all()}
    assert by_id[r1["x-request-id"]].client_request_id == exact
    assert by_id[r2["x-request-id"]].client_request_id == "b" * 128
    assert by_id[r3["x-request-id"]].client_request_id == ""
    assert all(e.outcome == "ok" for e in by_id.values())


async def test_a_401_cannot_pre_claim_an_id_and_leaves_no_row(catalog):
    stranger = await _post("gw-not-a-key", **{"X-Request-Id": "victim-1"})
    assert stranger.status_code == 401
    paid = await _post(catalog["raw"], **{"X-Request-Id": "victim-1"})
    assert paid.status_code == 200
    assert await usage_events_settled(1) == 1
    [event] = [e async for e in UsageEvent.objects.all()]
    assert event.request_id == paid["x-request-id"] and event.outcome == "ok"
    assert event.client_request_id == "victim-1"


async def test_idempotent_retry_replays_the_first_answer_without_a_second_charge(catalog):
    first = await _post(catalog["raw"], **{"Idempotency-Key": "order-7"})
    second = await _post(catalog["raw"], **{"Idempotency-Key": "order-7"})
    assert first.status_code == second.status_code == 200
    assert second.content == first.content
    assert second["idempotent-replayed"] == "true"
    assert second["x-gateway-replay-of"] == first["x-request-id"]
    assert second["x-request-id"] != first["x-request-id"]
    assert await usage_events_settled(2) == 2
    events = {e.request_id: e async for e in UsageEvent.objects.all()}
    assert events[first["x-request-id"]].outcome == "ok"
    replay = events[second["x-request-id"]]
    assert replay.outcome == "replayed" and replay.cost_usd == 0
    spend = await _key_spend_nano(catalog["key"])
    assert spend == int(Decimal(first["x-gateway-cost-usd"]) * 10**9)


async def test_concurrent_duplicate_idempotency_key_gets_409_and_is_not_charged(catalog):
    body = {**CHAT, "model": "ident-slow-chat"}
    results = await asyncio.gather(
        *[_post(catalog["raw"], body, **{"Idempotency-Key": "dup-flight"}) for _ in range(3)]
    )
    statuses = sorted(r.status_code for r in results)
    assert statuses == [200, 409, 409]
    conflicts = [r for r in results if r.status_code == 409]
    assert {r.json()["error"]["code"] for r in conflicts} == {"idempotency_key_in_use"}
    assert await usage_events_settled(3) == 3
    events = [e async for e in UsageEvent.objects.all()]
    assert sorted(e.outcome for e in events) == ["ok", "rejected", "rejected"]
    assert sum(e.cost_usd for e in events if e.outcome == "rejected") == 0


async def test_idempotency_key_is_scoped_to_the_key_and_to_the_body(catalog):
    a = await _post(catalog["raw"], **{"Idempotency-Key": "shared"})
    b = await _post(catalog["other_raw"], **{"Idempotency-Key": "shared"})
    assert a.status_code == b.status_code == 200
    assert "idempotent-replayed" not in b
    changed = await _post(
        catalog["raw"],
        {**CHAT, "messages": [{"role": "user", "content": "other"}]},
        **{"Idempotency-Key": "shared"},
    )
    assert changed.status_code == 409
    assert changed.json()["error"]["code"] == "idempotency_key_reused"


async def test_a_refused_first_request_releases_its_idempotency_key(catalog):
    from asgiref.sync import sync_to_async

    from tenants.selectors import policy_cache_clear

    _, poor_raw = await sync_to_async(api_key_create_for_test)(
        tenant=catalog["tenant"], budget_usd=Decimal("0.000000001")
    )
    policy_cache_clear()
    refused = await _post(poor_raw, **{"Idempotency-Key": "retry-me"})
    assert refused.status_code == 402
    # The refusal released the record: the retry is refused again, not answered 409.
    again = await _post(poor_raw, **{"Idempotency-Key": "retry-me"})
    assert again.status_code == 402
