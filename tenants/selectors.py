"""Reads. The key policy read is on the hot path: it is served from an in-process cache that
is dropped whenever the shared config version moves (see tenants.admission), with a TTL as a
backstop."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime

from django.conf import settings
from django.db import DatabaseError
from django.db import Error as DbError
from django.db.models import Q, QuerySet

from tenants.keys import api_key_hash
from tenants.models import ApiKey, BudgetAlert, Tenant
from tenants.outage import database_outage
from tenants.policy import KeyPolicy, LimitPolicy

logger = logging.getLogger("gateway.tenants")

# Two bounded LRU caches, so that unknown keys (a client trying random keys) can never push
# valid keys out: key hash -> (policy, loaded at monotonic seconds) for keys that exist, and
# key hash -> checked at, for keys that do not (kept for a few seconds only).
_policy_cache: OrderedDict[str, tuple[KeyPolicy, float]] = OrderedDict()
_negative_cache: OrderedDict[str, float] = OrderedDict()
# Bumped on every clear: a load that started before a clear must not refill the cache with
# what it read before the change.
_cache_generation = 0
_NEGATIVE_TTL_S = 5.0


def limit_policy_from(obj: Tenant | ApiKey) -> LimitPolicy:
    return LimitPolicy(
        budget_usd=obj.budget_usd,
        budget_period=obj.budget_period,
        rpm=obj.rpm_limit,
        tpm=obj.tpm_limit,
        max_concurrency=obj.max_concurrency,
    )


def alert_thresholds_clean(raw: object) -> tuple[int, ...]:
    """Thresholds as sorted distinct percents in 1..1000 (ignores junk in the JSON field)."""
    values: set[int] = set()
    for item in raw if isinstance(raw, list | tuple) else ():
        try:
            value = int(item)
        except (TypeError, ValueError):
            continue
        if 0 < value <= 1000:
            values.add(value)
    return tuple(sorted(values))


def key_policy_from(key: ApiKey) -> KeyPolicy:
    tenant = key.tenant
    return KeyPolicy(
        key_id=key.id,
        tenant_id=tenant.id,
        tenant_slug=tenant.slug,
        prefix=key.prefix,
        allowed_models=frozenset(key.allowed_models or ()),
        expires_at=key.expires_at,
        revoked=key.revoked_at is not None,
        tenant_active=tenant.is_active,
        key_limits=limit_policy_from(key),
        tenant_limits=limit_policy_from(tenant),
        tenant_timezone=tenant.timezone,
        alert_thresholds=alert_thresholds_clean(tenant.alert_thresholds),
    )


def _by_hash(key_hash: str) -> Q:
    """A key by its current secret, or by the secret its last rotation replaced."""
    return Q(key_hash=key_hash) | Q(previous_key_hash=key_hash)


def key_policy_for_hash(key: ApiKey, key_hash: str) -> KeyPolicy:
    """The policy of `key` as presented with `key_hash`. The secret a rotation replaced is the
    same key record (limits, budget, usage) that stops at the end of its grace period."""
    policy = key_policy_from(key)
    if key_hash == key.key_hash:
        return policy
    until = key.previous_valid_until or datetime.min.replace(tzinfo=UTC)
    if policy.expires_at is not None:
        until = min(until, policy.expires_at)
    return replace(policy, expires_at=until)


async def api_key_policy_load(*, key_hash: str) -> KeyPolicy | None:
    key = await ApiKey.objects.select_related("tenant").filter(_by_hash(key_hash)).afirst()
    return key_policy_for_hash(key, key_hash) if key is not None else None


async def api_key_policy_reload(*, key_id: int) -> KeyPolicy | None:
    """The current policy of a key by id, straight from the database (after a config change)."""
    key = await ApiKey.objects.select_related("tenant").filter(pk=key_id).afirst()
    return key_policy_from(key) if key is not None else None


async def api_key_policy_get(*, raw_key: str) -> KeyPolicy | None:
    """The policy of a presented key, or None when no such key exists."""
    key_hash = api_key_hash(raw_key)
    now = time.monotonic()
    cached = _policy_cache.get(key_hash)
    if cached is not None:
        if now - cached[1] < settings.GATEWAY_SNAPSHOT_TTL_SECONDS:
            _policy_cache.move_to_end(key_hash)
            _cache_observer(True)
            return cached[0]
    else:
        checked_at = _negative_cache.get(key_hash)
        if checked_at is not None and now - checked_at < _NEGATIVE_TTL_S:
            _cache_observer(True)
            return None
    _cache_observer(False)
    if database_outage.down:
        # Known keys are served from the cache (stale, up to GATEWAY_STALE_MAX_SECONDS since
        # they were loaded), unknown ones fail at once (503); a background probe (this key's
        # read) finds out when the database is back.
        database_outage.probe(lambda: _policy_refresh(key_hash))
        return _stale_or_raise(cached, now, None)
    generation = _cache_generation
    try:
        policy = await api_key_policy_load(key_hash=key_hash)
    except DbError as exc:
        database_outage.failed(exc)
        return _stale_or_raise(cached, now, exc)
    if generation == _cache_generation:
        _cache_put(key_hash, policy, now)
    return policy


async def _policy_refresh(key_hash: str) -> None:
    generation, now = _cache_generation, time.monotonic()
    policy = await api_key_policy_load(key_hash=key_hash)
    if generation == _cache_generation:
        _cache_put(key_hash, policy, now)


def _stale_or_raise(
    cached: tuple[KeyPolicy, float] | None, now: float, error: Exception | None
) -> KeyPolicy:
    """While the database cannot be read: the last policy loaded for a known key, if it is
    not older than GATEWAY_STALE_MAX_SECONDS; otherwise the database error (answered 503)."""
    if cached is not None and now - cached[1] < settings.GATEWAY_STALE_MAX_SECONDS:
        if error is not None:
            logger.warning(
                "key_policy.reload_failed",
                extra={"error_class": type(error).__name__, "serving_stale": True},
            )
        return cached[0]
    if error is not None:
        logger.warning(
            "key_policy.reload_failed",
            extra={"error_class": type(error).__name__, "serving_stale": False},
        )
        raise error
    raise DatabaseError("key lookup unavailable: the database did not answer (retrying)")


def _cache_put(key_hash: str, policy: KeyPolicy | None, now: float) -> None:
    if policy is None:
        _policy_cache.pop(key_hash, None)
        cache, limit, value = _negative_cache, settings.GATEWAY_NEGATIVE_KEY_CACHE_SIZE, now
    else:
        _negative_cache.pop(key_hash, None)
        cache, limit, value = _policy_cache, settings.GATEWAY_KEY_CACHE_SIZE, (policy, now)
    cache[key_hash] = value
    cache.move_to_end(key_hash)
    while len(cache) > limit:
        cache.popitem(last=False)  # the least recently used


def api_key_policy_cached(*, raw_key: str) -> KeyPolicy | None:
    """The cached policy of a key that exists (fresh or not), without any read: lets the
    per-address limit of unauthenticated traffic wave known keys through."""
    cached = _policy_cache.get(api_key_hash(raw_key))
    return cached[0] if cached is not None else None


def _cache_observer_unwired(hit: bool) -> None:
    return None


# Told of every policy-cache lookup (hit or miss); routing wires it to its metrics.
_cache_observer: Callable[[bool], None] = _cache_observer_unwired


def policy_cache_observer_set(fn: Callable[[bool], None] | None) -> None:
    global _cache_observer
    _cache_observer = fn or _cache_observer_unwired


def policy_cache_clear() -> None:
    """Forget every cached policy (a config change): revocations win over availability, so a
    change seen during a database outage leaves no stale fallback for the keys."""
    global _cache_generation
    _cache_generation += 1
    _policy_cache.clear()
    _negative_cache.clear()


# -- operator reads (admin, management API, commands) ---------------------------------------
def tenant_get_by_slug(*, slug: str) -> Tenant:
    return Tenant.objects.get(slug=slug)


def tenants_visible_to(*, user) -> QuerySet[Tenant]:
    """Tenants an operator may see: all for superusers, their memberships otherwise."""
    if getattr(user, "is_superuser", False):
        return Tenant.objects.all()
    if not getattr(user, "is_authenticated", False):
        return Tenant.objects.none()
    return Tenant.objects.filter(memberships__user=user).distinct()


def tenant_ids_visible_to(*, user) -> list[int] | None:
    """Ids of the tenants an operator may manage; None means all (superuser)."""
    if getattr(user, "is_superuser", False):
        return None
    if not getattr(user, "is_authenticated", False):
        return []
    return list(
        Tenant.objects.filter(memberships__user=user).values_list("id", flat=True).distinct()
    )


def api_keys_visible_to(*, user, tenant: Tenant | None = None) -> QuerySet[ApiKey]:
    keys = ApiKey.objects.select_related("tenant")
    if tenant is not None:
        keys = keys.filter(tenant=tenant)
    ids = tenant_ids_visible_to(user=user)
    return keys if ids is None else keys.filter(tenant_id__in=ids)


def api_key_find(*, key_or_prefix: str) -> ApiKey:
    """A key by its raw value (current or, during a grace period, the rotated-away one), its
    public id, or its display prefix (unique match required)."""
    by_hash = ApiKey.objects.filter(_by_hash(api_key_hash(key_or_prefix))).first()
    if by_hash is not None:
        return by_hash
    by_public_id = ApiKey.objects.filter(public_id=key_or_prefix).first()
    if by_public_id is not None:
        return by_public_id
    matches = list(ApiKey.objects.filter(prefix=key_or_prefix)[:2])
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise ApiKey.DoesNotExist(f"no API key matches {key_or_prefix[:12]!r}")
    raise ApiKey.MultipleObjectsReturned(f"several API keys share the prefix {key_or_prefix!r}")


def budget_alerts_for(*, tenant: Tenant) -> QuerySet[BudgetAlert]:
    return BudgetAlert.objects.filter(tenant=tenant)


def budget_alert_exists(
    *, tenant_id: int, scope: str, scope_id: int, period_key: str, threshold: int
) -> bool:
    return BudgetAlert.objects.filter(
        tenant_id=tenant_id,
        scope=scope,
        scope_id=scope_id,
        period_key=period_key,
        threshold=threshold,
    ).exists()
