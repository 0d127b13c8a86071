"""The demo catalog and tenant that the embedded quick start runs with. Every write goes
through the rooms' services (audit, price history, cache invalidation)."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from django.db import transaction

from providers.catalog import catalog_changed
from providers.models import Model, Provider, ProviderKind
from providers.services import model_create, provider_create
from routing.models import Route, RouteStep
from tenants.keys import api_key_display_prefix, api_key_hash
from tenants.models import ApiKey, Tenant
from tenants.services import api_key_create, api_key_revoke, tenant_create

DEMO_ACTOR = "seed_demo"


@dataclass
class DemoSeedResult:
    tenant_slug: str
    model_name: str
    route_name: str
    raw_key: str | None


def _demo_model(*, name: str, provider: Provider, price_in: str, price_out: str) -> Model:
    existing = Model.objects.filter(name=name).first()
    if existing is not None:
        return existing
    return model_create(
        name=name,
        provider=provider,
        upstream_model=name,
        input_price_per_mtok=Decimal(price_in),
        output_price_per_mtok=Decimal(price_out),
        context_window=128000,
        max_output_tokens=4096,
        # The mock provider answers embeddings, so its demo models declare them.
        supports_embeddings=True,
    )


@transaction.atomic
def demo_seed(*, raw_key: str | None = None, rotate: bool = False) -> DemoSeedResult:
    """Idempotent. Issues a demo key when there is none (or `rotate`: a fresh one, revoking
    the previous), or registers `raw_key` as the demo key. Returns the raw key when issued."""
    provider = Provider.objects.filter(name="mock").first() or provider_create(
        name="mock", kind=ProviderKind.MOCK, options={"latency_ms": 0}
    )
    small = _demo_model(name="mock-small", provider=provider, price_in="0.15", price_out="0.60")
    large = _demo_model(name="mock-large", provider=provider, price_in="2.50", price_out="10.00")
    route, created = Route.objects.get_or_create(
        name="demo-chat", defaults={"description": "mock-small, falling back to mock-large"}
    )
    if created:
        RouteStep.objects.create(route=route, position=0, model=small)
        RouteStep.objects.create(route=route, position=1, model=large)
        catalog_changed()
    tenant = Tenant.objects.filter(slug="demo").first() or tenant_create(
        slug="demo", name="Demo tenant", actor=DEMO_ACTOR
    )
    active = tenant.api_keys.filter(name="demo", revoked_at__isnull=True)
    new_key: str | None = None
    if raw_key is not None:
        # A key chosen by the operator (scripts, benchmarks): stored like any other, hash only.
        if not ApiKey.objects.filter(key_hash=api_key_hash(raw_key)).exists():
            ApiKey.objects.create(
                tenant=tenant,
                name="demo",
                prefix=api_key_display_prefix(raw_key),
                key_hash=api_key_hash(raw_key),
            )
        new_key = raw_key
    elif rotate or not active.exists():
        for old in active:
            api_key_revoke(key=old, actor=DEMO_ACTOR)
        _, new_key = api_key_create(tenant=tenant, name="demo", actor=DEMO_ACTOR)
    return DemoSeedResult(
        tenant_slug=tenant.slug, model_name=small.name, route_name=route.name, raw_key=new_key
    )
