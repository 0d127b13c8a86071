"""request_admit / request_settle over both state stores, with real keys in the database."""

from __future__ import annotations

from decimal import Decimal

import orjson
import pytest
from asgiref.sync import sync_to_async

from tenants import services
from tenants.admission import (
    AdmissionDenied,
    alert_dispatches_wait,
    duration_format,
    request_admit,
    request_settle,
)
from tenants.models import BudgetAlert
from tenants.selectors import api_key_policy_get
from tests.factories import TenantFactory

pytestmark = pytest.mark.django_db(transaction=True)

PRICE = Decimal("1000000")  # 1 USD per token: easy arithmetic


@sync_to_async
def make_key(*, tenant_fields=None, **key_fields):
    tenant = TenantFactory(**(tenant_fields or {}))
    key, raw = services.api_key_create(tenant=tenant, **key_fields)
    return tenant, key, raw


async def admit(policy, *, prompt=1, max_out=1, request_id="req_1"):
    return await request_admit(
        policy=policy,
        request_id=request_id,
        estimated_prompt_tokens=prompt,
        max_output_tokens=max_out,
        input_price_per_mtok=PRICE,
        output_price_per_mtok=PRICE,
    )


async def test_admission_headers_carry_openai_rate_limit_headers(backend):
    _, _, raw = await make_key(rpm_limit=10, tpm_limit=1000)
    policy = await api_key_policy_get(raw_key=raw)
    admission = await admit(policy, prompt=40, max_out=60)
    assert admission.headers["x-ratelimit-limit-requests"] == "10"
    assert admission.headers["x-ratelimit-remaining-requests"] == "9"
    assert admission.headers["x-ratelimit-limit-tokens"] == "1000"
    assert admission.headers["x-ratelimit-remaining-tokens"] == "900"
    assert admission.headers["x-ratelimit-reset-requests"].endswith("s")
    assert "x-ratelimit-reset-tokens" in admission.headers


async def test_rate_refusal_is_429_with_retry_after_and_should_retry(backend):
    _, _, raw = await make_key(rpm_limit=1)
    policy = await api_key_policy_get(raw_key=raw)
    await admit(policy)
    with pytest.raises(AdmissionDenied) as denied:
        await admit(policy)
    error = denied.value
    assert (error.status, error.code, error.error_type) == (
        429,
        "rate_limit_exceeded",
        "rate_limit_error",
    )
    assert error.retry_after and error.retry_after > 0
    assert error.headers["x-should-retry"] == "true"
    assert error.headers["x-ratelimit-remaining-requests"] == "0"


async def test_concurrency_refusal_is_429_concurrency_limit_exceeded(backend):
    _, _, raw = await make_key(max_concurrency=1)
    policy = await api_key_policy_get(raw_key=raw)
    first = await admit(policy)
    with pytest.raises(AdmissionDenied) as denied:
        await admit(policy)
    assert denied.value.code == "concurrency_limit_exceeded"
    await request_settle(admission=first, cost_usd=Decimal(0), tokens_used=0, usage_event={})
    await admit(policy)


async def test_budget_refusal_is_402_insufficient_quota_without_retry(backend, spend_loader):
    _, _, raw = await make_key(budget_usd=Decimal("5"))
    policy = await api_key_policy_get(raw_key=raw)
    with pytest.raises(AdmissionDenied) as denied:
        await admit(policy, prompt=3, max_out=3)  # worst case 6 USD > 5
    error = denied.value
    assert (error.status, error.code, error.error_type) == (
        402,
        "budget_exceeded",
        "insufficient_quota",
    )
    assert error.headers["x-should-retry"] == "false"
    assert error.retry_after is None


async def test_settlement_replaces_the_reservation_with_the_real_cost(backend, spend_loader):
    _, key, raw = await make_key(budget_usd=Decimal("10"))
    policy = await api_key_policy_get(raw_key=raw)
    first = await admit(policy, prompt=2, max_out=6)  # reserves 8 USD
    assert first.reserved_usd == Decimal(8)
    with pytest.raises(AdmissionDenied):
        await admit(policy, prompt=1, max_out=2)  # 8 held + 3 > 10
    await request_settle(
        admission=first, cost_usd=Decimal("3.0000000001"), tokens_used=5, usage_event={}
    )
    keys = first.scopes[0].keys
    # Real cost rounded UP to the nano-USD.
    assert await backend.spend_get(keys=keys) == 3_000_000_001
    await admit(policy, prompt=3, max_out=3)  # 3.000000001 + 6 <= 10


async def test_missing_spend_counter_is_rebuilt_from_the_loader_before_admitting(
    backend, spend_loader
):
    spent, calls = spend_loader
    tenant, key, raw = await make_key(budget_usd=Decimal("10"))
    spent[("key", key.pk)] = Decimal("9.5")
    policy = await api_key_policy_get(raw_key=raw)
    with pytest.raises(AdmissionDenied) as denied:
        await admit(policy, prompt=1, max_out=0)  # 9.5 + 1 > 10
    assert denied.value.code == "budget_exceeded"
    assert calls == [("key", key.pk)]
    # Seeded once: no second database read in the steady state.
    await admit(policy, prompt=0, max_out=0)
    assert calls == [("key", key.pk)]


async def test_tenant_budget_binds_all_its_keys(backend, spend_loader):
    tenant, _, raw_a = await make_key(tenant_fields={"budget_usd": Decimal("4")})
    key_b, raw_b = await sync_to_async(services.api_key_create)(tenant=tenant)
    a = await api_key_policy_get(raw_key=raw_a)
    b = await api_key_policy_get(raw_key=raw_b)
    await admit(a, prompt=1, max_out=2)
    with pytest.raises(AdmissionDenied) as denied:
        await admit(b, prompt=1, max_out=1)
    assert "tenant" in denied.value.message


async def test_revocation_refuses_a_stale_cached_policy_at_admission(backend):
    _, key, raw = await make_key(max_concurrency=1)
    policy = await api_key_policy_get(raw_key=raw)
    settled = await admit(policy)
    await request_settle(admission=settled, cost_usd=Decimal(0), tokens_used=0, usage_event={})
    await sync_to_async(services.api_key_revoke)(key=key)
    # Another process still holds the old policy: the moved config version catches it.
    with pytest.raises(AdmissionDenied) as denied:
        await admit(policy)
    assert (denied.value.status, denied.value.code) == (401, "revoked_api_key")
    assert await api_key_policy_get(raw_key=raw) != policy


async def test_a_limit_edit_applies_to_a_request_admitted_under_the_old_policy(backend):
    _, key, raw = await make_key()
    stale = await api_key_policy_get(raw_key=raw)
    await admit(stale)
    await sync_to_async(services.api_key_update_limits)(key=key, rpm_limit=0)
    with pytest.raises(AdmissionDenied) as denied:
        await admit(stale)
    assert denied.value.status == 429


async def test_stream_mode_settlement_appends_the_usage_event_in_the_same_call(backend, settings):
    if backend.name != "redis":
        pytest.skip("only the Redis store has a usage stream")
    settings.GATEWAY_USAGE_WRITE_MODE = "stream"
    _, _, raw = await make_key()
    policy = await api_key_policy_get(raw_key=raw)
    admission = await admit(policy, request_id="req_stream")
    event = {"request_id": "req_stream", "cost_usd": Decimal("0.5")}
    stored = await request_settle(
        admission=admission, cost_usd=Decimal("0.5"), tokens_used=3, usage_event=event
    )
    assert stored is True
    entries = await backend.client().xrange(settings.GATEWAY_USAGE_STREAM)
    assert len(entries) == 1
    assert orjson.loads(entries[0][1][b"e"]) == {"request_id": "req_stream", "cost_usd": "0.5"}
    # A second settle of the same admission is a no-op.
    assert (
        await request_settle(
            admission=admission, cost_usd=Decimal(1), tokens_used=1, usage_event={}
        )
        is False
    )


async def test_direct_mode_settlement_leaves_the_event_to_the_caller(backend, settings):
    settings.GATEWAY_USAGE_WRITE_MODE = "direct"
    _, _, raw = await make_key()
    policy = await api_key_policy_get(raw_key=raw)
    admission = await admit(policy)
    stored = await request_settle(
        admission=admission, cost_usd=Decimal(0), tokens_used=0, usage_event={"request_id": "x"}
    )
    assert stored is False


async def test_crossing_a_budget_threshold_records_one_alert_per_threshold(
    backend, spend_loader, eager_celery
):
    tenant, key, raw = await make_key(
        tenant_fields={"alert_thresholds": [50, 80, 100]}, budget_usd=Decimal("10")
    )
    policy = await api_key_policy_get(raw_key=raw)
    for cost in ("4", "2", "1"):  # 40%, 60%, 70%
        admission = await admit(policy, prompt=1, max_out=0)
        await request_settle(
            admission=admission, cost_usd=Decimal(cost), tokens_used=1, usage_event={}
        )
    await alert_dispatches_wait()
    alerts = await sync_to_async(list)(
        BudgetAlert.objects.filter(api_key=key).values_list("threshold", flat=True)
    )
    assert alerts == [50]
    admission = await admit(policy, prompt=1, max_out=0)
    await request_settle(admission=admission, cost_usd=Decimal(3), tokens_used=1, usage_event={})
    await alert_dispatches_wait()
    alerts = await sync_to_async(sorted)(
        BudgetAlert.objects.filter(api_key=key).values_list("threshold", flat=True)
    )
    assert alerts == [50, 80, 100]


def test_reset_durations_are_written_like_openai():
    assert duration_format(120) == "120ms"
    assert duration_format(1500) == "1.5s"
    assert duration_format(60_000) == "1m0s"
    assert duration_format(61_250) == "1m1.25s"


async def test_a_database_error_while_reseeding_at_settlement_does_not_escape(backend):
    """Redis lost the counter mid-request and PostgreSQL cannot rebuild it right now: the
    settlement still releases the slot (charging the counters that exist) instead of raising
    out of the request's finish."""
    from django.db import OperationalError

    from tenants.admission import spend_loader_set

    _, key, raw = await make_key(budget_usd=Decimal("10"), max_concurrency=1)
    policy = await api_key_policy_get(raw_key=raw)
    spend_loader_set(_zero_loader)
    try:
        admission = await admit(policy, prompt=1, max_out=1)
        if hasattr(backend, "flush"):
            backend.flush()
        else:
            import redis as redis_sync
            from django.conf import settings

            redis_sync.Redis.from_url(settings.REDIS_URL).delete(admission.scopes[0].keys.spend)

        async def broken(**kwargs):
            raise OperationalError("database is away")

        spend_loader_set(broken)
        await request_settle(
            admission=admission, cost_usd=Decimal(1), tokens_used=2, usage_event={}
        )
        spend_loader_set(_zero_loader)
        # The slot is free: the next request is admitted.
        await admit(policy, prompt=0, max_out=0, request_id="req_2")
    finally:
        spend_loader_set(None)


async def _zero_loader(**kwargs):
    return Decimal(0)
