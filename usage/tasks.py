"""Celery tasks of the usage room: thin, idempotent, each calls one service."""

from __future__ import annotations

from asgiref.sync import async_to_sync
from celery import shared_task

from audit.context import audit_actor
from providers.prices import model_prices_sync as model_prices_sync_service
from usage.rollups import usage_retention as usage_retention_service
from usage.rollups import usage_rollup as usage_rollup_service
from usage.stream import usage_stream_drain as usage_stream_drain_service


@shared_task(name="usage.tasks.usage_stream_drain", ignore_result=True)
def usage_stream_drain() -> dict[str, int]:
    """Drain the usage stream into PostgreSQL until it is empty (or the time budget ends)."""
    return usage_stream_drain_service().as_dict()


@shared_task(name="usage.tasks.usage_rollup", ignore_result=True)
def usage_rollup() -> dict[str, int]:
    result = usage_rollup_service()
    return {"hours": result.hours, "days": result.days, "rows": result.rows}


@shared_task(name="usage.tasks.usage_retention", ignore_result=True)
def usage_retention() -> int:
    return usage_retention_service().deleted


@shared_task(name="usage.tasks.model_prices_sync", ignore_result=True)
def model_prices_sync() -> int:
    # The audit log attributes the price changes that came into force to this task.
    with audit_actor("task:model_prices_sync"):
        return model_prices_sync_service()


@shared_task(name="usage.tasks.usage_orphaned_holds_settle", ignore_result=True)
def usage_orphaned_holds_settle() -> dict[str, int]:
    """End holds whose calls can no longer settle them (killed process, lost settlement)."""
    from usage.holds import holds_expired_settle

    return async_to_sync(holds_expired_settle)().as_dict()
