"""In-process state store: the embedded default (one process, no Redis).

It keeps the same structures as the Redis scripts, under the same names, and runs each step
under one lock, so it behaves exactly like the Redis backend for a single process (the shared
contract suite holds both to it). It has no usage stream: settlement reports the event as not
stored and routing writes it directly."""

from __future__ import annotations

import threading
import time

from tenants.state.base import (
    BREAKER_BUCKETS,
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


def _now_ms() -> int:
    return int(time.time() * 1000)


class _Data:
    """A tiny keyspace: integers, hashes and sorted sets (dict member -> score), with
    millisecond expiry per key, like the Redis structures the scripts use."""

    def __init__(self) -> None:
        self.values: dict[str, object] = {}
        self.expiry: dict[str, int] = {}

    def _live(self, key: str, now: int) -> bool:
        deadline = self.expiry.get(key)
        if deadline is not None and deadline <= now:
            self.values.pop(key, None)
            self.expiry.pop(key, None)
        return key in self.values

    def int_get(self, key: str, now: int) -> int | None:
        return self.values[key] if self._live(key, now) else None  # type: ignore[return-value]

    def int_add(self, key: str, amount: int, now: int) -> int:
        value = (self.int_get(key, now) or 0) + amount
        self.values[key] = value
        return value

    def int_sub_floor(self, key: str, amount: int, now: int) -> None:
        if amount and self.int_add(key, -amount, now) < 0:
            self.values[key] = 0

    def mapping(self, key: str, now: int) -> dict:
        if not self._live(key, now):
            self.values[key] = {}
            self.expiry.pop(key, None)
        return self.values[key]  # type: ignore[return-value]

    def expire(self, key: str, ttl_ms: int, now: int) -> None:
        if key in self.values:
            self.expiry[key] = now + ttl_ms

    def drop_empty(self, key: str) -> None:
        # Redis deletes empty hashes and sorted sets; so do we (keeps the keyspace small).
        if self.values.get(key) == {}:
            self.values.pop(key, None)
            self.expiry.pop(key, None)


class _Breaker:
    """One breaker, as breaker.lua keeps it in a hash."""

    __slots__ = ("buckets", "opened_at", "probe_at", "state")

    def __init__(self) -> None:
        self.state = 0  # 0 closed, 1 open, 2 half-open
        self.opened_at = 0
        self.probe_at = 0
        self.buckets: dict[int, list[int]] = {}  # bucket -> [calls, failures]

    def window(self, now: int, policy: BreakerPolicy) -> tuple[int, int, int]:
        """(current bucket, calls, failures) after dropping buckets older than the window."""
        bucket_ms = max(1, policy.window_ms // BREAKER_BUCKETS)
        current = now // bucket_ms
        oldest = current - (BREAKER_BUCKETS - 1)
        for bucket in [b for b in self.buckets if b < oldest]:
            del self.buckets[bucket]
        calls = sum(c for c, _ in self.buckets.values())
        failures = sum(f for _, f in self.buckets.values())
        return current, calls, failures

    def status(self, now: int, policy: BreakerPolicy) -> BreakerStatus:
        if self.state == 0:
            _, calls, failures = self.window(now, policy)
            return BreakerStatus("closed", True, 0, calls, failures)
        if self.state == 1:
            if now - self.opened_at >= policy.cooldown_ms:
                return BreakerStatus("half_open", True)
            return BreakerStatus("open", False, self.opened_at + policy.cooldown_ms - now)
        if self.probe_at > 0 and now - self.probe_at < policy.probe_ttl_ms:
            return BreakerStatus("half_open", False, self.probe_at + policy.probe_ttl_ms - now)
        return BreakerStatus("half_open", True)

    def open(self, now: int) -> None:
        self.state, self.opened_at, self.probe_at = 1, now, 0
        self.buckets.clear()


class MemoryStateStore(StateStore):
    name = "memory"
    supports_stream = False

    def __init__(self) -> None:
        self._data = _Data()
        self._lock = threading.Lock()
        self._version = str(_now_ms())
        self._breakers: dict[str, _Breaker] = {}
        self._ewma: dict[str, float] = {}
        self._inflight: dict[str, dict[str, int]] = {}

    def scope_keys(
        self, *, scope: str, tenant_id: int, scope_id: int, period_key: str
    ) -> ScopeKeys:
        base = f"t:{tenant_id}" if scope == "tenant" else f"t:{tenant_id}:k:{scope_id}"
        return ScopeKeys(
            requests=f"{base}:rpm",
            tokens=f"{base}:tpm",
            token_counts=f"{base}:tpm:n",
            token_total=f"{base}:tpm:sum",
            slots=f"{base}:slots",
            spend=f"{base}:spend:{period_key}",
            reservations=f"{base}:resv:{period_key}",
            reservation_expiry=f"{base}:resv:{period_key}:exp",
            reservation_total=f"{base}:resv:{period_key}:sum",
        )

    # -- helpers mirroring admit.lua -----------------------------------------------------
    def _expire_weighted(self, zkey: str, hkey: str, total: str, upto: int, now: int) -> None:
        zset = self._data.mapping(zkey, now)
        old = [member for member, score in zset.items() if score <= upto]
        if old:
            counts = self._data.mapping(hkey, now)
            freed = 0
            for member in old:
                freed += counts.pop(member, 0)
                del zset[member]
            self._data.int_sub_floor(total, freed, now)
            self._data.drop_empty(hkey)
        self._data.drop_empty(zkey)

    def _expire_plain(self, zkey: str, upto: int, now: int) -> None:
        zset = self._data.mapping(zkey, now)
        for member in [m for m, score in zset.items() if score <= upto]:
            del zset[member]
        self._data.drop_empty(zkey)

    def _rate_info(self, scopes: tuple[ScopeLimits, ...], kind: str, window: int, now: int):
        best: RateInfo | None = None
        for scope in scopes:
            limit = scope.rpm if kind == "requests" else scope.tpm
            if limit is None:
                continue
            zkey = scope.keys.requests if kind == "requests" else scope.keys.tokens
            zset = self._data.mapping(zkey, now)
            used = (
                len(zset)
                if kind == "requests"
                else (self._data.int_get(scope.keys.token_total, now) or 0)
            )
            reset = max(0, max(zset.values()) + window - now) if zset else 0
            self._data.drop_empty(zkey)
            remaining = max(0, limit - used)
            if best is None or remaining < best.remaining:
                best = RateInfo(limit=limit, remaining=remaining, reset_ms=reset)
        return best

    def _refuse(self, request: AdmitRequest, version: str, kind, index, retry, now):
        return AdmitResult(
            outcome="denied",
            version=version,
            denial=kind,
            denied_scope=index,
            retry_after_ms=max(1, int(retry)),
            requests=self._rate_info(request.scopes, "requests", request.window_ms, now),
            tokens=self._rate_info(request.scopes, "tokens", request.window_ms, now),
        )

    # -- the two steps -------------------------------------------------------------------
    async def admit(self, request: AdmitRequest) -> AdmitResult:
        with self._lock:
            return self._admit(request)

    def _admit(self, request: AdmitRequest) -> AdmitResult:
        data, now, window = self._data, _now_ms(), request.window_ms
        version = self._version
        missing = tuple(
            index
            for index, scope in enumerate(request.scopes)
            if scope.budget_nano is not None and data.int_get(scope.keys.spend, now) is None
        )
        if missing:
            return AdmitResult(outcome="seed", version=version, missing=missing)

        for scope in request.scopes:
            keys = scope.keys
            if scope.rpm is not None:
                self._expire_plain(keys.requests, now - window, now)
            if scope.tpm is not None:
                self._expire_weighted(
                    keys.tokens, keys.token_counts, keys.token_total, now - window, now
                )
            if scope.max_concurrency is not None:
                self._expire_plain(keys.slots, now, now)
            if scope.budget_nano is not None:
                self._expire_weighted(
                    keys.reservation_expiry, keys.reservations, keys.reservation_total, now, now
                )

        for index, scope in enumerate(request.scopes):
            if scope.budget_nano is None:
                continue
            spent = data.int_get(scope.keys.spend, now) or 0
            held = data.int_get(scope.keys.reservation_total, now) or 0
            if spent + held + request.reserve_nano > scope.budget_nano:
                return self._refuse(request, version, DenialKind.BUDGET, index, 0, now)

        for index, scope in enumerate(request.scopes):
            if scope.rpm is None:
                continue
            entries = sorted(data.mapping(scope.keys.requests, now).values())
            data.drop_empty(scope.keys.requests)
            if len(entries) + 1 > scope.rpm:
                retry = window
                if scope.rpm > 0:
                    retry = entries[len(entries) - scope.rpm] + window - now
                return self._refuse(request, version, DenialKind.REQUESTS, index, retry, now)

        for index, scope in enumerate(request.scopes):
            if scope.tpm is None:
                continue
            if request.tokens > scope.tpm:
                return self._refuse(
                    request, version, DenialKind.TOKENS_TOO_LARGE, index, window, now
                )
            total = data.int_get(scope.keys.token_total, now) or 0
            if total + request.tokens > scope.tpm:
                need, freed, retry = total + request.tokens - scope.tpm, 0, window
                counts = data.mapping(scope.keys.token_counts, now)
                zset = data.mapping(scope.keys.tokens, now)
                for member, at in sorted(zset.items(), key=lambda item: (item[1], item[0])):
                    freed += counts.get(member, 0)
                    if freed >= need:
                        retry = at + window - now
                        break
                return self._refuse(request, version, DenialKind.TOKENS, index, retry, now)

        for index, scope in enumerate(request.scopes):
            if scope.max_concurrency is None:
                continue
            slots = data.mapping(scope.keys.slots, now)
            data.drop_empty(scope.keys.slots)
            if len(slots) + 1 > scope.max_concurrency:
                return self._refuse(request, version, DenialKind.CONCURRENCY, index, 1000, now)

        ticket, hold = request.ticket, request.hold_ms
        for scope in request.scopes:
            keys = scope.keys
            if scope.rpm is not None:
                data.mapping(keys.requests, now)[ticket] = now
                data.expire(keys.requests, window + 1000, now)
            if scope.tpm is not None:
                data.mapping(keys.tokens, now)[ticket] = now
                data.mapping(keys.token_counts, now)[ticket] = request.tokens
                data.int_add(keys.token_total, request.tokens, now)
                for key in (keys.tokens, keys.token_counts, keys.token_total):
                    data.expire(key, window + 1000, now)
            if scope.max_concurrency is not None:
                data.mapping(keys.slots, now)[ticket] = now + hold
                data.expire(keys.slots, hold + 1000, now)
            if scope.budget_nano is not None:
                data.mapping(keys.reservations, now)[ticket] = request.reserve_nano
                data.mapping(keys.reservation_expiry, now)[ticket] = now + hold
                data.int_add(keys.reservation_total, request.reserve_nano, now)
                for key in (keys.reservations, keys.reservation_expiry, keys.reservation_total):
                    data.expire(key, hold + 1000, now)
        return AdmitResult(
            outcome="ok",
            version=version,
            requests=self._rate_info(request.scopes, "requests", window, now),
            tokens=self._rate_info(request.scopes, "tokens", window, now),
        )

    async def settle(self, request: SettleRequest) -> SettleResult:
        with self._lock:
            return self._settle(request)

    def _settle(self, request: SettleRequest) -> SettleResult:
        data, now, ticket = self._data, _now_ms(), request.ticket
        if request.cost_nano > 0 and not request.allow_missing:
            missing = tuple(
                index
                for index, scope in enumerate(request.scopes)
                if scope.budget_nano is not None and data.int_get(scope.keys.spend, now) is None
            )
            if missing:
                return SettleResult(outcome="seed", missing=missing)

        spend: list[SpendChange | None] = []
        for scope in request.scopes:
            keys = scope.keys
            if scope.max_concurrency is not None:
                data.mapping(keys.slots, now).pop(ticket, None)
                data.drop_empty(keys.slots)
            if scope.budget_nano is not None:
                held = data.mapping(keys.reservations, now).pop(ticket, None)
                data.mapping(keys.reservation_expiry, now).pop(ticket, None)
                if held is not None:
                    data.int_sub_floor(keys.reservation_total, held, now)
                data.drop_empty(keys.reservations)
                data.drop_empty(keys.reservation_expiry)
            if scope.tpm is not None:
                counts = data.mapping(keys.token_counts, now)
                counted = counts.get(ticket)
                if counted is not None:
                    if request.release:
                        del counts[ticket]
                        data.mapping(keys.tokens, now).pop(ticket, None)
                        data.int_sub_floor(keys.token_total, counted, now)
                    else:
                        counts[ticket] = request.tokens
                        data.int_sub_floor(keys.token_total, counted - request.tokens, now)
                data.drop_empty(keys.token_counts)
                data.drop_empty(keys.tokens)
            if request.release and scope.rpm is not None:
                data.mapping(keys.requests, now).pop(ticket, None)
                data.drop_empty(keys.requests)
            change = None
            if request.cost_nano > 0:
                before = data.int_get(keys.spend, now)
                if before is not None:
                    after = data.int_add(keys.spend, request.cost_nano, now)
                    change = SpendChange(before_nano=before, after_nano=after)
            spend.append(change)
        return SettleResult(outcome="ok", stored_event=False, spend=tuple(spend))

    async def spend_seed(self, *, keys: ScopeKeys, amount_nano: int, ttl_ms: int | None) -> bool:
        with self._lock:
            now = _now_ms()
            if self._data.int_get(keys.spend, now) is not None:
                return False
            self._data.values[keys.spend] = int(amount_nano)
            self._data.expiry.pop(keys.spend, None)
            if ttl_ms is not None:
                self._data.expire(keys.spend, ttl_ms, now)
            return True

    async def spend_get(self, *, keys: ScopeKeys) -> int | None:
        with self._lock:
            return self._data.int_get(keys.spend, _now_ms())

    async def config_version_get(self) -> str:
        return self._version

    def config_version_bump(self) -> str:
        with self._lock:
            self._version = str(int(self._version) + 1)
            return self._version

    # -- routing health (the steps of breaker.lua, ewma.lua, inflight.lua) -----------------
    def health_key(self, kind: str, name: str) -> str:
        return f"h:{kind}:{name}"

    async def breaker_record(
        self, *, key: str, ok: int, failed: int, policy: BreakerPolicy
    ) -> BreakerStatus:
        with self._lock:
            now = _now_ms()
            breaker = self._breakers.setdefault(key, _Breaker())
            if breaker.state == 1 and now - breaker.opened_at >= policy.cooldown_ms:
                breaker.state = 2
            if breaker.state == 2:
                if failed > 0:
                    breaker.open(now)
                elif ok > 0:
                    breaker.state, breaker.probe_at = 0, 0
                    breaker.buckets.clear()
                else:
                    breaker.probe_at = 0
            elif breaker.state == 0 and ok + failed > 0:
                current, calls, failures = breaker.window(now, policy)
                counts = breaker.buckets.setdefault(current, [0, 0])
                counts[0] += ok + failed
                counts[1] += failed
                calls, failures = calls + ok + failed, failures + failed
                ratio = round(policy.failure_ratio * 1000)
                if calls >= policy.min_volume and failures * 1000 > ratio * calls:
                    breaker.open(now)
            return breaker.status(now, policy)

    async def breaker_acquire(self, *, key: str, policy: BreakerPolicy) -> BreakerStatus:
        with self._lock:
            now = _now_ms()
            breaker = self._breakers.get(key)
            if breaker is None:
                return BreakerStatus("closed", True)
            status = breaker.status(now, policy)
            if status.state == "half_open" and status.allowed:
                breaker.state, breaker.probe_at = 2, now
                return status
            if status.state == "closed":
                return status
            return BreakerStatus(status.state, False, status.retry_after_ms)

    async def breaker_status(
        self, *, keys: list[str], policy: BreakerPolicy
    ) -> list[BreakerStatus]:
        with self._lock:
            now = _now_ms()
            return [
                breaker.status(now, policy)
                if (breaker := self._breakers.get(key)) is not None
                else BreakerStatus("closed", True)
                for key in keys
            ]

    async def ewma_observe(self, *, key: str, value: float, alpha: float) -> float:
        with self._lock:
            old = self._ewma.get(key)
            average = value if old is None else alpha * value + (1 - alpha) * old
            self._ewma[key] = round(average, 6)
            return self._ewma[key]

    async def ewma_get(self, *, keys: list[str]) -> list[float | None]:
        with self._lock:
            return [self._ewma.get(key) for key in keys]

    def _inflight_live(self, key: str, now: int) -> dict[str, int]:
        tickets = self._inflight.setdefault(key, {})
        for ticket in [t for t, expires in tickets.items() if expires <= now]:
            del tickets[ticket]
        return tickets

    async def inflight_add(self, *, key: str, ticket: str, hold_ms: int) -> int:
        with self._lock:
            now = _now_ms()
            tickets = self._inflight_live(key, now)
            tickets[ticket] = now + hold_ms
            return len(tickets)

    async def inflight_remove(self, *, key: str, ticket: str) -> int:
        with self._lock:
            tickets = self._inflight_live(key, _now_ms())
            tickets.pop(ticket, None)
            return len(tickets)

    async def inflight_get(self, *, keys: list[str]) -> list[int]:
        with self._lock:
            now = _now_ms()
            return [len(self._inflight_live(key, now)) for key in keys]

    def flush(self) -> None:
        """Forget all counters (what FLUSHDB does to Redis): tests of the rebuild path."""
        with self._lock:
            self._data = _Data()
            self._breakers.clear()
            self._ewma.clear()
            self._inflight.clear()
