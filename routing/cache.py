"""The response cache: exact answers, scoped to one tenant (optionally one key), keyed by the
canonical request and the catalog identity of the models that could serve it.

Why it is shaped this way:
- Safety first: the tenant id (and, when a policy asks, the key id) is part of both the hashed
  key and the Redis key name, so one tenant's entries can never answer another's request even
  under a hash collision; entries hold the answer and its billing facts, never a provider secret.
- Every parameter that can change the output is in the key (messages, temperature, top_p, stop,
  tools, tool_choice, max_tokens and every forwarded extra field such as seed or
  response_format); fields that never change it (`user`, `metadata`, `stream`,
  `stream_options`) are not, so a streamed and a non-streamed request share an entry.
- The cache may live in its own Redis (GATEWAY_CACHE_REDIS_URL). When that store is slow or
  down the cache steps aside (a short timeout, then a one-second pause before trying again):
  the request is served from upstream, never refused because of the cache.
- A small in-process tier keeps hot entries for a second or two (GATEWAY_CACHE_LOCAL_TTL_S), so
  a burst of identical requests costs one Redis read per process; a purge in another process
  reaches this tier within that time.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson
from django.conf import settings

from providers.types import ChatRequest, ChatResponse, Usage

logger = logging.getLogger("gateway.routing.cache")

CACHE_FORMAT_VERSION = 1
NANO = Decimal("0.000000001")

# Forwarded fields that never change what the model answers.
_IGNORED_EXTRA_FIELDS = frozenset(
    {"user", "metadata", "stream", "stream_options", "store", "gateway", "service_tier"}
)


# -- policy and per-request directives ---------------------------------------------------------
CACHE_OPTION_NAMES = frozenset(
    {
        "enabled",
        "ttl_s",
        "max_temperature",
        "price_fraction",
        "per_key",
        "semantic",
        "similarity_threshold",
    }
)


@dataclass(frozen=True, slots=True)
class CachePolicy:
    """What a route (or key) allows. `price_fraction` is the share of the original cost a hit
    is charged (0 = free); `max_temperature` keeps creative requests out unless asked."""

    enabled: bool = False
    ttl_s: int = 3600
    max_temperature: float | None = 0.0
    price_fraction: Decimal = Decimal(0)
    per_key: bool = False
    semantic: bool = False
    similarity_threshold: float = 0.91

    @classmethod
    def from_options(cls, options: dict[str, Any] | None) -> CachePolicy:
        """The `cache` object of a route's options (docs/cache.md); unknown keys are ignored."""
        if not options:
            return cls()
        fraction = Decimal(str(options.get("price_fraction", 0)))
        if not Decimal(0) <= fraction <= Decimal(1):
            raise ValueError("cache.price_fraction must be between 0 and 1")
        max_temperature = options.get("max_temperature", 0.0)
        threshold = float(options.get("similarity_threshold", 0.91))
        if not 0.5 <= threshold <= 1.0:
            raise ValueError("cache.similarity_threshold must be between 0.5 and 1")
        return cls(
            enabled=bool(options.get("enabled", False)),
            ttl_s=max(1, int(options.get("ttl_s", 3600))),
            max_temperature=None if max_temperature is None else float(max_temperature),
            price_fraction=fraction,
            per_key=bool(options.get("per_key", False)),
            semantic=bool(options.get("semantic", False)),
            similarity_threshold=threshold,
        )


@dataclass(frozen=True, slots=True)
class CacheDirective:
    """The client's say: `use` turns the cache on for this request (where the route or key
    allows it at all is the operator's call: see cache_decision), `bypass` neither reads nor
    writes, `refresh` skips the read and writes the fresh answer; `no-store` never writes."""

    mode: str = "default"  # default | use | bypass | refresh
    store: bool = True
    ttl_s: int | None = None


def cache_directive_from_headers(
    *, cache_control: str | None, gateway_cache: str | None, ttl: str | None
) -> CacheDirective:
    mode = "default"
    store = True
    if cache_control:
        tokens = {part.strip().lower() for part in cache_control.split(",")}
        if "no-store" in tokens:
            mode, store = "bypass", False
        elif "no-cache" in tokens:
            mode = "refresh"
    if gateway_cache:
        value = gateway_cache.strip().lower()
        if value in ("bypass", "refresh", "use"):
            mode = value if mode == "default" or value == "bypass" else mode
        if value == "bypass":
            store = False
    ttl_s: int | None = None
    if ttl:
        try:
            ttl_s = max(1, min(int(ttl), settings.GATEWAY_CACHE_MAX_TTL_S))
        except ValueError:
            ttl_s = None
    return CacheDirective(mode=mode, store=store, ttl_s=ttl_s)


@dataclass(frozen=True, slots=True)
class CacheDecision:
    read: bool
    write: bool
    ttl_s: int
    reason: str  # what the answer's x-gateway-cache says when nothing is read: miss | bypass


def cache_decision(
    *,
    policy: CachePolicy,
    directive: CacheDirective,
    key_allows: bool,
    temperature: float | None,
) -> CacheDecision:
    """Whether this request reads and writes the cache. A route or key enables it, or one
    request with `x-gateway-cache: use` (unless GATEWAY_CACHE_REQUEST_OPT_IN is off); the
    client may opt a request past the temperature threshold (`use`), or out."""
    enabled = settings.GATEWAY_CACHE_ENABLED and (
        policy.enabled
        or key_allows
        or (directive.mode == "use" and settings.GATEWAY_CACHE_REQUEST_OPT_IN)
    )
    if not enabled or directive.mode == "bypass":
        return CacheDecision(read=False, write=False, ttl_s=0, reason="bypass")
    too_creative = (
        policy.max_temperature is not None
        and temperature is not None
        and temperature > policy.max_temperature
        and directive.mode != "use"
    )
    if too_creative:
        return CacheDecision(read=False, write=False, ttl_s=0, reason="bypass")
    ttl_s = directive.ttl_s or policy.ttl_s
    return CacheDecision(
        read=directive.mode != "refresh", write=directive.store, ttl_s=ttl_s, reason="miss"
    )


# -- the key -----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class CacheScope:
    tenant_id: int
    key_id: int | None  # set when the policy caches per key
    route: str


def cache_key(
    *,
    scope: CacheScope,
    endpoint: str,
    chat: ChatRequest,
    model_identities: Iterable[tuple[Any, ...]],
) -> str:
    """The SHA-256 of the canonical request. `model_identities` are the catalog facts of every
    model that could serve the route (id, upstream model, provider kind and URL): remapping a
    route or a model changes every key, so no stale answer outlives a catalog change."""
    extra = {k: v for k, v in chat.extra.items() if k not in _IGNORED_EXTRA_FIELDS}
    canonical = {
        "v": CACHE_FORMAT_VERSION,
        "tenant": scope.tenant_id,
        "key": scope.key_id,
        "route": scope.route,
        "endpoint": endpoint,
        "models": sorted(list(identity) for identity in model_identities),
        "messages": chat.messages,
        "temperature": chat.temperature,
        "top_p": chat.top_p,
        "stop": chat.stop,
        "tools": chat.tools,
        "tool_choice": chat.tool_choice,
        "max_tokens": chat.max_tokens,
        "extra": extra,
    }
    blob = orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    return hashlib.sha256(blob).hexdigest()


def _last_user_turn(messages: list[dict[str, Any]]) -> tuple[int, str] | None:
    """(index, text) of the last message when it is a user turn made only of text."""
    if not messages or messages[-1].get("role") != "user":
        return None
    content = messages[-1].get("content")
    if isinstance(content, str):
        return len(messages) - 1, content
    if isinstance(content, list) and all(
        isinstance(p, dict) and p.get("type") == "text" for p in content
    ):
        return len(messages) - 1, "\n".join(str(p.get("text", "")) for p in content)
    return None


def semantic_context(
    *,
    scope: CacheScope,
    endpoint: str,
    chat: ChatRequest,
    model_identities: Iterable[tuple[Any, ...]],
) -> tuple[str, str] | None:
    """(bucket, text) for a semantic lookup: the bucket is the hash of everything except the
    last user turn (route, key scope, models, system prompt and earlier turns, tools, every
    parameter), so only a paraphrase of the last question under an identical context can match.
    None when the last turn is not plain user text (images, tool results)."""
    last = _last_user_turn(chat.messages)
    if last is None or not last[1].strip():
        return None
    index, text = last
    context_chat = ChatRequest(
        model=chat.model,
        messages=[*chat.messages[:index], {"role": "user", "content": "\x00semantic"}],
        temperature=chat.temperature,
        top_p=chat.top_p,
        stop=chat.stop,
        tools=chat.tools,
        tool_choice=chat.tool_choice,
        max_tokens=chat.max_tokens,
        extra=chat.extra,
    )
    bucket = cache_key(
        scope=scope, endpoint=endpoint, chat=context_chat, model_identities=model_identities
    )
    return bucket, text


_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_WORD = re.compile(r"\w+")


def semantic_guard(question: str, stored_question: str) -> bool:
    """Lexical checks that embeddings are blind to, applied after the similarity threshold:
    the same numbers must appear ("10 miles" never answers "12 miles"), and the same words in
    another order are a different question ("miles to kilometers" vs "kilometers to miles")."""
    if sorted(_NUMBER.findall(question)) != sorted(_NUMBER.findall(stored_question)):
        return False
    words = _WORD.findall(question.lower())
    stored_words = _WORD.findall(stored_question.lower())
    return not (words != stored_words and sorted(words) == sorted(stored_words))


# -- the stored answer -------------------------------------------------------------------------
@dataclass(slots=True)
class CachedAnswer:
    content: str | None
    tool_calls: list[dict[str, Any]] | None
    finish_reason: str | None
    usage: Usage
    model: str  # the public model name that served it
    model_id: int
    provider_id: int
    cost_usd: Decimal  # what the original request cost
    stored_at: float  # epoch seconds

    def to_bytes(self) -> bytes:
        return orjson.dumps(
            {
                "content": self.content,
                "tool_calls": self.tool_calls,
                "finish_reason": self.finish_reason,
                "usage": [
                    self.usage.prompt_tokens,
                    self.usage.completion_tokens,
                    self.usage.cache_read_tokens,
                    self.usage.cache_write_tokens,
                    self.usage.estimated,
                ],
                "model": self.model,
                "model_id": self.model_id,
                "provider_id": self.provider_id,
                "cost_usd": format(self.cost_usd, "f"),
                "stored_at": self.stored_at,
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> CachedAnswer:
        raw = orjson.loads(data)
        prompt, completion, cache_read, cache_write, estimated = raw["usage"]
        return cls(
            content=raw["content"],
            tool_calls=raw["tool_calls"],
            finish_reason=raw["finish_reason"],
            usage=Usage(
                prompt_tokens=prompt,
                completion_tokens=completion,
                cache_read_tokens=cache_read,
                cache_write_tokens=cache_write,
                estimated=estimated,
            ),
            model=raw["model"],
            model_id=raw["model_id"],
            provider_id=raw["provider_id"],
            cost_usd=Decimal(raw["cost_usd"]),
            stored_at=float(raw["stored_at"]),
        )

    def age_s(self) -> int:
        return max(0, int(time.time() - self.stored_at))

    def as_response(self, *, response_id: str) -> ChatResponse:
        return ChatResponse(
            id=response_id,
            model=self.model,
            content=self.content,
            finish_reason=self.finish_reason,
            usage=self.usage,
            tool_calls=self.tool_calls,
            created=int(time.time()),
        )


def cache_hit_charge(*, original_cost: Decimal, price_fraction: Decimal) -> tuple[Decimal, Decimal]:
    """(charged, saved) for a hit, to the nano-dollar; the charge rounds up, so the sum of what
    finance sees never falls below what the policy says."""
    charged = (original_cost * price_fraction).quantize(NANO, rounding="ROUND_CEILING")
    charged = min(charged, original_cost)
    return charged, original_cost - charged


# -- stores ------------------------------------------------------------------------------------
def _entry_key(tenant_id: int, digest: str) -> str:
    return f"gwc:{{t{tenant_id}}}:e:{digest}"


def _index_key(tenant_id: int) -> str:
    return f"gwc:{{t{tenant_id}}}:idx"


def _index_member(scope: CacheScope, digest: str) -> str:
    # Split from the right when read: the route name may hold the separator, key and digest not.
    return f"{scope.route}\x1f{scope.key_id or ''}\x1f{digest}"


# KEYS: entry, index. ARGV: value, ttl_ms, now_ms, member, max_entries.
# One atomic write: the entry with its TTL, its index row (score = expiry), expired rows
# dropped, and the tenant's oldest entries evicted beyond its bound.
_PUT_SCRIPT = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local expires = tonumber(ARGV[3]) + tonumber(ARGV[2])
redis.call('ZADD', KEYS[2], expires, ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[3])
local extra = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[5])
if extra > 0 then
  local prefix = string.sub(KEYS[1], 1, string.len(KEYS[1]) - 64)
  local evicted = redis.call('ZPOPMIN', KEYS[2], extra)
  for i = 1, #evicted, 2 do
    local member = evicted[i]
    redis.call('DEL', prefix .. string.sub(member, -64))
  end
end
redis.call('PEXPIRE', KEYS[2], math.max(tonumber(ARGV[2]), redis.call('PTTL', KEYS[2])))
return 1
"""


# KEYS: vectors hash, ages zset. ARGV: digest, vector, now_ms, ttl_ms, max_per_bucket.
_VECTOR_PUT_SCRIPT = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
local extra = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[5])
if extra > 0 then
  local evicted = redis.call('ZPOPMIN', KEYS[2], extra)
  for i = 1, #evicted, 2 do redis.call('HDEL', KEYS[1], evicted[i]) end
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return 1
"""


def _vectors_key(tenant_id: int, bucket: str) -> str:
    return f"gwc:{{t{tenant_id}}}:s:{bucket}"


def _vector_ages_key(tenant_id: int, bucket: str) -> str:
    return f"gwc:{{t{tenant_id}}}:sz:{bucket}"


class CacheUnavailable(Exception):
    """The cache store did not answer in time (the caller bypasses the cache)."""


class RedisCacheStore:
    def __init__(self, *, url: str, timeout_s: float) -> None:
        self._url = url
        self._timeout_s = timeout_s
        self._clients: dict[int, Any] = {}
        self._put_sha: str | None = None

    def _client(self):
        import redis.asyncio as redis_async

        loop_id = id(asyncio.get_running_loop())
        client = self._clients.get(loop_id)
        if client is None:
            client = redis_async.Redis.from_url(
                self._url, socket_timeout=self._timeout_s, socket_connect_timeout=self._timeout_s
            )
            self._clients = {loop_id: client}  # one loop per process in production
        return client

    async def _run(self, coro):
        try:
            return await asyncio.wait_for(coro, self._timeout_s)
        except (TimeoutError, OSError, ConnectionError) as exc:
            raise CacheUnavailable(type(exc).__name__) from exc
        except Exception as exc:
            # redis-py's own ConnectionError/TimeoutError do not all derive from the builtins.
            if type(exc).__module__.startswith("redis"):
                raise CacheUnavailable(type(exc).__name__) from exc
            raise

    async def get(self, *, tenant_id: int, digest: str) -> bytes | None:
        return await self._run(self._client().get(_entry_key(tenant_id, digest)))

    async def put(
        self, *, scope: CacheScope, digest: str, value: bytes, ttl_s: int, max_entries: int
    ) -> None:
        client = self._client()
        keys = [_entry_key(scope.tenant_id, digest), _index_key(scope.tenant_id)]
        args = [value, int(ttl_s * 1000), int(time.time() * 1000)]
        args += [_index_member(scope, digest), max_entries]
        await self._run(client.eval(_PUT_SCRIPT, 2, *keys, *args))

    async def purge(self, *, tenant_id: int, route: str | None, key_id: int | None) -> int:
        client = self._client()
        index = _index_key(tenant_id)
        members = await self._run(client.zrange(index, 0, -1))
        doomed: list[bytes] = []
        for member in members:
            m_route, m_key, _ = member.decode().rsplit("\x1f", 2)
            if route is not None and m_route != route:
                continue
            if key_id is not None and m_key != str(key_id):
                continue
            doomed.append(member)
        if not doomed:
            return 0
        async with client.pipeline(transaction=False) as pipe:
            for member in doomed:
                pipe.delete(_entry_key(tenant_id, member.decode()[-64:]))
            pipe.zrem(index, *doomed)
            await self._run(pipe.execute())
        return len(doomed)

    async def vectors_get(self, *, tenant_id: int, bucket: str) -> dict[str, bytes]:
        rows = await self._run(self._client().hgetall(_vectors_key(tenant_id, bucket)))
        return {k.decode(): v for k, v in rows.items()}

    async def vector_put(
        self, *, tenant_id: int, bucket: str, digest: str, vector: bytes, ttl_s: int, bound: int
    ) -> None:
        keys = [_vectors_key(tenant_id, bucket), _vector_ages_key(tenant_id, bucket)]
        args = [digest, vector, int(time.time() * 1000), int(ttl_s * 1000), bound]
        await self._run(self._client().eval(_VECTOR_PUT_SCRIPT, 2, *keys, *args))

    async def vector_drop(self, *, tenant_id: int, bucket: str, digest: str) -> None:
        client = self._client()
        async with client.pipeline(transaction=False) as pipe:
            pipe.hdel(_vectors_key(tenant_id, bucket), digest)
            pipe.zrem(_vector_ages_key(tenant_id, bucket), digest)
            await self._run(pipe.execute())

    async def tenant_ids(self) -> list[int]:
        client = self._client()
        ids = set()
        async for name in client.scan_iter(match="gwc:{t*}:idx", count=500):
            ids.add(int(name.decode().split("{t", 1)[1].split("}", 1)[0]))
        return sorted(ids)

    async def semantic_purge(self, *, tenant_id: int) -> int:
        client = self._client()
        doomed = [k async for k in client.scan_iter(match=f"gwc:{{t{tenant_id}}}:s*", count=500)]
        if doomed:
            await self._run(client.delete(*doomed))
        return len(doomed)

    async def close(self) -> None:
        for client in self._clients.values():
            await client.aclose()
        self._clients = {}


class MemoryCacheStore:
    """The embedded mode's store (one process): same behaviour, a dict per tenant."""

    def __init__(self) -> None:
        self._entries: dict[int, OrderedDict[str, tuple[float, str, bytes]]] = {}
        self._vectors: dict[tuple[int, str], OrderedDict[str, bytes]] = {}

    async def get(self, *, tenant_id: int, digest: str) -> bytes | None:
        row = self._entries.get(tenant_id, {}).get(digest)
        if row is None or row[0] < time.time():
            return None
        return row[2]

    async def put(
        self, *, scope: CacheScope, digest: str, value: bytes, ttl_s: int, max_entries: int
    ) -> None:
        entries = self._entries.setdefault(scope.tenant_id, OrderedDict())
        entries[digest] = (time.time() + ttl_s, _index_member(scope, digest), value)
        entries.move_to_end(digest)
        while len(entries) > max_entries:
            entries.popitem(last=False)

    async def purge(self, *, tenant_id: int, route: str | None, key_id: int | None) -> int:
        entries = self._entries.get(tenant_id, OrderedDict())
        doomed = []
        for digest, (_, member, _) in entries.items():
            m_route, m_key, _ = member.rsplit("\x1f", 2)
            if (route is None or m_route == route) and (key_id is None or m_key == str(key_id)):
                doomed.append(digest)
        for digest in doomed:
            del entries[digest]
        return len(doomed)

    async def vectors_get(self, *, tenant_id: int, bucket: str) -> dict[str, bytes]:
        return dict(self._vectors.get((tenant_id, bucket), {}))

    async def vector_put(
        self, *, tenant_id: int, bucket: str, digest: str, vector: bytes, ttl_s: int, bound: int
    ) -> None:
        rows = self._vectors.setdefault((tenant_id, bucket), OrderedDict())
        rows[digest] = vector
        rows.move_to_end(digest)
        while len(rows) > bound:
            rows.popitem(last=False)

    async def vector_drop(self, *, tenant_id: int, bucket: str, digest: str) -> None:
        self._vectors.get((tenant_id, bucket), {}).pop(digest, None)

    async def tenant_ids(self) -> list[int]:
        return sorted(tenant for tenant, entries in self._entries.items() if entries)

    async def semantic_purge(self, *, tenant_id: int) -> int:
        doomed = [k for k in self._vectors if k[0] == tenant_id]
        for k in doomed:
            del self._vectors[k]
        return len(doomed)

    async def close(self) -> None:
        return None


class ResponseCache:
    """The cache as the request path sees it: a local tier in front of the shared store, and a
    store that may fail without failing the request."""

    def __init__(self, *, store: RedisCacheStore | MemoryCacheStore) -> None:
        self.store = store
        self._local: OrderedDict[tuple[int, str], tuple[float, CachedAnswer]] = OrderedDict()
        self._paused_until = 0.0

    def _available(self) -> bool:
        return time.monotonic() >= self._paused_until

    def _pause(self, reason: str) -> None:
        self._paused_until = time.monotonic() + settings.GATEWAY_CACHE_PAUSE_AFTER_ERROR_S
        logger.warning("cache.unavailable", extra={"reason": reason})

    async def lookup(self, *, tenant_id: int, digest: str) -> CachedAnswer | None:
        local = self._local.get((tenant_id, digest))
        now = time.monotonic()
        if local is not None:
            if local[0] > now:
                self._local.move_to_end((tenant_id, digest))
                return local[1]
            del self._local[(tenant_id, digest)]
        if not self._available():
            raise CacheUnavailable("paused")
        try:
            data = await self.store.get(tenant_id=tenant_id, digest=digest)
        except CacheUnavailable as exc:
            self._pause(str(exc))
            raise
        if data is None:
            return None
        try:
            answer = CachedAnswer.from_bytes(data)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            logger.warning("cache.entry_unreadable", extra={"tenant_id": tenant_id})
            return None
        self._remember(tenant_id, digest, answer)
        return answer

    def _remember(self, tenant_id: int, digest: str, answer: CachedAnswer) -> None:
        if settings.GATEWAY_CACHE_LOCAL_ENTRIES <= 0:
            return
        self._local[(tenant_id, digest)] = (
            time.monotonic() + settings.GATEWAY_CACHE_LOCAL_TTL_S,
            answer,
        )
        self._local.move_to_end((tenant_id, digest))
        while len(self._local) > settings.GATEWAY_CACHE_LOCAL_ENTRIES:
            self._local.popitem(last=False)

    async def store_answer(
        self, *, scope: CacheScope, digest: str, answer: CachedAnswer, ttl_s: int
    ) -> bool:
        value = answer.to_bytes()
        if len(value) > settings.GATEWAY_CACHE_MAX_ENTRY_BYTES or not self._available():
            return False
        try:
            await self.store.put(
                scope=scope,
                digest=digest,
                value=value,
                ttl_s=ttl_s,
                max_entries=settings.GATEWAY_CACHE_MAX_ENTRIES_PER_TENANT,
            )
        except CacheUnavailable as exc:
            self._pause(str(exc))
            return False
        self._remember(scope.tenant_id, digest, answer)
        return True

    async def semantic_lookup(
        self, *, tenant_id: int, bucket: str, question: str, vector: Any, threshold: float
    ) -> tuple[CachedAnswer, float] | None:
        """The stored answer whose question is most similar to `vector` (unit length) within
        the bucket, when the cosine similarity reaches `threshold` and the lexical guard
        (semantic_guard) agrees."""
        import numpy as np

        if not self._available():
            raise CacheUnavailable("paused")
        try:
            rows = await self.store.vectors_get(tenant_id=tenant_id, bucket=bucket)
        except CacheUnavailable as exc:
            self._pause(str(exc))
            raise
        if not rows:
            return None
        digests = list(rows)
        width = len(vector) * 2  # float16
        matrix = np.frombuffer(b"".join(rows[d][:width] for d in digests), dtype=np.float16)
        matrix = matrix.reshape(len(digests), -1).astype(np.float32)
        scores = matrix @ np.asarray(vector, dtype=np.float32)
        best = int(scores.argmax())
        similarity = float(scores[best])
        stored_question = rows[digests[best]][width:].decode("utf-8", "replace")
        if similarity < threshold or not semantic_guard(question, stored_question):
            return None
        answer = await self.lookup(tenant_id=tenant_id, digest=digests[best])
        if answer is None:  # the exact entry expired or was purged: forget its vector too
            await self.store.vector_drop(tenant_id=tenant_id, bucket=bucket, digest=digests[best])
            return None
        return answer, round(similarity, 4)

    async def semantic_store(
        self, *, tenant_id: int, bucket: str, digest: str, question: str, vector: Any, ttl_s: int
    ) -> bool:
        import numpy as np

        if not self._available():
            return False
        try:
            await self.store.vector_put(
                tenant_id=tenant_id,
                bucket=bucket,
                digest=digest,
                vector=np.asarray(vector, dtype=np.float16).tobytes()
                + question[:1000].encode("utf-8"),
                ttl_s=ttl_s,
                bound=settings.GATEWAY_CACHE_SEMANTIC_MAX_PER_CONTEXT,
            )
        except CacheUnavailable as exc:
            self._pause(str(exc))
            return False
        return True

    async def purge(
        self, *, tenant_id: int, route: str | None = None, key_id: int | None = None
    ) -> int:
        """Drops the tenant's entries (of one route or key when given) and returns how many.
        Semantic vectors point at exact entries, so purged entries stop matching at once; a
        whole-tenant purge drops the vectors too."""
        for local_key in [k for k in self._local if k[0] == tenant_id]:
            del self._local[local_key]
        count = await self.store.purge(tenant_id=tenant_id, route=route, key_id=key_id)
        if route is None and key_id is None:
            await self.store.semantic_purge(tenant_id=tenant_id)
        return count


async def response_cache_purge(
    *, tenant_id: int | None, route: str | None = None, key_id: int | None = None
) -> int:
    """Drops cached answers of one tenant (or, with tenant_id None, of every tenant), narrowed
    to one route or one key when given; returns how many exact entries went. Other processes'
    in-process tiers drop theirs within GATEWAY_CACHE_LOCAL_TTL_S."""
    cache = response_cache()
    tenant_ids = [tenant_id] if tenant_id is not None else await cache.store.tenant_ids()
    total = 0
    for tenant in tenant_ids:
        total += await cache.purge(tenant_id=tenant, route=route, key_id=key_id)
    return total


@dataclass(frozen=True, slots=True)
class CacheWrite:
    """Where a call's fresh answer goes when it ends ok (exact entry, and semantic vector)."""

    scope: CacheScope
    digest: str
    ttl_s: int
    semantic: tuple[str, str, Any] | None  # (bucket, question, vector)


async def response_cache_store(
    *,
    scope: CacheScope,
    digest: str,
    answer: CachedAnswer,
    ttl_s: int,
    semantic: tuple[str, str, Any] | None,
) -> None:
    cache = response_cache()
    stored = await cache.store_answer(scope=scope, digest=digest, answer=answer, ttl_s=ttl_s)
    if stored and semantic is not None and semantic[2] is not None:
        bucket, question, vector = semantic
        await cache.semantic_store(
            tenant_id=scope.tenant_id,
            bucket=bucket,
            digest=digest,
            question=question,
            vector=vector,
            ttl_s=ttl_s,
        )


_background: set[asyncio.Task] = set()


def cache_task_spawn(coro) -> None:
    """Run a cache write off the request's path, keeping a reference until it ends; a failure
    is logged, never raised to anyone."""

    async def guarded() -> None:
        try:
            await coro
        except Exception:  # noqa: BLE001 - a cache write never fails a request
            logger.warning("cache.store_failed", exc_info=True)

    task = asyncio.get_running_loop().create_task(guarded())
    _background.add(task)
    task.add_done_callback(_background.discard)


async def response_cache_purge_now(
    *, tenant_id: int | None, route: str | None = None, key_id: int | None = None
) -> int:
    """response_cache_purge from a sync caller's private loop (admin, API, command): its
    Redis connections are closed before that loop ends."""
    try:
        return await response_cache_purge(tenant_id=tenant_id, route=route, key_id=key_id)
    finally:
        await response_cache().store.close()


_cache: ResponseCache | None = None


def response_cache() -> ResponseCache:
    global _cache
    if _cache is None:
        url = settings.GATEWAY_CACHE_REDIS_URL
        store = (
            RedisCacheStore(url=url, timeout_s=settings.GATEWAY_CACHE_TIMEOUT_S)
            if url
            else MemoryCacheStore()
        )
        _cache = ResponseCache(store=store)
    return _cache


def response_cache_set(cache: ResponseCache | None) -> None:
    """Replace the process's cache (tests; None rebuilds it from settings on next use)."""
    global _cache
    _cache = cache
