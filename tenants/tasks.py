"""Celery tasks of the tenants room: interfaces that call a service, with ids and primitives."""

from __future__ import annotations

from celery import shared_task

from tenants.services import (
    BudgetAlertDeliveryError,
    api_key_reminders_send,
    budget_alerts_record,
)


@shared_task(
    autoretry_for=(BudgetAlertDeliveryError,),
    retry_backoff=30,
    retry_backoff_max=900,
    max_retries=6,
    acks_late=True,
)
def budget_alerts_dispatch(
    *,
    tenant_id: int,
    scope: str,
    scope_id: int,
    period_key: str,
    thresholds: list[int],
    budget_usd: str,
    spend_usd: str,
) -> int:
    """Record and notify budget thresholds crossed by a settlement. Idempotent per
    (scope, threshold, period); retries only the notifications that failed."""
    alerts = budget_alerts_record(
        tenant_id=tenant_id,
        scope=scope,
        scope_id=scope_id,
        period_key=period_key,
        thresholds=thresholds,
        budget_usd=budget_usd,
        spend_usd=spend_usd,
    )
    return len(alerts)


@shared_task(acks_late=True)
def api_key_reminders_dispatch() -> int:
    """Beat: remind tenants of keys about to expire and of rotation grace periods about to end
    (once per date; see tenants.services.api_key_reminders_send)."""
    return api_key_reminders_send()
