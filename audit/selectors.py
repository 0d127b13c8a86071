"""Reads of the audit log. Tenant scoping comes from the function named by
settings.GATEWAY_AUDIT_TENANT_SCOPE (the tenants room's `tenant_ids_visible_to`): a dotted
path, so this room imports nothing of ours."""

from __future__ import annotations

from django.conf import settings
from django.db.models import Q, QuerySet
from django.utils.module_loading import import_string

from audit.models import AuditEntry


def audit_tenant_ids_visible_to(*, user) -> list[int] | None:
    """None: every entry (platform staff); a list: only entries of these tenants."""
    if user.is_superuser:
        return None
    return list(import_string(settings.GATEWAY_AUDIT_TENANT_SCOPE)(user=user) or [])


def audit_entries_visible(*, user) -> QuerySet[AuditEntry]:
    entries = AuditEntry.objects.all()
    ids = audit_tenant_ids_visible_to(user=user)
    # Entries without a tenant (the catalog) stay with platform staff.
    return entries if ids is None else entries.filter(tenant_id__in=ids)


def audit_entries_for_object(*, user, label: str, pk: object, limit: int = 200) -> list[AuditEntry]:
    """The object's own entries and those of rows that belong to it (a route's steps, a
    model's prices), newest first."""
    key = f"{label}:{pk}"
    return list(
        audit_entries_visible(user=user).filter(
            Q(object_type=label, object_id=str(pk)) | Q(parent=key)
        )[:limit]
    )
