"""The stream pipeline end to end with REAL Celery workers (subprocesses of
`celery -A gateway_project worker`): 10,000 events XADDed with routing's exact payload shape
become 10,000 rows and exact rollups; a worker SIGKILLed mid-drain loses and duplicates
nothing once another worker (with embedded beat) takes over."""

from __future__ import annotations

import os
import signal
from decimal import Decimal

import pytest
import redis
from django.conf import settings

from tests.celery_workers import celery_worker_start, process_stop, wait_until
from tests.usage.conftest import at
from usage.models import RollupPeriod, UsageAttempt, UsageEvent, UsageRollup
from usage.stream import usage_payload_encode

pytestmark = pytest.mark.live_server_process

TOTAL = 10_000


def test_ten_thousand_stream_events_survive_a_sigkilled_worker_exactly_once(
    usage_world, maker, redis_url, tmp_path
):
    client = redis.Redis.from_url(redis_url)
    client.delete(settings.GATEWAY_USAGE_STREAM, settings.GATEWAY_USAGE_DEAD_LETTER_STREAM)
    from gateway_project.celery import app

    app.control.purge()
    makers = [maker(usage_world[k]) for k in ("key_a", "key_b", "key_g")]
    payloads = [
        makers[i % 3].payload(
            created_at=at(1 + i % 28, hour=i % 24, minute=i % 60),
            tokens_in=137 + (i * 7919) % 5000,
            tokens_out=11 + (i * 104729) % 2000,
            target_index=i % 2,
            outcome="error" if i % 97 == 0 else "ok",
        )
        for i in range(TOTAL)
    ]
    exact = sum((Decimal(p["cost_usd"]) for p in payloads), Decimal(0))
    pipe = client.pipeline(transaction=False)
    for payload in payloads:
        pipe.xadd(settings.GATEWAY_USAGE_STREAM, usage_payload_encode(payload))
    pipe.execute()
    assert client.xlen(settings.GATEWAY_USAGE_STREAM) == TOTAL

    small_batches = {"GATEWAY_USAGE_DRAIN_BATCH": "25", "GATEWAY_USAGE_CLAIM_MIN_IDLE_MS": "1500"}
    first = celery_worker_start(redis_url, tmp_path, "first", beat=False, extra_env=small_batches)
    second = None
    try:
        app.send_task("usage.tasks.usage_stream_drain")
        wait_until(
            lambda: UsageEvent.objects.count() >= 500, timeout_s=90, what="first drain to start"
        )
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
        stored_at_kill = UsageEvent.objects.count()
        assert stored_at_kill < TOTAL, "the kill must land mid-drain"
        backlog = client.xlen(settings.GATEWAY_USAGE_STREAM)
        assert backlog > 0

        second = celery_worker_start(
            redis_url,
            tmp_path,
            "second",
            beat=True,
            extra_env={
                **small_batches,
                "GATEWAY_USAGE_DRAIN_BATCH": "500",
                "GATEWAY_USAGE_DRAIN_INTERVAL_SECONDS": "1",
                "GATEWAY_USAGE_ROLLUP_INTERVAL_SECONDS": "2",
            },
        )

        def drained() -> bool:
            pending = client.xpending(
                settings.GATEWAY_USAGE_STREAM, settings.GATEWAY_USAGE_STREAM_GROUP
            )
            return (
                UsageEvent.objects.count() == TOTAL
                and client.xlen(settings.GATEWAY_USAGE_STREAM) == 0
                and pending["pending"] == 0
            )

        wait_until(
            drained, timeout_s=180, what="the second worker to drain everything", interval=0.2
        )

        def rolled_up() -> bool:
            rows = UsageRollup.objects.filter(period=RollupPeriod.DAY)
            return (
                sum((r.cost_usd for r in rows), Decimal(0)) == exact
                and sum(r.requests for r in rows) == TOTAL
            )

        wait_until(
            rolled_up, timeout_s=120, what="beat's rollup to cover every event", interval=0.5
        )
    finally:
        process_stop(first, signal.SIGKILL)
        if second is not None:
            process_stop(second)

    assert UsageEvent.objects.values("request_id").distinct().count() == TOTAL
    assert UsageAttempt.objects.count() == TOTAL
    stored = sum(UsageEvent.objects.values_list("cost_usd", flat=True), Decimal(0))
    assert stored == exact
    hours = UsageRollup.objects.filter(period=RollupPeriod.HOUR)
    assert sum((r.cost_usd for r in hours), Decimal(0)) == exact
    assert sum(r.requests for r in hours) == TOTAL
    assert sum(r.errors for r in hours) == sum(1 for p in payloads if p["outcome"] == "error")
    assert client.xlen(settings.GATEWAY_USAGE_DEAD_LETTER_STREAM) == 0
    print(f"stored at SIGKILL: {stored_at_kill}, backlog then: {backlog}")  # noqa: T201
