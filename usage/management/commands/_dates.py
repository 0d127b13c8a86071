"""Date arguments of the usage commands: YYYY-MM-DD (UTC midnight) or an ISO datetime."""

from __future__ import annotations

from datetime import UTC, datetime

from django.core.management.base import CommandError


def parse_when(raw: str) -> datetime:
    try:
        value = datetime.fromisoformat(raw)
    except ValueError as exc:
        raise CommandError(f"not a date: {raw!r} (use YYYY-MM-DD)") from exc
    return value if value.tzinfo else value.replace(tzinfo=UTC)
