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
    window_bucket_ms,
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


class _Window:
    """The buckets of one admission's rate windows at `now` (see admit.lua)."""

    __slots__ = ("now", "window", "width", "cur", "lo")

    def __init__(self, now: int, window: int) -> None:
        self.now, self.window = now, window
        self.width = window_bucket_ms(window)
        self.cur = now // self.width
        # The oldest live bucket: b is live while (b + 1) * width + window > now.
        self.lo = (now - window) // self.width


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
        # Durable holds: ticket -> (deadline ms, payload); tickets the sweeper ended -> ms.
        self._holds: dict[str, tuple[int, bytes]] = {}
        self._holds_done: dict[str, int] = {}

    def scope_keys(
        self, *, scope: str, tenant_id: int, scope_id: int, period_key: str
    ) -> ScopeKeys:
        base = f"t:{tenant_id}" if scope == "tenant" else f"t:{tenant_id}:k:{scope_id}"
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

    # Bucketed windows (see admit.lua): a dict bucket -> count with 'n' (live total), 'c' (no
    # bucket older is left) and 'w' (newest bucket written); at most WINDOW_BUCKETS + 2 buckets.
    def _window_trim(self, key: str, w: _Window) -> None:
        window = self._data.mapping(key, w.now)
        oldest = window.get("c")
        if oldest is not None and oldest < w.lo:
            gone = [b for b in window if not isinstance(b, str) and b < w.lo]
            freed = sum(window.pop(b) for b in gone)
            window["n"] = max(0, window.get("n", 0) - freed)
            window["c"] = w.lo
        self._data.drop_empty(key)

    def _window_used(self, key: str, w: _Window) -> int:
        used = self._data.mapping(key, w.now).get("n", 0)
        self._data.drop_empty(key)
        return used

    def _window_retry(self, key: str, w: _Window, need: int) -> int:
        window = self._data.mapping(key, w.now)
        self._data.drop_empty(key)
        freed = 0
        for bucket in range(w.lo, w.cur + 1):
            freed += window.get(bucket, 0)
            if freed >= need:
                return (bucket + 1) * w.width + w.window - w.now
        return w.window

    def _window_reset(self, key: str, w: _Window) -> int:
        newest = self._data.mapping(key, w.now).get("w")
        self._data.drop_empty(key)
        if newest is None or newest < w.lo:
            return 0
        return max(0, (newest + 1) * w.width + w.window - w.now)

    def _window_add(self, key: str, w: _Window, amount: int) -> None:
        window = self._data.mapping(key, w.now)
        window[w.cur] = window.get(w.cur, 0) + amount
        window["n"] = window.get("n", 0) + amount
        window.setdefault("c", w.lo)
        window["w"] = w.cur
        self._data.expire(key, w.window + w.width + 1000, w.now)

    def _rate_info(self, scopes: tuple[ScopeLimits, ...], kind: str, w: _Window):
        best: RateInfo | None = None
        for scope in scopes:
            limit = scope.rpm if kind == "requests" else scope.tpm
            if limit is None:
                continue
            key = scope.keys.requests if kind == "requests" else scope.keys.tokens
            used = self._window_used(key, w)
            reset = self._window_reset(key, w)
            remaining = max(0, limit - used)
            if best is None or remaining < best.remaining:
                best = RateInfo(limit=limit, remaining=remaining, reset_ms=reset)
        return best

    def _refuse(self, request: AdmitRequest, version: str, kind, index, retry, w: _Window):
        return AdmitResult(
            outcome="denied",
            version=version,
            denial=kind,
            denied_scope=index,
            retry_after_ms=max(1, int(retry)),
            requests=self._rate_info(request.scopes, "requests", w),
            tokens=self._rate_info(request.scopes, "tokens", w),
        )

    # -- the two steps -------------------------------------------------------------------
    async def admit(self, request: AdmitRequest) -> AdmitResult:
        with self._lock:
            return self._admit(request)

    def _admit(self, request: AdmitRequest) -> AdmitResult:
        data, now, window = self._data, _now_ms(), request.window_ms
        w = _Window(now, window)
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
                self._window_trim(keys.requests, w)
            if scope.tpm is not None:
                self._window_trim(keys.tokens, w)
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
                return self._refuse(request, version, DenialKind.BUDGET, index, 0, w)

        for index, scope in enumerate(request.scopes):
            if scope.rpm is None:
                continue
            count = self._window_used(scope.keys.requests, w)
            if count + 1 > scope.rpm:
                retry = window
                if scope.rpm > 0:
                    retry = self._window_retry(scope.keys.requests, w, count + 1 - scope.rpm)
                return self._refuse(request, version, DenialKind.REQUESTS, index, retry, w)

        for index, scope in enumerate(request.scopes):
            if scope.tpm is None:
                continue
            if request.tokens > scope.tpm:
                return self._refuse(request, version, DenialKind.TOKENS_TOO_LARGE, index, window, w)
            total = self._window_used(scope.keys.tokens, w)
            if total + request.tokens > scope.tpm:
                need = total + request.tokens - scope.tpm
                retry = self._window_retry(scope.keys.tokens, w, need)
                return self._refuse(request, version, DenialKind.TOKENS, index, retry, w)

        for index, scope in enumerate(request.scopes):
            if scope.max_concurrency is None:
                continue
            slots = data.mapping(scope.keys.slots, now)
            data.drop_empty(scope.keys.slots)
            if len(slots) + 1 > scope.max_concurrency:
                return self._refuse(request, version, DenialKind.CONCURRENCY, index, 1000, w)

        ticket, hold = request.ticket, request.hold_ms
        for scope in request.scopes:
            keys = scope.keys
            if scope.rpm is not None:
                self._window_add(keys.requests, w, 1)
            if scope.tpm is not None:
                self._window_add(keys.tokens, w, request.tokens)
            if scope.rpm is not None or scope.tpm is not None:
                # Where settlement finds this request's entries (to correct or release them).
                ends = (w.cur + 1) * w.width + window
                data.mapping(keys.token_counts, now)[ticket] = (w.cur, ends, request.tokens)
                data.expire(keys.token_counts, hold + window + w.width + 1000, now)
            if scope.max_concurrency is not None:
                data.mapping(keys.slots, now)[ticket] = now + hold
                data.expire(keys.slots, hold + 1000, now)
            if scope.budget_nano is not None:
                data.mapping(keys.reservations, now)[ticket] = request.reserve_nano
                data.mapping(keys.reservation_expiry, now)[ticket] = now + hold
                data.int_add(keys.reservation_total, request.reserve_nano, now)
                for key in (keys.reservations, keys.reservation_expiry, keys.reservation_total):
                    data.expire(key, hold + 1000, now)
        if request.hold is not None:
            self._holds[ticket] = (now + hold, request.hold)
        return AdmitResult(
            outcome="ok",
            version=version,
            requests=self._admitted_info(request.scopes, "requests", w),
            tokens=self._admitted_info(request.scopes, "tokens", w),
        )

    def _admitted_info(self, scopes: tuple[ScopeLimits, ...], kind: str, w: _Window):
        # This request is the newest entry of its windows: they reset when its bucket leaves.
        info = self._rate_info(scopes, kind, w)
        if info is None:
            return None
        return RateInfo(
            limit=info.limit,
            remaining=info.remaining,
            reset_ms=(w.cur + 1) * w.width + w.window - w.now,
        )

    async def settle(self, request: SettleRequest) -> SettleResult:
        with self._lock:
            return self._settle(request)

    def _settle(self, request: SettleRequest) -> SettleResult:
        data, now, ticket = self._data, _now_ms(), request.ticket
        if request.hold_mode == "owner" and ticket in self._holds_done:
            return SettleResult(outcome="gone")
        if request.hold_mode == "sweeper" and ticket not in self._holds:
            return SettleResult(outcome="gone")
        if request.cost_nano > 0 and not request.allow_missing:
            missing = tuple(
                index
                for index, scope in enumerate(request.scopes)
                if scope.budget_nano is not None and data.int_get(scope.keys.spend, now) is None
            )
            if missing:
                return SettleResult(outcome="seed", missing=missing)

        if request.hold_mode:
            self._holds.pop(ticket, None)
            if request.hold_mode == "sweeper":
                self._holds_done[ticket] = now
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
            if scope.rpm is not None or scope.tpm is not None:
                entry = data.mapping(keys.token_counts, now).pop(ticket, None)
                data.drop_empty(keys.token_counts)
                if entry is not None and entry[1] > now:
                    bucket, _, counted = entry
                    if scope.tpm is not None:
                        real = 0 if request.release else request.tokens
                        self._window_correct(keys.tokens, bucket, real - counted, now)
                    if request.release and scope.rpm is not None:
                        self._window_correct(keys.requests, bucket, -1, now)
            change = None
            if request.cost_nano > 0:
                before = data.int_get(keys.spend, now)
                if before is not None:
                    after = data.int_add(keys.spend, request.cost_nano, now)
                    change = SpendChange(before_nano=before, after_nano=after)
            spend.append(change)
        return SettleResult(outcome="ok", stored_event=False, spend=tuple(spend))

    def _window_correct(self, key: str, bucket: int, amount: int, now: int) -> None:
        window = self._data.mapping(key, now)
        if amount and bucket in window:
            window[bucket] = max(0, window[bucket] + amount)
            window["n"] = max(0, window.get("n", 0) + amount)
        self._data.drop_empty(key)

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

    def _unauth_key(self, client: str, window_ms: int, now: int) -> tuple[str, int]:
        index, left = divmod(now, window_ms)
        return f"unauth:{client}:{index}", window_ms - left

    async def unauth_hit(self, *, client: str, window_ms: int) -> tuple[int, int]:
        with self._lock:
            now = _now_ms()
            key, left = self._unauth_key(client, window_ms, now)
            count = self._data.int_add(key, 1, now)
            self._data.expire(key, left + 1000, now)
            return count, left

    async def unauth_count(self, *, client: str, window_ms: int) -> tuple[int, int]:
        with self._lock:
            now = _now_ms()
            key, left = self._unauth_key(client, window_ms, now)
            return self._data.int_get(key, now) or 0, left

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

    # -- durable holds ----------------------------------------------------------------------
    async def holds_expired(self, *, limit: int) -> list[tuple[str, bytes]]:
        with self._lock:
            now = _now_ms()
            due = sorted(
                (deadline, ticket)
                for ticket, (deadline, _) in self._holds.items()
                if deadline <= now
            )
            return [(ticket, self._holds[ticket][1]) for _, ticket in due[:limit]]

    async def holds_open_count(self) -> int:
        with self._lock:
            return len(self._holds)

    async def holds_done_prune(self, *, older_than_ms: int) -> int:
        with self._lock:
            upto = _now_ms() - older_than_ms
            old = [t for t, at in self._holds_done.items() if at <= upto]
            for ticket in old:
                del self._holds_done[ticket]
            return len(old)

    # -- idempotency records ---------------------------------------------------------------
    def idempotency_name(self, *, key_id: int, token: str) -> str:
        return f"gw:idem:{key_id}:{token}"

    async def idempotency_claim(self, *, name: str, value: bytes, ttl_ms: int) -> bytes | None:
        with self._lock:
            now = _now_ms()
            if self._data._live(name, now):
                return self._data.values[name]  # type: ignore[return-value]
            self._data.values[name] = value
            self._data.expire(name, ttl_ms, now)
            return None

    async def idempotency_store(self, *, name: str, value: bytes, ttl_ms: int) -> None:
        with self._lock:
            now = _now_ms()
            self._data.values[name] = value
            self._data.expire(name, ttl_ms, now)

    async def idempotency_release(self, *, name: str) -> None:
        with self._lock:
            self._data.values.pop(name, None)
            self._data.expiry.pop(name, None)

    def flush(self) -> None:
        """Forget all counters (what FLUSHDB does to Redis): tests of the rebuild path."""
        with self._lock:
            self._data = _Data()
            self._breakers.clear()
            self._ewma.clear()
            self._inflight.clear()
            self._holds = {}
            self._holds_done = {}
