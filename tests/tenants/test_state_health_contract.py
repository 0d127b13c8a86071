"""One contract, two backends, for routing health in the state store: circuit breakers (failure
rate over a window with a minimum volume, cooldown, one half-open probe), latency EWMAs and
in-flight counts. Cooldowns and windows are a few hundred milliseconds; tests wait on the
condition (bounded), never a fixed sleep."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis as redis_sync
from django.conf import settings

from tenants.state.base import BreakerPolicy, StateStore
from tenants.state.memory import MemoryStateStore
from tenants.state.redis import RedisStateStore

POLICY = BreakerPolicy(
    window_ms=60_000, min_volume=4, failure_ratio=0.5, cooldown_ms=200, probe_ttl_ms=60_000
)


@pytest.fixture(params=["memory", "redis"])
async def store(request):
    if request.param == "memory":
        yield MemoryStateStore()
        return
    if not settings.REDIS_URL:
        pytest.skip("REDIS_URL is not set")
    redis_sync.Redis.from_url(settings.REDIS_URL).flushdb()
    backend = RedisStateStore(url=settings.REDIS_URL, stream="gw:test:usage")
    yield backend
    await backend.close()


async def _until(check, *, timeout_s: float = 5.0):
    deadline = time.monotonic() + timeout_s
    while True:
        result = await check()
        if result or time.monotonic() > deadline:
            return result
        await asyncio.sleep(0.01)


async def test_breaker_gives_no_verdict_below_the_minimum_volume(store: StateStore):
    key = store.health_key("breaker", "1:1")
    for _ in range(3):
        status = await store.breaker_record(key=key, ok=0, failed=1, policy=POLICY)
    assert (status.state, status.calls, status.failures) == ("closed", 3, 3)
    assert (await store.breaker_acquire(key=key, policy=POLICY)).allowed


async def test_breaker_opens_above_half_failures_and_not_at_exactly_half(store: StateStore):
    half = store.health_key("breaker", "1:2")
    await store.breaker_record(key=half, ok=2, failed=0, policy=POLICY)
    status = await store.breaker_record(key=half, ok=0, failed=2, policy=POLICY)
    assert status.state == "closed" and (status.calls, status.failures) == (4, 2)

    over = store.health_key("breaker", "1:3")
    await store.breaker_record(key=over, ok=1, failed=0, policy=POLICY)
    status = await store.breaker_record(key=over, ok=0, failed=3, policy=POLICY)
    assert status.state == "open" and not status.allowed
    assert 0 < status.retry_after_ms <= POLICY.cooldown_ms
    denied = await store.breaker_acquire(key=over, policy=POLICY)
    assert not denied.allowed and denied.state == "open"


async def test_half_open_hands_out_one_probe_and_a_success_closes(store: StateStore):
    key = store.health_key("breaker", "2:1")
    await store.breaker_record(key=key, ok=0, failed=4, policy=POLICY)

    async def probe():
        return (await store.breaker_acquire(key=key, policy=POLICY)).allowed

    assert await _until(probe)
    second = await store.breaker_acquire(key=key, policy=POLICY)
    assert (second.state, second.allowed) == ("half_open", False)
    [seen] = await store.breaker_status(keys=[key], policy=POLICY)
    assert (seen.state, seen.allowed) == ("half_open", False)
    closed = await store.breaker_record(key=key, ok=1, failed=0, policy=POLICY)
    assert (closed.state, closed.calls) == ("closed", 0)
    assert (await store.breaker_acquire(key=key, policy=POLICY)).allowed


async def test_a_failed_probe_opens_again_and_a_neutral_outcome_gives_the_probe_back(
    store: StateStore,
):
    key = store.health_key("breaker", "2:2")
    await store.breaker_record(key=key, ok=0, failed=4, policy=POLICY)

    async def probe():
        return (await store.breaker_acquire(key=key, policy=POLICY)).allowed

    assert await _until(probe)
    # A 429 or an auth error says nothing about the deployment: the probe goes back.
    released = await store.breaker_record(key=key, ok=0, failed=0, policy=POLICY)
    assert (released.state, released.allowed) == ("half_open", True)
    assert await probe()
    reopened = await store.breaker_record(key=key, ok=0, failed=1, policy=POLICY)
    assert reopened.state == "open" and reopened.retry_after_ms > 0
    assert not await probe()


async def test_records_while_open_count_nothing(store: StateStore):
    policy = BreakerPolicy(min_volume=2, cooldown_ms=60_000)
    key = store.health_key("breaker", "2:3")
    await store.breaker_record(key=key, ok=0, failed=2, policy=policy)
    late = await store.breaker_record(key=key, ok=5, failed=0, policy=policy)
    assert late.state == "open"  # successes of calls started before it opened


async def test_failures_older_than_the_window_drop_out(store: StateStore):
    policy = BreakerPolicy(window_ms=300, min_volume=4, cooldown_ms=60_000)
    key = store.health_key("breaker", "3:1")
    await store.breaker_record(key=key, ok=0, failed=3, policy=policy)

    async def forgotten():
        [status] = await store.breaker_status(keys=[key], policy=policy)
        return status.calls == 0

    assert await _until(forgotten)
    status = await store.breaker_record(key=key, ok=0, failed=1, policy=policy)
    assert status.state == "closed" and status.failures == 1


async def test_status_reads_many_breakers_and_unknown_ones_are_closed(store: StateStore):
    opened = store.health_key("breaker", "4:1")
    await store.breaker_record(key=opened, ok=0, failed=4, policy=POLICY)
    statuses = await store.breaker_status(
        keys=[store.health_key("breaker", "never"), opened], policy=POLICY
    )
    assert [s.state for s in statuses] == ["closed", "open"]
    assert await store.breaker_status(keys=[], policy=POLICY) == []


async def test_ewma_starts_at_the_first_value_and_weights_later_ones(store: StateStore):
    key = store.health_key("ewma", "5:1")
    assert await store.ewma_get(keys=[key]) == [None]
    assert await store.ewma_observe(key=key, value=100.0, alpha=0.2) == pytest.approx(100.0)
    assert await store.ewma_observe(key=key, value=200.0, alpha=0.2) == pytest.approx(120.0)
    assert await store.ewma_get(keys=[key, store.health_key("ewma", "x")]) == [
        pytest.approx(120.0),
        None,
    ]


async def test_inflight_counts_tickets_and_forgets_a_dead_holder(store: StateStore):
    key = store.health_key("inflight", "6:1")
    assert await store.inflight_add(key=key, ticket="a", hold_ms=60_000) == 1
    assert await store.inflight_add(key=key, ticket="b", hold_ms=150) == 2
    assert await store.inflight_remove(key=key, ticket="a") == 1
    assert await store.inflight_remove(key=key, ticket="a") == 1  # twice is harmless

    async def expired():
        return (await store.inflight_get(keys=[key]))[0] == 0

    assert await _until(expired)
    assert await store.inflight_get(keys=[key, store.health_key("inflight", "none")]) == [0, 0]


async def test_two_clients_of_one_redis_share_a_breaker(redis_url):
    redis_sync.Redis.from_url(redis_url).flushdb()
    first = RedisStateStore(url=redis_url, stream="gw:test:usage")
    second = RedisStateStore(url=redis_url, stream="gw:test:usage")
    try:
        key = first.health_key("breaker", "7:1")
        assert key == second.health_key("breaker", "7:1")
        await first.breaker_record(key=key, ok=0, failed=4, policy=POLICY)
        denied = await second.breaker_acquire(key=key, policy=POLICY)
        assert (denied.state, denied.allowed) == ("open", False)

        async def probe():
            return (await second.breaker_acquire(key=key, policy=POLICY)).allowed

        assert await _until(probe)
        assert not (await first.breaker_acquire(key=key, policy=POLICY)).allowed
    finally:
        await first.close()
        await second.close()
