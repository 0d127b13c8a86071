"""Builders and bounded waits shared by the routing tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal

from providers.models import Model, Provider, ProviderKind
from providers.secrets import secret_seal
from tests.factories import (
    ModelFactory,
    ProviderFactory,
    TenantFactory,
    api_key_create_for_test,
    route_create,
)
from tests.fake_upstream.server import DEFAULT_API_KEY, FakeUpstream
from usage.models import UsageEvent

# The live gateway process writes usage events straight to the database (no Celery drain in
# these tests); in-process tests flush the in-process writer.
LIVE_ENV = {"GATEWAY_USAGE_WRITE_MODE": "direct"}


@dataclass
class Catalog:
    raw_key: str
    tenant_id: int
    key_id: int
    routes: dict[str, str] = field(default_factory=dict)
    models: dict[str, Model] = field(default_factory=dict)
    providers: dict[str, Provider] = field(default_factory=dict)


def caches_clear() -> None:
    from routing.snapshot import snapshot_invalidate
    from tenants.selectors import policy_cache_clear

    snapshot_invalidate()
    policy_cache_clear()


def tenant_key(**key_fields) -> tuple[int, int, str]:
    tenant = TenantFactory()
    key, raw = api_key_create_for_test(tenant=tenant, **key_fields)
    return tenant.id, key.id, raw


def mock_provider(name: str = "mock-routing", **options) -> Provider:
    return ProviderFactory(name=name, kind=ProviderKind.MOCK, options=options)


_BASE_URLS = {
    ProviderKind.OPENAI: "openai_base_url",
    ProviderKind.OPENAI_COMPATIBLE: "openai_base_url",
    ProviderKind.AZURE_OPENAI: "azure_base_url",
    ProviderKind.ANTHROPIC: "anthropic_base_url",
}


def fake_provider(
    fake: FakeUpstream, kind: str, *, name: str | None = None, max_retries: int = 0, **fields
) -> Provider:
    """A provider row pointing at the fake upstream, with short timeouts."""
    options = dict(fields.pop("options", {}))
    if kind == ProviderKind.AZURE_OPENAI:
        options.setdefault("api_version", "2024-10-21")
    return ProviderFactory(
        name=name or f"fake-{kind.replace('_', '-')}",
        kind=kind,
        base_url=getattr(fake, _BASE_URLS[kind]),
        secret_encrypted=secret_seal(DEFAULT_API_KEY),
        options=options,
        connect_timeout_s=2.0,
        first_byte_timeout_s=fields.pop("first_byte_timeout_s", 5.0),
        stream_idle_timeout_s=fields.pop("stream_idle_timeout_s", 5.0),
        total_timeout_s=20.0,
        max_retries=max_retries,
        **fields,
    )


def model_on(provider: Provider, name: str, *, upstream: str | None = None, **fields) -> Model:
    """A catalog model (capabilities as the catalog defaults unless given in `fields`)."""
    return ModelFactory(
        name=name,
        provider=provider,
        upstream_model=upstream or name,
        input_price_per_mtok=Decimal("1.000000"),
        output_price_per_mtok=Decimal("2.000000"),
        **fields,
    )


def route(name: str, models: list[Model], *, strategy: str = "fallback", max_attempts: int = 3):
    return route_create(name=name, models=models, strategy=strategy, max_attempts=max_attempts)


# -- usage events ---------------------------------------------------------------------------
async def usage_events_wait(expected: int, *, timeout_s: float = 10.0) -> list[UsageEvent]:
    """Flush this loop's in-process usage writer, then wait (bounded) until `expected`
    events are stored; returns them oldest first."""
    from usage.services import usage_events_flush

    deadline = time.monotonic() + timeout_s
    await usage_events_flush(max_wait_s=timeout_s)
    count = await UsageEvent.objects.acount()
    while count < expected and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
        count = await UsageEvent.objects.acount()
    return [e async for e in UsageEvent.objects.order_by("id")]


def usage_events_wait_sync(expected: int, *, timeout_s: float = 10.0) -> list[UsageEvent]:
    """The same for a live gateway process (which writes on its own)."""
    deadline = time.monotonic() + timeout_s
    while UsageEvent.objects.count() < expected and time.monotonic() < deadline:
        time.sleep(0.02)
    return list(UsageEvent.objects.order_by("id"))


def wait_until_sync(predicate: Callable[[], bool], *, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return predicate()


async def wait_until(predicate: Callable[[], bool], *, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.005)
    return predicate()
