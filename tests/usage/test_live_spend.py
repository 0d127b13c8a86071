"""reconcile_usage compares the live Redis spend counters of open periods with PostgreSQL: a
counter that lost or doubled a charge is a difference (non-zero exit)."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
import redis
from asgiref.sync import async_to_sync
from django.core.management import call_command
from django.core.management.base import CommandError
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

pytestmark = pytest.mark.django_db(transaction=True)


def _reconcile() -> None:
    call_command("usage_rollup")
    today = timezone.now().date()
    call_command(
        "reconcile_usage",
        "--from",
        (today - timedelta(days=1)).isoformat(),
        "--to",
        (today + timedelta(days=1)).isoformat(),
    )


def test_a_tampered_live_counter_fails_reconciliation(settings, redis_url):
    from routing.snapshot import snapshot_invalidate
    from tenants.selectors import policy_cache_clear

    assert settings.GATEWAY_STATE_BACKEND == "redis"
    provider = ProviderFactory(name="mock-live")
    model = ModelFactory(
        name="live-spend-model",
        provider=provider,
        input_price_per_mtok=Decimal("3.000000"),
        output_price_per_mtok=Decimal("7.000000"),
    )
    route_create(name="live-spend", models=[model])
    tenant = TenantFactory()
    _, raw = api_key_create_for_test(tenant=tenant, budget_usd=Decimal("5"))
    snapshot_invalidate()
    policy_cache_clear()

    async def send() -> None:
        for _ in range(3):
            response = await AsyncClient().post(
                "/v1/chat/completions",
                {"model": "live-spend", "messages": [{"role": "user", "content": "hi"}]},
                content_type="application/json",
                headers={"Authorization": f"Bearer {raw}"},
            )
            assert response.status_code == 200
        assert await usage_events_settled(3) == 3

    async_to_sync(send)()
    _reconcile()  # sound: exits 0
    client = redis.Redis.from_url(redis_url)
    [counter] = [k for k in client.scan_iter(match="*:k:*:spend:*")]
    client.incrby(counter, 5_000)  # a charge Redis holds and PostgreSQL does not
    with pytest.raises(CommandError):
        _reconcile()
