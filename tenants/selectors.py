"""Reads. The key policy read is on the hot path: it is served from an in-process cache that
is dropped whenever the shared config version moves (see tenants.admission), with a TTL as a
backstop."""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import UTC, datetime

from django.conf import settings
from django.db.models import Q, QuerySet

from tenants.keys import api_key_hash
from tenants.models import ApiKey, BudgetAlert, Tenant
from tenants.policy import KeyPolicy, LimitPolicy

# key hash -> (policy or None for unknown keys, loaded at monotonic seconds)
_policy_cache: dict[str, tuple[KeyPolicy | None, float]] = {}
# Bumped on every clear: a load that started before a clear must not refill the cache with
# what it read before the change.
_cache_generation = 0
_NEGATIVE_TTL_S = 5.0
_MAX_CACHED = 100_000


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
        policy, loaded_at = cached
        ttl = settings.GATEWAY_SNAPSHOT_TTL_SECONDS if policy is not None else _NEGATIVE_TTL_S
        if now - loaded_at < ttl:
            return policy
    generation = _cache_generation
    policy = await api_key_policy_load(key_hash=key_hash)
    if generation == _cache_generation:
        if len(_policy_cache) >= _MAX_CACHED:
            _policy_cache.clear()
        _policy_cache[key_hash] = (policy, now)
    return policy


def policy_cache_clear() -> None:
    global _cache_generation
    _cache_generation += 1
    _policy_cache.clear()


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
