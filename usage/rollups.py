"""Rollups and retention.

An hour rollup row is recomputed whole, never incremented:
    rollup(hour, key) = purged totals(hour, key) + sum of remaining events(hour, key)
and a day row is the sum of its hours. A run recomputes every hour touched by events ingested
since the previous run (minus an overlap that covers batches committing late), so re-running
changes nothing and a late event corrects its bucket. Retention moves the totals of the raw
events it deletes into PurgedUsage in the same transaction, which keeps the formula true.

Rollup and retention runs are serialized by a PostgreSQL advisory lock; sums are computed by
PostgreSQL's exact numeric (or in Python with Decimal on other databases), never in float."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, F, Max, Q, QuerySet, Sum
from django.db.models.functions import Coalesce, TruncDay, TruncHour
from django.utils import timezone

from usage.models import (
    COST_QUANTUM,
    Outcome,
    PurgedUsage,
    RollupPeriod,
    UsageAttempt,
    UsageEvent,
    UsageMark,
    UsageRollup,
)

logger = logging.getLogger("gateway.usage")

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
ERROR_OUTCOMES = (Outcome.ERROR, Outcome.REJECTED)
_LOCK_KEY = 0x75736167  # "usag": one advisory lock for rollup and retention runs
_MAX_RANGE = timedelta(days=31)  # one aggregate query covers at most this much time
_PURGE_CHUNK = 10_000
_MILLION_EXP = -6

# key: (bucket_start, tenant_id, api_key_id, route, model_id, provider_id, in_price, out_price)
GroupKey = tuple[datetime, int, int, str, int, int, Decimal, Decimal]


@dataclass(slots=True)
class Totals:
    model: str = ""
    requests: int = 0
    errors: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cache_read_tokens: int = 0
    cost_usd: Decimal = Decimal(0)

    def add(self, other: Totals) -> None:
        self.model = max(self.model, other.model)
        self.requests += other.requests
        self.errors += other.errors
        self.tokens_in += other.tokens_in
        self.tokens_out += other.tokens_out
        self.cache_read_tokens += other.cache_read_tokens
        self.cost_usd += other.cost_usd


@dataclass(slots=True)
class RollupResult:
    hours: int = 0
    days: int = 0
    rows: int = 0
    watermark: datetime | None = None
    touched_days: list[datetime] = field(default_factory=list)


def floor_hour(when: datetime) -> datetime:
    return when.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def floor_day(when: datetime) -> datetime:
    return when.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def cache_savings(cache_read_tokens: int, input_price_per_mtok: Decimal) -> Decimal:
    """List-price value of cache-read prompt tokens (exact: prices have 6 decimals)."""
    return (
        (Decimal(cache_read_tokens) * input_price_per_mtok)
        .scaleb(_MILLION_EXP)
        .quantize(COST_QUANTUM)
    )


def _is_postgres() -> bool:
    return connection.vendor == "postgresql"


@contextmanager
def rollup_lock() -> Iterator[None]:
    """A transaction holding the rollup lock (waits for a concurrent run to finish)."""
    with transaction.atomic():
        if _is_postgres():
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_LOCK_KEY])
        yield


def mark_get(name: str) -> datetime | None:
    return UsageMark.objects.filter(name=name).values_list("value", flat=True).first()


def mark_set(name: str, value: datetime) -> None:
    UsageMark.objects.update_or_create(name=name, defaults={"value": value})


# -- aggregation ----------------------------------------------------------------------------


def _event_groups(events: QuerySet) -> dict[GroupKey, Totals]:
    """Totals of the given events per hour and rollup key."""
    groups: dict[GroupKey, Totals] = {}
    if _is_postgres():
        rows = (
            events.order_by()
            .annotate(
                bucket=TruncHour("created_at", tzinfo=UTC),
                t=Coalesce("tenant_id", 0),
                k=Coalesce("api_key_id", 0),
                m=Coalesce("model_id", 0),
                p=Coalesce("provider_id", 0),
            )
            .values(
                "bucket",
                "t",
                "k",
                "route",
                "m",
                "p",
                "input_price_per_mtok",
                "output_price_per_mtok",
            )
            .annotate(
                model_name=Max("model"),
                n=Count("id"),
                n_errors=Count("id", filter=Q(outcome__in=ERROR_OUTCOMES)),
                sum_in=Sum("tokens_in"),
                sum_out=Sum("tokens_out"),
                sum_cache=Sum("cache_read_tokens"),
                sum_cost=Sum("cost_usd"),
            )
        )
        for r in rows.iterator(chunk_size=5000):
            key = (
                r["bucket"],
                r["t"],
                r["k"],
                r["route"],
                r["m"],
                r["p"],
                r["input_price_per_mtok"],
                r["output_price_per_mtok"],
            )
            groups[key] = Totals(
                model=r["model_name"] or "",
                requests=r["n"],
                errors=r["n_errors"],
                tokens_in=r["sum_in"] or 0,
                tokens_out=r["sum_out"] or 0,
                cache_read_tokens=r["sum_cache"] or 0,
                cost_usd=r["sum_cost"] or Decimal(0),
            )
        return groups
    # Other databases (SQLite in the embedded mode) sum decimals as floats: sum in Python.
    fields = (
        "created_at",
        "tenant_id",
        "api_key_id",
        "route",
        "model_id",
        "provider_id",
        "input_price_per_mtok",
        "output_price_per_mtok",
        "model",
        "outcome",
        "tokens_in",
        "tokens_out",
        "cache_read_tokens",
        "cost_usd",
    )
    for row in events.order_by().values_list(*fields).iterator(chunk_size=5000):
        (
            created,
            tenant,
            key_id,
            route,
            model_id,
            provider,
            pin,
            pout,
            model,
            outcome,
            t_in,
            t_out,
            cache,
            cost,
        ) = row
        key = (
            floor_hour(created),
            tenant or 0,
            key_id or 0,
            route,
            model_id or 0,
            provider or 0,
            pin,
            pout,
        )
        totals = groups.setdefault(key, Totals())
        totals.add(
            Totals(
                model=model,
                requests=1,
                errors=int(outcome in ERROR_OUTCOMES),
                tokens_in=t_in,
                tokens_out=t_out,
                cache_read_tokens=cache,
                cost_usd=cost,
            )
        )
    return groups


def _key_of(row, bucket: datetime) -> GroupKey:
    return (
        bucket,
        row.tenant_id,
        row.api_key_id,
        row.route,
        row.model_id,
        row.provider_id,
        row.input_price_per_mtok,
        row.output_price_per_mtok,
    )


def _totals_of(row) -> Totals:
    return Totals(
        model=row.model,
        requests=row.requests,
        errors=row.errors,
        tokens_in=row.tokens_in,
        tokens_out=row.tokens_out,
        cache_read_tokens=row.cache_read_tokens,
        cost_usd=row.cost_usd,
    )


def _rollup_rows(period: str, groups: dict[GroupKey, Totals], now: datetime) -> list[UsageRollup]:
    return [
        UsageRollup(
            period=period,
            bucket_start=key[0],
            tenant_id=key[1],
            api_key_id=key[2],
            route=key[3],
            model_id=key[4],
            provider_id=key[5],
            input_price_per_mtok=key[6],
            output_price_per_mtok=key[7],
            model=totals.model,
            requests=totals.requests,
            errors=totals.errors,
            tokens_in=totals.tokens_in,
            tokens_out=totals.tokens_out,
            cache_read_tokens=totals.cache_read_tokens,
            cost_usd=totals.cost_usd,
            cache_savings_usd=cache_savings(totals.cache_read_tokens, key[6]),
            computed_at=now,
        )
        for key, totals in groups.items()
    ]


def _ranges(starts: Iterable[datetime], step: timedelta) -> list[tuple[datetime, datetime]]:
    """Contiguous [start, end) ranges covering the given bucket starts."""
    ranges: list[tuple[datetime, datetime]] = []
    for start in sorted(set(starts)):
        if ranges and ranges[-1][1] == start and start + step - ranges[-1][0] <= _MAX_RANGE:
            ranges[-1] = (ranges[-1][0], start + step)
        else:
            ranges.append((start, start + step))
    return ranges


def _recompute_hours(hours: Iterable[datetime], now: datetime) -> tuple[int, int]:
    hours_done = rows = 0
    for start, end in _ranges(hours, HOUR):
        groups = _event_groups(UsageEvent.objects.filter(created_at__gte=start, created_at__lt=end))
        for purged in PurgedUsage.objects.filter(bucket_start__gte=start, bucket_start__lt=end):
            groups.setdefault(_key_of(purged, purged.bucket_start), Totals()).add(
                _totals_of(purged)
            )
        UsageRollup.objects.filter(
            period=RollupPeriod.HOUR, bucket_start__gte=start, bucket_start__lt=end
        ).delete()
        created = UsageRollup.objects.bulk_create(
            _rollup_rows(RollupPeriod.HOUR, groups, now), batch_size=2000
        )
        hours_done += int((end - start) / HOUR)
        rows += len(created)
    return hours_done, rows


def _recompute_days(days: Iterable[datetime], now: datetime) -> tuple[int, int]:
    days_done = rows = 0
    for start, end in _ranges(days, DAY):
        hourly = UsageRollup.objects.filter(
            period=RollupPeriod.HOUR, bucket_start__gte=start, bucket_start__lt=end
        )
        groups: dict[GroupKey, Totals] = {}
        if _is_postgres():
            summed = (
                hourly.order_by()
                .annotate(day=TruncDay("bucket_start", tzinfo=UTC))
                .values(
                    "day",
                    "tenant_id",
                    "api_key_id",
                    "route",
                    "model_id",
                    "provider_id",
                    "input_price_per_mtok",
                    "output_price_per_mtok",
                )
                .annotate(
                    model_name=Max("model"),
                    n=Sum("requests"),
                    n_errors=Sum("errors"),
                    sum_in=Sum("tokens_in"),
                    sum_out=Sum("tokens_out"),
                    sum_cache=Sum("cache_read_tokens"),
                    sum_cost=Sum("cost_usd"),
                )
            )
            for r in summed.iterator(chunk_size=5000):
                key = (
                    r["day"],
                    r["tenant_id"],
                    r["api_key_id"],
                    r["route"],
                    r["model_id"],
                    r["provider_id"],
                    r["input_price_per_mtok"],
                    r["output_price_per_mtok"],
                )
                groups[key] = Totals(
                    model=r["model_name"] or "",
                    requests=r["n"],
                    errors=r["n_errors"],
                    tokens_in=r["sum_in"],
                    tokens_out=r["sum_out"],
                    cache_read_tokens=r["sum_cache"],
                    cost_usd=r["sum_cost"],
                )
        else:
            for row in hourly.iterator(chunk_size=5000):
                groups.setdefault(_key_of(row, floor_day(row.bucket_start)), Totals()).add(
                    _totals_of(row)
                )
        UsageRollup.objects.filter(
            period=RollupPeriod.DAY, bucket_start__gte=start, bucket_start__lt=end
        ).delete()
        created = UsageRollup.objects.bulk_create(
            _rollup_rows(RollupPeriod.DAY, groups, now), batch_size=2000
        )
        days_done += (end - start).days
        rows += len(created)
    return days_done, rows


def _recompute(hours: set[datetime], now: datetime, result: RollupResult) -> None:
    result.hours, hour_rows = _recompute_hours(hours, now)
    days = {floor_day(h) for h in hours}
    result.days, day_rows = _recompute_days(days, now)
    result.rows = hour_rows + day_rows
    result.touched_days = sorted(days)


# -- services -------------------------------------------------------------------------------


def usage_rollup(*, now: datetime | None = None) -> RollupResult:
    """Recompute the buckets touched by events ingested since the last run (idempotent)."""
    result = RollupResult()
    with rollup_lock():
        started = now or timezone.now()
        watermark = mark_get(UsageMark.ROLLUP_WATERMARK)
        events = UsageEvent.objects.all()
        if watermark is not None:
            overlap = timedelta(seconds=settings.GATEWAY_USAGE_ROLLUP_OVERLAP_SECONDS)
            events = events.filter(ingested_at__gte=watermark - overlap)
        hours = set(
            events.order_by()
            .annotate(hour=TruncHour("created_at", tzinfo=UTC))
            .values_list("hour", flat=True)
            .distinct()
        )
        _recompute(hours, started, result)
        mark_set(UsageMark.ROLLUP_WATERMARK, started)
        result.watermark = started
    logger.info(
        "usage.rollup_done",
        extra={"hours": result.hours, "days": result.days, "rows": result.rows},
    )
    return result


def usage_rollup_window(*, start: datetime, end: datetime) -> RollupResult:
    """Recompute every hour and day in [start, end) from scratch (repair, backfill, bench).
    Hours with no events lose their stale rows."""
    result = RollupResult()
    first, stop = floor_day(start), floor_day(end - timedelta(microseconds=1)) + DAY
    hours = set()
    cursor = first
    while cursor < stop:
        hours.add(cursor)
        cursor += HOUR
    with rollup_lock():
        _recompute(hours, timezone.now(), result)
    logger.info("usage.rollup_window_done", extra={"hours": result.hours, "rows": result.rows})
    return result


def _purged_add(groups: dict[GroupKey, Totals]) -> None:
    for key, totals in groups.items():
        lookup = {
            "bucket_start": key[0],
            "tenant_id": key[1],
            "api_key_id": key[2],
            "route": key[3],
            "model_id": key[4],
            "provider_id": key[5],
            "input_price_per_mtok": key[6],
            "output_price_per_mtok": key[7],
        }
        values = {
            "model": totals.model,
            "requests": totals.requests,
            "errors": totals.errors,
            "tokens_in": totals.tokens_in,
            "tokens_out": totals.tokens_out,
            "cache_read_tokens": totals.cache_read_tokens,
            "cost_usd": totals.cost_usd,
            "cache_savings_usd": cache_savings(totals.cache_read_tokens, key[6]),
        }
        row, created = PurgedUsage.objects.select_for_update().get_or_create(
            **lookup, defaults=values
        )
        if not created:
            PurgedUsage.objects.filter(pk=row.pk).update(
                **{name: F(name) + value for name, value in values.items() if name != "model"}
            )


@dataclass(slots=True)
class RetentionResult:
    deleted: int = 0
    cutoff: datetime | None = None


def usage_retention(*, now: datetime | None = None, max_rows: int | None = None) -> RetentionResult:
    """Delete raw events older than GATEWAY_USAGE_RETENTION_DAYS whose rollups are final
    (a completed rollup run has seen them), moving their totals into PurgedUsage."""
    now = now or timezone.now()
    cutoff = floor_day(now - timedelta(days=settings.GATEWAY_USAGE_RETENTION_DAYS))
    result = RetentionResult(cutoff=cutoff)
    watermark = mark_get(UsageMark.ROLLUP_WATERMARK)
    if watermark is None:
        return result
    seen_before = watermark - timedelta(seconds=settings.GATEWAY_USAGE_ROLLUP_OVERLAP_SECONDS)
    for _ in range(100_000):  # bounded: at most 1e9 rows per run
        if max_rows is not None and result.deleted >= max_rows:
            break
        with rollup_lock():
            ids = list(
                UsageEvent.objects.filter(created_at__lt=cutoff, ingested_at__lt=seen_before)
                .order_by("id")
                .values_list("id", flat=True)[:_PURGE_CHUNK]
            )
            if not ids:
                break
            _purged_add(_event_groups(UsageEvent.objects.filter(id__in=ids)))
            UsageAttempt.objects.filter(event_id__in=ids).delete()
            UsageEvent.objects.filter(id__in=ids).delete()
            result.deleted += len(ids)
    if result.deleted:
        mark_set(UsageMark.PURGED_BEFORE, cutoff)
        logger.info(
            "usage.retention_done",
            extra={"deleted": result.deleted, "cutoff": cutoff.isoformat()},
        )
    return result
