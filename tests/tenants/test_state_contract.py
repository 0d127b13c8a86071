"""One contract, two backends: the Redis state store and the in-process one must behave the
same for every admission and settlement step."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest
import redis as redis_sync
from django.conf import settings

from tenants.state.base import (
    AdmitRequest,
    DenialKind,
    ScopeLimits,
    SettleRequest,
    StateStore,
    window_bucket_ms,
)
from tenants.state.memory import MemoryStateStore
from tenants.state.redis import RedisStateStore

_ids = itertools.count(1)
HOLD_MS = 60_000
# Windows are bucketed: an entry counts for a window plus at most one bucket.
WINDOW_SLACK_MS = 60_000 + window_bucket_ms(60_000)


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


def scope(store: StateStore, kind: str = "key", *, tenant_id: int, scope_id: int, **limits):
    return ScopeLimits(
        scope=kind,
        scope_id=scope_id,
        keys=store.scope_keys(scope=kind, tenant_id=tenant_id, scope_id=scope_id, period_key="m1"),
        **limits,
    )


def pair(store: StateStore, key_limits: dict | None = None, tenant_limits: dict | None = None):
    tenant_id, key_id = next(_ids), next(_ids)
    return (
        scope(store, "key", tenant_id=tenant_id, scope_id=key_id, **(key_limits or {})),
        scope(store, "tenant", tenant_id=tenant_id, scope_id=tenant_id, **(tenant_limits or {})),
    )


def admit_req(scopes, *, ticket=None, tokens=10, reserve=0, hold_ms=HOLD_MS, window_ms=60_000):
    return AdmitRequest(
        ticket=ticket or f"req-{next(_ids)}",
        tokens=tokens,
        reserve_nano=reserve,
        hold_ms=hold_ms,
        scopes=tuple(scopes),
        window_ms=window_ms,
    )


def settle_req(
    admitted: AdmitRequest, *, tokens=0, cost=0, release=False, allow_missing=False, hold_mode=""
):
    return SettleRequest(
        ticket=admitted.ticket,
        tokens=tokens,
        cost_nano=cost,
        hold_ms=0,
        scopes=admitted.scopes,
        release=release,
        allow_missing=allow_missing,
        hold_mode=hold_mode,
    )


async def seed_all(store: StateStore, scopes, amount=0):
    for s in scopes:
        if s.budget_nano is not None:
            await store.spend_seed(keys=s.keys, amount_nano=amount, ttl_ms=None)


async def wait_until_admitted(store: StateStore, make, timeout_s: float = 5.0):
    """Admission retried until it passes (what expiry promises), bounded in time and count."""
    deadline = time.monotonic() + timeout_s
    for _ in range(1000):
        result = await store.admit(make())
        if result.outcome == "ok":
            return result
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.02)
    raise AssertionError("never admitted")


async def test_admission_without_limits_tracks_nothing_and_admits(store):
    result = await store.admit(admit_req(pair(store)))
    assert result.outcome == "ok"
    assert result.requests is None and result.tokens is None
    assert result.version


async def test_rpm_admits_exactly_the_limit_then_refuses_with_retry_after(store):
    scopes = pair(store, key_limits={"rpm": 3})
    outcomes = [(await store.admit(admit_req(scopes))).outcome for _ in range(5)]
    assert outcomes == ["ok", "ok", "ok", "denied", "denied"]
    refused = await store.admit(admit_req(scopes))
    assert refused.denial is DenialKind.REQUESTS and refused.denied_scope == 0
    assert 0 < refused.retry_after_ms <= WINDOW_SLACK_MS
    assert refused.requests.limit == 3 and refused.requests.remaining == 0


async def test_tenant_rpm_is_shared_by_the_tenants_keys(store):
    key_a, tenant = pair(store, tenant_limits={"rpm": 2})
    key_b = scope(store, "key", tenant_id=int(tenant.scope_id), scope_id=next(_ids))
    assert (await store.admit(admit_req((key_a, tenant)))).outcome == "ok"
    assert (await store.admit(admit_req((key_b, tenant)))).outcome == "ok"
    refused = await store.admit(admit_req((key_b, tenant)))
    assert refused.denial is DenialKind.REQUESTS and refused.denied_scope == 1


async def test_remaining_headers_report_the_tighter_scope(store):
    scopes = pair(store, key_limits={"rpm": 10, "tpm": 1000}, tenant_limits={"rpm": 4})
    result = await store.admit(admit_req(scopes, tokens=100))
    assert (result.requests.limit, result.requests.remaining) == (4, 3)
    assert (result.tokens.limit, result.tokens.remaining) == (1000, 900)
    assert 0 < result.requests.reset_ms <= WINDOW_SLACK_MS


async def test_rate_window_slides_and_admits_again_after_it(store):
    scopes = pair(store, key_limits={"rpm": 1})
    assert (await store.admit(admit_req(scopes, window_ms=150))).outcome == "ok"
    assert (await store.admit(admit_req(scopes, window_ms=150))).outcome == "denied"
    await wait_until_admitted(store, lambda: admit_req(scopes, window_ms=150))


async def test_tpm_counts_estimates_and_settlement_corrects_to_real_tokens(store):
    scopes = pair(store, key_limits={"tpm": 1000})
    first = admit_req(scopes, tokens=800)
    assert (await store.admit(first)).outcome == "ok"
    refused = await store.admit(admit_req(scopes, tokens=300))
    assert refused.denial is DenialKind.TOKENS and refused.retry_after_ms > 0
    await store.settle(settle_req(first, tokens=100))
    result = await store.admit(admit_req(scopes, tokens=300))
    assert result.outcome == "ok" and result.tokens.remaining == 600


async def test_a_request_larger_than_the_tpm_limit_is_refused_as_never_admissible(store):
    scopes = pair(store, tenant_limits={"tpm": 100})
    refused = await store.admit(admit_req(scopes, tokens=101))
    assert refused.denial is DenialKind.TOKENS_TOO_LARGE and refused.denied_scope == 1


async def test_concurrency_slots_are_taken_and_released_by_settlement(store):
    scopes = pair(store, key_limits={"max_concurrency": 2})
    a, b = admit_req(scopes), admit_req(scopes)
    assert (await store.admit(a)).outcome == "ok"
    assert (await store.admit(b)).outcome == "ok"
    refused = await store.admit(admit_req(scopes))
    assert refused.denial is DenialKind.CONCURRENCY
    await store.settle(settle_req(a))
    assert (await store.admit(admit_req(scopes))).outcome == "ok"


async def test_slots_of_a_dead_process_expire_on_their_own(store):
    scopes = pair(store, key_limits={"max_concurrency": 1})
    assert (await store.admit(admit_req(scopes, hold_ms=100))).outcome == "ok"
    assert (await store.admit(admit_req(scopes))).denial is DenialKind.CONCURRENCY
    await wait_until_admitted(store, lambda: admit_req(scopes))


async def test_budgeted_scope_with_missing_counter_asks_for_a_seed_and_takes_nothing(store):
    scopes = pair(store, key_limits={"budget_nano": 1000, "rpm": 5})
    result = await store.admit(admit_req(scopes, reserve=10))
    assert result.outcome == "seed" and result.missing == (0,)
    assert await store.spend_get(keys=scopes[0].keys) is None
    assert await store.spend_seed(keys=scopes[0].keys, amount_nano=400, ttl_ms=None) is True
    assert await store.spend_seed(keys=scopes[0].keys, amount_nano=0, ttl_ms=None) is False
    assert await store.spend_get(keys=scopes[0].keys) == 400
    ok = await store.admit(admit_req(scopes, reserve=10))
    assert ok.outcome == "ok" and ok.requests.remaining == 4  # the seed round took no slot


async def test_budget_reservation_holds_worst_case_and_settlement_charges_real_cost(store):
    scopes = pair(store, key_limits={"budget_nano": 1000})
    await seed_all(store, scopes, amount=100)
    big = admit_req(scopes, reserve=600)
    assert (await store.admit(big)).outcome == "ok"
    refused = await store.admit(admit_req(scopes, reserve=301))
    assert refused.denial is DenialKind.BUDGET and refused.denied_scope == 0
    settled = await store.settle(settle_req(big, cost=250))
    assert settled.outcome == "ok"
    assert settled.spend[0].before_nano == 100 and settled.spend[0].after_nano == 350
    assert await store.spend_get(keys=scopes[0].keys) == 350
    assert (await store.admit(admit_req(scopes, reserve=650))).outcome == "ok"
    assert (await store.admit(admit_req(scopes, reserve=1))).denial is DenialKind.BUDGET


async def test_budget_is_checked_before_rate_limits(store):
    scopes = pair(store, key_limits={"rpm": 0, "budget_nano": 5})
    await seed_all(store, scopes)
    refused = await store.admit(admit_req(scopes, reserve=10))
    assert refused.denial is DenialKind.BUDGET


async def test_reservations_of_a_dead_process_expire_on_their_own(store):
    scopes = pair(store, tenant_limits={"budget_nano": 100})
    await seed_all(store, scopes)
    assert (await store.admit(admit_req(scopes, reserve=100, hold_ms=100))).outcome == "ok"
    assert (await store.admit(admit_req(scopes, reserve=1))).denial is DenialKind.BUDGET
    await wait_until_admitted(store, lambda: admit_req(scopes, reserve=100))


async def test_settlement_with_a_missing_budget_counter_asks_for_a_seed_first(store):
    scopes = pair(store, key_limits={"budget_nano": 10_000, "max_concurrency": 1})
    await seed_all(store, scopes)
    admitted = admit_req(scopes, reserve=500)
    assert (await store.admit(admitted)).outcome == "ok"
    if isinstance(store, MemoryStateStore):
        store.flush()
    else:
        await store.client().flushdb()
    result = await store.settle(settle_req(admitted, cost=200))
    assert result.outcome == "seed" and result.missing == (0,)
    await store.spend_seed(keys=scopes[0].keys, amount_nano=1000, ttl_ms=None)
    result = await store.settle(settle_req(admitted, cost=200))
    assert result.spend[0].after_nano == 1200


async def test_settlement_allowed_to_skip_missing_counters_charges_only_existing_ones(store):
    scopes = pair(store, key_limits={"budget_nano": 10_000}, tenant_limits={"budget_nano": 10**6})
    await seed_all(store, scopes)
    admitted = admit_req(scopes, reserve=50)
    assert (await store.admit(admitted)).outcome == "ok"
    if isinstance(store, MemoryStateStore):
        store.flush()
    else:
        await store.client().flushdb()
    await store.spend_seed(keys=scopes[1].keys, amount_nano=7, ttl_ms=None)
    result = await store.settle(settle_req(admitted, cost=20, allow_missing=True))
    assert result.outcome == "ok" and result.spend[0] is None
    assert result.spend[1].after_nano == 27


async def test_zero_cost_settlement_needs_no_counter(store):
    scopes = pair(store, key_limits={"budget_nano": 10})
    await seed_all(store, scopes)
    admitted = admit_req(scopes, reserve=5)
    assert (await store.admit(admitted)).outcome == "ok"
    if isinstance(store, MemoryStateStore):
        store.flush()
    else:
        await store.client().flushdb()
    result = await store.settle(settle_req(admitted, cost=0))
    assert result.outcome == "ok" and result.spend == (None, None)


async def test_release_gives_back_the_window_slot_and_reservation(store):
    scopes = pair(store, key_limits={"rpm": 1, "tpm": 50, "max_concurrency": 1, "budget_nano": 9})
    await seed_all(store, scopes)
    admitted = admit_req(scopes, tokens=50, reserve=9)
    assert (await store.admit(admitted)).outcome == "ok"
    await store.settle(settle_req(admitted, release=True))
    again = await store.admit(admit_req(scopes, tokens=50, reserve=9))
    assert again.outcome == "ok"
    assert await store.spend_get(keys=scopes[0].keys) == 0


async def test_unbudgeted_counters_are_charged_only_when_they_exist(store):
    scopes = pair(store)
    admitted = admit_req(scopes)
    await store.admit(admitted)
    result = await store.settle(settle_req(admitted, cost=5))
    assert result.outcome == "ok" and result.spend == (None, None)
    await store.spend_seed(keys=scopes[1].keys, amount_nano=1, ttl_ms=None)
    second = admit_req(scopes)
    await store.admit(second)
    result = await store.settle(settle_req(second, cost=5))
    assert result.spend[1].after_nano == 6


async def test_spend_seed_expires_with_its_ttl(store):
    scopes = pair(store, key_limits={"budget_nano": 10})
    await store.spend_seed(keys=scopes[0].keys, amount_nano=3, ttl_ms=60_000)
    assert await store.spend_get(keys=scopes[0].keys) == 3
    await store.spend_seed(keys=scopes[1].keys, amount_nano=3, ttl_ms=50)
    deadline = time.monotonic() + 5
    while await store.spend_get(keys=scopes[1].keys) is not None and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert await store.spend_get(keys=scopes[1].keys) is None


async def test_config_version_moves_on_bump_and_admission_reports_it(store):
    scopes = pair(store)
    first = (await store.admit(admit_req(scopes))).version
    bumped = await asyncio.to_thread(store.config_version_bump)
    assert bumped != first
    assert (await store.admit(admit_req(scopes))).version == bumped
    assert await store.config_version_get() == bumped


async def test_budget_never_overshoots_under_concurrent_admissions(store):
    scopes = pair(store, key_limits={"budget_nano": 2000}, tenant_limits={"max_concurrency": 500})
    await seed_all(store, scopes)
    requests = [admit_req(scopes, reserve=100) for _ in range(300)]
    results = await asyncio.gather(*(store.admit(r) for r in requests))
    admitted = [r for r, res in zip(requests, results, strict=True) if res.outcome == "ok"]
    assert len(admitted) == 20
    await asyncio.gather(*(store.settle(settle_req(r, cost=100)) for r in admitted))
    assert await store.spend_get(keys=scopes[0].keys) == 2000


async def test_idempotency_record_is_claimed_once_then_kept_and_released(store):
    name = store.idempotency_name(key_id=next(_ids), token="t" * 64)
    assert await store.idempotency_claim(name=name, value=b"pending", ttl_ms=60_000) is None
    assert await store.idempotency_claim(name=name, value=b"other", ttl_ms=60_000) == b"pending"
    await store.idempotency_store(name=name, value=b"done", ttl_ms=60_000)
    assert await store.idempotency_claim(name=name, value=b"other", ttl_ms=60_000) == b"done"
    await store.idempotency_release(name=name)
    assert await store.idempotency_claim(name=name, value=b"again", ttl_ms=60_000) is None


async def test_idempotency_records_of_two_keys_are_apart_and_expire(store):
    first = store.idempotency_name(key_id=next(_ids), token="same")
    second = store.idempotency_name(key_id=next(_ids), token="same")
    assert first != second
    assert await store.idempotency_claim(name=first, value=b"a", ttl_ms=50) is None
    assert await store.idempotency_claim(name=second, value=b"b", ttl_ms=60_000) is None
    await asyncio.sleep(0.1)
    assert await store.idempotency_claim(name=first, value=b"c", ttl_ms=60_000) is None


async def test_a_hold_record_ends_once_by_its_owner_or_by_the_sweeper(store):
    scopes = pair(store, {"max_concurrency": 1})
    owned = admit_req(scopes)
    owned = AdmitRequest(**{**_fields(owned), "hold": b"payload-1"})
    assert (await store.admit(owned)).outcome == "ok"
    assert await store.holds_open_count() == 1
    result = await store.settle(settle_req(owned, hold_mode="owner"))
    assert result.outcome == "ok"
    assert await store.holds_open_count() == 0
    # A hold whose deadline passed is listed for the sweeper, ended once, and its owner's
    # late settlement changes nothing.
    late = AdmitRequest(**{**_fields(admit_req(scopes, hold_ms=50)), "hold": b"payload-2"})
    assert (await store.admit(late)).outcome == "ok"
    await asyncio.sleep(0.1)
    assert await store.holds_expired(limit=10) == [(late.ticket, b"payload-2")]
    swept = await store.settle(settle_req(late, hold_mode="sweeper"))
    assert swept.outcome == "ok"
    again = await store.settle(settle_req(late, hold_mode="sweeper"))
    owner = await store.settle(settle_req(late, hold_mode="owner"))
    assert again.outcome == owner.outcome == "gone"
    assert await store.holds_expired(limit=10) == []
    assert (await store.admit(admit_req(scopes))).outcome == "ok"  # the slot is free
    assert await store.holds_done_prune(older_than_ms=0) == 1


def _fields(request: AdmitRequest) -> dict:
    return {name: getattr(request, name) for name in AdmitRequest.__slots__}
