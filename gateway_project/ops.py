"""Operational state read from Redis: the usage stream's backlog and drain lag, the drain's and
beat's heartbeats. One pipelined round trip; the same parsing for the async reader (health)
and the sync one (the /metrics collector, the alert rules in Celery).

Lag is the age of the oldest entry still in the stream: drained entries are deleted (XDEL)
once committed, so the stream holds exactly what has not reached PostgreSQL yet."""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import asdict, dataclass
from typing import Any

import orjson
import redis
import redis.asyncio as aioredis
from django.conf import settings

from gateway_project.celery import BEAT_HEARTBEAT_KEY
from usage.drainer import DRAIN_HEARTBEAT_KEY

_TIMEOUT_S = 0.8


@dataclass(slots=True)
class PipelineStatus:
    backlog: int = 0  # entries in the usage stream (not yet in PostgreSQL)
    pending: int = 0  # of those, delivered to a consumer and not yet acknowledged
    lag_seconds: float = 0.0  # age of the oldest entry in the stream
    drain_heartbeat_age_seconds: float | None = None  # None: never seen (or expired)
    beat_heartbeat_age_seconds: float | None = None
    dead_letters: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def drain_alive(self) -> bool:
        age = self.drain_heartbeat_age_seconds
        return age is not None and age <= settings.GATEWAY_OPS_HEARTBEAT_STALE_SECONDS

    @property
    def beat_alive(self) -> bool:
        age = self.beat_heartbeat_age_seconds
        return age is not None and age <= settings.GATEWAY_OPS_HEARTBEAT_STALE_SECONDS


def _queue(pipe) -> None:
    stream = settings.GATEWAY_USAGE_STREAM
    pipe.xlen(stream)
    pipe.xrange(stream, "-", "+", count=1)
    pipe.get(DRAIN_HEARTBEAT_KEY)
    pipe.get(BEAT_HEARTBEAT_KEY)
    pipe.xpending(stream, settings.GATEWAY_USAGE_STREAM_GROUP)
    pipe.xlen(settings.GATEWAY_USAGE_DEAD_LETTER_STREAM)


def _parse(results: list[Any], now: float) -> PipelineStatus:
    length, first, drain_raw, beat_raw, pending, dead = results
    status = PipelineStatus()
    if not isinstance(length, Exception):
        status.backlog = int(length)
    if isinstance(first, list) and first:
        entry_id = first[0][0]
        entry_id = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
        status.lag_seconds = max(0.0, now - int(entry_id.split("-", 1)[0]) / 1000)
    if isinstance(drain_raw, bytes | str):
        try:
            status.drain_heartbeat_age_seconds = max(
                0.0, now - float(orjson.loads(drain_raw)["at"])
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            pass
    if isinstance(beat_raw, bytes | str):
        try:
            status.beat_heartbeat_age_seconds = max(0.0, now - float(beat_raw))
        except ValueError:
            pass
    if isinstance(pending, dict):
        status.pending = int(pending.get("pending") or 0)
    if not isinstance(dead, Exception):
        status.dead_letters = int(dead)
    return status


_sync_clients: dict[int, redis.Redis] = {}
_async_clients: dict[int, aioredis.Redis] = {}


def _sync_client() -> redis.Redis:
    pid = os.getpid()
    client = _sync_clients.get(pid)
    if client is None:
        client = _sync_clients[pid] = redis.Redis.from_url(
            settings.REDIS_URL, socket_timeout=_TIMEOUT_S, socket_connect_timeout=_TIMEOUT_S
        )
    return client


def _async_client() -> aioredis.Redis:
    loop = asyncio.get_running_loop()
    client = _async_clients.get(id(loop))
    if client is None:
        client = _async_clients[id(loop)] = aioredis.Redis.from_url(
            settings.REDIS_URL, socket_timeout=_TIMEOUT_S, socket_connect_timeout=_TIMEOUT_S
        )
    return client


def pipeline_status_get(*, client: redis.Redis | None = None) -> PipelineStatus | None:
    """None when there is no Redis (embedded mode: usage is written in-process)."""
    if not settings.REDIS_URL:
        return None
    pipe = (client or _sync_client()).pipeline(transaction=False)
    _queue(pipe)
    return _parse(pipe.execute(raise_on_error=False), time.time())


async def pipeline_status_aget() -> PipelineStatus | None:
    if not settings.REDIS_URL:
        return None
    pipe = _async_client().pipeline(transaction=False)
    _queue(pipe)
    return _parse(await pipe.execute(raise_on_error=False), time.time())
