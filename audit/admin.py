"""The audit log in the admin: read-only, tenant-scoped (a tenant admin sees their tenants'
entries; catalog entries are for platform staff). Each audited object's "History" page lists
its entries too (audit/templates/admin/object_history.html)."""

from __future__ import annotations

import json

from django.contrib import admin
from django.http import HttpRequest
from django.utils.html import format_html

from audit.models import AuditEntry
from audit.selectors import audit_entries_visible, audit_tenant_ids_visible_to


def _may_read(request: HttpRequest) -> bool:
    user = request.user
    if not (user.is_active and user.is_staff):
        return False
    return user.is_superuser or bool(audit_tenant_ids_visible_to(user=user))


class ObjectTypeFilter(admin.SimpleListFilter):
    title = "object type"
    parameter_name = "object_type"

    def lookups(self, request, model_admin):
        from django.conf import settings

        labels = sorted(label.lower() for label in settings.GATEWAY_AUDIT_MODELS)
        return [(label, label) for label in labels]

    def queryset(self, request, queryset):
        return queryset.filter(object_type=self.value()) if self.value() else queryset


@admin.register(AuditEntry)
class AuditEntryAdmin(admin.ModelAdmin):
    list_display = ("created_at", "actor", "action", "object_type", "object_id", "object_repr")
    list_filter = ("action", ObjectTypeFilter)
    # Prefix searches, each served by an index (audit_actor; audit_object for object ids).
    search_fields = ("=object_id", "actor__startswith")
    list_per_page = 100
    show_full_result_count = False
    ordering = ("-created_at", "-id")
    fields = (
        "created_at",
        "actor",
        "action",
        "object_type",
        "object_id",
        "object_repr",
        "parent",
        "tenant_id",
        "changes_table",
    )
    readonly_fields = fields

    def get_queryset(self, request: HttpRequest):
        return audit_entries_visible(user=request.user)

    def get_paginator(self, request, queryset, per_page, orphans=0, allow_empty_first_page=True):
        from django.conf import settings
        from django.utils.module_loading import import_string

        paginator = import_string(settings.GATEWAY_ADMIN_PAGINATOR)
        return paginator(queryset, per_page, orphans, allow_empty_first_page)

    @admin.display(description="changes")
    def changes_table(self, obj: AuditEntry) -> str:
        rows = [
            format_html(
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                name,
                json.dumps(before, ensure_ascii=False),
                json.dumps(after, ensure_ascii=False),
            )
            for name, (before, after) in sorted(obj.changes.items())
        ]
        return format_html(
            "<table><tr><th>field</th><th>before</th><th>after</th></tr>{}</table>",
            format_html("".join(["{}"] * len(rows)), *rows) if rows else "",
        )

    def has_module_permission(self, request: HttpRequest) -> bool:
        return _may_read(request)

    def has_view_permission(self, request: HttpRequest, obj=None) -> bool:
        if not _may_read(request):
            return False
        if obj is None or request.user.is_superuser:
            return True
        return obj.tenant_id in (audit_tenant_ids_visible_to(user=request.user) or [])

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False
