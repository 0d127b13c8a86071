"""Liveness and readiness. Readiness checks the database and, when configured, Redis, both at
once, and answers within GATEWAY_READY_TIMEOUT_SECONDS whatever they do: a check that has not
answered by then counts as down (`"database": "down"`, with `"reasons"` saying why)."""

from __future__ import annotations

import asyncio

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection
from django.http import JsonResponse


async def liveness(request):
    return JsonResponse({"status": "ok"})


def _database_ok() -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return True


async def _redis_ok(limit_s: float) -> bool:
    import redis.asyncio as aioredis

    client = aioredis.from_url(
        settings.REDIS_URL, socket_timeout=limit_s, socket_connect_timeout=limit_s
    )
    try:
        return bool(await client.ping())
    finally:
        await client.aclose()


async def _check(check, limit_s: float) -> tuple[str, str | None]:
    try:
        async with asyncio.timeout(limit_s):
            return ("ok", None) if await check else ("down", "check failed")
    except TimeoutError:
        return "down", f"no answer within {limit_s:g} s"
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        return "down", type(exc).__name__


async def readiness(request):
    timeout = settings.GATEWAY_READY_TIMEOUT_SECONDS
    names = ["database"]
    # The check's thread may stay blocked on a dead database after the timeout; the answer
    # does not wait for it.
    checks_to_run = [_check(sync_to_async(_database_ok)(), timeout)]
    if settings.REDIS_URL:
        names.append("redis")
        checks_to_run.append(_check(_redis_ok(timeout), timeout))
    results = await asyncio.gather(*checks_to_run)
    checks = {name: state for name, (state, _) in zip(names, results, strict=True)}
    reasons = {name: reason for name, (_, reason) in zip(names, results, strict=True) if reason}
    ready = all(v == "ok" for v in checks.values())
    body: dict = {"status": "ok" if ready else "unavailable", "checks": checks}
    if reasons:
        body["reasons"] = reasons
    return JsonResponse(body, status=200 if ready else 503)
