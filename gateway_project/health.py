"""Liveness and readiness. Readiness checks the database and, when configured, Redis."""

from __future__ import annotations

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection
from django.http import JsonResponse


async def liveness(request):
    return JsonResponse({"status": "ok"})


def _database_ok() -> bool:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return True
    except Exception:  # noqa: BLE001 - any failure means not ready
        return False


async def _redis_ok() -> bool | None:
    if not settings.REDIS_URL:
        return None
    import redis.asyncio as aioredis

    client = aioredis.from_url(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
    try:
        return bool(await client.ping())
    except Exception:  # noqa: BLE001
        return False
    finally:
        await client.aclose()


async def readiness(request):
    database = await sync_to_async(_database_ok)()
    redis_state = await _redis_ok()
    checks = {"database": "ok" if database else "down"}
    if redis_state is not None:
        checks["redis"] = "ok" if redis_state else "down"
    ready = all(v == "ok" for v in checks.values())
    return JsonResponse(
        {"status": "ok" if ready else "unavailable", "checks": checks}, status=200 if ready else 503
    )
