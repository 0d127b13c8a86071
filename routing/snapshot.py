"""The gateway's in-process snapshot: catalog plus routes, resolved into ready fallback chains.
Loaded once, swapped atomically, dropped when the shared config version moves."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from django.conf import settings
from django.db import DatabaseError
from django.db import Error as DbError

from providers.adapters.base import ProviderConfig
from providers.catalog import Catalog, ModelEntry, catalog_aload
from routing.models import Route, RouteStep
from tenants.outage import database_outage


@dataclass(frozen=True, slots=True)
class Target:
    model: ModelEntry
    provider: ProviderConfig


@dataclass(frozen=True, slots=True)
class ResolvedRoute:
    name: str
    strategy: str
    targets: tuple[Target, ...]
    max_attempts: int


@dataclass(frozen=True, slots=True)
class GatewaySnapshot:
    catalog: Catalog
    routes: dict[str, ResolvedRoute]
    loaded_at: float

    def resolve(self, name: str) -> ResolvedRoute | None:
        route = self.routes.get(name)
        if route is not None:
            return route
        entry = self.catalog.models.get(name)
        if entry is None:
            return None
        provider = self.catalog.providers.get(entry.provider_id)
        if provider is None:
            return None
        return ResolvedRoute(
            name=name, strategy="fallback", targets=(Target(entry, provider),), max_attempts=1
        )

    def public_names(self) -> list[str]:
        return sorted(set(self.routes) | set(self.catalog.models))


async def _load() -> GatewaySnapshot:
    catalog = await catalog_aload()
    steps: dict[int, list[RouteStep]] = {}
    async for step in RouteStep.objects.order_by("route_id", "position"):
        steps.setdefault(step.route_id, []).append(step)
    routes: dict[str, ResolvedRoute] = {}
    async for route in Route.objects.filter(is_active=True):
        targets = []
        for step in steps.get(route.id, ()):
            entry = catalog.models_by_id.get(step.model_id)
            if entry is None:
                continue
            provider = catalog.providers.get(entry.provider_id)
            if provider is not None:
                targets.extend(
                    [Target(entry, provider)]
                    * max(1, step.weight if route.strategy == "loadbalance" else 1)
                )
        if targets:
            routes[route.name] = ResolvedRoute(
                name=route.name,
                strategy=route.strategy,
                targets=tuple(targets),
                max_attempts=max(1, route.max_attempts),
            )
    return GatewaySnapshot(catalog=catalog, routes=routes, loaded_at=time.monotonic())


_current: GatewaySnapshot | None = None
_lock: asyncio.Lock | None = None
# The last snapshot that loaded, kept through invalidations: served (up to
# GATEWAY_STALE_MAX_SECONDS old) while the database cannot be read, so that a PostgreSQL outage
# does not take the routes down with it (tenants.outage: after a failed read, requests stop
# waiting for the database and a background probe finds out when it is back).
_last_good: GatewaySnapshot | None = None

logger = logging.getLogger("gateway.routing")


def _stale_or_raise(now: float, error: Exception | None) -> GatewaySnapshot:
    last = _last_good
    if last is not None and now - last.loaded_at < settings.GATEWAY_STALE_MAX_SECONDS:
        if error is not None:
            logger.warning(
                "snapshot.reload_failed",
                extra={
                    "error_class": type(error).__name__,
                    "serving_stale": True,
                    "stale_age_s": round(now - last.loaded_at, 1),
                },
            )
        return last
    if error is not None:
        logger.warning(
            "snapshot.reload_failed",
            extra={"error_class": type(error).__name__, "serving_stale": False},
        )
        raise error
    raise DatabaseError("catalog unavailable: the database did not answer (retrying)")


async def _load_and_keep() -> GatewaySnapshot:
    global _current, _last_good
    loaded = await _load()
    _current = _last_good = loaded
    return loaded


async def _reload(snapshot: GatewaySnapshot | None) -> GatewaySnapshot:
    """Load a fresh snapshot unless another task did meanwhile; while the database is down,
    the last good one (bounded staleness) or a database error (answered 503)."""
    if _current is not snapshot and _current is not None:
        return _current
    if database_outage.down:
        database_outage.probe(_load_and_keep)
        return _stale_or_raise(time.monotonic(), None)
    try:
        return await _load_and_keep()
    except DbError as exc:
        database_outage.failed(exc)
        return _stale_or_raise(time.monotonic(), exc)


async def snapshot_get() -> GatewaySnapshot:
    global _lock
    snapshot = _current
    if snapshot is not None and (
        time.monotonic() - snapshot.loaded_at < settings.GATEWAY_SNAPSHOT_TTL_SECONDS
    ):
        return snapshot
    if _lock is None:
        _lock = asyncio.Lock()
    try:
        async with _lock:
            return await _reload(snapshot)
    except RuntimeError:
        # A lock bound to another event loop (tests start several loops): load without it.
        _lock = None
        return await _reload(snapshot)


def snapshot_invalidate() -> None:
    global _current
    _current = None


def snapshot_forget() -> None:
    """Drop the last good snapshot too (tests)."""
    global _current, _last_good
    _current = _last_good = None
