"""Waiting for usage events to reach the database, whatever the write mode: in stream mode
the stream is drained by the real drain service (what the Celery task runs)."""

from __future__ import annotations

import asyncio
import time

from asgiref.sync import sync_to_async
from django.conf import settings

from usage.models import UsageEvent
from usage.services import usage_events_flush
from usage.stream import usage_stream_drain


def _drain_and_release() -> None:
    """One drain in a pool thread, then that thread's database connection goes back to the
    pool (a pool thread never ends a request, so nothing else would return it)."""
    from django.db import connections

    try:
        usage_stream_drain()
    finally:
        connections.close_all()


async def usage_events_settled(expected: int, *, timeout_s: float = 10.0) -> int:
    """Wait (bounded) until at least `expected` usage events are stored; return the count."""
    deadline = time.monotonic() + timeout_s
    stream_mode = settings.GATEWAY_USAGE_WRITE_MODE == "stream"
    count = await UsageEvent.objects.acount()
    while count < expected and time.monotonic() < deadline:
        if stream_mode:
            await sync_to_async(_drain_and_release, thread_sensitive=False)()
        else:
            await usage_events_flush(max_wait_s=2.0)
        count = await UsageEvent.objects.acount()
        if count < expected:
            await asyncio.sleep(0.02)
    return count
