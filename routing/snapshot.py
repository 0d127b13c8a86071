"""The gateway's in-process snapshot: catalog plus routes, resolved into ready fallback chains.
Loaded once, swapped atomically, dropped when the shared config version moves."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from django.conf import settings

from providers.adapters.base import ProviderConfig
from providers.catalog import Catalog, ModelEntry, catalog_aload
from routing.models import Route, RouteStep


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


async def snapshot_get() -> GatewaySnapshot:
    global _current, _lock
    snapshot = _current
    if snapshot is not None and (
        time.monotonic() - snapshot.loaded_at < settings.GATEWAY_SNAPSHOT_TTL_SECONDS
    ):
        return snapshot
    if _lock is None:
        _lock = asyncio.Lock()
    try:
        async with _lock:
            if _current is snapshot or _current is None:
                _current = await _load()
            return _current
    except RuntimeError:
        # A lock bound to another event loop (tests start several loops): load without it.
        _lock = None
        _current = await _load()
        return _current


def snapshot_invalidate() -> None:
    global _current
    _current = None
