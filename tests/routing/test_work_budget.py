"""The per-request work budget of the inference path, pinned as behaviour (never timing).

A warm request - its key policy and the catalog already in the process - makes:
- zero database queries;
- at most two Redis round trips: admission, and settlement carrying the usage event;
- no thread: nothing is handed to an executor and no thread is started.

Requests go through `gateway_project.asgi.application` in-process. Redis round trips are
counted by the Redis server (MONITOR), so any command of any module or client library counts
(a pipelined batch counts each command: stricter than round trips)."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections import Counter

import pytest
import redis
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
    """Counts the commands the Redis server receives from clients, as the server itself reports
    them (MONITOR; commands a Lua script runs are not round trips and are left out). Whatever
    client library sent a command, it is counted."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url)
        # MONITOR shows every database of the server; others may share it (CI, colleagues).
        self._db = int(self.client.connection_pool.connection_kwargs.get("db") or 0)
        self._monitor_client = redis.Redis.from_url(url)
        self._monitor = self._monitor_client.monitor().__enter__()
        self._seen: list[dict] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, name="redis-monitor", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            for command in self._monitor.listen():
                with self._lock:
                    self._seen.append(command)
        except (redis.ConnectionError, OSError, ValueError):
            return  # closed by stop()

    def take(self) -> tuple[int, Counter[str]]:
        """Commands received since the last take: a marker is sent, and the feed is read up
        to it (bounded wait), so nothing in flight is missed."""
        marker = f"work-budget-{uuid.uuid4().hex}"
        self.client.echo(marker)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with self._lock:
                index = next(
                    (i for i, c in enumerate(self._seen) if marker in c.get("command", "")), None
                )
                if index is not None:
                    batch, self._seen = self._seen[:index], self._seen[index + 1 :]
                    break
            time.sleep(0.001)
        else:
            raise AssertionError("the MONITOR feed did not show the marker within 5 s")
        commands: Counter[str] = Counter()
        for command in batch:
            if command.get("client_type") == "lua" or "work-budget-" in command["command"]:
                continue
            if int(command.get("db", self._db)) != self._db:
                continue
            commands[command["command"].split(" ", 1)[0].strip('"').upper()] += 1
        return sum(commands.values()), commands

    def stop(self) -> None:
        self._monitor.__exit__(None, None, None)
        self._monitor_client.close()
        self.client.close()
        self._reader.join(timeout=5)


@pytest.fixture
def redis_round_trips(redis_url):
    client = redis.Redis.from_url(redis_url)
    client.flushdb()  # our own index only
    client.close()
    counter = RedisRoundTrips(redis_url)
    yield counter
    counter.stop()


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
