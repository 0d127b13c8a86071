"""Live spend counters (Redis) against PostgreSQL, per open budget period (reconcile_usage).

A counter is seeded with the period's stored spend rounded up to the nano-dollar, then each
settlement adds its cost rounded up to the nano-dollar. So once the usage stream is drained,
a sound counter lies in [ceil(stored spend), ceil(stored spend) + events in the period]
nano-USD; anything outside is a lost or a double charge."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import redis
from asgiref.sync import async_to_sync
from django.conf import settings

from tenants.models import ApiKey, Tenant
from tenants.money import usd_to_nano_ceil
from tenants.periods import budget_period_bounds
from tenants.state import state_store
from usage.models import UsageEvent
from usage.selectors import spend_sum_sync


@dataclass(slots=True)
class LiveSpend:
    scope: str
    scope_id: int
    period: str
    counter_nano: int | None  # None: no counter (nothing to compare)
    stored_nano: int  # ceil(stored spend)
    events: int

    @property
    def sound(self) -> bool:
        if self.counter_nano is None:
            return True
        return self.stored_nano <= self.counter_nano <= self.stored_nano + self.events


def usage_stream_backlog() -> int:
    """Events appended to the usage stream and not yet drained into PostgreSQL."""
    if settings.GATEWAY_USAGE_WRITE_MODE != "stream" or not settings.REDIS_URL:
        return 0
    client = redis.Redis.from_url(settings.REDIS_URL)
    try:
        return int(client.xlen(settings.GATEWAY_USAGE_STREAM))
    finally:
        client.close()


def live_spend_check(*, tenant_ids: list[int]) -> list[LiveSpend]:
    """The current period of every tenant and key of these tenants that has a counter."""
    store = state_store()
    now = datetime.now(tz=UTC)
    rows: list[LiveSpend] = []
    for tenant in Tenant.objects.filter(pk__in=tenant_ids).order_by("pk"):
        owners: list[tuple[str, int, object]] = [("tenant", tenant.pk, tenant)]
        owners += [("key", key.pk, key) for key in ApiKey.objects.filter(tenant=tenant)]
        for scope, scope_id, owner in owners:
            bounds = budget_period_bounds(
                period=owner.budget_period, tz_name=tenant.timezone, now=now
            )
            keys = store.scope_keys(
                scope=scope, tenant_id=tenant.pk, scope_id=scope_id, period_key=bounds.key
            )
            counter = async_to_sync(store.spend_get)(keys=keys)
            if counter is None:
                continue
            period_end = bounds.end or now
            stored = spend_sum_sync(
                scope=scope, scope_id=scope_id, start=bounds.start, end=period_end
            )
            field = "tenant_id" if scope == "tenant" else "api_key_id"
            events = UsageEvent.objects.filter(
                **{field: scope_id, "created_at__gte": bounds.start, "created_at__lt": period_end}
            ).count()
            rows.append(
                LiveSpend(
                    scope=scope,
                    scope_id=scope_id,
                    period=bounds.key,
                    counter_nano=counter,
                    stored_nano=usd_to_nano_ceil(stored),
                    events=events,
                )
            )
    return rows
