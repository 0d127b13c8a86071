"""Two live gateway processes on one Redis, through today's InferenceCall (the breakers' sync
path): a deployment's breaker opened by the failures one process saw is honoured by the other
within a second, and after the cooldown a probe closes it again for both."""

from __future__ import annotations

import time

import httpx
import pytest

from providers.models import ProviderKind
from tests.routing.support import (
    LIVE_ENV,
    caches_clear,
    fake_provider,
    model_on,
    route,
    tenant_key,
)

pytestmark = pytest.mark.live_server_process

COOLDOWN_S = 2.0
HELLO = [{"role": "user", "content": "hello"}]


@pytest.fixture
def chain(transactional_db, fake_upstream_thread):
    fake = fake_upstream_thread
    primary = fake_provider(fake, ProviderKind.OPENAI, name="brk-live-primary")
    secondary = fake_provider(fake, ProviderKind.OPENAI, name="brk-live-secondary")
    route(
        "brk-live",
        [model_on(primary, "brk-live-primary"), model_on(secondary, "brk-live-secondary")],
    )
    _, _, raw = tenant_key()
    caches_clear()
    return {"fake": fake, "auth": {"Authorization": f"Bearer {raw}"}}


def _served_by(client: httpx.Client, auth: dict) -> tuple[str, str]:
    response = client.post(
        "/v1/chat/completions", json={"model": "brk-live", "messages": HELLO}, headers=auth
    )
    assert response.status_code == 200, response.text
    return response.headers["x-gateway-model"], response.headers["x-gateway-fallbacks"]


def _until(predicate, timeout_s: float) -> float | None:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.02)
    return None


def test_a_breaker_opened_through_one_server_is_honoured_by_another_within_a_second(
    live_gateway, redis_url, chain
):
    fake, auth = chain["fake"], chain["auth"]
    env = {
        **LIVE_ENV,
        "REDIS_URL": redis_url,
        "GATEWAY_STATE_BACKEND": "redis",
        "GATEWAY_BREAKER_MIN_VOLUME": "2",
        "GATEWAY_BREAKER_COOLDOWN_SECONDS": str(COOLDOWN_S),
        "GATEWAY_BREAKER_REFRESH_SECONDS": "0.5",
    }
    with (
        live_gateway(env=env) as base_a,
        live_gateway(env=env) as base_b,
        httpx.Client(base_url=base_a, timeout=10) as a,
        httpx.Client(base_url=base_b, timeout=10) as b,
    ):
        # Both servers have served the route from a healthy primary.
        assert _served_by(a, auth) == ("brk-live-primary", "0")
        assert _served_by(b, auth) == ("brk-live-primary", "0")

        # Server A sees the primary fail twice (2 of 3 calls in the window): it opens.
        for _ in range(2):
            fake.script("500")
            assert _served_by(a, auth) == ("brk-live-secondary", "1")
        opened = time.monotonic()
        fake.reset()
        assert _served_by(a, auth) == ("brk-live-secondary", "0")  # skipped at once

        # Server B never saw a failure; it honours the shared breaker within a second.
        took = _until(lambda: _served_by(b, auth) == ("brk-live-secondary", "0"), timeout_s=3)
        assert took is not None and took < 1.0, f"B honoured the breaker after {took} s"

        # After the cooldown a probe reaches the (healthy again) primary and closes it...
        probe = _until(lambda: _served_by(b, auth)[0] == "brk-live-primary", timeout_s=6)
        assert probe is not None, "no probe after the cooldown"
        assert time.monotonic() - opened >= COOLDOWN_S * 0.9
        # ...for both servers.
        assert _until(lambda: _served_by(a, auth)[0] == "brk-live-primary", timeout_s=2)
