"""Effective-dated model prices. A price change adds a ModelPrice row valid from a moment on;
old rows stay, so an event is always charged at the price effective at its request time (the
catalog snapshot carries each model's schedule: ModelEntry.price_at). The Model's own price
fields mirror the price effective now."""

from __future__ import annotations

import logging
from datetime import datetime
from decimal import Decimal

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from providers.catalog import catalog_changed
from providers.models import Model, ModelPrice

logger = logging.getLogger("gateway.providers")

PRICE_QUANTUM = Decimal("0.000001")


def _price(value: Decimal | str | int, name: str) -> Decimal:
    price = Decimal(str(value))
    if not price.is_finite() or price < 0:
        raise ValidationError({name: "must be a non-negative number"})
    if price != price.quantize(PRICE_QUANTUM):
        raise ValidationError({name: "at most 6 decimal places (USD per 1M tokens)"})
    return price.quantize(PRICE_QUANTUM)


def model_price_effective(*, model_id: int, when: datetime) -> ModelPrice | None:
    """The price row in force at `when`, or None when the model has no history before it."""
    return (
        ModelPrice.objects.filter(model_id=model_id, effective_from__lte=when)
        .order_by("-effective_from")
        .first()
    )


def model_price_set(
    *,
    model: Model,
    input_price_per_mtok: Decimal | str,
    output_price_per_mtok: Decimal | str,
    effective_from: datetime | None = None,
) -> ModelPrice:
    """Set the model's price from `effective_from` (default: now) on. The same start again
    replaces that row. When the new row is the one in force now, the Model's current price
    fields follow. Every process's catalog snapshot is invalidated after commit."""
    effective_from = effective_from or timezone.now()
    if timezone.is_naive(effective_from):
        raise ValidationError({"effective_from": "must be timezone-aware"})
    price_in = _price(input_price_per_mtok, "input_price_per_mtok")
    price_out = _price(output_price_per_mtok, "output_price_per_mtok")
    with transaction.atomic():
        locked = Model.objects.select_for_update().get(pk=model.pk)
        if (
            not ModelPrice.objects.filter(model=locked).exists()
            and effective_from > locked.created_at
        ):
            # The first change: record the price charged so far as the first history row, so
            # requests before `effective_from` keep being charged what they were charged.
            ModelPrice.objects.create(
                model=locked,
                effective_from=locked.created_at,
                input_price_per_mtok=locked.input_price_per_mtok,
                output_price_per_mtok=locked.output_price_per_mtok,
            )
        row, _ = ModelPrice.objects.update_or_create(
            model=locked,
            effective_from=effective_from,
            defaults={"input_price_per_mtok": price_in, "output_price_per_mtok": price_out},
        )
        model_price_current_sync(model=locked)
        catalog_changed()
    model.refresh_from_db(fields=["input_price_per_mtok", "output_price_per_mtok"])
    logger.info(
        "model.price_set",
        extra={
            "model_id": model.pk,
            "effective_from": effective_from.isoformat(),
            "input_price_per_mtok": format(price_in, "f"),
            "output_price_per_mtok": format(price_out, "f"),
        },
    )
    return row


def model_price_current_sync(*, model: Model) -> bool:
    """Make the Model's price fields the price in force now. Returns True if they changed."""
    current = model_price_effective(model_id=model.pk, when=timezone.now())
    if current is None:
        return False
    if (model.input_price_per_mtok, model.output_price_per_mtok) == (
        current.input_price_per_mtok,
        current.output_price_per_mtok,
    ):
        return False
    model.input_price_per_mtok = current.input_price_per_mtok
    model.output_price_per_mtok = current.output_price_per_mtok
    # save(), not QuerySet.update(): model signals (the audit log) see the change.
    model.save(update_fields=["input_price_per_mtok", "output_price_per_mtok", "updated_at"])
    return True


def model_prices_sync() -> int:
    """Bring every model's current price fields up to date (a scheduled change came into
    force). Run periodically; idempotent. Returns how many models changed."""
    changed = 0
    model_ids = ModelPrice.objects.values_list("model_id", flat=True).distinct()
    for model in Model.objects.filter(pk__in=model_ids):
        with transaction.atomic():
            if model_price_current_sync(model=model):
                changed += 1
    if changed:
        catalog_changed()
        logger.info("model.prices_synced", extra={"changed": changed})
    return changed
