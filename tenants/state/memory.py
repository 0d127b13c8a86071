"""In-process state store: the embedded default (one process, no Redis).

It keeps the same structures as the Redis scripts, under the same names, and runs each step
under one lock, so it behaves exactly like the Redis backend for a single process (the shared
contract suite holds both to it). It has no usage stream: settlement reports the event as not
stored and routing writes it directly."""

from __future__ import annotations

import threading
import time

from tenants.state.base import (
    AdmitRequest,
    AdmitResult,
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


class MemoryStateStore(StateStore):
    name = "memory"
    supports_stream = False

    def __init__(self) -> None:
        self._data = _Data()
        self._lock = threading.Lock()
        self._version = str(_now_ms())
        # Durable holds: ticket -> (deadline ms, payload); tickets the sweeper ended -> ms.
        self._holds: dict[str, tuple[int, bytes]] = {}
        self._holds_done: dict[str, int] = {}

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
        if request.hold is not None:
            self._holds[ticket] = (now + hold, request.hold)
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
            self._holds = {}
            self._holds_done = {}
