from django.contrib import admin

from providers.catalog import catalog_changed
from routing.models import Route, RouteStep


class RouteStepInline(admin.TabularInline):
    model = RouteStep
    extra = 1
    ordering = ["position"]
    autocomplete_fields = ["model"]


@admin.register(Route)
class RouteAdmin(admin.ModelAdmin):
    list_display = ["name", "strategy", "chain", "max_attempts", "is_active", "updated_at"]
    list_filter = ["strategy", "is_active"]
    search_fields = ["name", "description"]
    inlines = [RouteStepInline]

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("steps__model")

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
