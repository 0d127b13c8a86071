"""Who may see which tenant's usage: superusers see every tenant; a tenant admin (a user with
a tenants.TenantMembership) sees only the tenants they belong to; anyone else sees nothing."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from django.core.exceptions import PermissionDenied

from tenants.models import TenantMembership


def visible_tenant_ids(user) -> list[int] | None:
    """None means every tenant (superuser); a list (maybe empty) limits to those tenants."""
    if not user.is_authenticated or not user.is_active:
        return []
    if user.is_superuser:
        return None
    return list(TenantMembership.objects.filter(user=user).values_list("tenant_id", flat=True))


def tenant_scope(user, requested: int | None) -> list[int] | None:
    """The tenant ids a report for `requested` (or all visible) covers; PermissionDenied if
    the user may not see the requested tenant or any tenant at all."""
    visible = visible_tenant_ids(user)
    if visible is not None and not visible:
        raise PermissionDenied("no tenant access")
    if requested is None:
        return visible
    if visible is not None and requested not in visible:
        raise PermissionDenied("not your tenant")
    return [requested]


def parse_range(
    raw_start: str | None, raw_end: str | None, *, default_days: int = 30
) -> tuple[datetime, datetime]:
    """[start, end) from YYYY-MM-DD (end inclusive as a day) or ISO datetimes, UTC."""

    def parse(raw: str, *, is_end: bool) -> datetime:
        if len(raw) == 10:
            day = date.fromisoformat(raw)
            value = datetime(day.year, day.month, day.day, tzinfo=UTC)
            return value + timedelta(days=1) if is_end else value
        value = datetime.fromisoformat(raw)
        return value if value.tzinfo else value.replace(tzinfo=UTC)

    now = datetime.now(tz=UTC)
    try:
        end = (
            parse(raw_end, is_end=True)
            if raw_end
            else (now.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1))
        )
        start = parse(raw_start, is_end=False) if raw_start else end - timedelta(days=default_days)
        if end <= start:
            raise ValueError("end must be after start")
        if end - start > timedelta(days=3660):
            raise ValueError("range longer than ten years")
    except OverflowError:
        # Dates at the ends of the calendar (9999-12-31 as an end, 0001-01-01 minus the
        # default span, offsets across year 1): a bad parameter, not a server error.
        raise ValueError("date out of range") from None
    return start, end
