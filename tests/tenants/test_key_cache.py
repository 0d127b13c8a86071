"""Issue 14, item 6: random keys cannot flush valid keys out of the key-policy cache, and a
random key repeated within a few seconds costs no second database query. Queries are counted
(the async ORM runs on this test's thread under async_to_sync)."""

from __future__ import annotations

import secrets

import pytest
from asgiref.sync import async_to_sync

from tenants import selectors
from tenants.selectors import api_key_policy_get
from tests.factories import TenantFactory, api_key_create_for_test

pytestmark = pytest.mark.django_db(transaction=True)

get = async_to_sync(api_key_policy_get)


def test_a_thousand_random_keys_leave_valid_keys_cached(settings, django_assert_num_queries):
    settings.GATEWAY_NEGATIVE_KEY_CACHE_SIZE = 100
    settings.GATEWAY_KEY_CACHE_SIZE = 1_000
    tenant = TenantFactory()
    valid = [api_key_create_for_test(tenant=tenant)[1] for _ in range(3)]
    with django_assert_num_queries(3):
        assert all(get(raw_key=raw) is not None for raw in valid)

    random_keys = [f"gw-{secrets.token_urlsafe(32)}" for _ in range(1_000)]
    with django_assert_num_queries(1_000):  # each unknown key is looked up once
        assert all(get(raw_key=raw) is None for raw in random_keys)

    # The valid keys were not pushed out: no query at all.
    with django_assert_num_queries(0):
        assert all(get(raw_key=raw) is not None for raw in valid)
    # The negative cache is bounded (its oldest entries went, not the valid keys).
    assert len(selectors._negative_cache) == 100
    assert len(selectors._policy_cache) == 3


def test_a_repeated_unknown_key_is_answered_from_the_negative_cache(django_assert_num_queries):
    raw = f"gw-{secrets.token_urlsafe(32)}"
    with django_assert_num_queries(1):
        assert get(raw_key=raw) is None
        assert get(raw_key=raw) is None
        assert get(raw_key=raw) is None


def test_the_positive_cache_is_a_bounded_lru(settings, django_assert_num_queries):
    settings.GATEWAY_KEY_CACHE_SIZE = 2
    tenant = TenantFactory()
    first, second, third = (api_key_create_for_test(tenant=tenant)[1] for _ in range(3))
    get(raw_key=first)
    get(raw_key=second)
    get(raw_key=first)  # touched: now the most recently used
    get(raw_key=third)  # evicts `second`, the least recently used
    with django_assert_num_queries(0):
        assert get(raw_key=first) is not None and get(raw_key=third) is not None
    with django_assert_num_queries(1):
        assert get(raw_key=second) is not None
