"""Budget periods: calendar days, ISO weeks and months in the tenant's time zone, or lifetime.

A period is named by a short key ("d2025-06-14", "w2025-06-09", "m2025-06", "life") that the
state store puts in the name of the period's spend counter, so a new period starts from a fresh
counter and the old one simply expires."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from tenants.models import BudgetPeriod

# Spend counters outlive their period by this much, so a request admitted just before midnight
# and settled after it still finds its counter.
PERIOD_COUNTER_GRACE = timedelta(days=2)
LIFETIME_START = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class PeriodBounds:
    key: str
    start: datetime
    end: datetime | None  # None: lifetime, no end

    def counter_ttl_ms(self, now: datetime) -> int | None:
        """How long the period's spend counter should live, or None to keep it."""
        if self.end is None:
            return None
        return max(1, int((self.end + PERIOD_COUNTER_GRACE - now).total_seconds() * 1000))


@lru_cache(maxsize=512)
def tz_get(name: str) -> ZoneInfo:
    """The zone, falling back to UTC for a name the system does not know (validated on save;
    this only guards against a tz database that lost a zone)."""
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def _local_midnight(day: date, tz: ZoneInfo) -> datetime:
    # Where midnight does not exist (DST jumps at 00:00), zoneinfo maps it forward on
    # conversion, which is the first instant of that local day.
    return datetime.combine(day, time(0), tzinfo=tz).astimezone(UTC)


def budget_period_bounds(*, period: str, tz_name: str, now: datetime) -> PeriodBounds:
    """The period containing `now` (aware), as UTC instants [start, end)."""
    if period == BudgetPeriod.LIFETIME:
        return PeriodBounds(key="life", start=LIFETIME_START, end=None)
    tz = tz_get(tz_name)
    today = now.astimezone(tz).date()
    if period == BudgetPeriod.DAILY:
        first, after = today, today + timedelta(days=1)
        key = f"d{first.isoformat()}"
    elif period == BudgetPeriod.WEEKLY:
        first = today - timedelta(days=today.weekday())
        after = first + timedelta(days=7)
        key = f"w{first.isoformat()}"
    elif period == BudgetPeriod.MONTHLY:
        first = today.replace(day=1)
        after = (first + timedelta(days=32)).replace(day=1)
        key = f"m{first.year:04d}-{first.month:02d}"
    else:
        raise ValueError(f"unknown budget period {period!r}")
    return PeriodBounds(key=key, start=_local_midnight(first, tz), end=_local_midnight(after, tz))
