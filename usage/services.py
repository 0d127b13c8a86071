"""Writes of usage events. The request path hands over a plain dict; this module turns it
into rows, idempotently on request id."""

from __future__ import annotations

import logging
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db import IntegrityError, transaction

from usage.models import UsageAttempt, UsageEvent

logger = logging.getLogger("gateway.usage")

_EVENT_FIELDS = (
    "tenant_id", "api_key_id", "route", "model", "model_id", "provider_id", "upstream_model",
    "endpoint", "stream", "tokens_in", "tokens_out", "cache_read_tokens", "cache_write_tokens",
    "usage_estimated", "latency_ms", "ttft_ms", "status_code", "outcome", "error_type",
    "fallbacks",
)
_DECIMAL_FIELDS = ("input_price_per_mtok", "output_price_per_mtok", "cost_usd")


def usage_event_build(payload: dict[str, Any]) -> UsageEvent:
    values = {name: payload[name] for name in _EVENT_FIELDS if payload.get(name) is not None}
    for name in _DECIMAL_FIELDS:
        if payload.get(name) is not None:
            values[name] = Decimal(str(payload[name]))
    created_at = payload["created_at"]
    if isinstance(created_at, str):
        created_at = datetime.fromisoformat(created_at)
    return UsageEvent(request_id=payload["request_id"], created_at=created_at, **values)


def usage_events_write(*, payloads: list[dict[str, Any]]) -> int:
    """Insert events and their attempts; events already stored (same request id) are skipped.
    Returns how many new events were written."""
    if not payloads:
        return 0
    by_request = {p["request_id"]: p for p in payloads}
    with transaction.atomic():
        existing = set(
            UsageEvent.objects.filter(request_id__in=list(by_request)).values_list(
                "request_id", flat=True
            )
        )
        fresh = [usage_event_build(p) for rid, p in by_request.items() if rid not in existing]
        if not fresh:
            return 0
        try:
            with transaction.atomic():
                created = UsageEvent.objects.bulk_create(fresh)
        except IntegrityError:
            # A concurrent writer stored some of them between our read and insert.
            created = UsageEvent.objects.bulk_create(fresh, ignore_conflicts=True)
            created = list(
                UsageEvent.objects.filter(request_id__in=[e.request_id for e in fresh])
            )
        ids = {e.request_id: e.pk for e in UsageEvent.objects.filter(
            request_id__in=[e.request_id for e in created]
        ).only("id", "request_id")}
        attempts = [
            UsageAttempt(
                event_id=ids[rid],
                position=i,
                model_id=a.get("model_id"),
                provider_id=a.get("provider_id"),
                status_code=a.get("status_code", 200),
                error_type=a.get("error_type", ""),
                latency_ms=a.get("latency_ms", 0.0),
            )
            for rid in ids
            for i, a in enumerate(by_request[rid].get("attempts") or ())
        ]
        UsageAttempt.objects.bulk_create(attempts, ignore_conflicts=True)
    logger.info("usage.events_written", extra={"count": len(fresh)})
    return len(fresh)


async def usage_event_record(*, payload: dict[str, Any]) -> None:
    """Hot-path entry: PLACEHOLDER writes synchronously in a thread; the usage pipeline work
    replaces this with a bounded queue and a background writer."""
    from asgiref.sync import sync_to_async

    await sync_to_async(usage_events_write, thread_sensitive=False)(payloads=[payload])
