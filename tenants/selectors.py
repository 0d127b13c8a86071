"""Reads. The key policy read is on the hot path: it is served from an in-process cache that
is dropped whenever the shared config version moves (see tenants.admission)."""

from __future__ import annotations

import time

from django.conf import settings

from tenants.keys import api_key_hash
from tenants.models import ApiKey, Tenant
from tenants.policy import KeyPolicy, LimitPolicy

_MISSING = object()
# key hash -> (policy or None for unknown keys, loaded at monotonic seconds)
_policy_cache: dict[str, tuple[KeyPolicy | None, float]] = {}
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
    )


async def api_key_policy_load(*, key_hash: str) -> KeyPolicy | None:
    key = await ApiKey.objects.select_related("tenant").filter(key_hash=key_hash).afirst()
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
    policy = await api_key_policy_load(key_hash=key_hash)
    if len(_policy_cache) >= _MAX_CACHED:
        _policy_cache.clear()
    _policy_cache[key_hash] = (policy, now)
    return policy


def policy_cache_clear() -> None:
    _policy_cache.clear()


def tenant_get_by_slug(*, slug: str) -> Tenant:
    return Tenant.objects.get(slug=slug)
