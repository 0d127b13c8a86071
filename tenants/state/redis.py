"""Redis state store: every step is one EVALSHA of a Lua script (tenants/state/lua/).

Key naming: every key carries one hash tag, the tag of the usage stream's name (Redis hashes
only what is inside {...}, or the whole name when there are no braces). So the two scopes of a
request, the config version and the usage stream all live in one Redis Cluster slot and the
settlement script may XADD the event in the same atomic call. Keys:

    gw:{<tag>}:config_version
    gw:{<tag>}:t:<tenant_id>:<structure>[:<period>]           tenant scope
    gw:{<tag>}:t:<tenant_id>:k:<key_id>:<structure>[:<period>] key scope

One slot serves one gateway deployment comfortably (a Lua admission is a few dozen
microseconds); see docs/limits.md."""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
import weakref
from pathlib import Path

import redis
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from tenants.state.base import (
    AdmitRequest,
    AdmitResult,
    BreakerPolicy,
    BreakerStatus,
    DenialKind,
    RateInfo,
    ScopeKeys,
    ScopeLimits,
    SettleRequest,
    SettleResult,
    SpendChange,
    StateStore,
)
from tenants.state.resp import RespClient, RespNoScript, bulk, bulk_int, command

_LUA_DIR = Path(__file__).resolve().parent / "lua"


class _Script:
    def __init__(self, name: str) -> None:
        self.source = (_LUA_DIR / f"{name}.lua").read_text()
        self.sha = hashlib.sha1(self.source.encode(), usedforsecurity=False).hexdigest()


def stream_hash_tag(stream: str) -> str:
    """The part of the stream's name Redis Cluster hashes (what is inside the first {...})."""
    start = stream.find("{")
    if start != -1:
        end = stream.find("}", start + 1)
        if end > start + 1:
            return stream[start + 1 : end]
    return stream


def _limits_argv(scope: ScopeLimits) -> list[int]:
    def value(limit: int | None) -> int:
        return -1 if limit is None else int(limit)

    return [
        value(scope.rpm),
        value(scope.tpm),
        value(scope.max_concurrency),
        value(scope.budget_nano),
    ]


def _scope_fragment(scope: ScopeLimits) -> bytes:
    return b"".join(bulk(name.encode()) for name in scope.keys.as_list())


def _limits_fragment(scope: ScopeLimits) -> bytes:
    return b"".join(bulk_int(value) for value in _limits_argv(scope))


def _rate(limit: int, remaining: int, reset_ms: int) -> RateInfo | None:
    return None if limit < 0 else RateInfo(limit=limit, remaining=remaining, reset_ms=reset_ms)


class RedisStateStore(StateStore):
    name = "redis"
    supports_stream = True

    _admit = _Script("admit")
    _settle = _Script("settle")
    _bump = _Script("config_bump")
    _breaker = _Script("breaker")
    _ewma = _Script("ewma")
    _inflight = _Script("inflight")

    def __init__(self, *, url: str, stream: str, pool_size: int = 64) -> None:
        self.url = url
        self.pool_size = pool_size
        self.stream = stream
        self.prefix = f"gw:{{{stream_hash_tag(stream)}}}:"
        self.version_key = f"{self.prefix}config_version"
        # redis.asyncio connections belong to the event loop that opened them; a server has
        # one loop, tests have many.
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aioredis.Redis] = (
            weakref.WeakKeyDictionary()
        )
        self._sync_client: redis.Redis | None = None
        self._sync_lock = threading.Lock()
        # The hot path's pipelined client (one connection per loop) and the RESP encoding of
        # each scope's key names, which repeat on every request of that key and period.
        self._resp: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, RespClient] = (
            weakref.WeakKeyDictionary()
        )
        # id(scope) -> (scope, keys, limits); the scope itself is kept so its id stays unique.
        self._fragments: dict[int, tuple[ScopeLimits, bytes, bytes]] = {}
        self._version_fragment = bulk(self.version_key.encode())
        self.holds_key = f"{self.prefix}holds"
        self.holds_payload_key = f"{self.prefix}holds:p"
        self.holds_done_key = f"{self.prefix}holds:done"
        self._holds_fragment = bulk(self.holds_key.encode()) + bulk(self.holds_payload_key.encode())
        self._holds_done_fragment = bulk(self.holds_done_key.encode())
        self._stream_fragment = bulk(self.stream.encode())

    # -- connections ---------------------------------------------------------------------
    def client(self) -> aioredis.Redis:
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            # A blocking pool: under a burst, requests wait briefly for a connection instead
            # of failing with "Too many connections".
            pool = aioredis.BlockingConnectionPool.from_url(
                self.url, max_connections=self.pool_size, timeout=5
            )
            client = aioredis.Redis(connection_pool=pool, decode_responses=False)
            self._clients[loop] = client
        return client

    def sync_client(self) -> redis.Redis:
        with self._sync_lock:
            if self._sync_client is None:
                self._sync_client = redis.Redis.from_url(self.url, decode_responses=False)
            return self._sync_client

    async def _evalsha(self, script: _Script, keys: list[str], args: list) -> list:
        client = self.client()
        try:
            return await client.evalsha(script.sha, len(keys), *keys, *args)
        except NoScriptError:
            # Redis restarted or SCRIPT FLUSH: load once more, then it is cached again.
            await client.script_load(script.source)
            return await client.evalsha(script.sha, len(keys), *keys, *args)

    def resp(self) -> RespClient:
        loop = asyncio.get_running_loop()
        client = self._resp.get(loop)
        if client is None:
            client = self._resp[loop] = RespClient(self.url)
        return client

    def _scope_fragments(self, scope: ScopeLimits) -> tuple[bytes, bytes]:
        """(encoded key names, encoded limits) of a scope: both repeat on every request of a
        key in a period (admission caches the ScopeLimits objects themselves)."""
        cached = self._fragments.get(id(scope))
        if cached is not None and cached[0] is scope:
            return cached[1], cached[2]
        if len(self._fragments) >= 50_000:
            self._fragments.clear()  # periods roll over; old names are never used again
        fragments = (_scope_fragment(scope), _limits_fragment(scope))
        self._fragments[id(scope)] = (scope, *fragments)
        return fragments

    async def _evalsha_fast(
        self, script: _Script, head: list[bytes], args: list[bytes], n_keys: int, n_args: int
    ) -> list:
        """EVALSHA over the pipelined client. `head` holds the encoded keys (n_keys of
        them), `args` the encoded arguments (n_args of them; a fragment may hold several)."""
        payload = command(
            3 + n_keys + n_args,
            [b"$7\r\nEVALSHA\r\n", bulk(script.sha.encode()), bulk_int(n_keys), *head, *args],
        )
        client = self.resp()
        try:
            return await client.execute(payload)
        except RespNoScript:
            # Redis restarted or SCRIPT FLUSH: load once more, then it is cached again.
            await self.client().script_load(script.source)
            return await client.execute(payload)

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        resp = self._resp.pop(loop, None)
        if resp is not None:
            resp.close()
        client = self._clients.pop(loop, None)
        if client is not None:
            await client.aclose()
            await client.connection_pool.disconnect()

    # -- naming --------------------------------------------------------------------------
    def scope_keys(
        self, *, scope: str, tenant_id: int, scope_id: int, period_key: str
    ) -> ScopeKeys:
        base = f"{self.prefix}t:{tenant_id}"
        if scope == "key":
            base = f"{base}:k:{scope_id}"
        return ScopeKeys(
            requests=f"{base}:rpm:b",
            tokens=f"{base}:tpm:b",
            token_counts=f"{base}:win:tickets",
            token_total=f"{base}:tpm:sum",
            slots=f"{base}:slots",
            spend=f"{base}:spend:{period_key}",
            reservations=f"{base}:resv:{period_key}",
            reservation_expiry=f"{base}:resv:{period_key}:exp",
            reservation_total=f"{base}:resv:{period_key}:sum",
        )

    # -- the two hot-path steps ----------------------------------------------------------
    async def admit(self, request: AdmitRequest) -> AdmitResult:
        head = [self._version_fragment]
        args = [
            bulk(request.ticket.encode()),
            bulk_int(request.tokens),
            bulk_int(request.reserve_nano),
            bulk_int(request.hold_ms),
            bulk_int(request.window_ms),
            bulk_int(len(request.scopes)),
        ]
        for scope in request.scopes:
            keys_fragment, limits_fragment = self._scope_fragments(scope)
            head.append(keys_fragment)
            args.append(limits_fragment)
        n_scopes = len(request.scopes)
        n_keys, n_args = 1 + 9 * n_scopes, 6 + 4 * n_scopes
        if request.hold is not None:
            head.append(self._holds_fragment)
            args.append(bulk(request.hold))
            n_keys, n_args = n_keys + 2, n_args + 1
        reply = await self._evalsha_fast(self._admit, head, args, n_keys=n_keys, n_args=n_args)
        status, version = int(reply[0]), reply[1].decode()
        if status == 1:
            return AdmitResult(
                outcome="seed", version=version, missing=tuple(int(i) - 1 for i in reply[2:])
            )
        if status == 2:
            kind, scope, retry = (int(v) for v in reply[2:5])
            info = [int(v) for v in reply[5:11]]
            return AdmitResult(
                outcome="denied",
                version=version,
                denial=DenialKind(kind),
                denied_scope=scope - 1,
                retry_after_ms=retry,
                requests=_rate(*info[0:3]),
                tokens=_rate(*info[3:6]),
            )
        info = [int(v) for v in reply[2:8]]
        return AdmitResult(
            outcome="ok", version=version, requests=_rate(*info[0:3]), tokens=_rate(*info[3:6])
        )

    async def settle(self, request: SettleRequest) -> SettleResult:
        head = [self._stream_fragment]
        args = [
            bulk(request.ticket.encode()),
            bulk_int(request.tokens),
            bulk_int(request.cost_nano),
            bulk_int(len(request.scopes)),
            bulk(request.event or b""),
            b"$1\r\n1\r\n" if request.release else b"$1\r\n0\r\n",
            b"$1\r\n1\r\n" if request.allow_missing else b"$1\r\n0\r\n",
        ]
        for scope in request.scopes:
            keys_fragment, limits_fragment = self._scope_fragments(scope)
            head.append(keys_fragment)
            args.append(limits_fragment)
        n_scopes = len(request.scopes)
        n_keys, n_args = 1 + 9 * n_scopes, 7 + 4 * n_scopes
        if request.hold_mode:
            head.append(self._holds_fragment + self._holds_done_fragment)
            args.append(bulk(request.hold_mode.encode()))
            n_keys, n_args = n_keys + 3, n_args + 1
        reply = await self._evalsha_fast(self._settle, head, args, n_keys=n_keys, n_args=n_args)
        if int(reply[0]) == 3:
            return SettleResult(outcome="gone")
        if int(reply[0]) == 1:
            return SettleResult(outcome="seed", missing=tuple(int(i) - 1 for i in reply[2:]))
        spend: list[SpendChange | None] = []
        values = [int(v) for v in reply[2:]]
        for index in range(len(request.scopes)):
            before, after = values[2 * index], values[2 * index + 1]
            spend.append(None if after < 0 else SpendChange(before_nano=before, after_nano=after))
        return SettleResult(outcome="ok", stored_event=int(reply[1]) == 1, spend=tuple(spend))

    # -- unauthenticated traffic per client address (fixed windows) ---------------------------
    def _unauth_key(self, client: str, window_ms: int) -> tuple[str, int]:
        now = int(time.time() * 1000)
        index, left = divmod(now, window_ms)
        return f"{self.prefix}unauth:{client}:{index}", window_ms - left

    async def unauth_hit(self, *, client: str, window_ms: int) -> tuple[int, int]:
        key, left = self._unauth_key(client, window_ms)
        async with self.client().pipeline(transaction=False) as pipe:
            pipe.incr(key)
            pipe.pexpire(key, left + 1000)
            count, _ = await pipe.execute()
        return int(count), left

    async def unauth_count(self, *, client: str, window_ms: int) -> tuple[int, int]:
        key, left = self._unauth_key(client, window_ms)
        value = await self.client().get(key)
        return (0 if value is None else int(value)), left

    # -- seeding and config version ------------------------------------------------------
    async def spend_seed(self, *, keys: ScopeKeys, amount_nano: int, ttl_ms: int | None) -> bool:
        result = await self.client().set(keys.spend, int(amount_nano), nx=True, px=ttl_ms)
        return bool(result)

    async def spend_get(self, *, keys: ScopeKeys) -> int | None:
        value = await self.client().get(keys.spend)
        return None if value is None else int(value)

    async def config_version_get(self) -> str:
        value = await self.client().get(self.version_key)
        return "" if value is None else value.decode()

    # -- routing health ------------------------------------------------------------------
    def health_key(self, kind: str, name: str) -> str:
        return f"{self.prefix}h:{kind}:{name}"

    @staticmethod
    def _policy_args(op: str, policy: BreakerPolicy) -> list:
        return [
            op,
            int(policy.window_ms),
            int(policy.min_volume),
            round(policy.failure_ratio * 1000),
            int(policy.cooldown_ms),
            int(policy.probe_ttl_ms),
        ]

    @staticmethod
    def _breaker_status(reply: list) -> BreakerStatus:
        state, allowed, retry, calls, failures = reply
        return BreakerStatus(
            state=state.decode() if isinstance(state, bytes) else str(state),
            allowed=int(allowed) == 1,
            retry_after_ms=int(retry),
            calls=int(calls),
            failures=int(failures),
        )

    async def breaker_record(
        self, *, key: str, ok: int, failed: int, policy: BreakerPolicy
    ) -> BreakerStatus:
        args = [*self._policy_args("record", policy), int(ok), int(failed)]
        return self._breaker_status(await self._evalsha(self._breaker, [key], args))

    async def breaker_acquire(self, *, key: str, policy: BreakerPolicy) -> BreakerStatus:
        reply = await self._evalsha(self._breaker, [key], self._policy_args("acquire", policy))
        return self._breaker_status(reply)

    async def breaker_status(
        self, *, keys: list[str], policy: BreakerPolicy
    ) -> list[BreakerStatus]:
        if not keys:
            return []
        reply = await self._evalsha(self._breaker, keys, self._policy_args("status", policy))
        return [self._breaker_status(item) for item in reply]

    async def ewma_observe(self, *, key: str, value: float, alpha: float) -> float:
        reply = await self._evalsha(
            self._ewma, [key], [repr(float(value)), repr(alpha), 86_400_000]
        )
        return float(reply)

    async def ewma_get(self, *, keys: list[str]) -> list[float | None]:
        if not keys:
            return []
        values = await self.client().mget(keys)
        return [None if v is None else float(v) for v in values]

    async def inflight_add(self, *, key: str, ticket: str, hold_ms: int) -> int:
        return int(await self._evalsha(self._inflight, [key], ["add", ticket, int(hold_ms)]))

    async def inflight_remove(self, *, key: str, ticket: str) -> int:
        return int(await self._evalsha(self._inflight, [key], ["remove", ticket, 0]))

    async def inflight_get(self, *, keys: list[str]) -> list[int]:
        if not keys:
            return []
        return [int(v) for v in await self._evalsha(self._inflight, keys, ["count"])]

    # -- durable holds ----------------------------------------------------------------------
    async def holds_expired(self, *, limit: int) -> list[tuple[str, bytes]]:
        client = self.client()
        now_s, now_us = await client.time()
        now_ms = int(now_s) * 1000 + int(now_us) // 1000
        tickets = await client.zrangebyscore(self.holds_key, "-inf", now_ms, start=0, num=limit)
        if not tickets:
            return []
        payloads = await client.hmget(self.holds_payload_key, tickets)
        return [(t.decode(), p or b"") for t, p in zip(tickets, payloads, strict=True)]

    async def holds_open_count(self) -> int:
        return int(await self.client().zcard(self.holds_key))

    async def holds_done_prune(self, *, older_than_ms: int) -> int:
        client = self.client()
        now_s, _ = await client.time()
        upto = int(now_s) * 1000 - older_than_ms
        return int(await client.zremrangebyscore(self.holds_done_key, "-inf", upto))

    # -- idempotency records ---------------------------------------------------------------
    def idempotency_name(self, *, key_id: int, token: str) -> str:
        return f"{self.prefix}idem:{key_id}:{token}"

    async def idempotency_claim(self, *, name: str, value: bytes, ttl_ms: int) -> bytes | None:
        client = self.client()
        for _ in range(3):
            if await client.set(name, value, nx=True, px=max(1, int(ttl_ms))):
                return None
            existing = await client.get(name)
            if existing is not None:
                return existing
            # It expired between the two calls: try to take it again.
        return None if await client.set(name, value, px=max(1, int(ttl_ms))) else b""

    async def idempotency_store(self, *, name: str, value: bytes, ttl_ms: int) -> None:
        await self.client().set(name, value, px=max(1, int(ttl_ms)))

    async def idempotency_release(self, *, name: str) -> None:
        await self.client().delete(name)

    def config_version_bump(self) -> str:
        client = self.sync_client()
        try:
            value = client.evalsha(self._bump.sha, 1, self.version_key)
        except NoScriptError:
            client.script_load(self._bump.source)
            value = client.evalsha(self._bump.sha, 1, self.version_key)
        return str(int(value))
