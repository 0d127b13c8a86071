"""The per-request work budget of the inference path, pinned as behaviour (never timing).

A warm request - its key policy and the catalog already in the process - makes:
- zero database queries;
- at most two Redis round trips: admission, and settlement carrying the usage event;
- no thread: nothing is handed to an executor and no thread is started.

Requests go through `gateway_project.asgi.application` in-process. Redis round trips are
counted at redis-py's transport (every write of a command or a pipeline to a socket), so any
Redis call of any module counts, whatever wraps it."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
import redis
import redis.asyncio.connection as aio_connection
import redis.connection as sync_connection
from asgiref.sync import async_to_sync, sync_to_async

from gateway_project.asgi import application
from providers.adapters.base import adapters_close
from routing.snapshot import snapshot_invalidate
from tenants.selectors import policy_cache_clear
from tests.factories import (
    ModelFactory,
    ProviderFactory,
    TenantFactory,
    api_key_create_for_test,
    route_create,
)
from tests.gateway_project.asgi_client import ThreadHopCountingLoop, asgi_request, thread_idents

pytestmark = pytest.mark.django_db(transaction=True)

ROUTE = "budget-chat"
MAX_REDIS_ROUND_TRIPS = 2
WARM_REQUESTS = 10
WARM_UP_REQUESTS = 2


def _chat(stream: bool) -> dict:
    body = {"model": ROUTE, "messages": [{"role": "user", "content": "hello"}], "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


class RedisRoundTrips:
    """Counts writes of commands to Redis sockets (a pipeline is one write, so one round trip),
    sync and asyncio clients alike, with the command names for the failure message."""

    def __init__(self) -> None:
        self.count = 0
        self.commands: Counter[str] = Counter()

    def take(self) -> tuple[int, Counter[str]]:
        count, commands = self.count, self.commands
        self.count, self.commands = 0, Counter()
        return count, commands

    def record(self, packed) -> None:
        self.count += 1
        parts = packed if isinstance(packed, list | tuple) else [packed]
        for part in parts[:1]:
            raw = bytes(part)
            # RESP array: *N\r\n$len\r\nNAME\r\n...
            fields = raw.split(b"\r\n")
            name = fields[2].decode(errors="replace").upper() if len(fields) > 2 else "?"
            self.commands[name] += 1


@pytest.fixture
def redis_round_trips(redis_url, monkeypatch):
    client = redis.Redis.from_url(redis_url)
    client.flushdb()  # our own index only
    client.close()
    counter = RedisRoundTrips()
    aio_send = aio_connection.AbstractConnection.send_packed_command
    sync_send = sync_connection.AbstractConnection.send_packed_command

    async def counting_aio_send(self, command, check_health=True):
        counter.record(command)
        return await aio_send(self, command, check_health)

    def counting_sync_send(self, command, check_health=True):
        counter.record(command)
        return sync_send(self, command, check_health)

    monkeypatch.setattr(aio_connection.AbstractConnection, "send_packed_command", counting_aio_send)
    monkeypatch.setattr(
        sync_connection.AbstractConnection, "send_packed_command", counting_sync_send
    )
    return counter


@pytest.fixture
def budget_catalog(settings, redis_url):
    settings.GATEWAY_STATE_BACKEND = "redis"
    settings.GATEWAY_USAGE_WRITE_MODE = "stream"
    snapshot_invalidate()
    policy_cache_clear()
    provider = ProviderFactory(name="mock-budget")
    model = ModelFactory(name="budget-small", provider=provider)
    route_create(name=ROUTE, models=[model])
    _key, raw = api_key_create_for_test(tenant=TenantFactory())
    yield {"authorization": f"Bearer {raw}"}
    snapshot_invalidate()
    policy_cache_clear()


async def _post_chat(auth: dict, stream: bool):
    return await asgi_request(
        application, "POST", "/v1/chat/completions", headers=auth, json=_chat(stream)
    )


async def _warm_up(auth: dict, stream: bool) -> None:
    """Cold requests fill the process's caches (key policy, catalog, the shared config version
    the caches are built at, the period's spend counter in Redis)."""
    for _ in range(WARM_UP_REQUESTS):
        response = await _post_chat(auth, stream)
        assert response.status == 200, response.body


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_warm_request_makes_zero_database_queries(
    budget_catalog, redis_round_trips, django_assert_num_queries, stream
):
    # One event loop for the cold and the warm request, as in a worker. async_to_sync runs
    # thread-sensitive ORM calls on this (the test's) thread, so the query capture, entered
    # and left on this thread, sees every query the async ORM makes.
    capture = django_assert_num_queries(0)

    async def scenario():
        await _warm_up(budget_catalog, stream)
        await sync_to_async(capture.__enter__)()
        try:
            warm = await _post_chat(budget_catalog, stream)
        finally:
            await sync_to_async(capture.__exit__)(None, None, None)
            await adapters_close()
        assert warm.status == 200, warm.body

    async_to_sync(scenario)()


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_warm_request_makes_at_most_two_redis_round_trips_and_no_thread_hop(
    budget_catalog, redis_round_trips, stream
):
    async def scenario(loop: ThreadHopCountingLoop):
        await _warm_up(budget_catalog, stream)
        hops_before, threads_before = loop.executor_calls, thread_idents()
        redis_round_trips.take()
        per_request = []
        for _ in range(WARM_REQUESTS):
            response = await _post_chat(budget_catalog, stream)
            assert response.status == 200, response.body
            per_request.append(redis_round_trips.take())
        hops = loop.executor_calls - hops_before
        new_threads = thread_idents() - threads_before
        await adapters_close()
        return per_request, hops, new_threads

    with asyncio.Runner(loop_factory=ThreadHopCountingLoop) as runner:
        per_request, hops, new_threads = runner.run(scenario(runner.get_loop()))

    over_budget = [(n, dict(cmds)) for n, cmds in per_request if n > MAX_REDIS_ROUND_TRIPS]
    assert over_budget == [], f"Redis round trips per warm request: {over_budget}"
    # Settlement writes the usage event: a request that made no Redis call lost it.
    assert all(n >= 1 for n, _ in per_request)
    assert hops == 0, "work was handed to a thread (sync_to_async / run_in_executor)"
    assert new_threads == frozenset()
