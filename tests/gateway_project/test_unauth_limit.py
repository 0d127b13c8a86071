"""Issue 14, item 6: unauthenticated traffic is limited per client address through the state
store: after N bad-key answers in a minute, that address gets 429 (before any key lookup),
while a key the process knows keeps working and other addresses are untouched."""

from __future__ import annotations

import time

import pytest

from gateway_project.asgi import application
from tenants.unauth import unauth_suspects_clear
from tests.factories import TenantFactory, api_key_create_for_test
from tests.gateway_project.asgi_client import AsgiCall

pytestmark = pytest.mark.django_db(transaction=True)

LIMIT = 5


@pytest.fixture(params=["memory", "redis"])
def backend(request, settings):
    from tenants.state import state_store_set
    from tenants.state.memory import MemoryStateStore
    from tenants.state.redis import RedisStateStore

    if request.param == "redis":
        if not settings.REDIS_URL:
            pytest.skip("REDIS_URL is not set")
        state_store_set(RedisStateStore(url=settings.REDIS_URL, stream="gw:test:usage"))
    else:
        state_store_set(MemoryStateStore())
    settings.GATEWAY_UNAUTH_PER_IP_PER_MINUTE = LIMIT
    # The per-address count lives in a fixed one-minute window: start clear of its edge.
    while time.time() % 60 > 50:
        time.sleep(0.5)
    unauth_suspects_clear()
    yield
    unauth_suspects_clear()
    state_store_set(None)


async def _models(key: str | None, client: str = "203.0.113.7"):
    headers = {"authorization": f"Bearer {key}"} if key else {}
    call = AsgiCall(application, "GET", "/v1/models", headers=headers)
    call.scope["client"] = (client, 40000)
    return await call.run()


async def test_bad_keys_from_one_address_are_refused_with_429_after_the_limit(backend):
    from asgiref.sync import sync_to_async

    _key, valid = await sync_to_async(api_key_create_for_test)(
        tenant=await sync_to_async(TenantFactory)()
    )
    assert (await _models(valid)).status == 200  # known to the process from now on

    statuses = [(await _models(f"gw-bad-{n}")).status for n in range(LIMIT)]
    assert statuses == [401] * LIMIT
    refused = await _models("gw-bad-next")
    assert refused.status == 429
    error = refused.json()["error"]
    assert error["type"] == "rate_limit_error"
    assert error["code"] == "too_many_unauthenticated_requests"
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert (await _models(None)).status == 429  # no key at all: refused too

    # A valid key this process knows keeps working from the same address...
    assert (await _models(valid)).status == 200
    # ...and other addresses are not affected.
    assert (await _models("gw-bad-elsewhere", client="198.51.100.9")).status == 401


async def test_the_limit_is_off_when_set_to_zero(backend, settings):
    settings.GATEWAY_UNAUTH_PER_IP_PER_MINUTE = 0
    statuses = {(await _models(f"gw-bad-{n}")).status for n in range(LIMIT + 3)}
    assert statuses == {401}
