from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from providers.models import Model
from tests.factories import (
    ModelFactory,
    ProviderFactory,
    TenantFactory,
    api_key_create_for_test,
    route_create,
)
from tests.usage.helpers import PayloadMaker


@pytest.fixture(scope="session", autouse=True)
def _close_database_pools(django_db_setup, django_db_blocker):
    """The direct-mode writer thread returns its connection to psycopg's pool, which keeps it
    open; close the pools before pytest-django drops the test database."""
    yield
    from django.db import connections

    with django_db_blocker.unblock():
        for conn in connections.all():
            if hasattr(conn, "close_pool"):
                conn.close_pool()


@pytest.fixture
def usage_world(transactional_db):
    """Two tenants, two keys for the first, a route over a cheap and an expensive model."""
    provider = ProviderFactory(name="mock-usage")
    cheap = ModelFactory(
        name="u-cheap",
        provider=provider,
        input_price_per_mtok=Decimal("0.150000"),
        output_price_per_mtok=Decimal("0.600000"),
    )
    dear = ModelFactory(
        name="u-dear",
        provider=provider,
        input_price_per_mtok=Decimal("2.500000"),
        output_price_per_mtok=Decimal("10.000000"),
    )
    route_create(name="u-chat", models=[cheap, dear])
    # The test events are dated in 2026-10: the models existed before that.
    Model.objects.filter(pk__in=[cheap.pk, dear.pk]).update(
        created_at=datetime(2026, 1, 1, tzinfo=UTC)
    )
    cheap.refresh_from_db()
    dear.refresh_from_db()
    acme, globex = TenantFactory(slug="acme"), TenantFactory(slug="globex")
    key_a, _ = api_key_create_for_test(tenant=acme, name="acme-prod")
    key_b, _ = api_key_create_for_test(tenant=acme, name="acme-dev")
    key_g, _ = api_key_create_for_test(tenant=globex, name="globex-main")
    return {
        "provider": provider,
        "cheap": cheap,
        "dear": dear,
        "acme": acme,
        "globex": globex,
        "key_a": key_a,
        "key_b": key_b,
        "key_g": key_g,
    }


@pytest.fixture
def maker(usage_world):
    def make(key) -> PayloadMaker:
        return PayloadMaker(key=key, route_name="u-chat", model_names=["u-cheap", "u-dear"])

    return make


def at(day: int, hour: int = 12, minute: int = 0, month: int = 10) -> datetime:
    return datetime(2026, month, day, hour, minute, tzinfo=UTC)
