"""The process's state store, chosen by settings.GATEWAY_STATE_BACKEND ("redis" | "memory")."""

from __future__ import annotations

import threading

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from tenants.state.base import StateStore

_store: StateStore | None = None
_lock = threading.Lock()


def state_store_build(*, backend: str | None = None) -> StateStore:
    backend = backend or settings.GATEWAY_STATE_BACKEND
    if backend == "redis":
        from tenants.state.redis import RedisStateStore

        if not settings.REDIS_URL:
            raise ImproperlyConfigured("GATEWAY_STATE_BACKEND=redis needs REDIS_URL")
        return RedisStateStore(
            url=settings.REDIS_URL,
            stream=settings.GATEWAY_USAGE_STREAM,
            pool_size=settings.GATEWAY_STATE_REDIS_POOL_SIZE,
        )
    if backend == "memory":
        from tenants.state.memory import MemoryStateStore

        return MemoryStateStore()
    raise ImproperlyConfigured(f"Unknown GATEWAY_STATE_BACKEND {backend!r}")


def state_store() -> StateStore:
    global _store
    store = _store
    if store is None:
        with _lock:
            if _store is None:
                _store = state_store_build()
            store = _store
    return store


def state_store_set(store: StateStore | None) -> None:
    """Replace the process's store (tests; None rebuilds it from settings on next use)."""
    global _store
    with _lock:
        _store = store
