from __future__ import annotations

from django.db import models
from django.utils import timezone


class AuditEntry(models.Model):
    """One change to one audited row: who made it, when, and each changed field's value before
    and after (secrets redacted). Written by audit.recorder for every save and delete of the
    models in settings.GATEWAY_AUDIT_MODELS, whatever wrote them (admin, DRF, a command, the
    catalog file loader, a service). Entries are never edited or deleted by the application.

    tenant_id is a plain column, not a foreign key: the audit room imports nothing of ours,
    and an entry outlives the tenant it is about. Catalog entries (providers, models, prices,
    routes) have no tenant and are visible to platform staff only."""

    class Action(models.TextChoices):
        CREATE = "create", "Create"
        UPDATE = "update", "Update"
        DELETE = "delete", "Delete"

    created_at = models.DateTimeField(default=timezone.now)
    tenant_id = models.BigIntegerField(null=True, blank=True)
    actor = models.CharField(max_length=200)
    action = models.CharField(max_length=8, choices=Action.choices)
    object_type = models.CharField(max_length=64, help_text="app_label.model")
    object_id = models.CharField(max_length=64)
    object_repr = models.CharField(max_length=200, blank=True)
    # "app_label.model:pk" of the row this one belongs to (a route's step, a model's price), so
    # the parent's history shows it.
    parent = models.CharField(max_length=100, blank=True)
    changes = models.JSONField(default=dict, blank=True, help_text="{field: [before, after]}")

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "audit entries"
        indexes = [
            models.Index(fields=["-created_at", "-id"], name="audit_created"),
            models.Index(fields=["tenant_id", "-created_at"], name="audit_tenant_created"),
            models.Index(fields=["object_type", "object_id", "-created_at"], name="audit_object"),
            models.Index(fields=["parent", "-created_at"], name="audit_parent"),
            models.Index(fields=["actor", "-created_at"], name="audit_actor"),
        ]

    def __str__(self) -> str:
        return f"{self.action} {self.object_type}:{self.object_id} by {self.actor}"
