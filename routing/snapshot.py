"""The gateway's in-process snapshot: catalog plus routes, resolved into ready fallback chains.
Loaded once, swapped atomically, dropped when the shared config version moves.

Cross-process freshness: every catalog change (file, admin, API) moves the shared config
version in the state store on commit (tenants.admission.config_changed_notify, the mechanism
key revocation uses). Every admission's reply carries that version, and a moved one drops this
snapshot (routing.wiring registers the listener), so a changed or removed route is seen by the
next request after the next admission: no extra round trip. A route this process has never
seen cannot wait for that (the request is refused before admission), so `snapshot_resolve`
compares the shared version itself on a miss (one GET, at most every MISS_CHECK_S per
process, so a client sending unknown names cannot turn it into a GET per request) and reloads
when it moved. Endpoints resolve names with `snapshot_resolve`."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from django.conf import settings
from django.db import DatabaseError
from django.db import Error as DbError
from redis.exceptions import RedisError

from providers.adapters.base import ProviderConfig
from providers.catalog import Catalog, ModelEntry, catalog_aload
from routing.models import Route, RouteStep
from routing.options import DEFAULT_OPTIONS, RouteOptions, RouteOptionsError, route_options_parse
from tenants.outage import database_outage

logger = logging.getLogger("gateway.routing.snapshot")


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
    default_message: str = ""
    options: RouteOptions = DEFAULT_OPTIONS


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
            try:
                options = route_options_parse(route.options)
            except RouteOptionsError as exc:
                # Written around the validators (raw SQL, an older release): serve the route
                # with default options rather than not at all.
                logger.error(
                    "routing.route_options_invalid",
                    extra={"route": route.name, "error": str(exc)},
                )
                options = DEFAULT_OPTIONS
            routes[route.name] = ResolvedRoute(
                name=route.name,
                strategy=route.strategy,
                targets=tuple(targets),
                max_attempts=max(1, route.max_attempts),
                default_message=route.default_message,
                options=options,
            )
    return GatewaySnapshot(catalog=catalog, routes=routes, loaded_at=time.monotonic())


_current: GatewaySnapshot | None = None
_lock: asyncio.Lock | None = None
# The last snapshot that loaded, kept through invalidations: served (up to
# GATEWAY_STALE_MAX_SECONDS old) while the database cannot be read, so that a PostgreSQL outage
# does not take the routes down with it (tenants.outage: after a failed read, requests stop
# waiting for the database and a background probe finds out when it is back).
_last_good: GatewaySnapshot | None = None


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


# The shared config version this process last compared against on a miss, and when.
MISS_CHECK_S = 0.05
_seen_version: str | None = None
_version_checked_at = float("-inf")


async def _version_moved() -> bool:
    """Compare the shared config version (at most once per MISS_CHECK_S). A store that cannot
    answer counts as unmoved: the TTL still bounds staleness."""
    global _seen_version, _version_checked_at
    now = time.monotonic()
    if now - _version_checked_at < MISS_CHECK_S:
        return False
    _version_checked_at = now
    from tenants.state import state_store

    try:
        version = await state_store().config_version_get()
    except (RedisError, OSError) as exc:
        logger.warning("routing.config_version_check_failed", extra={"error": type(exc).__name__})
        return False
    moved = version != _seen_version
    _seen_version = version
    return moved


async def snapshot_resolve(name: str) -> ResolvedRoute | None:
    """The route (or catalog model) clients call `name`, from this process's snapshot; on a
    miss, reloaded first when the shared config version moved (a route added in another
    process). None: unknown everywhere."""
    snapshot = await snapshot_get()
    route = snapshot.resolve(name)
    if route is None and await _version_moved():
        if _current is snapshot:
            snapshot_invalidate()
        route = (await snapshot_get()).resolve(name)
    return route


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
