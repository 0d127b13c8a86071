from __future__ import annotations

from django.conf import settings
from django.db import models

from tenants.keys import api_key_public_id_new


class BudgetPeriod(models.TextChoices):
    DAILY = "daily", "Daily"
    WEEKLY = "weekly", "Weekly"
    MONTHLY = "monthly", "Monthly"
    LIFETIME = "lifetime", "Lifetime"


def default_alert_thresholds() -> list[int]:
    return [50, 80, 100]


class LimitsMixin(models.Model):
    """Limits and budgets shared by tenants and keys. Null means unlimited."""

    budget_usd = models.DecimalField(max_digits=14, decimal_places=4, null=True, blank=True)
    budget_period = models.CharField(
        max_length=16, choices=BudgetPeriod.choices, default=BudgetPeriod.MONTHLY
    )
    rpm_limit = models.PositiveIntegerField(null=True, blank=True, help_text="Requests/minute")
    tpm_limit = models.PositiveIntegerField(null=True, blank=True, help_text="Tokens/minute")
    max_concurrency = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        abstract = True


class Tenant(LimitsMixin):
    slug = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=200)
    timezone = models.CharField(max_length=64, default="UTC")
    is_active = models.BooleanField(default=True)
    alert_thresholds = models.JSONField(default=default_alert_thresholds, blank=True)
    alert_webhook_url = models.URLField(max_length=500, blank=True)
    alert_email = models.EmailField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["slug"]
        indexes = [
            # The admin's prefix searches (LIKE 'x%'): a plain btree does not serve LIKE under
            # a non-C collation; the pattern opclass does (PostgreSQL; ignored elsewhere).
            models.Index(
                fields=["slug"], name="tenant_slug_like", opclasses=["varchar_pattern_ops"]
            ),
            models.Index(
                fields=["name"], name="tenant_name_like", opclasses=["varchar_pattern_ops"]
            ),
        ]

    def __str__(self) -> str:
        return self.slug


class ApiKey(LimitsMixin):
    """An issued key. Only a SHA-256 hash and a short display prefix are stored.

    Rotation replaces the hash in place (same record, same `public_id`, same limits, budget
    and usage history); the hash it replaced keeps working until `previous_valid_until`."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="api_keys")
    public_id = models.CharField(
        max_length=40,
        unique=True,
        default=api_key_public_id_new,
        editable=False,
        help_text="Stable id of this key; survives rotation",
    )
    name = models.CharField(max_length=200, blank=True)
    prefix = models.CharField(max_length=32, db_index=True)
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    previous_key_hash = models.CharField(
        max_length=64, null=True, blank=True, unique=True, editable=False
    )
    previous_valid_until = models.DateTimeField(
        null=True, blank=True, help_text="The key before the last rotation works until then"
    )
    rotated_at = models.DateTimeField(null=True, blank=True)
    # Reminders sent (once each) through the tenant's alert channels; cleared when the date
    # they were about changes.
    expiry_reminded_at = models.DateTimeField(null=True, blank=True, editable=False)
    grace_reminded_at = models.DateTimeField(null=True, blank=True, editable=False)
    allowed_models = models.JSONField(
        default=list, blank=True, help_text="Model or route names; empty means all"
    )
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["tenant", "-created_at"], name="apikey_tenant_created"),
            # Admin at scale: one index per search and filter the key changelist offers.
            models.Index(
                fields=["prefix"], name="apikey_prefix_like", opclasses=["varchar_pattern_ops"]
            ),
            models.Index(
                fields=["name"], name="apikey_name_like", opclasses=["varchar_pattern_ops"]
            ),
            models.Index(fields=["budget_period", "-created_at"], name="apikey_period_created"),
            models.Index(
                fields=["-created_at"],
                condition=models.Q(revoked_at__isnull=False),
                name="apikey_revoked_created",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.tenant_id})"

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None


class TenantMembership(models.Model):
    """A Django user who administers one tenant (sees only that tenant's data)."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="tenant_memberships"
    )
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, default="admin")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "tenant"], name="uniq_membership")]

    def __str__(self) -> str:
        return f"{self.user_id}@{self.tenant_id}"


class AuditEvent(models.Model):
    """Who changed what, written by the service that made the change."""

    tenant = models.ForeignKey(
        Tenant, null=True, blank=True, on_delete=models.SET_NULL, related_name="audit_events"
    )
    actor = models.CharField(max_length=200, blank=True)
    action = models.CharField(max_length=64)
    target = models.CharField(max_length=200, blank=True)
    details = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["tenant", "-created_at"], name="auditevent_tenant_created"),
            models.Index(fields=["action", "-created_at"], name="auditevent_action_created"),
        ]

    def __str__(self) -> str:
        return f"{self.action} {self.target}"


class AlertScope(models.TextChoices):
    KEY = "key", "API key"
    TENANT = "tenant", "Tenant"


class BudgetAlert(models.Model):
    """A budget threshold crossed in one period: recorded once per (scope, threshold, period);
    the row also remembers which notifications went out, so a retried task never repeats one."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="budget_alerts")
    api_key = models.ForeignKey(
        ApiKey, null=True, blank=True, on_delete=models.CASCADE, related_name="budget_alerts"
    )
    scope = models.CharField(max_length=16, choices=AlertScope.choices)
    scope_id = models.BigIntegerField()
    period_key = models.CharField(max_length=32)
    threshold = models.PositiveSmallIntegerField(help_text="Percent of the budget")
    budget_usd = models.DecimalField(max_digits=14, decimal_places=4)
    spend_usd = models.DecimalField(max_digits=24, decimal_places=9)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    webhook_sent_at = models.DateTimeField(null=True, blank=True)
    email_sent_at = models.DateTimeField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True)
    # A delivery run's lease: set by one conditional UPDATE before sending, cleared after, so
    # two runs never send the same alert and no row lock is held while the network is used.
    delivery_claimed_until = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["scope", "scope_id", "period_key", "threshold"],
                name="uniq_budget_alert_per_period",
            )
        ]

    def __str__(self) -> str:
        return f"{self.scope}:{self.scope_id} {self.threshold}% {self.period_key}"


class OperatorTokenScope(models.TextChoices):
    READ = "read", "Read only"
    WRITE = "write", "Read and write"


class OperatorToken(models.Model):
    """A management/reports API credential of one Django user. Only a SHA-256 hash and a
    short display prefix are stored; it expires, may be read-only, and may be limited to one
    of the user's tenants (it never grants more than the user has)."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="operator_tokens"
    )
    name = models.CharField(max_length=200, blank=True)
    prefix = models.CharField(max_length=32, db_index=True)
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    scope = models.CharField(
        max_length=8, choices=OperatorTokenScope.choices, default=OperatorTokenScope.READ
    )
    tenant = models.ForeignKey(
        Tenant,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="operator_tokens",
        help_text="Limit the token to this tenant (empty: every tenant the user manages)",
    )
    expires_at = models.DateTimeField()
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.user_id}, {self.scope})"
