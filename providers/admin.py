"""Providers and models in Django admin. Thin: forms parse, saves go through
providers.services (which validate, seal secrets and invalidate the catalog snapshot).

The provider secret is write-only: the form has a password field that is never rendered back;
the list and the change page only say whether a secret is set."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Count, QuerySet
from django.http import HttpRequest

from providers.catalog import catalog_changed
from providers.models import Model, ModelPrice, Provider
from providers.secrets import secret_env_validate
from providers.services import (
    MODEL_FIELDS,
    PROVIDER_FIELD_ORDER,
    PROVIDER_FIELDS,
    model_create,
    model_update,
    provider_create,
    provider_update,
)


class ProviderAdminForm(forms.ModelForm):
    # A plain field: the service checks the URL (Django's URL validator rejects the dotless
    # hosts self-hosted servers use).
    base_url = forms.CharField(
        required=False,
        max_length=500,
        help_text="Default for OpenAI and Anthropic; required for Azure and compatible servers.",
    )
    secret = forms.CharField(
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Write-only. Leave empty to keep the current secret. Stored encrypted; "
        "never shown again.",
    )
    clear_secret = forms.BooleanField(
        required=False, help_text="Remove the stored secret (the env variable, if any, stays)."
    )

    class Meta:
        model = Provider
        fields = list(PROVIDER_FIELD_ORDER)
        help_texts = {
            "secret_env": "Or: the name of an environment variable holding the secret; it must "
            "start with GATEWAY_PROVIDER_ (e.g. GATEWAY_PROVIDER_OPENAI_API_KEY) unless the "
            "operator allowed it in GATEWAY_PROVIDER_SECRET_ENV_ALLOWED.",
            "options": 'Kind-specific settings, e.g. {"api_version": "2024-10-21"} for Azure; '
            "see docs/providers.md.",
        }

    def clean_secret_env(self) -> str:
        name = (self.cleaned_data.get("secret_env") or "").strip()
        try:
            secret_env_validate(name)
        except ValidationError as exc:
            raise ValidationError(exc.message_dict["secret_env"]) from exc
        return name


class ModelAdminForm(forms.ModelForm):
    """Empty orchestration fields mean "none" ({} / []), not null."""

    def clean_quality(self) -> dict:
        return self.cleaned_data.get("quality") or {}

    def clean_tasks(self) -> list:
        return self.cleaned_data.get("tasks") or []


class ModelPriceInline(admin.TabularInline):
    """Price history, read-only here: a price change is made on the model's price fields
    and recorded by the price service."""

    model = ModelPrice
    extra = 0
    can_delete = False
    fields = ["effective_from", "input_price_per_mtok", "output_price_per_mtok", "created_at"]
    readonly_fields = fields
    ordering = ["-effective_from"]

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class ModelInline(admin.TabularInline):
    """The provider's models, for a glance; edit them on their own page."""

    model = Model
    extra = 0
    can_delete = False
    show_change_link = True
    fields = [
        "name",
        "upstream_model",
        "input_price_per_mtok",
        "output_price_per_mtok",
        "context_window",
        "is_active",
    ]
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


def _form_error(form: forms.Form, exc: ValidationError) -> None:
    """Put a service's validation errors back on the form (raised by save_model, they would
    otherwise be a server error)."""
    if hasattr(exc, "error_dict"):
        for field, errors in exc.error_dict.items():
            form.add_error(field if field in form.fields else None, errors)
    else:
        form.add_error(None, exc)


class ServiceSavingAdmin(admin.ModelAdmin):
    """Runs the service inside the form's validation, so service errors show on the form,
    and the admin's own save becomes a no-op."""

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any):
        form_class = super().get_form(request, obj, change=change, **kwargs)
        admin_self = self

        class ServiceForm(form_class):  # type: ignore[misc, valid-type]
            def _post_clean(self) -> None:
                super()._post_clean()
                if self.errors:
                    return
                # The form has already copied its values onto `instance`; the service gets
                # the stored row, so it sees what actually changes (prices, secrets...).
                stored = type(obj).objects.get(pk=obj.pk) if obj is not None else None
                try:
                    self.instance = admin_self.service_save(self, stored)
                except ValidationError as exc:
                    _form_error(self, exc)

            def save(self, commit: bool = True) -> Any:
                self.save_m2m = lambda: None  # no many-to-many fields here
                return self.instance

        return ServiceForm

    def save_model(
        self, request: HttpRequest, obj: Any, form: forms.ModelForm, change: bool
    ) -> None:
        """Saved already by the service during validation."""

    def service_save(self, form: forms.ModelForm, original: Any) -> Any:
        raise NotImplementedError

    # Deletes (platform staff) drop every process's snapshot once committed, like saves.
    def delete_model(self, request: HttpRequest, obj: Any) -> None:
        with transaction.atomic():
            super().delete_model(request, obj)
            catalog_changed()

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet) -> None:
        with transaction.atomic():
            super().delete_queryset(request, queryset)
            catalog_changed()


@admin.register(Provider)
class ProviderAdmin(ServiceSavingAdmin):
    form = ProviderAdminForm
    list_display = [
        "name",
        "kind",
        "base_url",
        "secret_status",
        "model_count",
        "first_byte_timeout_s",
        "total_timeout_s",
        "max_retries",
        "is_active",
        "updated_at",
    ]
    list_filter = ["kind", "is_active"]
    search_fields = ["name", "base_url"]
    readonly_fields = ["secret_status", "created_at", "updated_at"]
    inlines = [ModelInline]
    fieldsets = [
        (None, {"fields": ["name", "kind", "base_url", "is_active"]}),
        ("Credentials", {"fields": ["secret_status", "secret", "clear_secret", "secret_env"]}),
        (
            "Timeouts and retries",
            {
                "fields": [
                    "connect_timeout_s",
                    "first_byte_timeout_s",
                    "stream_idle_timeout_s",
                    "total_timeout_s",
                    "max_retries",
                ]
            },
        ),
        ("Options", {"fields": ["options"]}),
        ("History", {"fields": ["created_at", "updated_at"], "classes": ["collapse"]}),
    ]
    actions = ["deactivate"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Provider]:
        return super().get_queryset(request).annotate(_model_count=Count("models"))

    @admin.display(description="Secret")
    def secret_status(self, obj: Provider) -> str:
        if obj.secret_encrypted:
            return "set (encrypted)"
        if obj.secret_env:
            return f"from env {obj.secret_env}"
        return "not set"

    @admin.display(description="Models", ordering="_model_count")
    def model_count(self, obj: Provider) -> int:
        return getattr(obj, "_model_count", 0)

    def service_save(self, form: forms.ModelForm, original: Provider | None) -> Provider:
        data = {
            name: form.cleaned_data[name] for name in PROVIDER_FIELDS if name in form.cleaned_data
        }
        secret = form.cleaned_data.get("secret") or ""
        if original is None:
            return provider_create(secret=secret, **data)
        return provider_update(
            provider=original,
            fields=data,
            secret=secret or None,
            clear_secret=bool(form.cleaned_data.get("clear_secret")),
        )

    @admin.action(description="Deactivate selected providers (and their models)")
    def deactivate(self, request: HttpRequest, queryset: QuerySet[Provider]) -> None:
        count = 0
        for provider in queryset.filter(is_active=True):
            provider_update(provider=provider, fields={"is_active": False})
            count += 1
        self.message_user(request, f"{count} provider(s) deactivated.", messages.SUCCESS)


@admin.register(Model)
class ModelAdmin(ServiceSavingAdmin):
    form = ModelAdminForm
    list_display = [
        "name",
        "provider",
        "upstream_model",
        "input_price_per_mtok",
        "output_price_per_mtok",
        "context_window",
        "max_output_tokens",
        "capabilities",
        "is_active",
    ]
    list_filter = [
        "provider__kind",
        "provider",
        "is_active",
        "supports_streaming",
        "supports_tools",
        "supports_vision",
        "supports_embeddings",
    ]
    search_fields = ["name", "upstream_model", "provider__name"]
    list_select_related = ["provider"]
    autocomplete_fields = ["provider"]
    readonly_fields = ["created_at", "updated_at"]
    inlines = [ModelPriceInline]
    fieldsets = [
        (None, {"fields": ["name", "provider", "upstream_model", "is_active"]}),
        (
            "Price (USD per 1M tokens)",
            {
                "fields": [
                    "input_price_per_mtok",
                    "output_price_per_mtok",
                    "cache_read_price_per_mtok",
                    "cache_write_price_per_mtok",
                ],
                "description": "A change takes effect now and is kept in the price history; "
                "past requests keep the price they were charged. Cache prices (empty: the "
                "input price) are current prices only.",
            },
        ),
        ("Limits", {"fields": ["context_window", "max_output_tokens"]}),
        (
            "Capabilities",
            {
                "fields": [
                    "supports_streaming",
                    "supports_tools",
                    "supports_vision",
                    "supports_embeddings",
                    "supports_json_mode",
                ]
            },
        ),
        (
            "Orchestration",
            {
                "fields": ["quality", "tasks"],
                "description": 'quality: a score per task, 0-1 ({"summarize": 0.8}); '
                'tasks: the tasks this model is a candidate for (["chat", "code"]; '
                "empty: every task).",
            },
        ),
        ("History", {"fields": ["created_at", "updated_at"], "classes": ["collapse"]}),
    ]

    @admin.display(description="Capabilities")
    def capabilities(self, obj: Model) -> str:
        flags = [
            ("stream", obj.supports_streaming),
            ("tools", obj.supports_tools),
            ("vision", obj.supports_vision),
            ("embed", obj.supports_embeddings),
            ("json", obj.supports_json_mode),
        ]
        return ", ".join(name for name, on in flags if on) or "-"

    def service_save(self, form: forms.ModelForm, original: Model | None) -> Model:
        data = {name: form.cleaned_data[name] for name in MODEL_FIELDS if name in form.cleaned_data}
        if original is None:
            return model_create(**data)
        return model_update(model=original, fields=data)
