from __future__ import annotations

from decimal import Decimal

from django.db import models
from django.utils import timezone

COST_DECIMAL_PLACES = 12
COST_QUANTUM = Decimal(1).scaleb(-COST_DECIMAL_PLACES)


class Outcome(models.TextChoices):
    OK = "ok", "OK"
    ERROR = "error", "Error"
    CANCELLED = "cancelled", "Cancelled by client"
    REJECTED = "rejected", "Rejected before upstream"
    # A retry with an Idempotency-Key already answered: the first answer again, no charge.
    REPLAYED = "replayed", "Replayed (idempotent retry)"
    # A hold nobody settled (its process died): charged its reservation, usage estimated.
    ORPHANED = "orphaned", "Orphaned hold (settled by the sweeper)"
    # Answered from the gateway's response cache: no upstream call, charged per route policy.
    CACHE_HIT = "cache_hit", "Response cache hit"


def cost_field(**kwargs) -> models.DecimalField:
    # tokens x (USD per 1M tokens with 6 decimals) / 1e6 is exact at 12 decimals.
    return models.DecimalField(
        max_digits=24, decimal_places=COST_DECIMAL_PLACES, default=Decimal("0"), **kwargs
    )


class UsageEvent(models.Model):
    """Exactly one per request, success or failure. Ids are plain integers (no FKs) so that the
    hot path and the drain never join or lock tenant and catalog rows."""

    # The gateway's id: the event's identity, never taken from the client.
    request_id = models.CharField(max_length=64, unique=True)
    # The client's own x-request-id (printable, at most 128 characters), for its searches.
    client_request_id = models.CharField(max_length=128, blank=True, db_index=True)
    created_at = models.DateTimeField(db_index=True)
    # When the writer stored the row: rollups recompute the buckets of events ingested since
    # their last run, so a late event (old created_at) still corrects its bucket.
    ingested_at = models.DateTimeField(default=timezone.now)
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
    input_price_per_mtok = models.DecimalField(
        max_digits=14, decimal_places=6, default=Decimal("0")
    )
    output_price_per_mtok = models.DecimalField(
        max_digits=14, decimal_places=6, default=Decimal("0")
    )
    cost_usd = cost_field()
    # A response-cache hit: what the upstream call it replaced cost (minus what was charged).
    response_cache_saved_usd = cost_field()
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
            models.Index(fields=["ingested_at"], name="usage_ingested"),
            # The admin changelist's filters, each newest first (its ordering).
            models.Index(fields=["outcome", "-created_at"], name="usage_outcome_time"),
            models.Index(fields=["endpoint", "-created_at"], name="usage_endpoint_time"),
            models.Index(fields=["stream", "-created_at"], name="usage_stream_time"),
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


class RollupPeriod(models.TextChoices):
    HOUR = "hour", "Hour"
    DAY = "day", "Day"


class UsageRollup(models.Model):
    """Usage summed per UTC hour or day and per tenant x key x route x model x provider x unit
    prices. Missing ids are stored as 0 so the grouping key has no NULLs. Unit prices are part
    of the key: a price change mid-bucket gives two rows, each charged at its own price.

    Rows are recomputed whole from the events of their bucket (never incremented), so running
    a rollup twice changes nothing and a late event corrects its bucket."""

    period = models.CharField(max_length=4, choices=RollupPeriod.choices)
    bucket_start = models.DateTimeField()
    tenant_id = models.BigIntegerField(default=0)
    api_key_id = models.BigIntegerField(default=0)
    route = models.CharField(max_length=128, blank=True)
    model_id = models.BigIntegerField(default=0)
    provider_id = models.BigIntegerField(default=0)
    model = models.CharField(max_length=128, blank=True)
    input_price_per_mtok = models.DecimalField(
        max_digits=14, decimal_places=6, default=Decimal("0")
    )
    output_price_per_mtok = models.DecimalField(
        max_digits=14, decimal_places=6, default=Decimal("0")
    )
    requests = models.BigIntegerField(default=0)
    errors = models.BigIntegerField(default=0)
    tokens_in = models.BigIntegerField(default=0)
    tokens_out = models.BigIntegerField(default=0)
    cache_read_tokens = models.BigIntegerField(default=0)
    cost_usd = models.DecimalField(
        max_digits=28, decimal_places=COST_DECIMAL_PLACES, default=Decimal("0")
    )
    # List-price value of the prompt tokens served from a cache (what they would have cost).
    cache_savings_usd = models.DecimalField(
        max_digits=28, decimal_places=COST_DECIMAL_PLACES, default=Decimal("0")
    )
    computed_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["period", "-bucket_start"]
        constraints = [
            models.UniqueConstraint(
                fields=[
                    "period",
                    "bucket_start",
                    "tenant_id",
                    "api_key_id",
                    "route",
                    "model_id",
                    "provider_id",
                    "input_price_per_mtok",
                    "output_price_per_mtok",
                ],
                name="uniq_usage_rollup_bucket",
            )
        ]
        indexes = [
            # Every report filters by period and a time range, most also by one dimension.
            models.Index(fields=["tenant_id", "period", "bucket_start"], name="rollup_tenant_time"),
            models.Index(fields=["api_key_id", "period", "bucket_start"], name="rollup_key_time"),
            models.Index(fields=["model_id", "period", "bucket_start"], name="rollup_model_time"),
            models.Index(
                fields=["provider_id", "period", "bucket_start"], name="rollup_provider_time"
            ),
        ]

    def __str__(self) -> str:
        return (
            f"{self.period} {self.bucket_start:%Y-%m-%d %H:00} t{self.tenant_id} k{self.api_key_id}"
        )


class PurgedUsage(models.Model):
    """What retention removed: the totals of deleted raw events per hour and rollup key,
    written in the same transaction as the delete. An hour's rollup is always
    purged totals + remaining events, so deleting raw events never changes a rollup, and a
    late event for an old hour still lands on top of what was purged."""

    bucket_start = models.DateTimeField()
    tenant_id = models.BigIntegerField(default=0)
    api_key_id = models.BigIntegerField(default=0)
    route = models.CharField(max_length=128, blank=True)
    model_id = models.BigIntegerField(default=0)
    provider_id = models.BigIntegerField(default=0)
    model = models.CharField(max_length=128, blank=True)
    input_price_per_mtok = models.DecimalField(
        max_digits=14, decimal_places=6, default=Decimal("0")
    )
    output_price_per_mtok = models.DecimalField(
        max_digits=14, decimal_places=6, default=Decimal("0")
    )
    requests = models.BigIntegerField(default=0)
    errors = models.BigIntegerField(default=0)
    tokens_in = models.BigIntegerField(default=0)
    tokens_out = models.BigIntegerField(default=0)
    cache_read_tokens = models.BigIntegerField(default=0)
    cost_usd = models.DecimalField(
        max_digits=28, decimal_places=COST_DECIMAL_PLACES, default=Decimal("0")
    )
    cache_savings_usd = models.DecimalField(
        max_digits=28, decimal_places=COST_DECIMAL_PLACES, default=Decimal("0")
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=[
                    "bucket_start",
                    "tenant_id",
                    "api_key_id",
                    "route",
                    "model_id",
                    "provider_id",
                    "input_price_per_mtok",
                    "output_price_per_mtok",
                ],
                name="uniq_purged_usage_bucket",
            )
        ]
        indexes = [
            models.Index(fields=["tenant_id", "bucket_start"], name="purged_tenant_time"),
            models.Index(fields=["api_key_id", "bucket_start"], name="purged_key_time"),
        ]

    def __str__(self) -> str:
        return f"purged {self.bucket_start:%Y-%m-%d %H:00} t{self.tenant_id}"


class UsageMark(models.Model):
    """Named instants of the pipeline: how far rollups have seen ingestion, and before which
    moment raw events were purged."""

    ROLLUP_WATERMARK = "rollup_watermark"
    PURGED_BEFORE = "purged_before"

    name = models.CharField(max_length=64, unique=True)
    value = models.DateTimeField()
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.name}={self.value.isoformat()}"
