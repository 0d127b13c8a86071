"""Liveness (`/health`: version and uptime, no I/O) and readiness (`/health/ready`: database,
Redis, usage drain and beat, answered within GATEWAY_READY_TIMEOUT_SECONDS whatever they do: a
check that has not answered by then counts as down, with `"reasons"` saying why).

Readiness is 503 only when the database or Redis is down (this process cannot serve). A
stale drain, a missing beat or a lagging usage stream make it "degraded" with 200: web
processes can still serve, and taking them out of a load balancer would not help; the
`UsageDrainStale` / `BeatDown` / `UsageDrainLag` alerts page for those."""

from __future__ import annotations

import asyncio
import time
from importlib import metadata

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection
from django.http import JsonResponse

from gateway_project.ops import pipeline_status_aget

_STARTED_AT = time.time()
_STARTED_MONOTONIC = time.monotonic()

try:
    VERSION = metadata.version("llm-gateway")
except metadata.PackageNotFoundError:  # running from a checkout that was never installed
    VERSION = "0+unknown"


async def liveness(request):
    return JsonResponse(
        {
            "status": "ok",
            "version": VERSION,
            "started_at": round(_STARTED_AT, 3),
            "uptime_seconds": round(time.monotonic() - _STARTED_MONOTONIC, 3),
        }
    )


def _database_ok() -> bool:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return True
    except Exception:  # noqa: BLE001 - any failure means not ready
        return False
    finally:
        connection.close()


async def _database_check() -> tuple[str, str | None]:
    # The check's thread may stay blocked on a dead database after the timeout; the answer
    # does not wait for it.
    limit_s = settings.GATEWAY_READY_TIMEOUT_SECONDS
    try:
        ok = await asyncio.wait_for(sync_to_async(_database_ok, thread_sensitive=False)(), limit_s)
    except TimeoutError:
        return "down", f"no answer within {limit_s:g} s"
    return ("ok", None) if ok else ("down", "check failed")


async def _pipeline_check() -> tuple[str, dict | None]:
    """("ok"|"down"|"timeout", usage/beat facts) from one Redis round trip."""
    try:
        status = await asyncio.wait_for(
            pipeline_status_aget(), settings.GATEWAY_READY_TIMEOUT_SECONDS
        )
    except TimeoutError:
        return "timeout", None
    except Exception:  # noqa: BLE001 - connection refused, auth, anything: Redis is not usable
        return "down", None
    if status is None:
        return "ok", None
    stale = settings.GATEWAY_OPS_HEARTBEAT_STALE_SECONDS
    usage = {
        "mode": settings.GATEWAY_USAGE_WRITE_MODE,
        "backlog": status.backlog,
        "pending": status.pending,
        "dead_letters": status.dead_letters,
        "drain_lag_seconds": round(status.lag_seconds, 3),
        "drain_heartbeat_age_seconds": _rounded(status.drain_heartbeat_age_seconds),
        "drain": "ok" if status.drain_alive else "stale",
        "lag": "ok"
        if status.lag_seconds <= settings.GATEWAY_OPS_DRAIN_LAG_READY_SECONDS
        else "lagging",
        "stale_after_seconds": stale,
    }
    beat = {
        "status": "ok" if status.beat_alive else "stale",
        "heartbeat_age_seconds": _rounded(status.beat_heartbeat_age_seconds),
    }
    return "ok", {"usage": usage, "beat": beat}


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


async def readiness(request):
    checks: dict[str, object] = {}
    tasks = [_database_check()]
    if settings.REDIS_URL:
        tasks.append(_pipeline_check())
    results = await asyncio.gather(*tasks)
    checks["database"], database_reason = results[0]
    details: dict | None = None
    if settings.REDIS_URL:
        checks["redis"], details = results[1]
    else:
        checks["usage"] = {"mode": settings.GATEWAY_USAGE_WRITE_MODE, "drain": "in-process"}
    if details:
        checks.update(details)
    ready = checks["database"] == "ok" and checks.get("redis", "ok") == "ok"
    degraded = bool(
        details
        and (
            details["usage"]["drain"] != "ok"
            or details["usage"]["lag"] != "ok"
            or details["beat"]["status"] != "ok"
        )
    )
    status = "unavailable" if not ready else ("degraded" if degraded else "ok")
    body: dict[str, object] = {"status": status, "version": VERSION, "checks": checks}
    if database_reason:
        body["reasons"] = {"database": database_reason}
    return JsonResponse(body, status=200 if ready else 503)
