from __future__ import annotations

import pytest
import redis as redis_sync
from django.conf import settings

from gateway_project.celery import app as celery_app
from tenants import admission
from tenants.state import state_store_set
from tenants.state.memory import MemoryStateStore
from tenants.state.redis import RedisStateStore


@pytest.fixture(params=["memory", "redis"])
async def backend(request):
    """The process's state store, once per backend; counters start empty."""
    if request.param == "memory":
        store = MemoryStateStore()
    else:
        if not settings.REDIS_URL:
            pytest.skip("REDIS_URL is not set")
        redis_sync.Redis.from_url(settings.REDIS_URL).flushdb()
        store = RedisStateStore(url=settings.REDIS_URL, stream=settings.GATEWAY_USAGE_STREAM)
    state_store_set(store)
    yield store
    await store.close()
    state_store_set(None)


@pytest.fixture
def spend_loader():
    """A simple loader: spend per (scope, scope_id) from a dict the test fills."""
    spent: dict[tuple[str, int], object] = {}
    calls: list[tuple[str, int]] = []

    async def load(*, scope, scope_id, start, end):
        from decimal import Decimal

        calls.append((scope, scope_id))
        return spent.get((scope, scope_id), Decimal(0))

    admission.spend_loader_set(load)
    yield spent, calls
    admission.spend_loader_set(None)


@pytest.fixture
def eager_celery():
    previous = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = True
    yield
    celery_app.conf.task_always_eager = previous
