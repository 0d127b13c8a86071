"""Circuit breakers: the state machine (with an injected clock), and InferenceCall skipping
open deployments over real HTTP against the fake upstream."""

from __future__ import annotations

import logging

import orjson
import pytest
from django.test import AsyncClient

from providers.models import ProviderKind
from providers.types import ProviderBadRequest, ProviderRateLimited, ProviderUnavailable
from routing.breakers import BreakerBoard, BreakerState
from tests.routing.support import (
    caches_clear,
    fake_provider,
    model_on,
    route,
    tenant_key,
    usage_events_wait,
)

KEY = (1, 2)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _board(clock: Clock, threshold: int = 3, cooldown: float = 10.0) -> BreakerBoard:
    return BreakerBoard(failure_threshold=threshold, cooldown_s=cooldown, clock=clock)


def test_breaker_opens_after_n_consecutive_retryable_failures():
    board = _board(Clock())
    for _ in range(2):
        board.record(KEY, ProviderUnavailable("boom"))
    assert board.state(KEY) is BreakerState.CLOSED
    board.record(KEY, ProviderRateLimited("slow down"))
    assert board.state(KEY) is BreakerState.OPEN
    assert not board.available(KEY)
    assert not board.acquire(KEY)


def test_a_success_or_a_client_side_error_resets_the_count():
    board = _board(Clock())
    board.record(KEY, ProviderUnavailable("boom"))
    board.record(KEY, ProviderUnavailable("boom"))
    board.record(KEY, None)
    board.record(KEY, ProviderUnavailable("boom"))
    board.record(KEY, ProviderBadRequest("your request"))  # the upstream answered
    board.record(KEY, ProviderUnavailable("boom"))
    board.record(KEY, ProviderUnavailable("boom"))
    assert board.state(KEY) is BreakerState.CLOSED


def test_half_open_after_cooldown_admits_one_probe_and_closes_on_success(caplog):
    clock = Clock()
    board = _board(clock, threshold=1)
    with caplog.at_level(logging.INFO, logger="gateway.routing.breakers"):
        board.record(KEY, ProviderUnavailable("boom"))
        clock.now += 9.9
        assert not board.available(KEY)
        clock.now += 0.2
        assert board.state(KEY) is BreakerState.HALF_OPEN
        assert board.available(KEY)
        assert board.acquire(KEY)  # the probe
        assert not board.acquire(KEY)  # a second request while the probe is out
        assert not board.available(KEY)
        board.record(KEY, None)
    assert board.state(KEY) is BreakerState.CLOSED
    assert board.acquire(KEY)
    events = [r.getMessage() for r in caplog.records]
    assert events == ["breaker.opened", "breaker.half_open", "breaker.closed"]
    assert caplog.records[0].provider_id == "1" and caplog.records[0].model_id == "2"


def test_failed_probe_opens_again_for_another_cooldown():
    clock = Clock()
    board = _board(clock, threshold=1)
    board.record(KEY, ProviderUnavailable("boom"))
    clock.now += 10
    assert board.acquire(KEY)
    board.record(KEY, ProviderUnavailable("still down"))
    assert board.state(KEY) is BreakerState.OPEN
    assert board.retry_after([KEY]) == pytest.approx(10)
    clock.now += 10
    assert board.acquire(KEY)


def test_a_probe_that_never_reports_back_goes_stale():
    clock = Clock()
    board = _board(clock, threshold=1, cooldown=5)
    board.record(KEY, ProviderUnavailable("boom"))
    clock.now += 5
    assert board.acquire(KEY)
    clock.now += 5  # the probing request vanished (client gone) without a result
    assert board.acquire(KEY)


# -- in the request path -----------------------------------------------------------------------
@pytest.fixture
def chain(transactional_db, settings, fake_upstream):
    settings.GATEWAY_USAGE_WRITE_MODE = "direct"
    settings.GATEWAY_BREAKER_FAILURE_THRESHOLD = 2
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
