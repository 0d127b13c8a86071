from __future__ import annotations

from decimal import Decimal

from django.db import models

COST_DECIMAL_PLACES = 12
COST_QUANTUM = Decimal(1).scaleb(-COST_DECIMAL_PLACES)


class Outcome(models.TextChoices):
    OK = "ok", "OK"
    ERROR = "error", "Error"
    CANCELLED = "cancelled", "Cancelled by client"
    REJECTED = "rejected", "Rejected before upstream"


def cost_field(**kwargs) -> models.DecimalField:
    # tokens x (USD per 1M tokens with 6 decimals) / 1e6 is exact at 12 decimals.
    return models.DecimalField(
        max_digits=24, decimal_places=COST_DECIMAL_PLACES, default=Decimal("0"), **kwargs
    )


class UsageEvent(models.Model):
    """Exactly one per request, success or failure. Ids are plain integers (no FKs) so that the
    hot path and the drain never join or lock tenant and catalog rows."""

    request_id = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(db_index=True)
    tenant_id = models.BigIntegerField(null=True)
    api_key_id = models.BigIntegerField(null=True)
    route = models.CharField(max_length=128, blank=True)
    model = models.CharField(max_length=128, blank=True, help_text="Public model name served")
    model_id = models.BigIntegerField(null=True)
    provider_id = models.BigIntegerField(null=True)
    upstream_model = models.CharField(max_length=200, blank=True)
    endpoint = models.CharField(max_length=32, default="chat")
    stream = models.BooleanField(default=False)
    tokens_in = models.PositiveIntegerField(default=0)
    tokens_out = models.PositiveIntegerField(default=0)
    cache_read_tokens = models.PositiveIntegerField(default=0)
    cache_write_tokens = models.PositiveIntegerField(default=0)
    usage_estimated = models.BooleanField(default=False)
    input_price_per_mtok = models.DecimalField(max_digits=14, decimal_places=6, default=Decimal("0"))
    output_price_per_mtok = models.DecimalField(max_digits=14, decimal_places=6, default=Decimal("0"))
    cost_usd = cost_field()
    latency_ms = models.FloatField(default=0)
    ttft_ms = models.FloatField(null=True, blank=True)
    status_code = models.PositiveSmallIntegerField(default=200)
    outcome = models.CharField(max_length=16, choices=Outcome.choices, default=Outcome.OK)
    error_type = models.CharField(max_length=64, blank=True)
    fallbacks = models.PositiveSmallIntegerField(default=0)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["tenant_id", "created_at"], name="usage_tenant_time"),
            models.Index(fields=["api_key_id", "created_at"], name="usage_key_time"),
        ]

    def __str__(self) -> str:
        return self.request_id


class UsageAttempt(models.Model):
    """One upstream attempt of a request (a request with fallbacks has several)."""

    event = models.ForeignKey(UsageEvent, on_delete=models.CASCADE, related_name="attempts")
    position = models.PositiveSmallIntegerField()
    model_id = models.BigIntegerField(null=True)
    provider_id = models.BigIntegerField(null=True)
    status_code = models.PositiveSmallIntegerField(default=200)
    error_type = models.CharField(max_length=64, blank=True)
    latency_ms = models.FloatField(default=0)

    class Meta:
        ordering = ["event", "position"]
        constraints = [
            models.UniqueConstraint(fields=["event", "position"], name="uniq_attempt_position")
        ]

    def __str__(self) -> str:
        return f"{self.event_id}#{self.position}"
