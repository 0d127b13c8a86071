"""Limits that hold across processes: two live gateway servers sharing one Redis, real HTTP on
loopback, the built-in mock provider upstream (free and deterministic)."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal

import httpx
import pytest
import redis as redis_sync
from django.db.models import Sum

from tenants import services
from tenants.money import budget_to_nano
from tenants.periods import budget_period_bounds
from tenants.state.redis import RedisStateStore
from tests.factories import ModelFactory, ProviderFactory, TenantFactory, route_create
from usage.models import UsageEvent

pytestmark = pytest.mark.live_server_process

MAX_TOKENS = 5
# The mock answers exactly max_tokens tokens when asked for fewer than its reply length, and
# input is free here: every request's real cost equals its worst-case reservation.
OUTPUT_PRICE = Decimal("1000")  # USD per 1M tokens -> 0.005 USD per request
COST_PER_REQUEST = Decimal(MAX_TOKENS) * OUTPUT_PRICE / Decimal(1_000_000)
BODY = {
    "model": "live-limits",
    "messages": [{"role": "user", "content": "hello"}],
    "max_tokens": MAX_TOKENS,
}


@pytest.fixture
def catalog(transactional_db, redis_url):
    redis_sync.Redis.from_url(redis_url).flushdb()
    provider = ProviderFactory(name="mock-live", options={"latency_ms": 20})
    model = ModelFactory(
        name="live-limits-model",
        provider=provider,
        input_price_per_mtok=Decimal("0"),
        output_price_per_mtok=OUTPUT_PRICE,
    )
    route_create(name="live-limits", models=[model])
    return TenantFactory()


def server_env(redis_url: str, **extra: str) -> dict[str, str]:
    return {
        "REDIS_URL": redis_url,
        "GATEWAY_STATE_BACKEND": "redis",
        "GATEWAY_USAGE_WRITE_MODE": "direct",
        **extra,
    }


async def post_all(bases: list[str], raw_key: str, count: int, *, concurrency: int = 50):
    """`count` chat requests spread over the servers, at most `concurrency` in flight."""
    limit = asyncio.Semaphore(concurrency)
    headers = {"Authorization": f"Bearer {raw_key}"}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:

        async def one(index: int) -> httpx.Response:
            async with limit:
                base = bases[index % len(bases)]
                return await client.post(f"{base}/v1/chat/completions", json=BODY, headers=headers)

        return await asyncio.gather(*(one(i) for i in range(count)))


def wait_for_events(key_id: int, count: int, timeout_s: float = 30.0) -> None:
    """Direct mode writes events in the background: wait until they are in PostgreSQL."""
    deadline = time.monotonic() + timeout_s
    stored = 0
    while time.monotonic() < deadline:
        stored = UsageEvent.objects.filter(api_key_id=key_id).count()
        if stored >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"only {stored} of {count} usage events reached PostgreSQL")


def key_spend_in_db(key_id: int) -> Decimal:
    total = UsageEvent.objects.filter(api_key_id=key_id).aggregate(s=Sum("cost_usd"))["s"]
    return total or Decimal(0)


def redis_spend_nano(redis_url: str, key) -> int | None:
    store = RedisStateStore(url=redis_url, stream="gw:usage")
    from datetime import UTC, datetime

    bounds = budget_period_bounds(
        period=key.budget_period, tz_name=key.tenant.timezone, now=datetime.now(tz=UTC)
    )
    keys = store.scope_keys(
        scope="key", tenant_id=key.tenant_id, scope_id=key.pk, period_key=bounds.key
    )
    value = redis_sync.Redis.from_url(redis_url).get(keys.spend)
    return None if value is None else int(value)


def test_budget_never_overshoots_under_300_concurrent_requests_on_two_processes(
    live_gateway, catalog, redis_url
):
    budget = COST_PER_REQUEST * 20
    key, raw = services.api_key_create(tenant=catalog, budget_usd=budget)
    env = server_env(redis_url)
    with live_gateway(env=env) as a, live_gateway(env=env) as b:
        responses = asyncio.run(post_all([a, b], raw, 300))
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 402}, sorted(set(statuses))
    assert statuses.count(200) == 20
    refused = next(r for r in responses if r.status_code == 402)
    assert refused.json()["error"]["code"] == "budget_exceeded"
    assert refused.headers["x-should-retry"] == "false"
    wait_for_events(key.pk, 300)
    assert key_spend_in_db(key.pk) <= budget
    assert redis_spend_nano(redis_url, key) <= budget_to_nano(budget)


def test_rpm_limit_admits_exactly_n_across_two_processes(live_gateway, catalog, redis_url):
    key, raw = services.api_key_create(tenant=catalog, rpm_limit=7)
    env = server_env(redis_url)
    with live_gateway(env=env) as a, live_gateway(env=env) as b:
        responses = asyncio.run(post_all([a, b], raw, 30, concurrency=10))
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == 7
    assert statuses.count(429) == 23
    limited = next(r for r in responses if r.status_code == 429)
    assert limited.headers["x-should-retry"] == "true"
    assert int(limited.headers["retry-after"]) >= 1
    assert limited.headers["x-ratelimit-limit-requests"] == "7"
    ok = next(r for r in responses if r.status_code == 200)
    assert ok.headers["x-ratelimit-limit-requests"] == "7"
    for name in ("remaining-requests", "reset-requests"):
        assert f"x-ratelimit-{name}" in ok.headers


def test_flushdb_mid_run_does_not_reset_spend(live_gateway, catalog, redis_url):
    budget = COST_PER_REQUEST * 20
    key, raw = services.api_key_create(tenant=catalog, budget_usd=budget)
    env = server_env(redis_url)
    with live_gateway(env=env) as a, live_gateway(env=env) as b:
        first = asyncio.run(post_all([a, b], raw, 12, concurrency=4))
        assert [r.status_code for r in first] == [200] * 12
        wait_for_events(key.pk, 12)
        redis_sync.Redis.from_url(redis_url).flushdb()
        # After the flush the counters are rebuilt from PostgreSQL: 8 more fit, then 402.
        later = asyncio.run(post_all([a, b], raw, 20, concurrency=4))
    statuses = [r.status_code for r in later]
    assert statuses.count(200) == 8
    assert statuses.count(402) == 12
    wait_for_events(key.pk, 32)
    assert key_spend_in_db(key.pk) == budget


def test_revoked_key_is_refused_by_both_processes_within_a_second(live_gateway, catalog, redis_url):
    key, raw = services.api_key_create(tenant=catalog)
    # A long policy-cache TTL: only the shared config version can explain a quick refusal.
    env = server_env(redis_url, GATEWAY_SNAPSHOT_TTL_SECONDS="300")
    headers = {"Authorization": f"Bearer {raw}"}
    with live_gateway(env=env) as a, live_gateway(env=env) as b:
        for base in (a, b):
            assert httpx.post(f"{base}/v1/chat/completions", json=BODY, headers=headers).is_success
        services.api_key_revoke(key=key)
        revoked_at = time.monotonic()
        for base in (a, b):
            status = None
            for _ in range(50):
                status = httpx.post(
                    f"{base}/v1/chat/completions", json=BODY, headers=headers
                ).status_code
                if status == 401 or time.monotonic() - revoked_at > 1.0:
                    break
                time.sleep(0.02)
            assert status == 401, f"{base} still admits the revoked key"
