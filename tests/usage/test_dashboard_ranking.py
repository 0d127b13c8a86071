"""The cost dashboard ranks in the database: the top N series plus an exact "other", and a
query count that does not grow with the number of keys."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test.utils import CaptureQueriesContext

from usage.models import RollupPeriod, UsageRollup
from usage.selectors import spend_series

pytestmark = pytest.mark.django_db

DAY0 = datetime(2026, 11, 1, tzinfo=UTC)


def rollups(keys: int) -> None:
    UsageRollup.objects.bulk_create(
        UsageRollup(
            period=RollupPeriod.DAY,
            bucket_start=DAY0 + timedelta(days=day),
            tenant_id=1 + key % 3,
            api_key_id=key + 1,
            model_id=1,
            provider_id=1,
            requests=1,
            cost_usd=Decimal(key + 1) + Decimal("0.000000001") * day,
        )
        for key in range(keys)
        for day in range(2)
    )


def test_top_series_and_other_add_up_to_each_days_total():
    rollups(5)
    days, series = spend_series(
        tenant_ids=None, start=DAY0, end=DAY0 + timedelta(days=2), dimension="key", top=2
    )
    assert len(days) == 2
    assert list(series)[:2] == ["#5", "#4"] and "other" in series
    assert series["other"] == [Decimal(1 + 2 + 3), Decimal(6) + Decimal("0.000000003")]
    for i in range(2):
        total = sum(r.cost_usd for r in UsageRollup.objects.filter(bucket_start=days[i]))
        assert sum(values[i] for values in series.values()) == total


def test_no_other_series_when_every_value_is_a_leader():
    rollups(2)
    _, series = spend_series(
        tenant_ids=None, start=DAY0, end=DAY0 + timedelta(days=2), dimension="key", top=5
    )
    assert "other" not in series and len(series) == 2


@pytest.mark.parametrize("keys", [3, 60])
def test_the_dashboard_query_count_does_not_grow_with_keys(client, keys):
    rollups(keys)
    root = get_user_model().objects.create_superuser("root", password="pw-root-123")
    client.force_login(root)
    with CaptureQueriesContext(connection) as ctx:
        response = client.get("/admin/usage/usageevent/dashboard/?start=2026-11-01&end=2026-11-02")
    assert response.status_code == 200
    # Budgets are listed for at most 150 tenants/keys; none here, so the count is fixed.
    assert len(ctx.captured_queries) <= 30, [q["sql"][:120] for q in ctx.captured_queries]


def test_event_list_endpoint_filter_offers_the_endpoints_present_and_filters(client):
    from usage.models import UsageEvent

    UsageEvent.objects.bulk_create(
        UsageEvent(request_id=f"r{i}", created_at=DAY0, endpoint=endpoint)
        for i, endpoint in enumerate(["chat", "embeddings", "chat"])
    )
    root = get_user_model().objects.create_superuser("root", password="pw-root-123")
    client.force_login(root)
    response = client.get("/admin/usage/usageevent/?endpoint=embeddings")
    spec = next(f for f in response.context["cl"].filter_specs if f.title == "endpoint")
    assert list(spec.lookup_choices) == [("chat", "chat"), ("embeddings", "embeddings")]
    assert [e.request_id for e in response.context["cl"].result_list] == ["r1"]


def test_dashboard_tenant_choices_are_bounded_but_keep_the_chosen_tenant(client):
    from tenants.models import Tenant
    from usage.admin import TENANT_CHOICES_MAX

    Tenant.objects.bulk_create(
        Tenant(slug=f"t-{i:04d}", name=str(i)) for i in range(TENANT_CHOICES_MAX + 10)
    )
    last = Tenant.objects.order_by("-slug").first()
    root = get_user_model().objects.create_superuser("root", password="pw-root-123")
    client.force_login(root)
    plain = client.get("/admin/usage/usageevent/dashboard/")
    assert len(plain.context["tenants"]) == TENANT_CHOICES_MAX
    chosen = client.get(f"/admin/usage/usageevent/dashboard/?tenant={last.pk}")
    assert chosen.context["tenants"][-1].pk == last.pk
