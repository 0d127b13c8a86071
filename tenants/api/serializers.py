"""Input and output shapes of the management API."""

from __future__ import annotations

from rest_framework import serializers

from tenants.models import ApiKey, AuditEvent, BudgetPeriod, Tenant
from tenants.webhooks import webhook_url_validate

_LIMIT_FIELDS = ("budget_usd", "budget_period", "rpm_limit", "tpm_limit", "max_concurrency")


class LimitsSerializer(serializers.Serializer):
    """Limits and budget; null means unlimited. Omitted fields are left as they are."""

    budget_usd = serializers.DecimalField(
        max_digits=14, decimal_places=4, min_value=0, allow_null=True, required=False
    )
    budget_period = serializers.ChoiceField(choices=BudgetPeriod.choices, required=False)
    rpm_limit = serializers.IntegerField(min_value=0, allow_null=True, required=False)
    tpm_limit = serializers.IntegerField(min_value=0, allow_null=True, required=False)
    max_concurrency = serializers.IntegerField(min_value=0, allow_null=True, required=False)


class TenantSerializer(serializers.ModelSerializer):
    class Meta:
        model = Tenant
        fields = (
            "id",
            "slug",
            "name",
            "is_active",
            "timezone",
            *_LIMIT_FIELDS,
            "alert_thresholds",
            "alert_webhook_url",
            "alert_email",
            "created_at",
            "updated_at",
        )
        read_only_fields = fields


class TenantCreateSerializer(LimitsSerializer):
    slug = serializers.SlugField(max_length=64)
    name = serializers.CharField(max_length=200, required=False, default="")
    timezone = serializers.CharField(max_length=64, required=False, default="UTC")
    alert_thresholds = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=1000), required=False
    )
    alert_webhook_url = serializers.URLField(
        required=False, default="", allow_blank=True, validators=[webhook_url_validate]
    )
    alert_email = serializers.EmailField(required=False, default="", allow_blank=True)


class TenantAlertsSerializer(serializers.Serializer):
    alert_thresholds = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=1000), required=False
    )
    alert_webhook_url = serializers.URLField(
        required=False, allow_blank=True, validators=[webhook_url_validate]
    )
    alert_email = serializers.EmailField(required=False, allow_blank=True)


class ApiKeySerializer(serializers.ModelSerializer):
    tenant = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    revoked = serializers.SerializerMethodField()

    class Meta:
        model = ApiKey
        fields = (
            "id",
            "public_id",
            "tenant",
            "name",
            "prefix",
            *_LIMIT_FIELDS,
            "allowed_models",
            "expires_at",
            "rotated_at",
            "previous_valid_until",
            "revoked_at",
            "revoked",
            "created_at",
            "updated_at",
        )
        read_only_fields = fields

    def get_revoked(self, obj: ApiKey) -> bool:
        return obj.revoked_at is not None


class ApiKeyIssueSerializer(LimitsSerializer):
    tenant = serializers.SlugField(help_text="Slug of a tenant you manage")
    name = serializers.CharField(max_length=200, required=False, default="", allow_blank=True)
    allowed_models = serializers.ListField(
        child=serializers.CharField(max_length=200), required=False, default=list
    )
    expires_at = serializers.DateTimeField(required=False, allow_null=True, default=None)


class ApiKeyUpdateSerializer(LimitsSerializer):
    name = serializers.CharField(max_length=200, required=False, allow_blank=True)
    allowed_models = serializers.ListField(
        child=serializers.CharField(max_length=200), required=False
    )
    expires_at = serializers.DateTimeField(required=False, allow_null=True)


class ApiKeyRotateSerializer(serializers.Serializer):
    grace_seconds = serializers.IntegerField(
        required=False,
        min_value=0,
        help_text="How long the replaced secret keeps working (default: the gateway's "
        "GATEWAY_KEY_ROTATION_GRACE_SECONDS; 0 stops it at once)",
    )


class ApiKeyIssuedSerializer(serializers.Serializer):
    """The answer to issue and rotate: the raw key appears here once and nowhere else."""

    key = ApiKeySerializer()
    raw_key = serializers.CharField()


class BudgetStatusSerializer(serializers.Serializer):
    scope = serializers.CharField()
    scope_id = serializers.IntegerField()
    budget_usd = serializers.DecimalField(max_digits=14, decimal_places=4, allow_null=True)
    budget_period = serializers.CharField()
    period = serializers.CharField()
    period_start = serializers.DateTimeField()
    period_end = serializers.DateTimeField(allow_null=True)
    spend_usd = serializers.DecimalField(max_digits=24, decimal_places=9, allow_null=True)
    remaining_usd = serializers.DecimalField(max_digits=24, decimal_places=9, allow_null=True)


class AuditEventSerializer(serializers.ModelSerializer):
    class Meta:
        model = AuditEvent
        fields = ("id", "created_at", "actor", "action", "target", "details")
        read_only_fields = fields
