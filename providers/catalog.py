"""The in-process catalog snapshot: providers and models as plain frozen objects, loaded in one
go and swapped atomically, so the request path never queries the database for them."""

from __future__ import annotations

import logging
from bisect import bisect_right
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.db import transaction
from django.utils import timezone

from providers.adapters.base import ProviderConfig
from providers.models import Model, ModelPrice, Provider
from providers.secrets import ProviderSecretError, provider_secret_resolve

logger = logging.getLogger("gateway.providers")


@dataclass(frozen=True, slots=True)
class ModelEntry:
    id: int
    name: str
    provider_id: int
    upstream_model: str
    input_price_per_mtok: Decimal
    output_price_per_mtok: Decimal
    context_window: int
    max_output_tokens: int
    supports_streaming: bool
    supports_tools: bool
    supports_vision: bool
    supports_embeddings: bool
    supports_json_mode: bool = True
    # Orchestration: quality per task (0-1) and the tasks it is a candidate for (empty: all).
    # (A tuple of (task, score) pairs, sorted, so entries stay hashable.)
    quality: tuple[tuple[str, float], ...] = ()
    tasks: tuple[str, ...] = ()
    # Prompt-cache prices (None: the input price).
    cache_read_price_per_mtok: Decimal | None = None
    cache_write_price_per_mtok: Decimal | None = None
    # Effective-dated prices, sorted by start: ((effective_from, input, output), ...).
    price_schedule: tuple[tuple[datetime, Decimal, Decimal], ...] = ()

    def quality_for(self, task: str | None) -> float | None:
        """The catalog's quality score of this model for `task` (None: not rated)."""
        for name, score in self.quality:
            if name == task:
                return score
        return None

    def serves_task(self, task: str | None) -> bool:
        """A candidate for `task`: it lists the task, or lists none (a generalist)."""
        return not self.tasks or task is None or task in self.tasks

    def price_at(self, when: datetime) -> tuple[Decimal, Decimal]:
        """(input, output) USD per 1M tokens in force at `when` (the request's time)."""
        if not self.price_schedule:
            return self.input_price_per_mtok, self.output_price_per_mtok
        index = bisect_right(self.price_schedule, when, key=lambda row: row[0])
        _, price_in, price_out = self.price_schedule[max(0, index - 1)]
        return price_in, price_out


@dataclass(frozen=True, slots=True)
class Catalog:
    providers: dict[int, ProviderConfig]
    models: dict[str, ModelEntry]
    models_by_id: dict[int, ModelEntry]


def provider_config_from(provider: Provider) -> ProviderConfig:
    secret, secret_error = "", ""
    try:
        secret = provider_secret_resolve(
            secret_env=provider.secret_env, secret_encrypted=provider.secret_encrypted
        )
    except ProviderSecretError as exc:
        # One bad credential takes only its provider out (typed errors on call), not the
        # whole catalog; operators see why here.
        secret_error = str(exc)
        logger.error(
            "provider.secret_unavailable",
            extra={"provider_id": provider.id, "provider": provider.name, "error": secret_error},
        )
    return ProviderConfig(
        id=provider.id,
        name=provider.name,
        kind=provider.kind,
        base_url=provider.base_url,
        secret=secret,
        secret_error=secret_error,
        options=dict(provider.options or {}),
        connect_timeout_s=provider.connect_timeout_s,
        first_byte_timeout_s=provider.first_byte_timeout_s,
        stream_idle_timeout_s=provider.stream_idle_timeout_s,
        total_timeout_s=provider.total_timeout_s,
        max_retries=provider.max_retries,
    )


def model_entry_from(model: Model, prices: Iterable[ModelPrice] = ()) -> ModelEntry:
    schedule = tuple(
        sorted((p.effective_from, p.input_price_per_mtok, p.output_price_per_mtok) for p in prices)
    )
    price_in, price_out = model.input_price_per_mtok, model.output_price_per_mtok
    if schedule:
        # The price in force at load time (a scheduled change may not be mirrored yet).
        index = bisect_right(schedule, timezone.now(), key=lambda row: row[0])
        _, price_in, price_out = schedule[max(0, index - 1)]
    return ModelEntry(
        id=model.id,
        name=model.name,
        provider_id=model.provider_id,
        upstream_model=model.upstream_model,
        input_price_per_mtok=price_in,
        output_price_per_mtok=price_out,
        context_window=model.context_window,
        max_output_tokens=model.max_output_tokens,
        supports_streaming=model.supports_streaming,
        supports_tools=model.supports_tools,
        supports_vision=model.supports_vision,
        supports_embeddings=model.supports_embeddings,
        supports_json_mode=model.supports_json_mode,
        quality=tuple(sorted((str(k), float(v)) for k, v in (model.quality or {}).items())),
        tasks=tuple(model.tasks or ()),
        cache_read_price_per_mtok=model.cache_read_price_per_mtok,
        cache_write_price_per_mtok=model.cache_write_price_per_mtok,
        price_schedule=schedule,
    )


def _build(
    providers: list[Provider], models: list[Model], prices: Iterable[ModelPrice] = ()
) -> Catalog:
    provider_configs = {p.id: provider_config_from(p) for p in providers}
    by_model: dict[int, list[ModelPrice]] = {}
    for price in prices:
        by_model.setdefault(price.model_id, []).append(price)
    entries = [
        model_entry_from(m, by_model.get(m.id, ()))
        for m in models
        if m.provider_id in provider_configs
    ]
    return Catalog(
        providers=provider_configs,
        models={e.name: e for e in entries},
        models_by_id={e.id: e for e in entries},
    )


def catalog_load() -> Catalog:
    providers = list(Provider.objects.filter(is_active=True))
    models = list(Model.objects.filter(is_active=True))
    prices = list(ModelPrice.objects.filter(model__is_active=True))
    return _build(providers, models, prices)


async def catalog_aload() -> Catalog:
    providers = [p async for p in Provider.objects.filter(is_active=True)]
    models = [m async for m in Model.objects.filter(is_active=True)]
    prices = [p async for p in ModelPrice.objects.filter(model__is_active=True)]
    return _build(providers, models, prices)


# Listeners told (after commit) that the catalog changed; gateway wiring registers the one that
# bumps the shared config version so every process drops its snapshot.
_change_listeners: list[Callable[[], None]] = []


def catalog_change_listener_add(listener: Callable[[], None]) -> None:
    if listener not in _change_listeners:
        _change_listeners.append(listener)


def catalog_changed() -> None:
    def _notify() -> None:
        for listener in list(_change_listeners):
            listener()

    transaction.on_commit(_notify)
