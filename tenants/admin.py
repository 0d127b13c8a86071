"""Tenant-scoped administration. Platform staff (superusers) see everything; a tenant admin
(staff user with a TenantMembership) sees and manages only their tenants' keys, limits, alerts
and audit trail: every queryset, every FK choice and every object permission is filtered, so
another tenant's object is not found even by URL. Writes go through tenants.services."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import NoReverseMatch, reverse
from django.utils.html import format_html

from tenants import services
from tenants.models import (
    ApiKey,
    AuditEvent,
    BudgetAlert,
    OperatorToken,
    Tenant,
    TenantMembership,
)
from tenants.paging import EstimatedCountPaginator
from tenants.selectors import tenant_ids_visible_to, tenants_visible_to
from tenants.webhooks import webhook_url_validate


def _actor(request: HttpRequest) -> str:
    return f"admin:{request.user.get_username()}"


def _is_member(request: HttpRequest) -> bool:
    user = request.user
    return bool(
        user.is_active and user.is_staff and (user.is_superuser or tenant_ids_visible_to(user=user))
    )


class TenantScopedAdmin(admin.ModelAdmin):
    """Filters by tenant for non-superusers; `tenant_path` is the lookup to the tenant id."""

    tenant_path = "tenant_id"
    member_can_add = False
    member_can_change = False
    # At a million rows: no COUNT(*) of the table (an estimate, or a count capped at
    # EstimatedCountPaginator.count_cap), and no second COUNT for "N total".
    paginator = EstimatedCountPaginator
    show_full_result_count = False

    def _visible(self, request: HttpRequest) -> list[int] | None:
        cached = getattr(request, "_tenant_ids_visible", "unset")
        if cached == "unset":
            cached = tenant_ids_visible_to(user=request.user)
            request._tenant_ids_visible = cached
        return cached

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        queryset = super().get_queryset(request)
        ids = self._visible(request)
        return queryset if ids is None else queryset.filter(**{f"{self.tenant_path}__in": ids})

    def _owns(self, request: HttpRequest, obj) -> bool:
        ids = self._visible(request)
        if ids is None:
            return True
        tenant_id = obj.pk if isinstance(obj, Tenant) else getattr(obj, "tenant_id", None)
        return tenant_id in ids

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "tenant":
            kwargs["queryset"] = tenants_visible_to(user=request.user)
        elif db_field.name == "api_key":
            ids = self._visible(request)
            keys = ApiKey.objects.all()
            kwargs["queryset"] = keys if ids is None else keys.filter(tenant_id__in=ids)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    # Tenant admins need no Django model permissions: membership is the permission.
    def has_module_permission(self, request: HttpRequest) -> bool:
        return request.user.is_superuser or _is_member(request)

    def has_view_permission(self, request: HttpRequest, obj=None) -> bool:
        if request.user.is_superuser:
            return True
        return _is_member(request) and (obj is None or self._owns(request, obj))

    def has_add_permission(self, request: HttpRequest) -> bool:
        if request.user.is_superuser:
            return True
        return self.member_can_add and _is_member(request)

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        if request.user.is_superuser:
            return True
        return (
            self.member_can_change
            and _is_member(request)
            and (obj is None or self._owns(request, obj))
        )

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        # Keys are revoked, not deleted (usage and audit keep pointing at them).
        return request.user.is_superuser


class VisibleTenantFilter(admin.SimpleListFilter):
    """A tenant filter that lists only the tenants the operator may see."""

    title = "tenant"
    parameter_name = "tenant"

    # The sidebar lists at most this many tenants (a platform has thousands); any tenant's
    # rows are one click away from its row in the tenant list ("keys" column) or ?tenant=<id>.
    max_choices = 50

    def lookups(self, request, model_admin):
        tenants = tenants_visible_to(user=request.user).only("id", "slug").order_by("slug")
        choices = [(str(t.pk), t.slug) for t in tenants[: self.max_choices]]
        value = self.value()
        if value and value.isdigit() and value not in {pk for pk, _ in choices}:
            chosen = tenants.filter(pk=int(value)).first()
            if chosen is not None:
                choices.append((str(chosen.pk), chosen.slug))
        return choices

    def queryset(self, request, queryset):
        value = self.value()
        return queryset.filter(tenant_id=value) if value and value.isdigit() else queryset


class RevokedFilter(admin.SimpleListFilter):
    title = "status"
    parameter_name = "status"

    def lookups(self, request, model_admin):
        return [("active", "Active"), ("revoked", "Revoked")]

    def queryset(self, request, queryset):
        if self.value() == "active":
            return queryset.filter(revoked_at__isnull=True)
        if self.value() == "revoked":
            return queryset.filter(revoked_at__isnull=False)
        return queryset


LIMIT_FIELDSET = (
    "Limits and budget (empty = unlimited)",
    {"fields": ("budget_usd", "budget_period", "rpm_limit", "tpm_limit", "max_concurrency")},
)


class TenantAdminForm(forms.ModelForm):
    alert_webhook_url = forms.URLField(
        required=False,
        max_length=500,
        assume_scheme="https",
        help_text="https only; private, loopback and link-local addresses are refused.",
    )

    class Meta:
        model = Tenant
        fields = (
            "slug",
            "name",
            "is_active",
            "timezone",
            "budget_usd",
            "budget_period",
            "rpm_limit",
            "tpm_limit",
            "max_concurrency",
            "alert_thresholds",
            "alert_webhook_url",
            "alert_email",
        )

    def clean_alert_webhook_url(self) -> str:
        url = self.cleaned_data.get("alert_webhook_url") or ""
        webhook_url_validate(url)
        return url


@admin.register(Tenant)
class TenantAdmin(TenantScopedAdmin):
    tenant_path = "id"
    form = TenantAdminForm
    # A tenant's limits and budget are the platform's cap: tenant admins read them and
    # manage their alert settings and keys; platform staff change the caps.
    member_can_change = True
    list_display = (
        "slug",
        "name",
        "is_active",
        "budget_usd",
        "budget_period",
        "rpm_limit",
        "tpm_limit",
        "max_concurrency",
        "timezone",
        "keys_link",
    )
    list_filter = ("is_active", "budget_period")
    # Prefix searches, served by the tenant_slug_like / tenant_name_like indexes.
    search_fields = ("slug__startswith", "name__startswith")
    list_per_page = 50
    fieldsets = (
        (None, {"fields": ("slug", "name", "is_active", "timezone")}),
        LIMIT_FIELDSET,
        ("Budget alerts", {"fields": ("alert_thresholds", "alert_webhook_url", "alert_email")}),
    )

    @admin.display(description="links")
    def keys_link(self, obj: Tenant) -> str:
        keys = reverse("admin:tenants_apikey_changelist")
        try:
            # The usage app registers the dashboard; tenants names its URL, imports nothing.
            dashboard = reverse("admin:usage_dashboard")
        except NoReverseMatch:
            return format_html('<a href="{}?tenant={}">keys</a>', keys, obj.pk)
        return format_html(
            '<a href="{}?tenant={}">keys</a> · <a href="{}?tenant={}">cost</a>',
            keys,
            obj.pk,
            dashboard,
            obj.pk,
        )

    def get_readonly_fields(self, request, obj=None):
        if request.user.is_superuser:
            return ("slug",) if obj else ()
        return (
            "slug",
            "name",
            "is_active",
            "timezone",
            "budget_usd",
            "budget_period",
            "rpm_limit",
            "tpm_limit",
            "max_concurrency",
        )

    # Deletes go through the service: keys stop working everywhere at once.
    def delete_model(self, request, obj: Tenant) -> None:
        services.tenant_delete(tenant=obj, actor=_actor(request))

    def delete_queryset(self, request, queryset) -> None:
        for tenant in queryset:
            services.tenant_delete(tenant=tenant, actor=_actor(request))

    def save_model(self, request, obj: Tenant, form, change: bool) -> None:
        data = form.cleaned_data
        try:
            if not change:
                created = services.tenant_create(
                    slug=data["slug"],
                    name=data.get("name", ""),
                    actor=_actor(request),
                    timezone_name=data.get("timezone") or "UTC",
                    budget_usd=data.get("budget_usd"),
                    budget_period=data.get("budget_period") or "monthly",
                    rpm_limit=data.get("rpm_limit"),
                    tpm_limit=data.get("tpm_limit"),
                    max_concurrency=data.get("max_concurrency"),
                    alert_thresholds=data.get("alert_thresholds"),
                    alert_webhook_url=data.get("alert_webhook_url", ""),
                    alert_email=data.get("alert_email", ""),
                )
                obj.pk = obj.id = created.pk
                return
            mapping = {"timezone": "timezone_name"}
            changes = {mapping.get(f, f): data[f] for f in form.changed_data if f in data}
            services.tenant_update_limits(tenant=obj, actor=_actor(request), **changes)
        except ValidationError as exc:
            self.message_user(request, "; ".join(exc.messages), level=messages.ERROR)


@admin.register(ApiKey)
class ApiKeyAdmin(TenantScopedAdmin):
    member_can_add = True
    member_can_change = True
    list_display = (
        "prefix",
        "tenant",
        "name",
        "rpm_limit",
        "tpm_limit",
        "max_concurrency",
        "budget_usd",
        "budget_period",
        "expires_at",
        "is_revoked",
        "created_at",
    )
    list_filter = (VisibleTenantFilter, RevokedFilter, "budget_period")
    # Prefix searches on the key's own columns (apikey_prefix_like, apikey_name_like); a
    # tenant's keys are the tenant filter (a search across the join scans every key).
    search_fields = ("prefix__startswith", "name__startswith")
    list_select_related = ("tenant",)
    list_per_page = 50
    autocomplete_fields = ("tenant",)

    def get_autocomplete_fields(self, request: HttpRequest):
        # Platform staff pick among every tenant (10,000 do not fit in a <select>); a tenant
        # member picks among their own few, preselected when there is one.
        return self.autocomplete_fields if request.user.is_superuser else ()

    ordering = ("-created_at",)
    actions = ("revoke_selected", "rotate_selected", "rotate_now_selected")
    readonly_fields = (
        "public_id",
        "prefix",
        "rotated_at",
        "previous_valid_until",
        "revoked_at",
        "created_at",
        "updated_at",
    )
    fieldsets = (
        (
            None,
            {"fields": ("tenant", "name", "public_id", "prefix", "allowed_models", "expires_at")},
        ),
        LIMIT_FIELDSET,
        (
            "State",
            {
                "fields": (
                    "rotated_at",
                    "previous_valid_until",
                    "revoked_at",
                    "created_at",
                    "updated_at",
                )
            },
        ),
    )

    @admin.display(boolean=True, description="revoked")
    def is_revoked(self, obj: ApiKey) -> bool:
        return obj.revoked_at is not None

    def get_readonly_fields(self, request, obj=None):
        # The tenant of an issued key never changes.
        return (*self.readonly_fields, "tenant") if obj else self.readonly_fields

    # Deletes go through the service: the key stops working everywhere at once.
    def delete_model(self, request, obj: ApiKey) -> None:
        services.api_key_delete(key=obj, actor=_actor(request))

    def delete_queryset(self, request, queryset) -> None:
        for key in queryset.select_related("tenant"):
            services.api_key_delete(key=key, actor=_actor(request))

    def save_model(self, request, obj: ApiKey, form, change: bool) -> None:
        data = form.cleaned_data
        limits = {
            name: data.get(name)
            for name in ("budget_usd", "rpm_limit", "tpm_limit", "max_concurrency")
        }
        try:
            if not change:
                key, raw = services.api_key_create(
                    tenant=data["tenant"],
                    actor=_actor(request),
                    name=data.get("name", ""),
                    budget_period=data.get("budget_period") or "monthly",
                    allowed_models=data.get("allowed_models") or (),
                    expires_at=data.get("expires_at"),
                    **limits,
                )
                obj.pk = obj.id = key.pk
                obj.prefix, obj.key_hash = key.prefix, key.key_hash
                self.message_user(
                    request,
                    f"New API key (shown once, store it now): {raw}",
                    level=messages.WARNING,
                )
                return
            changes = {f: data[f] for f in form.changed_data if f in data}
            services.api_key_update_limits(key=obj, actor=_actor(request), **changes)
        except ValidationError as exc:
            self.message_user(request, "; ".join(exc.messages), level=messages.ERROR)

    @admin.action(description="Revoke selected keys")
    def revoke_selected(self, request, queryset):
        count = 0
        for key in queryset:
            services.api_key_revoke(key=key, actor=_actor(request))
            count += 1
        self.message_user(request, f"Revoked {count} key(s).", level=messages.SUCCESS)

    @admin.action(
        description="Rotate selected keys (new secrets shown once; old ones work for the grace period)"
    )
    def rotate_selected(self, request, queryset, grace_seconds: int | None = None):
        for key in queryset.filter(revoked_at__isnull=True):
            old_prefix = key.prefix
            rotated, raw = services.api_key_rotate(
                key=key, actor=_actor(request), grace_seconds=grace_seconds
            )
            self.message_user(
                request,
                f"{old_prefix}… ({rotated.public_id}) rotated; new key (shown once): {raw} — "
                f"the old one works until {rotated.previous_valid_until:%Y-%m-%d %H:%M %Z}",
                level=messages.WARNING,
            )

    @admin.action(description="Rotate selected keys now (old secrets stop at once: a leak)")
    def rotate_now_selected(self, request, queryset):
        self.rotate_selected(request, queryset, grace_seconds=0)


@admin.register(TenantMembership)
class TenantMembershipAdmin(TenantScopedAdmin):
    list_display = ("user", "tenant", "role", "created_at")
    list_filter = (VisibleTenantFilter,)
    list_select_related = ("user", "tenant")
    search_fields = ("user__username__startswith", "tenant__slug__startswith")
    autocomplete_fields = ("user", "tenant")


class ReadOnlyScopedAdmin(TenantScopedAdmin):
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyScopedAdmin):
    list_display = ("created_at", "tenant", "actor", "action", "target")
    list_filter = (VisibleTenantFilter, "action")
    search_fields = ("target__startswith", "actor__startswith")
    list_select_related = ("tenant",)
    list_per_page = 100


@admin.register(BudgetAlert)
class BudgetAlertAdmin(ReadOnlyScopedAdmin):
    list_display = (
        "created_at",
        "tenant",
        "scope",
        "api_key",
        "period_key",
        "threshold",
        "spend_usd",
        "budget_usd",
        "webhook_sent_at",
        "email_sent_at",
        "last_error",
    )
    list_filter = (VisibleTenantFilter, "scope", "threshold")
    list_select_related = ("tenant", "api_key")
    list_per_page = 100
    show_full_result_count = False


@admin.register(OperatorToken)
class OperatorTokenAdmin(admin.ModelAdmin):
    """Platform staff list and revoke API tokens; they are issued with
    `manage.py create_operator_token` (the raw token is shown once, there)."""

    list_display = (
        "prefix",
        "user",
        "name",
        "scope",
        "tenant",
        "expires_at",
        "revoked_at",
        "last_used_at",
    )
    list_filter = ("scope", "revoked_at")
    search_fields = ("prefix", "name", "user__username")
    list_select_related = ("user", "tenant")
    readonly_fields = list_display + ("created_at",)
    actions = ("revoke_selected",)

    def has_module_permission(self, request: HttpRequest) -> bool:
        return request.user.is_superuser

    def has_view_permission(self, request: HttpRequest, obj=None) -> bool:
        return request.user.is_superuser

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return request.user.is_superuser

    @admin.action(description="Revoke selected tokens")
    def revoke_selected(self, request, queryset):
        for token in queryset:
            services.operator_token_revoke(token=token, actor=_actor(request))
        self.message_user(request, "Revoked.", level=messages.SUCCESS)
