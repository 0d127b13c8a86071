"""Waiting for usage events to reach the database, whatever the write mode."""

from __future__ import annotations

import asyncio
import time

from usage.models import UsageEvent


async def usage_events_settled(expected: int, *, timeout_s: float = 10.0) -> int:
    """Wait (bounded) until at least `expected` usage events are stored; return the count."""
    deadline = time.monotonic() + timeout_s
    count = await UsageEvent.objects.acount()
    while count < expected and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
        count = await UsageEvent.objects.acount()
    return count
