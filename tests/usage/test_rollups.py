"""Rollups: exact Decimal totals, idempotent re-runs, late events correct their bucket,
retention keeps rollups unchanged, reconciliation proves it (and fails on a difference)."""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal

import pytest
from asgiref.sync import sync_to_async
from django.core.management import CommandError, call_command
from django.db import connections
from django.test import override_settings

from tests.usage.conftest import at
from usage.models import PurgedUsage, RollupPeriod, UsageEvent, UsageRollup
from usage.rollups import usage_retention, usage_rollup
from usage.selectors import spend_sum, spend_sum_sync
from usage.services import usage_events_write


def _rollup_snapshot():
    return sorted(
        UsageRollup.objects.values_list(
            "period",
            "bucket_start",
            "tenant_id",
            "api_key_id",
            "model_id",
            "input_price_per_mtok",
            "requests",
            "errors",
            "tokens_in",
            "tokens_out",
            "cost_usd",
            "cache_savings_usd",
        )
    )


def _total(period: str) -> Decimal:
    return sum(
        UsageRollup.objects.filter(period=period).values_list("cost_usd", flat=True), Decimal(0)
    )


def test_rollups_equal_the_exact_sum_of_event_costs_and_rerunning_changes_nothing(
    usage_world, maker
):
    payloads = []
    for key in ("key_a", "key_b", "key_g"):
        m = maker(usage_world[key])
        for i in range(60):
            payloads.append(
                m.payload(
                    created_at=at(3 + i % 3, hour=i % 24, minute=i % 60),
                    tokens_in=1000 + 7 * i,
                    tokens_out=333 + i,
                    target_index=i % 2,
                    outcome="error" if i % 10 == 0 else "ok",
                    cache_read_tokens=50 if i % 4 == 0 else 0,
                )
            )
    usage_events_write(payloads=payloads)
    usage_rollup()
    exact = sum((Decimal(p["cost_usd"]) for p in payloads), Decimal(0))
    assert _total(RollupPeriod.HOUR) == exact
    assert _total(RollupPeriod.DAY) == exact
    day_rows = UsageRollup.objects.filter(period=RollupPeriod.DAY)
    assert sum(r.requests for r in day_rows) == 180
    assert sum(r.errors for r in day_rows) == 18
    assert sum(r.tokens_in for r in day_rows) == sum(p["tokens_in"] for p in payloads)
    savings = sum(r.cache_savings_usd for r in day_rows)
    expected_savings = sum(
        Decimal(p["cache_read_tokens"]) * Decimal(p["input_price_per_mtok"]) / Decimal(10**6)
        for p in payloads
    )
    assert savings == expected_savings

    before = _rollup_snapshot()
    usage_rollup()
    usage_rollup()
    assert _rollup_snapshot() == before


def test_a_late_event_corrects_its_old_bucket_on_the_next_rollup(usage_world, maker):
    m = maker(usage_world["key_a"])
    usage_events_write(payloads=[m.payload(created_at=at(5, 9), tokens_in=100, tokens_out=100)])
    usage_rollup()
    hour = UsageRollup.objects.get(period=RollupPeriod.HOUR, bucket_start=at(5, 9))
    assert hour.requests == 1
    late = m.payload(created_at=at(5, 9, 30), tokens_in=1_000_000, tokens_out=0)
    usage_events_write(payloads=[late])
    usage_rollup()
    hour = UsageRollup.objects.get(period=RollupPeriod.HOUR, bucket_start=at(5, 9))
    day = UsageRollup.objects.get(period=RollupPeriod.DAY, bucket_start=at(5, 0))
    assert hour.requests == day.requests == 2
    assert hour.cost_usd == day.cost_usd == Decimal("0.000075") + Decimal("0.15")


@override_settings(GATEWAY_USAGE_RETENTION_DAYS=30, GATEWAY_USAGE_ROLLUP_OVERLAP_SECONDS=0)
def test_retention_deletes_old_raw_events_and_rollups_and_reconciliation_stay_exact(
    usage_world, maker
):
    m = maker(usage_world["key_a"])
    old = [m.payload(created_at=at(1, h), tokens_in=1234, tokens_out=567) for h in range(10)]
    recent = [
        m.payload(created_at=at(20, h, month=11), tokens_in=10, tokens_out=5) for h in range(3)
    ]
    usage_events_write(payloads=old + recent)
    usage_rollup()
    before = _rollup_snapshot()
    spend_before = spend_sum_sync(
        scope="tenant", scope_id=usage_world["acme"].id, start=at(1, 0), end=at(1, 0, month=12)
    )
    # Watermark is now; the retention clock runs from 2026-12-01: October is past 30 days.
    result = usage_retention(now=at(1, 0, month=12) + timedelta(days=1))
    assert result.deleted == 10
    assert UsageEvent.objects.count() == 3
    assert PurgedUsage.objects.count() == 10
    usage_rollup()
    from usage.rollups import usage_rollup_window

    usage_rollup_window(start=at(1, 0), end=at(2, 0))
    assert _rollup_snapshot() == before
    assert (
        spend_sum_sync(
            scope="tenant", scope_id=usage_world["acme"].id, start=at(1, 0), end=at(1, 0, month=12)
        )
        == spend_before
    )
    call_command("reconcile_usage", "--from", "2026-10-01", "--to", "2026-12-01")


def test_reconcile_usage_exits_non_zero_and_lists_a_difference(usage_world, maker):
    m = maker(usage_world["key_g"])
    usage_events_write(
        payloads=[m.payload(created_at=at(7, h), tokens_in=500, tokens_out=50) for h in range(4)]
    )
    usage_rollup()
    call_command(
        "reconcile_usage", "--from", "2026-10-01", "--to", "2026-11-01", "--tenant", "globex"
    )
    row = UsageRollup.objects.filter(period=RollupPeriod.HOUR).first()
    UsageRollup.objects.filter(pk=row.pk).update(cost_usd=row.cost_usd + Decimal("0.000000000001"))
    from io import StringIO

    out = StringIO()
    with pytest.raises(CommandError, match="difference"):
        call_command("reconcile_usage", "--from", "2026-10-01", "--to", "2026-11-01", stdout=out)
    assert "DIFFERENCE hour_rollups" in out.getvalue()
    delta = re.search(r"delta=([0-9.E+-]+)\)", out.getvalue()).group(1)
    assert Decimal(delta) == Decimal("0.000000000001")


@pytest.mark.django_db(transaction=True)
async def test_spend_sum_is_awaitable_and_sums_one_key_or_tenant_in_a_window(usage_world, maker):
    m = await sync_to_async(maker)(usage_world["key_b"])
    payloads = [m.payload(created_at=at(9, h), tokens_in=2000, tokens_out=1000) for h in range(5)]
    await sync_to_async(usage_events_write)(payloads=payloads)
    key_spend = await spend_sum(
        scope="key", scope_id=usage_world["key_b"].id, start=at(9, 1), end=at(9, 4)
    )
    assert key_spend == sum((Decimal(p["cost_usd"]) for p in payloads[1:4]), Decimal(0))
    tenant_spend = await spend_sum(scope="tenant", scope_id=usage_world["acme"].id, start=at(9, 0))
    assert tenant_spend == sum((Decimal(p["cost_usd"]) for p in payloads), Decimal(0))
    # The async ORM ran in asgiref's thread: close its connection before the DB is dropped.
    await sync_to_async(connections.close_all)()
