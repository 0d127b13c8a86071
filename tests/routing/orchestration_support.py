"""Targets built without the database (frozen catalog entries), for the strategy and decide
tests that exercise pure functions or adapters directly."""

from __future__ import annotations

import itertools
from decimal import Decimal

from providers.adapters.base import ProviderConfig
from providers.catalog import ModelEntry
from routing.options import DEFAULT_OPTIONS, RouteOptions
from routing.snapshot import ResolvedRoute, Target
from tests.fake_upstream.server import DEFAULT_API_KEY, FakeUpstream

_ids = itertools.count(1000)


def provider_config(
    name: str = "p", *, kind: str = "mock", fake: FakeUpstream | None = None
) -> ProviderConfig:
    return ProviderConfig(
        id=next(_ids),
        name=name,
        kind=kind if fake is None else "openai",
        base_url=fake.openai_base_url if fake is not None else "",
        secret=DEFAULT_API_KEY if fake is not None else "",
        connect_timeout_s=2.0,
        first_byte_timeout_s=10.0,
        stream_idle_timeout_s=10.0,
        total_timeout_s=20.0,
        max_retries=0,
    )


def target(
    name: str,
    *,
    price_in: str = "1",
    price_out: str = "2",
    context_window: int = 8192,
    max_output_tokens: int = 1024,
    quality: dict[str, float] | None = None,
    tasks: tuple[str, ...] = (),
    provider: ProviderConfig | None = None,
    **caps: bool,
) -> Target:
    provider = provider or provider_config(f"prov-{name}")
    entry = ModelEntry(
        id=next(_ids),
        name=name,
        provider_id=provider.id,
        upstream_model=name,
        input_price_per_mtok=Decimal(price_in),
        output_price_per_mtok=Decimal(price_out),
        context_window=context_window,
        max_output_tokens=max_output_tokens,
        supports_streaming=caps.get("streaming", True),
        supports_tools=caps.get("tools", True),
        supports_vision=caps.get("vision", False),
        supports_embeddings=caps.get("embeddings", False),
        supports_json_mode=caps.get("json_mode", True),
        quality=tuple(sorted((quality or {}).items())),
        tasks=tasks,
    )
    return Target(entry, provider)


def resolved(
    targets: list[Target],
    *,
    strategy: str = "fallback",
    options: RouteOptions = DEFAULT_OPTIONS,
    weights: list[int] | None = None,
) -> ResolvedRoute:
    repeated: list[Target] = []
    for i, t in enumerate(targets):
        repeated.extend([t] * (weights[i] if weights else 1))
    return ResolvedRoute(
        name="r",
        strategy=strategy,
        targets=tuple(repeated),
        max_attempts=len(targets),
        options=options,
    )
