"""The response cache module: what goes into the key, who may read an entry, what a hit costs,
and that a store that is down or slow never fails a request (it steps aside)."""

from __future__ import annotations

import asyncio
import socket
from decimal import Decimal

import pytest
from django.conf import settings

from providers.types import ChatRequest, Usage
from routing.cache import (
    CachedAnswer,
    CacheDirective,
    CachePolicy,
    CacheScope,
    CacheUnavailable,
    MemoryCacheStore,
    RedisCacheStore,
    ResponseCache,
    cache_decision,
    cache_directive_from_headers,
    cache_hit_charge,
    cache_key,
)

MODELS = [(1, "gpt-4o-mini", "openai", "https://api.openai.com/v1")]


def _chat(**overrides) -> ChatRequest:
    base = dict(
        model="demo-chat",
        messages=[{"role": "user", "content": "What is 2+2?"}],
        temperature=0.0,
        max_tokens=64,
    )
    base.update(overrides)
    return ChatRequest(**base)


def _key(chat: ChatRequest, *, tenant: int = 1, key_id: int | None = None, models=MODELS) -> str:
    scope = CacheScope(tenant_id=tenant, key_id=key_id, route="demo-chat")
    return cache_key(scope=scope, endpoint="chat", chat=chat, model_identities=models)


def _answer(**overrides) -> CachedAnswer:
    base = dict(
        content="4",
        tool_calls=None,
        finish_reason="stop",
        usage=Usage(prompt_tokens=12, completion_tokens=1),
        model="demo-chat",
        model_id=1,
        provider_id=1,
        cost_usd=Decimal("0.000013"),
        stored_at=1_700_000_000.0,
    )
    base.update(overrides)
    return CachedAnswer(**base)


OUTPUT_CHANGING = [
    {"messages": [{"role": "user", "content": "What is 2+3?"}]},
    {"messages": [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "2+2"}]},
    {"temperature": 0.7},
    {"top_p": 0.5},
    {"stop": ["\n"]},
    {"max_tokens": 65},
    {"tools": [{"type": "function", "function": {"name": "calc", "parameters": {}}}]},
    {"tool_choice": "required"},
    {"extra": {"seed": 7}},
    {"extra": {"response_format": {"type": "json_object"}}},
    {"extra": {"n": 2}},
    {"extra": {"logit_bias": {"50256": -100}}},
]


@pytest.mark.parametrize("change", OUTPUT_CHANGING, ids=lambda c: next(iter(c)))
def test_every_output_changing_parameter_changes_the_key(change):
    assert _key(_chat(**change)) != _key(_chat())


def test_fields_that_never_change_the_answer_share_the_key():
    plain = _key(_chat())
    assert _key(_chat(stream=True, include_usage=True)) == plain
    assert _key(_chat(user="alice", extra={"metadata": {"a": 1}})) == plain


def test_another_tenant_or_key_scope_never_shares_a_key():
    assert _key(_chat(), tenant=2) != _key(_chat(), tenant=1)
    assert _key(_chat(), key_id=5) != _key(_chat(), key_id=None)


def test_a_catalog_remap_of_the_route_changes_the_key():
    remapped = [(1, "gpt-4o", "openai", "https://api.openai.com/v1")]
    assert _key(_chat(), models=remapped) != _key(_chat())


def test_directives_from_headers():
    assert cache_directive_from_headers(cache_control=None, gateway_cache=None, ttl=None) == (
        CacheDirective()
    )
    no_store = cache_directive_from_headers(cache_control="no-store", gateway_cache=None, ttl=None)
    assert (no_store.mode, no_store.store) == ("bypass", False)
    no_cache = cache_directive_from_headers(cache_control="no-cache", gateway_cache=None, ttl=None)
    assert (no_cache.mode, no_cache.store) == ("refresh", True)
    refresh = cache_directive_from_headers(cache_control=None, gateway_cache="refresh", ttl="60")
    assert (refresh.mode, refresh.ttl_s) == ("refresh", 60)
    hostile_ttl = cache_directive_from_headers(cache_control=None, gateway_cache="x", ttl="9e99")
    assert hostile_ttl.ttl_s is None and hostile_ttl.mode == "default"
    huge_ttl = cache_directive_from_headers(cache_control=None, gateway_cache=None, ttl="99999999")
    assert huge_ttl.ttl_s == settings.GATEWAY_CACHE_MAX_TTL_S


def test_decision_is_off_unless_the_route_or_the_request_enables_it(settings):
    plain = cache_decision(
        policy=CachePolicy(), directive=CacheDirective(), key_allows=False, temperature=0
    )
    assert (plain.read, plain.write) == (False, False)
    opted_in = cache_decision(
        policy=CachePolicy(), directive=CacheDirective(mode="use"), key_allows=False, temperature=0
    )
    assert (opted_in.read, opted_in.write) == (True, True)
    settings.GATEWAY_CACHE_REQUEST_OPT_IN = False
    off = cache_decision(
        policy=CachePolicy(), directive=CacheDirective(mode="use"), key_allows=False, temperature=0
    )
    assert (off.read, off.write, off.reason) == (False, False, "bypass")
    on = cache_decision(
        policy=CachePolicy(enabled=True, ttl_s=30),
        directive=CacheDirective(),
        key_allows=False,
        temperature=0,
    )
    assert (on.read, on.write, on.ttl_s) == (True, True, 30)


def test_creative_requests_are_not_cached_unless_asked():
    policy = CachePolicy(enabled=True, max_temperature=0.2)
    hot = cache_decision(
        policy=policy, directive=CacheDirective(), key_allows=False, temperature=0.9
    )
    assert not hot.read and not hot.write
    asked = cache_decision(
        policy=policy, directive=CacheDirective(mode="use"), key_allows=False, temperature=0.9
    )
    assert asked.read and asked.write


def test_refresh_writes_without_reading_and_no_store_does_neither():
    policy = CachePolicy(enabled=True)
    refresh = cache_decision(
        policy=policy, directive=CacheDirective(mode="refresh"), key_allows=False, temperature=0
    )
    assert (refresh.read, refresh.write) == (False, True)
    no_store = cache_decision(
        policy=policy,
        directive=CacheDirective(mode="bypass", store=False),
        key_allows=False,
        temperature=0,
    )
    assert (no_store.read, no_store.write) == (False, False)


def test_policy_refuses_a_price_fraction_outside_zero_to_one():
    with pytest.raises(ValueError):
        CachePolicy.from_options({"enabled": True, "price_fraction": "1.5"})
    policy = CachePolicy.from_options({"enabled": True, "price_fraction": "0.25", "ttl_s": 5})
    assert policy.price_fraction == Decimal("0.25") and policy.ttl_s == 5


def test_a_hit_charge_rounds_up_to_the_nano_dollar_and_saving_is_the_rest():
    charged, saved = cache_hit_charge(
        original_cost=Decimal("0.000000003"), price_fraction=Decimal("0.5")
    )
    assert charged == Decimal("0.000000002") and saved == Decimal("0.000000001")
    free, all_saved = cache_hit_charge(original_cost=Decimal("0.0125"), price_fraction=Decimal("0"))
    assert free == 0 and all_saved == Decimal("0.0125")


def test_cached_answer_round_trips_with_its_billing_facts():
    answer = _answer(tool_calls=[{"id": "c1", "type": "function"}], cost_usd=Decimal("1.5"))
    again = CachedAnswer.from_bytes(answer.to_bytes())
    assert again == answer


@pytest.fixture
def redis_store(redis_url):
    return RedisCacheStore(url=redis_url, timeout_s=0.5)


async def test_redis_store_scopes_entries_by_tenant(redis_store):
    cache = ResponseCache(store=redis_store)
    scope = CacheScope(tenant_id=1, key_id=None, route="demo-chat")
    digest = _key(_chat())
    assert await cache.store_answer(scope=scope, digest=digest, answer=_answer(), ttl_s=60)
    fresh = ResponseCache(store=redis_store)  # another process: no local tier
    assert (await fresh.lookup(tenant_id=1, digest=digest)).content == "4"
    # The same digest under another tenant's name is another Redis key: a miss.
    assert await fresh.lookup(tenant_id=2, digest=digest) is None
    await redis_store.close()


async def test_redis_store_expires_entries_and_bounds_each_tenant(redis_store, settings):
    settings.GATEWAY_CACHE_MAX_ENTRIES_PER_TENANT = 3
    settings.GATEWAY_CACHE_LOCAL_ENTRIES = 0
    cache = ResponseCache(store=redis_store)
    scope = CacheScope(tenant_id=9, key_id=None, route="demo-chat")
    digests = [_key(_chat(max_tokens=i)) for i in range(5)]
    for digest in digests:
        await cache.store_answer(scope=scope, digest=digest, answer=_answer(), ttl_s=60)
        await asyncio.sleep(0.002)  # distinct expiry scores: the earliest to expire goes first
    found = [await cache.lookup(tenant_id=9, digest=d) is not None for d in digests]
    assert found == [False, False, True, True, True]
    short = _key(_chat(max_tokens=99))
    await redis_store.put(scope=scope, digest=short, value=b"{}", ttl_s=0.05, max_entries=3)
    await asyncio.sleep(0.15)
    assert await redis_store.get(tenant_id=9, digest=short) is None
    await redis_store.close()


async def test_purge_by_route_and_by_key(redis_store, settings):
    settings.GATEWAY_CACHE_LOCAL_ENTRIES = 0
    cache = ResponseCache(store=redis_store)
    a = CacheScope(tenant_id=3, key_id=11, route="a")
    b = CacheScope(tenant_id=3, key_id=12, route="b")
    da, db = _key(_chat(max_tokens=1)), _key(_chat(max_tokens=2))
    await cache.store_answer(scope=a, digest=da, answer=_answer(), ttl_s=60)
    await cache.store_answer(scope=b, digest=db, answer=_answer(), ttl_s=60)
    assert await cache.purge(tenant_id=3, route="a") == 1
    assert await cache.lookup(tenant_id=3, digest=da) is None
    assert await cache.lookup(tenant_id=3, digest=db) is not None
    assert await cache.purge(tenant_id=3, key_id=12) == 1
    assert await cache.lookup(tenant_id=3, digest=db) is None
    await redis_store.close()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_a_store_that_is_down_raises_unavailable_then_pauses(settings):
    settings.GATEWAY_CACHE_PAUSE_AFTER_ERROR_S = 60
    store = RedisCacheStore(url=f"redis://127.0.0.1:{_closed_port()}/0", timeout_s=0.2)
    cache = ResponseCache(store=store)
    with pytest.raises(CacheUnavailable):
        await cache.lookup(tenant_id=1, digest="0" * 64)
    # Paused: no second connection attempt, and writes are skipped.
    with pytest.raises(CacheUnavailable, match="paused"):
        await cache.lookup(tenant_id=1, digest="0" * 64)
    scope = CacheScope(tenant_id=1, key_id=None, route="r")
    assert not await cache.store_answer(scope=scope, digest="0" * 64, answer=_answer(), ttl_s=5)


async def test_a_store_that_hangs_is_cut_at_its_timeout(settings):
    """A server that accepts and never answers (a wedged Redis) costs at most the timeout."""
    settings.GATEWAY_CACHE_PAUSE_AFTER_ERROR_S = 0

    async def silent(reader, writer):
        await reader.read(1 << 16)
        await asyncio.sleep(5)
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    store = RedisCacheStore(url=f"redis://127.0.0.1:{port}/0", timeout_s=0.2)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(CacheUnavailable):
        await ResponseCache(store=store).lookup(tenant_id=1, digest="0" * 64)
    assert loop.time() - started < 2.0
    server.close()


async def test_memory_store_behaves_like_redis_for_scope_bound_and_purge(settings):
    settings.GATEWAY_CACHE_MAX_ENTRIES_PER_TENANT = 2
    settings.GATEWAY_CACHE_LOCAL_ENTRIES = 0
    cache = ResponseCache(store=MemoryCacheStore())
    scope = CacheScope(tenant_id=1, key_id=None, route="r")
    digests = [_key(_chat(max_tokens=i)) for i in range(3)]
    for digest in digests:
        await cache.store_answer(scope=scope, digest=digest, answer=_answer(), ttl_s=60)
    assert await cache.lookup(tenant_id=1, digest=digests[0]) is None
    assert await cache.lookup(tenant_id=2, digest=digests[2]) is None
    assert await cache.lookup(tenant_id=1, digest=digests[2]) is not None
    assert await cache.purge(tenant_id=1, route="r") == 2


async def test_oversized_answers_are_not_stored(settings):
    settings.GATEWAY_CACHE_MAX_ENTRY_BYTES = 100
    cache = ResponseCache(store=MemoryCacheStore())
    scope = CacheScope(tenant_id=1, key_id=None, route="r")
    big = _answer(content="x" * 500)
    assert not await cache.store_answer(scope=scope, digest="a" * 64, answer=big, ttl_s=60)


@pytest.mark.parametrize("backend", ["redis", "memory"])
async def test_a_route_name_holding_the_index_separator_neither_breaks_nor_crosses_a_purge(
    backend, redis_url, settings
):
    """The index member is route, key and digest joined by \\x1f; a route name holding that
    character made every purge of the tenant raise (nothing could be purged). Another
    tenant's entries (tenant 33 next to tenant 3) are never touched by the purge."""
    settings.GATEWAY_CACHE_LOCAL_ENTRIES = 0
    store = (
        RedisCacheStore(url=redis_url, timeout_s=0.5) if backend == "redis" else MemoryCacheStore()
    )
    cache = ResponseCache(store=store)
    odd = CacheScope(tenant_id=3, key_id=None, route="a\x1fb")
    plain = CacheScope(tenant_id=3, key_id=7, route="c")
    other = CacheScope(tenant_id=33, key_id=None, route="a\x1fb")
    d1, d2, d3 = (_key(_chat(max_tokens=i)) for i in (1, 2, 3))
    await cache.store_answer(scope=odd, digest=d1, answer=_answer(), ttl_s=60)
    await cache.store_answer(scope=plain, digest=d2, answer=_answer(), ttl_s=60)
    await cache.store_answer(scope=other, digest=d3, answer=_answer(), ttl_s=60)
    assert await cache.purge(tenant_id=3, route="a\x1fb") == 1
    assert await cache.lookup(tenant_id=3, digest=d1) is None
    assert await cache.purge(tenant_id=3, key_id=7) == 1
    assert await cache.purge(tenant_id=3) == 0
    assert await cache.lookup(tenant_id=33, digest=d3) is not None
    await store.close()
