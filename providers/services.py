"""Writes to the provider catalog: providers (with their sealed secrets) and models. Every
change is validated, saved in one transaction, logged without secrets, and ends with
catalog_changed() so every process drops its snapshot after commit. Admin, commands and
loaders call these; nothing else writes Provider or Model rows."""

from __future__ import annotations

import logging
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

from django.core.exceptions import ValidationError
from django.db import transaction

from providers.catalog import catalog_changed
from providers.models import Model, Provider, ProviderKind
from providers.prices import model_price_set
from providers.secrets import (
    EncryptionKeyError,
    secret_env_validate,
    secret_reseal,
    secret_seal,
)

logger = logging.getLogger("gateway.providers")

# In the order the admin form shows them.
PROVIDER_FIELD_ORDER = (
    "name",
    "kind",
    "base_url",
    "secret_env",
    "options",
    "connect_timeout_s",
    "first_byte_timeout_s",
    "stream_idle_timeout_s",
    "total_timeout_s",
    "max_retries",
    "is_active",
)
PROVIDER_FIELDS = frozenset(PROVIDER_FIELD_ORDER)
MODEL_FIELDS = frozenset(
    {
        "name",
        "provider",
        "upstream_model",
        "input_price_per_mtok",
        "output_price_per_mtok",
        "cache_read_price_per_mtok",
        "cache_write_price_per_mtok",
        "context_window",
        "max_output_tokens",
        "supports_streaming",
        "supports_tools",
        "supports_vision",
        "supports_embeddings",
        "supports_json_mode",
        "quality",
        "tasks",
        "is_active",
    }
)
_PRICE_FIELDS = ("input_price_per_mtok", "output_price_per_mtok")
_CACHE_PRICE_FIELDS = ("cache_read_price_per_mtok", "cache_write_price_per_mtok")
_TIMEOUT_FIELDS = (
    "connect_timeout_s",
    "first_byte_timeout_s",
    "stream_idle_timeout_s",
    "total_timeout_s",
)
# Kinds that have no public default endpoint.
_BASE_URL_REQUIRED = frozenset({ProviderKind.OPENAI_COMPATIBLE, ProviderKind.AZURE_OPENAI})


def _provider_validate(provider: Provider) -> None:
    errors: dict[str, str] = {}
    if provider.kind in _BASE_URL_REQUIRED and not provider.base_url:
        errors["base_url"] = f"required for {ProviderKind(provider.kind).label} providers"
    elif provider.base_url:
        # Not Django's URLValidator: it rejects hosts without a dot ("http://vllm:8000/v1"),
        # which is how self-hosted servers are usually reached.
        parsed = urlsplit(provider.base_url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            errors["base_url"] = "must be an http(s) URL"
    if not isinstance(provider.options, dict):
        errors["options"] = "must be a JSON object"
    else:
        headers = provider.options.get("headers")
        if headers is not None and not (
            isinstance(headers, dict) and all(isinstance(v, str) for v in headers.values())
        ):
            errors["options"] = "options.headers must be an object of strings"
    for name in _TIMEOUT_FIELDS:
        if getattr(provider, name) is None or getattr(provider, name) <= 0:
            errors[name] = "must be a positive number of seconds"
    try:
        secret_env_validate(provider.secret_env)
    except ValidationError as exc:
        errors.update({k: " ".join(v) for k, v in exc.message_dict.items()})
    if errors:
        raise ValidationError(errors)
    provider.full_clean(exclude=["secret_encrypted", "base_url"])


def _unknown(fields: dict[str, Any], allowed: frozenset[str]) -> None:
    unknown = set(fields) - allowed
    if unknown:
        raise ValidationError({name: "not an editable field" for name in sorted(unknown)})


def provider_create(
    *,
    name: str,
    kind: str,
    base_url: str = "",
    secret: str = "",
    secret_env: str = "",
    options: dict[str, Any] | None = None,
    connect_timeout_s: float = 5.0,
    first_byte_timeout_s: float = 60.0,
    stream_idle_timeout_s: float = 60.0,
    total_timeout_s: float = 600.0,
    max_retries: int = 1,
    is_active: bool = True,
) -> Provider:
    """Create a provider. A plain `secret` is sealed at once and never stored in clear."""
    provider = Provider(
        name=name,
        kind=kind,
        base_url=base_url,
        secret_env=secret_env,
        secret_encrypted=secret_seal(secret) if secret else "",
        options=dict(options or {}),
        connect_timeout_s=connect_timeout_s,
        first_byte_timeout_s=first_byte_timeout_s,
        stream_idle_timeout_s=stream_idle_timeout_s,
        total_timeout_s=total_timeout_s,
        max_retries=max_retries,
        is_active=is_active,
    )
    _provider_validate(provider)
    with transaction.atomic():
        provider.save()
        catalog_changed()
    logger.info(
        "provider.created",
        extra={
            "provider_id": provider.pk,
            "provider": provider.name,
            "kind": provider.kind,
            "secret_set": bool(secret),
        },
    )
    return provider


def provider_update(
    *,
    provider: Provider,
    fields: dict[str, Any] | None = None,
    secret: str | None = None,
    clear_secret: bool = False,
) -> Provider:
    """Change a provider's editable fields; `secret` (when not None or empty) replaces the
    sealed secret, `clear_secret` removes it. Fields not given stay as they are."""
    fields = dict(fields or {})
    _unknown(fields, PROVIDER_FIELDS)
    changed = sorted(name for name, value in fields.items() if getattr(provider, name) != value)
    for name, value in fields.items():
        setattr(provider, name, value)
    if secret:
        provider.secret_encrypted = secret_seal(secret)
        changed.append("secret")
    elif clear_secret and provider.secret_encrypted:
        provider.secret_encrypted = ""
        changed.append("secret")
    _provider_validate(provider)
    with transaction.atomic():
        provider.save()
        catalog_changed()
    logger.info(
        "provider.updated",
        extra={"provider_id": provider.pk, "provider": provider.name, "changed": changed},
    )
    return provider


def provider_secrets_reseal(*, legacy_secret_key: bool = False) -> tuple[int, list[str]]:
    """Re-seal every stored provider secret with the first key of GATEWAY_ENCRYPTION_KEYS
    (after prepending a new key; then the old one can be dropped). Returns how many were
    re-sealed and the names of providers whose secret no configured key opens (left as they
    are). `legacy_secret_key` also tries the key earlier versions derived from SECRET_KEY."""
    resealed, failed = 0, []
    with transaction.atomic():
        for provider in Provider.objects.select_for_update().exclude(secret_encrypted=""):
            try:
                sealed = secret_reseal(
                    provider.secret_encrypted, legacy_secret_key=legacy_secret_key
                )
            except EncryptionKeyError:
                failed.append(provider.name)
                continue
            provider.secret_encrypted = sealed
            provider.save(update_fields=["secret_encrypted"])
            resealed += 1
        catalog_changed()
    logger.info("provider.secrets_resealed", extra={"resealed": resealed, "failed": failed})
    return resealed, failed


def provider_deactivate(*, provider: Provider) -> Provider:
    """Take a provider (and so every model on it) out of the catalog without deleting the
    rows usage history points to."""
    return provider_update(provider=provider, fields={"is_active": False})


def _model_validate(model: Model) -> None:
    errors: dict[str, str] = {}
    for name in _PRICE_FIELDS:
        value = getattr(model, name)
        if value is None or Decimal(value) < 0:
            errors[name] = "must be a non-negative price (USD per 1M tokens)"
    for name in _CACHE_PRICE_FIELDS:
        value = getattr(model, name)
        if value is not None and Decimal(value) < 0:
            errors[name] = "must be a non-negative price (USD per 1M tokens), or empty"
    if (
        model.max_output_tokens
        and model.context_window
        and (model.max_output_tokens > model.context_window)
    ):
        errors["max_output_tokens"] = "cannot exceed the context window"
    quality = model.quality
    if not isinstance(quality, dict) or not all(
        isinstance(task, str)
        and isinstance(score, int | float)
        and not isinstance(score, bool)
        and 0 <= score <= 1
        for task, score in quality.items()
    ):
        errors["quality"] = "must map task names to scores between 0 and 1"
    if not isinstance(model.tasks, list) or not all(isinstance(t, str) for t in model.tasks):
        errors["tasks"] = "must be a list of task names"
    if errors:
        raise ValidationError(errors)
    model.full_clean()


def _optional_price(value: Decimal | str | None) -> Decimal | None:
    return None if value is None or value == "" else Decimal(str(value))


def model_create(
    *,
    name: str,
    provider: Provider,
    upstream_model: str,
    input_price_per_mtok: Decimal | str = Decimal("0"),
    output_price_per_mtok: Decimal | str = Decimal("0"),
    cache_read_price_per_mtok: Decimal | str | None = None,
    cache_write_price_per_mtok: Decimal | str | None = None,
    context_window: int = 8192,
    max_output_tokens: int = 4096,
    supports_streaming: bool = True,
    supports_tools: bool = True,
    supports_vision: bool = False,
    supports_embeddings: bool = False,
    supports_json_mode: bool = True,
    quality: dict[str, float] | None = None,
    tasks: list[str] | None = None,
    is_active: bool = True,
) -> Model:
    """Add a catalog entry; its price is the price from its creation on."""
    model = Model(
        name=name,
        provider=provider,
        upstream_model=upstream_model,
        input_price_per_mtok=Decimal(str(input_price_per_mtok)),
        output_price_per_mtok=Decimal(str(output_price_per_mtok)),
        cache_read_price_per_mtok=_optional_price(cache_read_price_per_mtok),
        cache_write_price_per_mtok=_optional_price(cache_write_price_per_mtok),
        context_window=context_window,
        max_output_tokens=max_output_tokens,
        supports_streaming=supports_streaming,
        supports_tools=supports_tools,
        supports_vision=supports_vision,
        supports_embeddings=supports_embeddings,
        supports_json_mode=supports_json_mode,
        quality=dict(quality or {}),
        tasks=list(tasks or []),
        is_active=is_active,
    )
    _model_validate(model)
    with transaction.atomic():
        model.save()
        catalog_changed()
    logger.info(
        "model.created",
        extra={"model_id": model.pk, "model": model.name, "provider_id": provider.pk},
    )
    return model


def model_update(*, model: Model, fields: dict[str, Any]) -> Model:
    """Change a catalog entry. A price change goes through the price history (effective
    now), so past requests keep the price they were charged."""
    fields = dict(fields)
    _unknown(fields, MODEL_FIELDS)
    prices = {name: fields.pop(name) for name in _PRICE_FIELDS if name in fields}
    new_prices = {name: Decimal(str(value)) for name, value in prices.items()}
    price_changed = any(getattr(model, name) != value for name, value in new_prices.items())
    for name in _CACHE_PRICE_FIELDS:
        if name in fields:
            fields[name] = _optional_price(fields[name])
    changed = sorted(name for name, value in fields.items() if getattr(model, name) != value)
    for name, value in fields.items():
        setattr(model, name, value)
    # Validate with the new prices in place, but let the price service write them.
    current = {name: getattr(model, name) for name in _PRICE_FIELDS}
    for name, value in new_prices.items():
        setattr(model, name, value)
    _model_validate(model)
    for name, value in current.items():
        setattr(model, name, value)
    with transaction.atomic():
        model.save()
        if price_changed:
            model_price_set(
                model=model,
                input_price_per_mtok=new_prices.get(
                    "input_price_per_mtok", model.input_price_per_mtok
                ),
                output_price_per_mtok=new_prices.get(
                    "output_price_per_mtok", model.output_price_per_mtok
                ),
            )
            changed.extend(name for name in _PRICE_FIELDS if name in new_prices)
        catalog_changed()
    logger.info(
        "model.updated",
        extra={"model_id": model.pk, "model": model.name, "changed": sorted(set(changed))},
    )
    return model


def model_upsert(
    *, name: str, provider: Provider, upstream_model: str, **attributes: Any
) -> tuple[Model, bool]:
    """Create the model called `name`, or update it to match: (model, created). Meant for
    scripts and declarative loaders, which know entries by name."""
    _unknown(attributes, MODEL_FIELDS)
    existing = Model.objects.filter(name=name).first()
    if existing is None:
        return (
            model_create(name=name, provider=provider, upstream_model=upstream_model, **attributes),
            True,
        )
    fields = {"provider": provider, "upstream_model": upstream_model, **attributes}
    return model_update(model=existing, fields=fields), False
