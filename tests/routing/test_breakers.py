"""Circuit breakers shared through the state store: what counts against a deployment, the
sync path's mirror, two processes (two clients of one Redis) seeing one breaker, probes after
the cooldown, and InferenceCall skipping open deployments over real HTTP against the fake
upstream."""

from __future__ import annotations

import asyncio
import inspect
import logging
import time

import orjson
import pytest
from django.test import AsyncClient

from providers.models import ProviderKind
from providers.types import (
    ProviderAuthError,
    ProviderBadRequest,
    ProviderRateLimited,
    ProviderTimeout,
    ProviderUnavailable,
)
from routing.breakers import BreakerBoard, BreakerState, breaker_outcome, breaker_should_retry
from tenants.state.base import BreakerPolicy, StateStore
from tenants.state.memory import MemoryStateStore
from tenants.state.redis import RedisStateStore
from tests.routing.support import (
    caches_clear,
    fake_provider,
    model_on,
    route,
    tenant_key,
    usage_events_wait,
)

KEY = (1, 2)
POLICY = BreakerPolicy(
    window_ms=60_000, min_volume=3, failure_ratio=0.5, cooldown_ms=300, probe_ttl_ms=1000
)


def _board(
    store: StateStore, *, refresh_s: float = 0.05, policy: BreakerPolicy = POLICY
) -> BreakerBoard:
    return BreakerBoard(store=lambda: store, policy=lambda: policy, refresh_s=refresh_s)


async def _until(check, timeout_s: float = 5.0) -> float | None:
    """Seconds until `check()` held (None: it never did within the bound)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return time.monotonic() - started
        await asyncio.sleep(0.005)
    return None


@pytest.mark.parametrize(
    ("error", "outcome"),
    [
        (None, "ok"),
        (ProviderUnavailable("boom", upstream_status=503), "fail"),
        (ProviderTimeout("slow"), "fail"),
        (ProviderRateLimited("slow down", upstream_status=429), "neutral"),
        (ProviderAuthError("bad key", upstream_status=401), "neutral"),
        (ProviderUnavailable("forbidden", upstream_status=403), "neutral"),
        (ProviderBadRequest("your request", upstream_status=400), "ok"),
    ],
)
def test_only_errors_that_say_the_deployment_is_unwell_count_against_it(error, outcome):
    assert breaker_outcome(error) == outcome


def test_upstream_auth_refusals_are_never_retried():
    assert not breaker_should_retry(ProviderAuthError("bad key", upstream_status=401))
    assert not breaker_should_retry(ProviderUnavailable("forbidden", upstream_status=403))
    assert breaker_should_retry(ProviderUnavailable("boom", upstream_status=502))
    assert not breaker_should_retry(ProviderBadRequest("no"))


async def test_a_failure_rate_over_the_minimum_volume_opens_at_once_in_this_process():
    board = _board(MemoryStateStore())
    board.record_now(KEY, None)
    board.record_now(KEY, ProviderUnavailable("boom"))
    assert board.state(KEY) is BreakerState.CLOSED  # 2 calls: under the minimum volume
    board.record_now(KEY, ProviderUnavailable("boom"))
    # 2 of 3 failed (> 50 %): open before the store has even answered.
    assert board.state(KEY) is BreakerState.OPEN
    assert board.available_now([KEY]) == [False]
    assert not board.acquire_now(KEY)
    await board.drain()
    assert board.state(KEY) is BreakerState.OPEN


async def test_429s_and_auth_errors_never_open_a_shared_breaker():
    store = MemoryStateStore()
    board = _board(store)
    for _ in range(20):
        board.record_now(KEY, ProviderRateLimited("slow down", upstream_status=429))
        board.record_now(KEY, ProviderAuthError("bad key", upstream_status=401))
        await board.drain()
    assert board.state(KEY) is BreakerState.CLOSED
    [status] = await store.breaker_status(keys=[board._name(store, KEY)], policy=POLICY)
    assert (status.state, status.calls) == ("closed", 0)


async def test_state_changes_are_logged_with_the_deployment(caplog):
    board = _board(MemoryStateStore())
    with caplog.at_level(logging.INFO, logger="gateway.routing.breakers"):
        for _ in range(3):
            board.record_now(KEY, ProviderUnavailable("boom"))
        await board.drain()
        assert await _until(lambda: board.acquire_now(KEY)) is not None
        board.record_now(KEY, None)
        await board.drain()
    events = [r.getMessage() for r in caplog.records]
    assert events == ["breaker.opened", "breaker.half_open", "breaker.closed"]
    assert caplog.records[0].provider_id == "1" and caplog.records[0].model_id == "2"


async def test_a_breaker_opened_by_one_process_is_honoured_by_another_within_a_second(
    redis_url,
):
    """Two boards on two clients of one Redis: what two gateway processes have."""
    first_store = RedisStateStore(url=redis_url, stream="gw:test:usage")
    second_store = RedisStateStore(url=redis_url, stream="gw:test:usage")
    # Cooldown longer than the refresh interval, so "honoured" is not "already cooled down".
    policy = BreakerPolicy(min_volume=3, cooldown_ms=1500, probe_ttl_ms=5000)
    first = _board(first_store, refresh_s=0.5, policy=policy)
    second = _board(second_store, refresh_s=0.5, policy=policy)
    try:
        assert second.available_now([KEY]) == [True]  # it has seen the deployment closed
        await second.drain()
        for _ in range(3):
            await first.record(KEY, ProviderUnavailable("boom"))
        assert first.state(KEY) is BreakerState.OPEN
        # The sync path (what the current InferenceCall uses) learns it from its refresh.
        took = await _until(lambda: second.available_now([KEY]) == [False], timeout_s=3)
        assert took is not None and took < 1.0, took
        assert not await second.acquire(KEY)

        # After the cooldown exactly one process gets the probe.
        probe = await _until(lambda: second.acquire(KEY))
        assert probe is not None
        assert not await first.acquire(KEY)
        await second.record(KEY, None)  # the probe succeeded
        assert await first.available([KEY]) == [True]
        assert await first.acquire(KEY)
    finally:
        await first_store.close()
        await second_store.close()


async def test_a_failed_probe_opens_the_breaker_for_another_cooldown_everywhere(redis_url):
    first_store = RedisStateStore(url=redis_url, stream="gw:test:usage")
    second_store = RedisStateStore(url=redis_url, stream="gw:test:usage")
    first, second = _board(first_store), _board(second_store)
    try:
        for _ in range(3):
            await first.record(KEY, ProviderTimeout("slow"))
        assert await _until(lambda: second.acquire(KEY)) is not None
        await second.record(KEY, ProviderUnavailable("still down"))
        assert await first.available([KEY]) == [False]
        assert 0 < first.retry_after([KEY]) <= POLICY.cooldown_ms / 1000
    finally:
        await first_store.close()
        await second_store.close()


async def test_an_unreachable_store_fails_open():
    store = RedisStateStore(url="redis://127.0.0.1:1/0", stream="gw:test:usage")
    board = _board(store)
    assert await board.available([KEY]) == [True]
    assert await board.acquire(KEY)
    assert await board.record(KEY, ProviderUnavailable("boom")) is None


# -- in the request path -----------------------------------------------------------------------
@pytest.fixture
def chain(transactional_db, settings, fake_upstream):
    settings.GATEWAY_USAGE_WRITE_MODE = "direct"
    settings.GATEWAY_BREAKER_MIN_VOLUME = 2
    settings.GATEWAY_BREAKER_COOLDOWN_SECONDS = 60
    primary = fake_provider(fake_upstream, ProviderKind.OPENAI, name="brk-primary")
    secondary = fake_provider(fake_upstream, ProviderKind.OPENAI, name="brk-secondary")
    route(
        "brk-chain",
        [model_on(primary, "brk-primary-model"), model_on(secondary, "brk-secondary-model")],
    )
    route("brk-single", [model_on(primary, "brk-single-model", upstream="brk-primary-model")])
    _, _, raw = tenant_key()
    caches_clear()
    return {"auth": {"Authorization": f"Bearer {raw}"}, "fake": fake_upstream}


async def _chat(model: str, auth: dict[str, str]):
    return await AsyncClient().post(
        "/v1/chat/completions",
        data=orjson.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]}),
        content_type="application/json",
        headers=auth,
    )


async def test_open_deployment_is_skipped_without_an_upstream_call(chain):
    fake = chain["fake"]
    for _ in range(2):
        fake.script("500")
        response = await _chat("brk-chain", chain["auth"])
        assert response.status_code == 200
        assert response["x-gateway-fallbacks"] == "1"
    fake.reset()
    response = await _chat("brk-chain", chain["auth"])
    assert response.status_code == 200
    # The primary is open: the secondary answers first-hand, no fallback, no call to the primary.
    assert response["x-gateway-model"] == "brk-secondary-model"
    assert response["x-gateway-fallbacks"] == "0"
    assert [r.body["model"] for r in fake.requests] == ["brk-secondary-model"]
    assert len(await usage_events_wait(3)) == 3


async def test_every_deployment_open_answers_503_at_once(chain):
    fake = chain["fake"]
    fake.script("500", "500")
    for _ in range(2):
        assert (await _chat("brk-single", chain["auth"])).status_code == 502
    fake.reset()
    response = await _chat("brk-single", chain["auth"])
    assert response.status_code == 503
    body = orjson.loads(response.content)
    assert body["error"]["code"] == "upstream_circuit_open"
    # The client is told when the breaker's probe is due.
    assert int(response["Retry-After"]) >= 1
    assert fake.requests == []
    events = await usage_events_wait(3)
    assert [(e.outcome, e.status_code) for e in events] == [
        ("error", 502),
        ("error", 502),
        ("error", 503),
    ]
