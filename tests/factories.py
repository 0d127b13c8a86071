"""Small builders for test data. Services are used where they exist, so tests go through the
same paths as operators."""

from __future__ import annotations

from decimal import Decimal

import factory

from providers.models import Model, Provider, ProviderKind
from routing.models import Route, RouteStep
from tenants.keys import api_key_display_prefix, api_key_generate, api_key_hash
from tenants.models import ApiKey, Tenant


class TenantFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Tenant

    slug = factory.Sequence(lambda n: f"tenant-{n}")
    name = factory.LazyAttribute(lambda o: o.slug.title())


class ProviderFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Provider

    name = factory.Sequence(lambda n: f"provider-{n}")
    kind = ProviderKind.MOCK
    options = factory.LazyFunction(dict)


class ModelFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Model

    name = factory.Sequence(lambda n: f"model-{n}")
    provider = factory.SubFactory(ProviderFactory)
    upstream_model = factory.LazyAttribute(lambda o: o.name)
    input_price_per_mtok = Decimal("1.000000")
    output_price_per_mtok = Decimal("2.000000")


def route_create(
    *, name: str, models: list[Model], strategy: str = "fallback", max_attempts: int = 3
) -> Route:
    route = Route.objects.create(name=name, strategy=strategy, max_attempts=max_attempts)
    for position, model in enumerate(models):
        RouteStep.objects.create(route=route, position=position, model=model)
    return route


def api_key_create_for_test(*, tenant: Tenant, **fields) -> tuple[ApiKey, str]:
    """Returns the key row and its raw key."""
    raw = api_key_generate()
    key = ApiKey.objects.create(
        tenant=tenant, prefix=api_key_display_prefix(raw), key_hash=api_key_hash(raw), **fields
    )
    return key, raw


def operator_token_for(user, *, scope: str = "write", tenant: Tenant | None = None) -> str:
    """A raw management/reports API token for `user` (write scope unless asked otherwise)."""
    from tenants.services import operator_token_create

    _token, raw = operator_token_create(user=user, scope=scope, tenant=tenant)
    return raw
