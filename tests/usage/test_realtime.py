"""The last minute of traffic (usage/realtime.py): per-second buckets merged across processes
through Redis, percentiles within one histogram bucket of the exact value, in-flight counts
summed over live processes only; the in-process equivalent in embedded mode."""

from __future__ import annotations

import json
import math
import random
import time

import pytest
from django.test import Client

from tenants.state import state_store_set
from tenants.state.memory import MemoryStateStore
from tests.factories import TenantFactory, api_key_create_for_test
from usage import realtime
from usage.realtime import (
    BUCKET_GROWTH,
    RealtimeBoard,
    bucket_index,
    bucket_upper,
    histogram_percentile,
    realtime_board,
    realtime_stats,
)


@pytest.fixture(autouse=True)
def _board_empty():
    realtime_board().reset()
    yield
    realtime_board().reset()


def nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


def assert_within_one_bucket(reported: float, exact: float) -> None:
    """The reported value is the upper bound of the bucket holding the exact value."""
    assert reported == bucket_upper(bucket_index(exact))
    assert exact <= reported < exact * BUCKET_GROWTH + 0.001


def test_histogram_bounds_grow_by_a_quarter_and_cover_ten_minutes():
    bounds = realtime.BUCKET_BOUNDS_MS
    assert all(
        b2 / b1 == pytest.approx(BUCKET_GROWTH, rel=0.01)
        for b1, b2 in zip(bounds, bounds[1:], strict=False)
    )
    assert bounds[-1] >= 600_000
    assert bucket_upper(bucket_index(10 * bounds[-1])) == math.inf
    assert histogram_percentile({}, 0.5) is None


async def test_two_processes_merge_through_redis(redis_url):
    rng = random.Random(6)
    now = time.time()
    first, second = RealtimeBoard(worker="host:1"), RealtimeBoard(worker="host:2")
    latencies_a = [round(rng.uniform(1, 3000), 3) for _ in range(150)]
    latencies_b = [round(rng.uniform(1, 800), 3) for _ in range(90)]
    for i, latency in enumerate(latencies_a):
        first.observe(
            tenant_id=1,
            latency_ms=latency,
            status_code=502 if i % 10 == 0 else 200,
            outcome="error" if i % 10 == 0 else "ok",
            began=False,
            now=now - i % 50,
        )
    for latency in latencies_b:
        second.observe(
            tenant_id=2, latency_ms=latency, status_code=200, outcome="ok", began=False, now=now
        )
    # Older than the window: never counted.
    second.observe(
        tenant_id=2, latency_ms=1.0, status_code=200, outcome="ok", began=False, now=now - 61
    )
    await first.flush()
    await second.flush()

    everything = await realtime_stats(tenant_ids=None, now=now)
    assert everything.requests == 240
    assert everything.errors == 15
    assert everything.rps == pytest.approx(240 / 60)
    assert sum(n for _, n, _ in everything.series) == 240
    both = latencies_a + latencies_b
    assert_within_one_bucket(everything.p50_ms, nearest_rank(both, 0.50))
    assert_within_one_bucket(everything.p95_ms, nearest_rank(both, 0.95))

    only_b = await realtime_stats(tenant_ids=[2], now=now)
    assert only_b.requests == 90
    assert only_b.errors == 0
    assert_within_one_bucket(only_b.p95_ms, nearest_rank(latencies_b, 0.95))
    assert (await realtime_stats(tenant_ids=[1, 2], now=now)).requests == 240
    assert (await realtime_stats(tenant_ids=[3], now=now)).requests == 0


async def test_in_flight_sums_live_processes_and_ignores_stale_ones(redis_url):
    first, second = RealtimeBoard(worker="host:1"), RealtimeBoard(worker="host:2")
    for _ in range(3):
        first.begin(7)
    for _ in range(2):
        second.begin(8)
    first.observe(tenant_id=7, latency_ms=5, status_code=200, outcome="ok", began=True)
    await first.flush()
    await second.flush()
    now = time.time()
    assert (await realtime_stats(tenant_ids=None, now=now)).in_flight == 4
    assert (await realtime_stats(tenant_ids=[7], now=now)).in_flight == 2
    # A process that stopped publishing (killed) no longer counts after a few seconds.
    later = now + realtime.INFLIGHT_STALE_MS / 1000 + 1
    assert (await realtime_stats(tenant_ids=None, now=later)).in_flight == 0
    # Finishing everything publishes zero.
    for _ in range(2):
        first.observe(tenant_id=7, latency_ms=5, status_code=200, outcome="ok", began=True)
    await first.flush()
    assert (await realtime_stats(tenant_ids=[7], now=time.time())).in_flight == 0


async def test_a_failed_flush_keeps_its_counts_for_the_next_one(redis_url, monkeypatch):
    board = RealtimeBoard(worker="host:9")
    board.observe(tenant_id=1, latency_ms=3, status_code=200, outcome="ok", began=False)
    from redis.commands.core import AsyncScript

    async def broken(self, *args, **kwargs):
        raise ConnectionError("redis went away")

    with monkeypatch.context() as patch:
        patch.setattr(AsyncScript, "__call__", broken)
        with pytest.raises(ConnectionError):
            await board.flush()
    await board.flush()
    assert (await realtime_stats(tenant_ids=None)).requests == 1


async def test_a_flush_is_one_redis_command_however_many_requests_it_carries(
    redis_url, monkeypatch
):
    """The request path never talks to Redis for this view: a worker's flush is one EVALSHA
    (after the script is loaded once), whether it carries one request or a thousand."""
    import asyncio

    board = RealtimeBoard(worker="host:3")
    board.observe(tenant_id=1, latency_ms=1, status_code=200, outcome="ok", began=False)
    await board.flush()  # loads the script
    client = board._scripts[asyncio.get_running_loop()].registered_client
    sent: list[str] = []
    original = client.execute_command

    async def counting(*args, **kwargs):
        sent.append(str(args[0]).upper())
        return await original(*args, **kwargs)

    monkeypatch.setattr(client, "execute_command", counting)
    now = time.time()
    for i in range(1000):
        board.begin(i % 7)
        board.observe(
            tenant_id=i % 7, latency_ms=i, status_code=200, outcome="ok", began=True, now=now
        )
    assert sent == []  # nothing on the request path
    await board.flush()
    assert sent == ["EVALSHA"]
    monkeypatch.undo()
    stats = await realtime_stats(tenant_ids=None, now=now)
    assert stats.requests == 1001  # the first observation is in the window too
    assert (await realtime_stats(tenant_ids=[3], now=now)).requests == len(range(3, 1000, 7))


async def test_embedded_mode_reads_the_process_board():
    state_store_set(MemoryStateStore())
    realtime.realtime_begin(tenant_id=4)
    for latency in (10.0, 20.0, 30.0, 40.0):
        realtime.realtime_observe(tenant_id=4, latency_ms=latency, status_code=200, outcome="ok")
    realtime.realtime_observe(
        tenant_id=4, latency_ms=1.0, status_code=429, outcome="rejected", began=False
    )
    stats = await realtime_stats(tenant_ids=[4])
    assert stats.requests == 5
    assert stats.errors == 1
    assert stats.in_flight == 0
    assert_within_one_bucket(stats.p50_ms, 20.0)


def test_realtime_endpoint_is_tenant_scoped(transactional_db, redis_url):
    import asyncio

    tenant, other = TenantFactory(), TenantFactory()
    _, raw = api_key_create_for_test(tenant=tenant)
    board = RealtimeBoard(worker="host:5")
    for i in range(12):
        board.observe(
            tenant_id=tenant.id, latency_ms=100 + i, status_code=200, outcome="ok", began=False
        )
    for _ in range(30):
        board.observe(
            tenant_id=other.id, latency_ms=9000, status_code=500, outcome="error", began=False
        )
    asyncio.run(board.flush())
    response = Client().get("/api/v1/metrics/realtime", HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert response.status_code == 200, response.content
    body = json.loads(response.content)
    assert body["requests"] == 12
    assert body["errors"] == 0
    assert body["window_seconds"] == 60
    assert len(body["series"]) == 60
    assert_within_one_bucket(body["latency_ms"]["p95"], 111)
    hostile = Client().get(
        "/api/v1/metrics/realtime", {"tenant": other.id}, HTTP_AUTHORIZATION=f"Bearer {raw}"
    )
    assert hostile.status_code == 403
