from asgiref.sync import async_to_sync
from django import forms
from django.contrib import admin

from providers.catalog import catalog_changed
from routing.cache import response_cache_purge_now
from routing.models import Route, RouteStep
from routing.options import RouteOptionsError, route_options_parse


class RouteForm(forms.ModelForm):
    class Meta:
        model = Route
        fields = "__all__"  # noqa: DJ007 - every column of a route is operator-editable
        help_texts = {
            "options": "Per-strategy options as JSON, e.g. "
            '{"n": 3, "min_agreement": 2} (consensus), {"preference": "cheap", '
            '"constraints": {"max_cost_usd": 0.01}} (scored), {"mode": "least_latency"} '
            "(loadbalance). Every field: docs/catalog.md.",
            "default_message": "Answered (200, flagged, billed 0) when every step fails.",
        }

    def clean_options(self):
        value = self.cleaned_data.get("options") or {}
        try:
            route_options_parse(value)
        except RouteOptionsError as exc:
            raise forms.ValidationError(str(exc)) from exc
        return value


class RouteStepInline(admin.TabularInline):
    model = RouteStep
    extra = 1
    ordering = ["position"]
    autocomplete_fields = ["model"]


@admin.register(Route)
class RouteAdmin(admin.ModelAdmin):
    form = RouteForm
    list_display = ["name", "strategy", "chain", "max_attempts", "is_active", "updated_at"]
    list_filter = ["strategy", "is_active"]
    search_fields = ["name", "description"]
    inlines = [RouteStepInline]
    actions = ["purge_response_cache"]

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("steps__model")

    @admin.action(description="Purge the response cache of the selected routes (every tenant)")
    def purge_response_cache(self, request, queryset):
        removed = 0
        for name in queryset.values_list("name", flat=True):
            removed += async_to_sync(response_cache_purge_now)(tenant_id=None, route=name)
        self.message_user(request, f"Purged {removed} cached answers.")

    @admin.display(description="Fallback chain")
    def chain(self, obj: Route) -> str:
        return " → ".join(step.model.name for step in obj.steps.all())

    def save_related(self, request, form, formsets, change):
        super().save_related(request, form, formsets, change)
        # Every process drops its routing snapshot once this commits.
        catalog_changed()

    def delete_model(self, request, obj):
        super().delete_model(request, obj)
        catalog_changed()

    def delete_queryset(self, request, queryset):
        super().delete_queryset(request, queryset)
        catalog_changed()
