"""Purging the response cache: by tenant, route or key, through the management API, the
command and the admin action; a tenant admin can never purge another tenant's entries."""

from __future__ import annotations

from decimal import Decimal

import pytest
from asgiref.sync import async_to_sync
from django.contrib.auth import get_user_model
from django.core.management import call_command
from rest_framework.test import APIClient

from providers.types import Usage
from routing.cache import CachedAnswer, CacheScope, response_cache, response_cache_set
from tenants.models import TenantMembership
from tenants.services import operator_token_create
from tests.factories import TenantFactory, api_key_create_for_test


def _answer() -> CachedAnswer:
    return CachedAnswer(
        content="4",
        tool_calls=None,
        finish_reason="stop",
        usage=Usage(prompt_tokens=3, completion_tokens=1),
        model="m",
        model_id=1,
        provider_id=1,
        cost_usd=Decimal("0.000001"),
        stored_at=0.0,
    )


@pytest.fixture
def filled(db, redis_url, settings):
    settings.GATEWAY_CACHE_REDIS_URL = redis_url
    settings.GATEWAY_CACHE_LOCAL_ENTRIES = 0
    response_cache_set(None)
    acme, globex = TenantFactory(slug="acme"), TenantFactory(slug="globex")
    key, _ = api_key_create_for_test(tenant=acme)

    async def fill():
        cache = response_cache()
        for tenant, key_id, route, digest in (
            (acme.id, key.id, "r1", "a" * 64),
            (acme.id, None, "r2", "b" * 64),
            (globex.id, None, "r1", "c" * 64),
        ):
            scope = CacheScope(tenant_id=tenant, key_id=key_id, route=route)
            await cache.store_answer(scope=scope, digest=digest, answer=_answer(), ttl_s=60)
        await cache.store.close()

    async_to_sync(fill)()
    yield {"acme": acme, "globex": globex, "key": key}
    response_cache_set(None)


def _left(tenant_id: int, digest: str) -> bool:
    async def look():
        try:
            return await response_cache().lookup(tenant_id=tenant_id, digest=digest) is not None
        finally:
            await response_cache().store.close()

    return async_to_sync(look)()


def _client(user, **token) -> APIClient:
    _, raw = operator_token_create(user=user, scope="write", **token)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {raw}")
    return client


def test_tenant_admin_purges_only_their_tenant(filled):
    admin = get_user_model().objects.create_user("acme-admin", password="pw-acme-admin-1")
    TenantMembership.objects.create(user=admin, tenant=filled["acme"])
    client = _client(admin)
    refused = client.post("/api/manage/cache/purge", {"tenant": "globex"}, format="json")
    assert refused.status_code == 404
    assert _left(filled["globex"].id, "c" * 64)
    done = client.post("/api/manage/cache/purge", {"route": "r1"}, format="json")
    assert done.status_code == 200 and done.json() == {"purged": 1}
    assert not _left(filled["acme"].id, "a" * 64) and _left(filled["acme"].id, "b" * 64)
    assert _left(filled["globex"].id, "c" * 64)


def test_superuser_purges_a_route_everywhere_and_a_key(filled):
    root = get_user_model().objects.create_superuser("root", password="pw-root-12345")
    client = _client(root)
    by_key = client.post("/api/manage/cache/purge", {"key": filled["key"].prefix}, format="json")
    assert by_key.json() == {"purged": 1}
    assert _left(filled["acme"].id, "b" * 64)
    everywhere = client.post("/api/manage/cache/purge", {"route": "r1"}, format="json")
    assert everywhere.json() == {"purged": 1}  # globex's r1 entry; acme's went with its key
    assert not _left(filled["globex"].id, "c" * 64)


def test_read_only_token_cannot_purge(filled):
    root = get_user_model().objects.create_superuser("root", password="pw-root-12345")
    _, raw = operator_token_create(user=root, scope="read")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {raw}")
    assert client.post("/api/manage/cache/purge", {"route": "r1"}, format="json").status_code == 403


def test_command_purges_one_tenant(filled, capsys):
    call_command("cache_purge", "--tenant", "acme")
    assert "Purged 2 cached answers" in capsys.readouterr().out
    assert _left(filled["globex"].id, "c" * 64)
