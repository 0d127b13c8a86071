"""The usage stream (stream mode). Settlement appends each event to a Redis stream in the same
atomic call (tenants' Lua script: XADD <GATEWAY_USAGE_STREAM> * e <orjson payload>); a Celery
worker drains it through the consumer group <GATEWAY_USAGE_STREAM_GROUP> in batches into
PostgreSQL and acknowledges an entry only after its batch committed.

Crash safety: an entry is delivered to one consumer and stays pending until XACK. A consumer
that dies (SIGKILL) leaves its entries pending; any live consumer claims them with XAUTOCLAIM
once idle longer than GATEWAY_USAGE_CLAIM_MIN_IDLE_MS and writes them again; the insert is
idempotent on request id, so a batch committed just before the crash is not duplicated."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from dataclasses import dataclass
from typing import Any

import orjson
import redis
import redis.asyncio as aioredis
from django.conf import settings

from usage.services import UsagePayloadInvalid, usage_events_write_each

logger = logging.getLogger("gateway.usage")

PAYLOAD_FIELD = b"e"
# redis-py 8 defaults socket_timeout to 5 s; a blocking read must return before that.
_SOCKET_TIMEOUT_S = 5.0
_PRUNE_IDLE_MS = 3_600_000


@dataclass(slots=True)
class DrainResult:
    read: int = 0
    claimed: int = 0
    written: int = 0
    acked: int = 0
    dead_lettered: int = 0
    batches: int = 0

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


def consumer_name() -> str:
    """Stable for the life of a worker process, distinct across processes and hosts."""
    return f"{socket.gethostname()}:{os.getpid()}"


def usage_payload_encode(payload: dict[str, Any]) -> dict[bytes, bytes]:
    return {PAYLOAD_FIELD: orjson.dumps(payload)}


# -- append (async, request path) -----------------------------------------------------------

_async_clients: dict[int, aioredis.Redis] = {}


def _async_client() -> aioredis.Redis:
    loop = asyncio.get_running_loop()
    client = _async_clients.get(id(loop))
    if client is None:
        client = aioredis.Redis.from_url(settings.REDIS_URL, socket_timeout=_SOCKET_TIMEOUT_S)
        _async_clients[id(loop)] = client
    return client


async def usage_stream_append(*, payload: dict[str, Any]) -> str:
    """XADD one event (for events not carried by the settlement script, e.g. rejections)."""
    entry_id = await _async_client().xadd(
        settings.GATEWAY_USAGE_STREAM, usage_payload_encode(payload)
    )
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)


# -- drain (sync, Celery worker) --------------------------------------------------------------

_sync_clients: dict[int, redis.Redis] = {}


def stream_client() -> redis.Redis:
    # Keyed by pid: a prefork child must not share its parent's sockets.
    pid = os.getpid()
    client = _sync_clients.get(pid)
    if client is None:
        client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=_SOCKET_TIMEOUT_S)
        _sync_clients[pid] = client
    return client


def usage_stream_group_ensure(*, client: redis.Redis) -> None:
    try:
        client.xgroup_create(
            settings.GATEWAY_USAGE_STREAM,
            settings.GATEWAY_USAGE_STREAM_GROUP,
            id="0",
            mkstream=True,
        )
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def _block_ms() -> int:
    ceiling = int(_SOCKET_TIMEOUT_S * 1000) - 500
    return max(1, min(settings.GATEWAY_USAGE_DRAIN_BLOCK_MS, ceiling))


def _claim(client: redis.Redis, consumer: str, count: int) -> list[tuple[bytes, dict]]:
    """Entries idle longer than the min-idle time (their consumer died or hung), now ours."""
    claimed: list[tuple[bytes, dict]] = []
    cursor: bytes | str = "0-0"
    for _ in range(100):  # bounded walk of the pending list
        reply = client.xautoclaim(
            settings.GATEWAY_USAGE_STREAM,
            settings.GATEWAY_USAGE_STREAM_GROUP,
            consumer,
            min_idle_time=settings.GATEWAY_USAGE_CLAIM_MIN_IDLE_MS,
            start_id=cursor,
            count=count - len(claimed),
        )
        cursor, entries = reply[0], reply[1]
        claimed.extend(entries)
        # Entries deleted from the stream while pending come back in reply[2]: ack them.
        if len(reply) > 2 and reply[2]:
            client.xack(
                settings.GATEWAY_USAGE_STREAM, settings.GATEWAY_USAGE_STREAM_GROUP, *reply[2]
            )
        if cursor in (b"0-0", "0-0") or len(claimed) >= count:
            break
    return claimed


def _read_new(client: redis.Redis, consumer: str, count: int, block_ms: int | None):
    reply = client.xreadgroup(
        settings.GATEWAY_USAGE_STREAM_GROUP,
        consumer,
        {settings.GATEWAY_USAGE_STREAM: ">"},
        count=count,
        block=block_ms,
    )
    return reply[0][1] if reply else []


def _fill_batch(
    client: redis.Redis, consumer: str, entries: list, batch_size: int, deadline: float
):
    """Under a steady trickle a blocking read returns one or two entries at a time, and the
    per-batch cost (a transaction, an ack) would be paid per event: linger a moment for the
    batch to fill, then take what has arrived."""
    linger_s = settings.GATEWAY_USAGE_DRAIN_LINGER_MS / 1000
    if len(entries) >= batch_size or linger_s <= 0:
        return entries
    time.sleep(max(0.0, min(linger_s, deadline - time.monotonic())))
    more = _read_new(client, consumer, batch_size - len(entries), None)
    return entries + more if more else entries


def _decode(entries) -> tuple[list[tuple[bytes, dict]], list[tuple[bytes, bytes, str]]]:
    good: list[tuple[bytes, dict]] = []
    bad: list[tuple[bytes, bytes, str]] = []
    for entry_id, fields in entries:
        raw = (fields or {}).get(PAYLOAD_FIELD, b"")
        try:
            payload = orjson.loads(raw)
            if not isinstance(payload, dict):
                raise UsagePayloadInvalid("payload is not an object")
        except (orjson.JSONDecodeError, UsagePayloadInvalid) as exc:
            bad.append((entry_id, raw, f"{type(exc).__name__}: {exc}"))
            continue
        good.append((entry_id, payload))
    return good, bad


def _process(client: redis.Redis, entries, result: DrainResult) -> None:
    good, bad = _decode(entries)
    report = usage_events_write_each(payloads=[payload for _, payload in good])
    # Committed: from here on a crash only means a redelivery that writes nothing new.
    result.written += report.written
    rejected_ids = {str(p.get("request_id")) for p, _ in report.rejected}
    reasons = {str(p.get("request_id")): reason for p, reason in report.rejected}
    for entry_id, payload in good:
        request_id = str(payload.get("request_id"))
        if request_id in rejected_ids:
            bad.append((entry_id, orjson.dumps(payload), reasons[request_id]))
    ids = [entry_id for entry_id, _ in entries]
    pipe = client.pipeline(transaction=True)
    for entry_id, raw, reason in bad:
        pipe.xadd(
            settings.GATEWAY_USAGE_DEAD_LETTER_STREAM,
            {b"e": raw or b"", b"error": reason.encode()[:500], b"id": entry_id},
        )
    pipe.xack(settings.GATEWAY_USAGE_STREAM, settings.GATEWAY_USAGE_STREAM_GROUP, *ids)
    # Drained entries leave the stream so it holds only what is not yet in PostgreSQL.
    pipe.xdel(settings.GATEWAY_USAGE_STREAM, *ids)
    pipe.execute()
    result.acked += len(ids)
    result.dead_lettered += len(bad)
    if bad:
        logger.error("usage.stream_dead_lettered", extra={"count": len(bad)})


def usage_stream_consumers_prune(*, client: redis.Redis, keep: str) -> int:
    """Forget consumers that own nothing and were idle for an hour (dead worker processes)."""
    removed = 0
    for info in client.xinfo_consumers(
        settings.GATEWAY_USAGE_STREAM, settings.GATEWAY_USAGE_STREAM_GROUP
    ):
        name = info["name"].decode() if isinstance(info["name"], bytes) else info["name"]
        if name != keep and info["pending"] == 0 and info["idle"] > _PRUNE_IDLE_MS:
            client.xgroup_delconsumer(
                settings.GATEWAY_USAGE_STREAM, settings.GATEWAY_USAGE_STREAM_GROUP, name
            )
            removed += 1
    return removed


def usage_stream_drain(
    *,
    consumer: str | None = None,
    batch_size: int | None = None,
    max_seconds: float | None = None,
    client: redis.Redis | None = None,
) -> DrainResult:
    """Drain the stream until it is empty or the time budget is spent. Idle pending entries
    of dead consumers are claimed first."""
    client = client or stream_client()
    consumer = consumer or consumer_name()
    batch_size = max(1, batch_size or settings.GATEWAY_USAGE_DRAIN_BATCH)
    budget = settings.GATEWAY_USAGE_DRAIN_MAX_SECONDS if max_seconds is None else max_seconds
    deadline = time.monotonic() + budget
    result = DrainResult()
    usage_stream_group_ensure(client=client)
    usage_stream_consumers_prune(client=client, keep=consumer)
    claiming = True
    while time.monotonic() < deadline:
        entries = _claim(client, consumer, batch_size) if claiming else []
        if entries:
            result.claimed += len(entries)
        else:
            claiming = False
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            entries = _read_new(
                client, consumer, batch_size, min(_block_ms(), max(1, remaining_ms))
            )
            if not entries:
                break
            entries = _fill_batch(client, consumer, entries, batch_size, deadline)
        result.read += len(entries)
        result.batches += 1
        _process(client, entries, result)
    if result.read:
        logger.info("usage.stream_drained", extra={"consumer": consumer, **result.as_dict()})
    return result


def usage_stream_backlog(*, client: redis.Redis | None = None) -> dict[str, int]:
    """Entries in the stream and entries delivered but not acknowledged (for health/tests)."""
    client = client or stream_client()
    usage_stream_group_ensure(client=client)
    pending = client.xpending(settings.GATEWAY_USAGE_STREAM, settings.GATEWAY_USAGE_STREAM_GROUP)
    return {
        "length": int(client.xlen(settings.GATEWAY_USAGE_STREAM)),
        "pending": int(pending["pending"]),
    }
