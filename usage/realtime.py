"""The last minute of traffic, fresh within a second across every worker process.

Each process counts finished requests in per-second buckets (requests, errors, and a latency
histogram with geometric bucket bounds) plus its requests in flight. With the Redis state store
a background task on the running loop adds what accumulated to Redis every
REALTIME_FLUSH_S (one pipelined round trip, never on the request path), into one hash per
second and scope ("all" and "t<tenant id>") that expires after two minutes; in-flight counts are
published per process with a timestamp, and readers sum the fresh ones. In embedded mode (the
in-process state store) the process's own buckets are the store.

`realtime_begin` is called when a request is admitted, `realtime_observe` once when it is
settled (or refused); both are a few dict updates. Percentiles come from the merged histogram:
the reported value is the upper bound of the bucket holding the rank, so it is within one bucket
(a factor of BUCKET_GROWTH) of the exact value."""

from __future__ import annotations

import asyncio
import bisect
import logging
import math
import os
import socket
import time
import weakref
from collections import defaultdict
from dataclasses import dataclass, field

import redis.asyncio as aioredis

from tenants.state import state_store

logger = logging.getLogger("gateway.usage.realtime")

WINDOW_S = 60
KEY_TTL_S = 120
REALTIME_FLUSH_S = 0.25
IDLE_TICKS = 20
# An in-flight figure older than this belongs to a process that stopped publishing.
INFLIGHT_STALE_MS = 3_000
# One hash tag: every key of the view lives in one cluster slot, so one script can touch all.
KEY_PREFIX = "{gw:rt}"

# The flush as ONE command whatever it carries (per key: mode "i" = HINCRBY, "s" = HSET, then
# the number of field/value pairs and the pairs; every key then expires after ARGV[1] s).
_FLUSH_LUA = """
-- {gw:rt} realtime flush (usage/realtime.py)
local ttl = tonumber(ARGV[1])
local pos = 2
for _, key in ipairs(KEYS) do
  local mode = ARGV[pos]
  local pairs = tonumber(ARGV[pos + 1])
  pos = pos + 2
  for _ = 1, pairs do
    if mode == 'i' then
      redis.call('HINCRBY', key, ARGV[pos], ARGV[pos + 1])
    else
      redis.call('HSET', key, ARGV[pos], ARGV[pos + 1])
    end
    pos = pos + 2
  end
  redis.call('EXPIRE', key, ttl)
end
return #KEYS
"""

# Latency bucket upper bounds in ms: 0.5 ms x 1.25^i up to ~10 minutes, then +inf.
BUCKET_GROWTH = 1.25
BUCKET_BOUNDS_MS: tuple[float, ...] = tuple(
    round(0.5 * BUCKET_GROWTH**i, 3)
    for i in range(math.ceil(math.log(1_200_000) / math.log(BUCKET_GROWTH)) + 1)
)

ALL = "all"


def scope_for_tenant(tenant_id: int | None) -> str:
    return f"t{tenant_id}" if tenant_id is not None else ALL


def bucket_index(latency_ms: float) -> int:
    """Index of the first bound >= latency (len(bounds) for anything above the last)."""
    return bisect.bisect_left(BUCKET_BOUNDS_MS, max(0.0, latency_ms))


def bucket_upper(index: int) -> float:
    return BUCKET_BOUNDS_MS[index] if index < len(BUCKET_BOUNDS_MS) else math.inf


@dataclass(slots=True)
class SecondBucket:
    requests: int = 0
    errors: int = 0
    latency: dict[int, int] = field(default_factory=dict)

    def add(self, other: SecondBucket) -> None:
        self.requests += other.requests
        self.errors += other.errors
        for index, count in other.latency.items():
            self.latency[index] = self.latency.get(index, 0) + count

    def fields(self) -> dict[str, int]:
        out = {"n": self.requests, "e": self.errors}
        out.update({f"b{i}": c for i, c in self.latency.items()})
        return out

    @classmethod
    def from_fields(cls, raw: dict) -> SecondBucket:
        bucket = cls()
        for name, value in raw.items():
            key = name.decode() if isinstance(name, bytes) else name
            count = int(value)
            if key == "n":
                bucket.requests = count
            elif key == "e":
                bucket.errors = count
            elif key.startswith("b"):
                bucket.latency[int(key[1:])] = count
        return bucket


def _is_error(status_code: int, outcome: str) -> bool:
    # Same meaning as the summary's "failed": anything but a successful answer.
    return outcome != "ok" or status_code >= 400


class RealtimeBoard:
    """This process's per-second buckets and in-flight counts."""

    def __init__(self, *, worker: str | None = None) -> None:
        # (scope, second) -> bucket: embedded mode's store (the last window of this process).
        self.local: dict[tuple[str, int], SecondBucket] = {}
        # What has not reached Redis yet.
        self.pending: dict[tuple[str, int], SecondBucket] = {}
        self.inflight: defaultdict[str, int] = defaultdict(int)
        self._flushers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Task] = (
            weakref.WeakKeyDictionary()
        )
        self.worker = worker or f"{socket.gethostname()}:{os.getpid()}"
        # Scopes whose in-flight count changed since the last publish (zero must be published).
        self._inflight_dirty: set[str] = set()
        self._scripts: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    # -- writes (request path: dict updates only) --------------------------------------
    def begin(self, tenant_id: int | None) -> None:
        self._ensure_flusher()
        for scope in (ALL, scope_for_tenant(tenant_id)) if tenant_id is not None else (ALL,):
            self.inflight[scope] += 1
            self._inflight_dirty.add(scope)

    def observe(
        self,
        *,
        tenant_id: int | None,
        latency_ms: float,
        status_code: int,
        outcome: str,
        began: bool,
        now: float | None = None,
    ) -> None:
        # Redis: counts wait in `pending` for the flusher; embedded: `local` is the store.
        table = self.pending if self._ensure_flusher() else self.local
        second = int(now if now is not None else time.time())
        index = bucket_index(latency_ms)
        error = _is_error(status_code, outcome)
        for scope in (ALL, scope_for_tenant(tenant_id)) if tenant_id is not None else (ALL,):
            bucket = table.get((scope, second))
            if bucket is None:
                bucket = table[(scope, second)] = SecondBucket()
            bucket.requests += 1
            bucket.errors += error
            latency = bucket.latency
            latency[index] = latency.get(index, 0) + 1
            if began:
                self.inflight[scope] = max(0, self.inflight[scope] - 1)
                self._inflight_dirty.add(scope)
        if table is self.local:
            self._prune(second)

    def _prune(self, second: int) -> None:
        if len(self.local) < 512:
            return
        oldest = second - WINDOW_S - 1
        for key in [k for k in self.local if k[1] < oldest]:
            del self.local[key]

    # -- reads (embedded mode) ----------------------------------------------------------
    def local_snapshot(self, scope: str, now: float) -> tuple[dict[int, SecondBucket], int]:
        second = int(now)
        buckets = {
            s: self.local[(scope, s)]
            for s in range(second - WINDOW_S + 1, second + 1)
            if (scope, s) in self.local
        }
        return buckets, self.inflight.get(scope, 0)

    # -- Redis publishing ---------------------------------------------------------------
    def _ensure_flusher(self) -> bool:
        """True when counts go to Redis (a flusher runs on the current loop, if any)."""
        if not hasattr(state_store(), "client"):
            return False  # embedded: local buckets are the store
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return True  # no loop (sync code): flushed by the next flush() call
        task = self._flushers.get(loop)
        if task is None or task.done():
            self._flushers[loop] = loop.create_task(self._flush_forever())
        return True

    async def _flush_forever(self) -> None:
        """Flushes every REALTIME_FLUSH_S; ends after IDLE_TICKS ticks with nothing to send
        and nothing in flight (the next observation starts it again)."""
        idle = 0
        while idle < IDLE_TICKS:
            busy = bool(self.pending or self._inflight_dirty or any(self.inflight.values()))
            idle = 0 if busy else idle + 1
            try:
                # The first flush runs at once: the flusher's connection and script are set
                # up while the process is cold, not in the middle of later traffic.
                await self.flush()
            except Exception:
                logger.warning("realtime.flush_failed", exc_info=True)
            await asyncio.sleep(REALTIME_FLUSH_S)

    def reset(self) -> None:
        self.local.clear()
        self.pending.clear()
        self.inflight.clear()
        self._inflight_dirty.clear()

    def _script(self, store):
        """The flush script on this loop's own connection (never one the request path may be
        waiting for)."""
        loop = asyncio.get_running_loop()
        script = self._scripts.get(loop)
        if script is None:
            client = aioredis.Redis.from_url(store.url, socket_timeout=5.0)
            script = self._scripts[loop] = client.register_script(_FLUSH_LUA)
        return script

    async def flush(self) -> None:
        """Adds pending buckets and publishes in-flight counts: one EVALSHA, however many
        requests it carries (so never a per-request Redis command)."""
        store = state_store()
        if not hasattr(store, "client"):
            self.pending.clear()
            return
        pending, self.pending = self.pending, {}
        dirty = self._inflight_dirty | {s for s, n in self.inflight.items() if n}
        self._inflight_dirty = set()
        if not pending and not dirty:
            return
        now_ms = int(time.time() * 1000)
        keys: list[str] = []
        args: list[str | int] = [KEY_TTL_S]
        for (scope, second), bucket in pending.items():
            keys.append(f"{KEY_PREFIX}:{scope}:{second}")
            fields = bucket.fields()
            args += ["i", len(fields)]
            for name, value in fields.items():
                args += [name, value]
        for scope in dirty:
            keys.append(f"{KEY_PREFIX}:inflight:{scope}")
            args += ["s", 1, self.worker, f"{self.inflight.get(scope, 0)}:{now_ms}"]
        try:
            await self._script(store)(keys=keys, args=args)
        except Exception:
            # Put the counts back: they are added on the next flush instead of being lost.
            for key, bucket in pending.items():
                self.pending.setdefault(key, SecondBucket()).add(bucket)
            self._inflight_dirty |= dirty
            raise


_board = RealtimeBoard()


def realtime_board() -> RealtimeBoard:
    return _board


def realtime_begin(*, tenant_id: int | None) -> None:
    """A request was admitted (counts as in flight until its realtime_observe)."""
    _board.begin(tenant_id)


def realtime_observe(
    *,
    tenant_id: int | None,
    latency_ms: float,
    status_code: int,
    outcome: str,
    began: bool = True,
) -> None:
    """A request finished (settled or refused). `began`: realtime_begin was called for it."""
    _board.observe(
        tenant_id=tenant_id,
        latency_ms=latency_ms,
        status_code=status_code,
        outcome=outcome,
        began=began,
    )


async def realtime_flush() -> None:
    await _board.flush()


# -- the read side ---------------------------------------------------------------------------
@dataclass(slots=True)
class RealtimeStats:
    window_s: int
    requests: int
    errors: int
    in_flight: int
    p50_ms: float | None
    p95_ms: float | None
    series: list[tuple[int, int, int]]  # (second, requests, errors), oldest first

    @property
    def rps(self) -> float:
        return self.requests / self.window_s


def histogram_percentile(histogram: dict[int, int], q: float) -> float | None:
    """Upper bound of the bucket holding rank ceil(q x n) (nearest rank), None when empty."""
    total = sum(histogram.values())
    if total == 0:
        return None
    rank = max(1, math.ceil(q * total))
    seen = 0
    for index in sorted(histogram):
        seen += histogram[index]
        if seen >= rank:
            return bucket_upper(index)
    return bucket_upper(max(histogram))


def _stats(buckets: dict[int, SecondBucket], in_flight: int, now: float) -> RealtimeStats:
    second = int(now)
    merged = SecondBucket()
    series = []
    for s in range(second - WINDOW_S + 1, second + 1):
        bucket = buckets.get(s)
        if bucket is not None:
            merged.add(bucket)
        series.append((s, bucket.requests if bucket else 0, bucket.errors if bucket else 0))
    return RealtimeStats(
        window_s=WINDOW_S,
        requests=merged.requests,
        errors=merged.errors,
        in_flight=in_flight,
        p50_ms=histogram_percentile(merged.latency, 0.50),
        p95_ms=histogram_percentile(merged.latency, 0.95),
        series=series,
    )


async def realtime_stats(
    *, tenant_ids: list[int] | None, now: float | None = None
) -> RealtimeStats:
    """The last WINDOW_S seconds (the current one included) for these tenants, or for all
    (None): their per-second buckets and histograms merged, their in-flight counts summed."""
    now = now if now is not None else time.time()
    scopes = [ALL] if tenant_ids is None else [scope_for_tenant(t) for t in tenant_ids]
    second = int(now)
    seconds = list(range(second - WINDOW_S + 1, second + 1))
    buckets: dict[int, SecondBucket] = {}
    in_flight = 0
    store = state_store()
    if not hasattr(store, "client"):
        for scope in scopes:
            local, count = _board.local_snapshot(scope, now)
            in_flight += count
            for s, bucket in local.items():
                buckets.setdefault(s, SecondBucket()).add(bucket)
        return _stats(buckets, in_flight, now)
    pipe = store.client().pipeline(transaction=False)
    for scope in scopes:
        for s in seconds:
            pipe.hgetall(f"{KEY_PREFIX}:{scope}:{s}")
        pipe.hgetall(f"{KEY_PREFIX}:inflight:{scope}")
    replies = await pipe.execute() if scopes else []
    now_ms = int(now * 1000)
    per_scope = len(seconds) + 1
    for offset in range(0, len(replies), per_scope):
        *raw_buckets, raw_inflight = replies[offset : offset + per_scope]
        for s, raw in zip(seconds, raw_buckets, strict=True):
            if raw:
                buckets.setdefault(s, SecondBucket()).add(SecondBucket.from_fields(raw))
        for value in raw_inflight.values():
            text = value.decode() if isinstance(value, bytes) else value
            count, _, stamp = text.partition(":")
            if stamp and now_ms - int(stamp) <= INFLIGHT_STALE_MS:
                in_flight += max(0, int(count))
    return _stats(buckets, in_flight, now)
