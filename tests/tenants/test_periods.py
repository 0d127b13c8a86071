"""Budget periods are calendar periods in the tenant's time zone."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tenants.periods import budget_period_bounds


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def test_daily_period_starts_at_local_midnight_not_utc():
    # 23:30 UTC on Jan 31 is already Feb 1 in Tokyo (UTC+9).
    bounds = budget_period_bounds(
        period="daily", tz_name="Asia/Tokyo", now=at("2025-01-31T23:30:00+00:00")
    )
    assert bounds.key == "d2025-02-01"
    assert bounds.start == at("2025-02-01T00:00:00+09:00")
    assert bounds.end == at("2025-02-02T00:00:00+09:00")


def test_one_instant_falls_in_different_days_for_different_zones():
    now = at("2025-03-10T03:00:00+00:00")
    assert budget_period_bounds(period="daily", tz_name="UTC", now=now).key == "d2025-03-10"
    assert (
        budget_period_bounds(period="daily", tz_name="America/Los_Angeles", now=now).key
        == "d2025-03-09"
    )


def test_monthly_period_rolls_over_at_local_month_start():
    before = budget_period_bounds(
        period="monthly", tz_name="America/New_York", now=at("2025-03-01T04:59:59+00:00")
    )
    after = budget_period_bounds(
        period="monthly", tz_name="America/New_York", now=at("2025-03-01T05:00:00+00:00")
    )
    assert (before.key, after.key) == ("m2025-02", "m2025-03")
    assert before.end == after.start == at("2025-03-01T00:00:00-05:00")


def test_december_rolls_into_next_year():
    bounds = budget_period_bounds(
        period="monthly", tz_name="UTC", now=at("2024-12-31T12:00:00+00:00")
    )
    assert bounds.end == at("2025-01-01T00:00:00+00:00")


def test_weekly_period_is_the_iso_week_from_local_monday():
    # Sunday 23:00 in Berlin is still the week that began Monday Mar 3.
    bounds = budget_period_bounds(
        period="weekly", tz_name="Europe/Berlin", now=at("2025-03-09T23:00:00+01:00")
    )
    assert bounds.key == "w2025-03-03"
    assert bounds.start == at("2025-03-03T00:00:00+01:00")
    assert bounds.end == at("2025-03-10T00:00:00+01:00")


def test_a_dst_day_is_23_hours_long():
    bounds = budget_period_bounds(
        period="daily", tz_name="Europe/Paris", now=at("2025-03-30T12:00:00+02:00")
    )
    assert (bounds.end - bounds.start).total_seconds() == 23 * 3600


def test_lifetime_has_no_end_and_a_counter_that_never_expires():
    bounds = budget_period_bounds(
        period="lifetime", tz_name="UTC", now=at("2025-01-01T00:00:00+00:00")
    )
    assert bounds.key == "life" and bounds.end is None
    assert bounds.counter_ttl_ms(at("2025-01-01T00:00:00+00:00")) is None


def test_period_counter_outlives_its_period_for_late_settlements():
    now = at("2025-06-14T23:59:00+00:00")
    bounds = budget_period_bounds(period="daily", tz_name="UTC", now=now)
    assert bounds.counter_ttl_ms(now) > 60_000 * 60 * 24


def test_unknown_period_is_an_error():
    with pytest.raises(ValueError):
        budget_period_bounds(period="hourly", tz_name="UTC", now=at("2025-01-01T00:00:00+00:00"))
