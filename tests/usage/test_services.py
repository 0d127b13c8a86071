"""Event writes: idempotent on request id (attempts too), bad events isolated, and the direct
mode's background writer stores everything without the caller waiting on the database."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest
from asgiref.sync import sync_to_async
from django.db import connections
from django.test import override_settings

from tests.usage.conftest import at
from usage.models import UsageAttempt, UsageEvent
from usage.services import (
    usage_event_record,
    usage_events_flush,
    usage_events_write,
    usage_events_write_each,
)


def test_writing_the_same_events_twice_stores_each_event_and_attempt_once(usage_world, maker):
    m = maker(usage_world["key_a"])
    payloads = [m.payload(created_at=at(1), tokens_in=100 + i, tokens_out=50) for i in range(20)]
    assert usage_events_write(payloads=payloads) == 20
    assert usage_events_write(payloads=payloads + payloads[:5]) == 0
    assert UsageEvent.objects.count() == 20
    assert UsageAttempt.objects.count() == 20
    stored = UsageEvent.objects.get(request_id=payloads[3]["request_id"])
    assert stored.cost_usd == Decimal(payloads[3]["cost_usd"])
    assert stored.input_price_per_mtok == Decimal("0.15")
    assert stored.tenant_id == usage_world["acme"].id


def test_a_malformed_event_is_rejected_alone_and_the_rest_of_the_batch_is_stored(
    usage_world, maker
):
    m = maker(usage_world["key_a"])
    good = [m.payload(created_at=at(1), tokens_in=10, tokens_out=5) for _ in range(3)]
    bad = dict(good[0], request_id="bad-negative", tokens_in=-5)
    report = usage_events_write_each(payloads=[*good, bad])
    assert report.written == 3
    assert [p["request_id"] for p, _ in report.rejected] == ["bad-negative"]
    assert UsageEvent.objects.count() == 3


@pytest.mark.django_db(transaction=True)
@override_settings(
    GATEWAY_USAGE_WRITE_MODE="direct", GATEWAY_USAGE_QUEUE_MAX=8, GATEWAY_USAGE_WRITER_BATCH=50
)
async def test_direct_mode_writer_applies_back_pressure_and_loses_no_event(usage_world, maker):
    m = await sync_to_async(maker)(usage_world["key_b"])
    payloads = [m.payload(created_at=at(2), tokens_in=i, tokens_out=1) for i in range(1500)]

    async def client(chunk):
        for payload in chunk:
            await usage_event_record(payload=payload)

    # 3 concurrent producers against a queue of 8: puts wait instead of dropping.
    await asyncio.gather(*(client(payloads[i::3]) for i in range(3)))
    await usage_events_flush(max_wait_s=60)
    count = await UsageEvent.objects.filter(api_key_id=usage_world["key_b"].id).acount()
    assert count == 1500
    total = sum(Decimal(p["cost_usd"]) for p in payloads)
    stored = [
        e.cost_usd async for e in UsageEvent.objects.filter(api_key_id=usage_world["key_b"].id)
    ]
    assert sum(stored, Decimal(0)) == total
    # The async ORM ran in asgiref's thread: close its connection before the DB is dropped.
    await sync_to_async(connections.close_all)()
