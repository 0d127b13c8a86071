"""Money does not stop when beat is down: a REAL Celery worker with no beat (and no drain task
ever sent) drains the usage stream on its own, and says so in Redis; /health/ready shows the
drain, beat's liveness, the backlog and the lag; embedded (direct) mode rolls up after writes."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest
import redis
from asgiref.sync import sync_to_async
from django.conf import settings
from django.test import AsyncClient, override_settings

from gateway_project.celery import BEAT_HEARTBEAT_KEY, HeartbeatScheduler, app
from tests.celery_workers import celery_worker_start, process_stop, wait_until
from tests.usage.conftest import at
from usage.drainer import DRAIN_HEARTBEAT_KEY
from usage.models import RollupPeriod, UsageEvent, UsageRollup
from usage.services import usage_event_record, usage_events_flush
from usage.stream import usage_payload_encode

TOTAL = 300


async def _payload(make, created_at) -> dict:
    return await sync_to_async(make.payload)(created_at=created_at, tokens_in=100, tokens_out=10)


@pytest.mark.live_server_process
def test_a_worker_without_beat_drains_every_event_and_records_its_heartbeat(
    usage_world, maker, redis_url, tmp_path
):
    client = redis.Redis.from_url(redis_url)
    app.control.purge()
    make = maker(usage_world["key_a"])
    payloads = [
        make.payload(created_at=at(3, minute=i % 60), tokens_in=100, tokens_out=10)
        for i in range(TOTAL)
    ]
    pipe = client.pipeline(transaction=False)
    for payload in payloads:
        pipe.xadd(settings.GATEWAY_USAGE_STREAM, usage_payload_encode(payload))
    pipe.execute()
    assert client.get(DRAIN_HEARTBEAT_KEY) is None

    worker = celery_worker_start(
        redis_url,
        tmp_path,
        "nobeat",
        beat=False,
        # Beat's drain interval would not matter anyway: no beat runs and no task is sent.
        extra_env={"GATEWAY_USAGE_DRAIN_BATCH": "50"},
    )
    try:
        wait_until(
            lambda: (
                UsageEvent.objects.count() == TOTAL
                and client.xlen(settings.GATEWAY_USAGE_STREAM) == 0
            ),
            timeout_s=90,
            what="the worker's own drain to store every event",
            interval=0.1,
        )
        wait_until(
            lambda: client.get(DRAIN_HEARTBEAT_KEY) is not None,
            timeout_s=30,
            what="the drain heartbeat",
        )
        heartbeat = orjson.loads(client.get(DRAIN_HEARTBEAT_KEY))
        assert time.time() - heartbeat["at"] < 30

        # Events arriving later are drained too: the consumer is long-lived, not one run.
        later = [
            make.payload(created_at=at(4, minute=i), tokens_in=100, tokens_out=10)
            for i in range(20)
        ]
        for payload in later:
            client.xadd(settings.GATEWAY_USAGE_STREAM, usage_payload_encode(payload))
        wait_until(
            lambda: UsageEvent.objects.count() == TOTAL + 20,
            timeout_s=60,
            what="later events to be drained",
            interval=0.1,
        )
        ready = AsyncClient()
        body = asyncio.run(ready.get("/health/ready")).json()
        assert body["checks"]["usage"]["drain"] == "ok"
        assert body["checks"]["usage"]["backlog"] == 0
        # No beat ran: readiness says so (degraded, still serving).
        assert body["checks"]["beat"]["status"] == "stale"
        assert body["status"] == "degraded"
    finally:
        process_stop(worker)
    assert UsageEvent.objects.values("request_id").distinct().count() == TOTAL + 20
    assert client.get(BEAT_HEARTBEAT_KEY) is None


@pytest.mark.django_db
async def test_readiness_shows_a_growing_backlog_its_lag_and_a_stale_drain(redis_url):
    client = redis.Redis.from_url(redis_url)
    old_ms = int((time.time() - 120) * 1000)
    client.xadd(settings.GATEWAY_USAGE_STREAM, {b"e": b"{}"}, id=f"{old_ms}-0")
    client.xadd(settings.GATEWAY_USAGE_STREAM, {b"e": b"{}"})
    # A drain that last reported long ago (its worker died), and a live beat.
    client.set(DRAIN_HEARTBEAT_KEY, orjson.dumps({"at": time.time() - 600, "consumer": "x"}))
    client.set(BEAT_HEARTBEAT_KEY, repr(time.time()))
    with override_settings(GATEWAY_OPS_DRAIN_LAG_READY_SECONDS=60):
        response = await AsyncClient().get("/health/ready")
    assert response.status_code == 200
    body = response.json()
    usage = body["checks"]["usage"]
    assert usage["backlog"] == 2
    assert 110 < usage["drain_lag_seconds"] < 600
    assert usage["lag"] == "lagging" and usage["drain"] == "stale"
    assert body["checks"]["beat"]["status"] == "ok"
    assert body["status"] == "degraded"


@pytest.mark.django_db
async def test_readiness_is_503_within_a_second_when_redis_does_not_answer():
    with override_settings(REDIS_URL="redis://127.0.0.1:1/0"):
        started = time.monotonic()
        response = await AsyncClient().get("/health/ready")
        elapsed = time.monotonic() - started
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable" and body["checks"]["redis"] in ("down", "timeout")
    assert body["checks"]["database"] == "ok"
    assert elapsed < 5  # bounded by the 0.8 s check timeout; generous for a loaded CI box


async def test_liveness_reports_version_and_uptime():
    body = (await AsyncClient().get("/health")).json()
    assert body["status"] == "ok" and body["version"] not in ("", None)
    assert body["uptime_seconds"] >= 0


def test_beat_scheduler_records_its_heartbeat(redis_url, tmp_path):
    client = redis.Redis.from_url(redis_url)
    scheduler = HeartbeatScheduler(app=app, schedule_filename=str(tmp_path / "beat"), lazy=True)
    scheduler._heartbeat()
    assert abs(float(client.get(BEAT_HEARTBEAT_KEY)) - time.time()) < 60
    assert client.ttl(BEAT_HEARTBEAT_KEY) > 0


async def test_direct_mode_rolls_up_shortly_after_writing(usage_world, maker):
    """Embedded mode has no beat: the in-process writer rolls the new events up by itself."""
    make = await sync_to_async(maker)(usage_world["key_b"])
    with override_settings(
        GATEWAY_USAGE_WRITE_MODE="direct", GATEWAY_USAGE_ROLLUP_AFTER_WRITE_SECONDS=0.2
    ):
        for i in range(5):
            await usage_event_record(payload=await _payload(make, at(5, minute=i)))
        await usage_events_flush()

        async def rolled() -> bool:
            rows = [r async for r in UsageRollup.objects.filter(period=RollupPeriod.DAY)]
            return sum(r.requests for r in rows) == 5

        for _ in range(200):
            if await rolled():
                break
            await asyncio.sleep(0.05)
        assert await rolled(), "no rollup followed the direct-mode writes"


async def test_direct_mode_without_rollup_after_write_leaves_rollups_to_beat(usage_world, maker):
    make = await sync_to_async(maker)(usage_world["key_b"])
    with override_settings(
        GATEWAY_USAGE_WRITE_MODE="direct", GATEWAY_USAGE_ROLLUP_AFTER_WRITE_SECONDS=0
    ):
        await usage_event_record(payload=await _payload(make, at(6)))
        await usage_events_flush()
        await asyncio.sleep(0.3)
    assert await UsageEvent.objects.acount() == 1
    assert not await UsageRollup.objects.aexists()
