"""The demo catalog and tenant that the embedded quick start runs with."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from django.db import transaction
from django.utils import timezone

from providers.catalog import catalog_changed
from providers.models import Model, Provider, ProviderKind
from routing.models import Route, RouteStep
from tenants.keys import api_key_display_prefix, api_key_generate, api_key_hash
from tenants.models import ApiKey, Tenant


@dataclass
class DemoSeedResult:
    tenant_slug: str
    model_name: str
    route_name: str
    raw_key: str | None


@transaction.atomic
def demo_seed(*, raw_key: str | None = None, rotate: bool = False) -> DemoSeedResult:
    provider, _ = Provider.objects.get_or_create(
        name="mock", defaults={"kind": ProviderKind.MOCK, "options": {"latency_ms": 0}}
    )
    small, _ = Model.objects.get_or_create(
        name="mock-small",
        defaults={
            "provider": provider,
            "upstream_model": "mock-small",
            "input_price_per_mtok": Decimal("0.150000"),
            "output_price_per_mtok": Decimal("0.600000"),
            "context_window": 128000,
            "max_output_tokens": 4096,
        },
    )
    large, _ = Model.objects.get_or_create(
        name="mock-large",
        defaults={
            "provider": provider,
            "upstream_model": "mock-large",
            "input_price_per_mtok": Decimal("2.500000"),
            "output_price_per_mtok": Decimal("10.000000"),
            "context_window": 128000,
            "max_output_tokens": 4096,
        },
    )
    route, created = Route.objects.get_or_create(
        name="demo-chat", defaults={"description": "mock-small, falling back to mock-large"}
    )
    if created:
        RouteStep.objects.create(route=route, position=0, model=small)
        RouteStep.objects.create(route=route, position=1, model=large)
    tenant, _ = Tenant.objects.get_or_create(slug="demo", defaults={"name": "Demo tenant"})
    new_key: str | None = None
    if raw_key is not None:
        if not ApiKey.objects.filter(key_hash=api_key_hash(raw_key)).exists():
            ApiKey.objects.create(
                tenant=tenant,
                name="demo",
                prefix=api_key_display_prefix(raw_key),
                key_hash=api_key_hash(raw_key),
            )
        new_key = raw_key
    elif rotate or not tenant.api_keys.filter(name="demo", revoked_at__isnull=True).exists():
        tenant.api_keys.filter(name="demo", revoked_at__isnull=True).update(
            revoked_at=timezone.now()
        )
        new_key = api_key_generate()
        ApiKey.objects.create(
            tenant=tenant,
            name="demo",
            prefix=api_key_display_prefix(new_key),
            key_hash=api_key_hash(new_key),
        )
    catalog_changed()
    return DemoSeedResult(
        tenant_slug=tenant.slug, model_name=small.name, route_name=route.name, raw_key=new_key
    )
