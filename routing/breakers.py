"""Circuit breakers per deployment (provider, model), shared by every process through the
state store (a Redis script, or the in-process store in embedded mode).

A deployment's breaker opens when, within a sliding window (GATEWAY_BREAKER_WINDOW_SECONDS,
60 s), at least GATEWAY_BREAKER_MIN_VOLUME calls were made and more than
GATEWAY_BREAKER_FAILURE_RATIO (50 %) of them failed with errors that say "this upstream is
unwell" (5xx, overload, timeouts, connection errors, malformed answers). Requests skip an open
deployment and fall back at once instead of paying its timeout. After
GATEWAY_BREAKER_COOLDOWN_SECONDS it turns half-open: one request at a time, across all
processes, may probe it; a success closes it, a failure opens it for another cooldown.

What does not count (`breaker_outcome`):
- an upstream 429 and an upstream 401/403: they say "this account is throttled / these
  credentials are refused", often because of one tenant's traffic; a breaker shared by every
  tenant must not close a deployment for all of them on that. They count neither way (a probe
  that meets one gives the probe back). 401/403 are never retried either (see
  `breaker_should_retry`);
- a 400 about this request's content: the upstream answered, which is health.

Two ways in:
- async (exact; what a new InferenceCall should await): `breaker_available_targets_async`,
  `breaker_acquire_async` (claims the one half-open probe atomically in the store),
  `breaker_record_async`;
- sync (the signatures the current InferenceCall calls): `breaker_available_targets`,
  `breaker_acquire`, `breaker_record`, `circuit_open_error`. They decide on this process's
  mirror of the shared state and talk to the store in background tasks: records of
  failures are flushed at once; successes of a healthy deployment wait locally and ride
  along with the next failure's flush (so the shared rate counts them), and those of a
  suspect one (failures in its window, or not closed) are flushed at most every
  GATEWAY_BREAKER_FLUSH_SECONDS (0.25 s); the mirror is refreshed from the store (one call
  for every deployment a request looks at) when older than GATEWAY_BREAKER_REFRESH_SECONDS
  (0.5 s). So a breaker opened by another process is honoured here within that refresh plus
  one round trip, and a healthy deployment costs no store call per request, only the
  periodic refresh (at most 2 per second per process and route). In the sync path a
  half-open deployment admits one probe per process (the store keeps one global probe for
  the async path).

Every state change this process sees is a log event (`breaker.opened`, `breaker.half_open`,
`breaker.closed`)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from django.conf import settings
from redis.exceptions import RedisError

from providers.types import (
    ProviderAuthError,
    ProviderError,
    ProviderRateLimited,
    ProviderUnavailable,
)
from routing.metrics import breaker_state_observe
from routing.snapshot import Target
from tenants.state import state_store
from tenants.state.base import BreakerPolicy, BreakerStatus, StateStore

logger = logging.getLogger("gateway.routing.breakers")

BreakerKey = tuple[int, int]  # (provider id, model id)


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitOpen(ProviderUnavailable):
    """Every deployment of the route is open: answered at once, without an upstream call."""

    status = 503
    code = "upstream_circuit_open"

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def target_key(target: Target) -> BreakerKey:
    return (target.provider.id, target.model.id)


def _is_auth_refusal(error: ProviderError) -> bool:
    return isinstance(error, ProviderAuthError) or error.upstream_status in (401, 403)


def breaker_outcome(error: ProviderError | None) -> str:
    """ "ok", "fail" or "neutral" for the breaker (see the module docstring)."""
    if error is None:
        return "ok"
    if isinstance(error, ProviderRateLimited) or _is_auth_refusal(error):
        return "neutral"
    return "fail" if error.retryable else "ok"


def counts_as_failure(error: ProviderError | None) -> bool:
    return breaker_outcome(error) == "fail"


def breaker_should_retry(error: ProviderError) -> bool:
    """May the same deployment be retried after `error`? Never after an upstream 401/403
    (the credentials will not get better in 100 ms); otherwise when the error says so."""
    return error.retryable and not _is_auth_refusal(error)


def breaker_policy() -> BreakerPolicy:
    cooldown_ms = int(max(0.0, settings.GATEWAY_BREAKER_COOLDOWN_SECONDS) * 1000)
    return BreakerPolicy(
        window_ms=int(max(1.0, settings.GATEWAY_BREAKER_WINDOW_SECONDS) * 1000),
        min_volume=max(1, settings.GATEWAY_BREAKER_MIN_VOLUME),
        failure_ratio=settings.GATEWAY_BREAKER_FAILURE_RATIO,
        cooldown_ms=cooldown_ms,
        probe_ttl_ms=max(cooldown_ms, 1000),
    )


@dataclass(slots=True)
class _Seen:
    """This process's mirror of one breaker."""

    status: BreakerStatus
    at: float  # monotonic time the status was true
    local_probe_at: float | None = None  # the sync path's probe handed out by this process


@dataclass(slots=True)
class _Pending:
    ok: int = 0
    failed: int = 0
    neutral: bool = False
    # Counts on their way to the store (sent, answer not back yet).
    sending_ok: int = 0
    sending_failed: int = 0
    flushed_at: float = 0.0
    ok_since: float = 0.0
    flushing: bool = False


class BreakerBoard:
    def __init__(
        self,
        *,
        store: Callable[[], StateStore] = state_store,
        policy: Callable[[], BreakerPolicy] = breaker_policy,
        clock: Callable[[], float] = time.monotonic,
        refresh_s: Callable[[], float] | float | None = None,
        flush_s: Callable[[], float] | float | None = None,
    ) -> None:
        self._store = store
        self._policy_source = policy
        self._policy_cached: BreakerPolicy | None = None
        self._clock = clock
        self._refresh_s = self._refresh_default = refresh_s
        self._flush_s = self._flush_default = flush_s
        self._seen: dict[BreakerKey, _Seen] = {}
        self._pending: dict[BreakerKey, _Pending] = {}
        self._refreshing: set[BreakerKey] = set()
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- settings (read once, until reset(): they are on every request's path) -----------
    def _policy(self) -> BreakerPolicy:
        policy = self._policy_cached
        if policy is None:
            policy = self._policy_cached = self._policy_source()
        return policy

    @property
    def refresh_s(self) -> float:
        value = self._refresh_s
        if value is None:
            value = self._refresh_s = settings.GATEWAY_BREAKER_REFRESH_SECONDS
        return float(value() if callable(value) else value)

    @property
    def flush_s(self) -> float:
        value = self._flush_s
        if value is None:
            value = self._flush_s = settings.GATEWAY_BREAKER_FLUSH_SECONDS
        return float(value() if callable(value) else value)

    def _name(self, store: StateStore, key: BreakerKey) -> str:
        return store.health_key("breaker", f"{key[0]}:{key[1]}")

    # -- the mirror ----------------------------------------------------------------------
    def _learn(self, key: BreakerKey, status: BreakerStatus) -> None:
        previous = self._seen.get(key)
        before = previous.status.state if previous is not None else "closed"
        seen = _Seen(status=status, at=self._clock())
        if previous is not None and status.state == "half_open":
            seen.local_probe_at = previous.local_probe_at
        self._seen[key] = seen
        if status.state != before:
            self._log(f"breaker.{status.state}", key, status)

    def state(self, key: BreakerKey) -> BreakerState:
        """This process's view (tests, admin)."""
        seen = self._seen.get(key)
        if seen is None:
            return BreakerState.CLOSED
        status = self._aged(seen)
        return BreakerState(status.state)

    def _aged(self, seen: _Seen) -> BreakerStatus:
        """The mirrored status with time applied: an open breaker whose cooldown ran out
        since it was read is half-open (available) now."""
        status = seen.status
        if status.state == "open":
            left = status.retry_after_ms - (self._clock() - seen.at) * 1000
            if left <= 0:
                return BreakerStatus("half_open", True)
            return BreakerStatus("open", False, int(left))
        return status

    def _available_mirror(self, key: BreakerKey) -> bool:
        seen = self._seen.get(key)
        if seen is None:
            return True
        status = self._aged(seen)
        if status.state == "half_open" and seen.local_probe_at is not None:
            return self._clock() - seen.local_probe_at >= max(self.refresh_s, 1.0)
        return status.allowed

    def retry_after(self, keys: list[BreakerKey]) -> float | None:
        """Seconds until the first of these open deployments may be probed again."""
        waits = []
        for key in keys:
            seen = self._seen.get(key)
            if seen is not None:
                status = self._aged(seen)
                if status.state == "open":
                    waits.append(status.retry_after_ms / 1000)
        return min(waits) if waits else None

    # -- background work -----------------------------------------------------------------
    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> bool:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            coro.close()
            return False
        task = loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _guard(self, coro: Coroutine[Any, Any, Any]) -> Any:
        try:
            return await coro
        except (RedisError, OSError) as exc:
            # The store is unreachable: breakers fail open (requests go on), said once per
            # failure in the log.
            logger.warning("breaker.store_failed", extra={"error_class": type(exc).__name__})
            return None

    async def _refresh(self, keys: list[BreakerKey]) -> None:
        try:
            store = self._store()
            statuses = await self._guard(
                store.breaker_status(
                    keys=[self._name(store, k) for k in keys], policy=self._policy()
                )
            )
            if statuses:
                for key, status in zip(keys, statuses, strict=True):
                    pending = self._pending.get(key)
                    if pending is not None and pending.flushing:
                        continue  # read before this process's own counts landed: wait for them
                    self._learn(key, status)
        finally:
            self._refreshing.difference_update(keys)

    def _refresh_stale(self, keys: list[BreakerKey]) -> None:
        now = self._clock()
        stale = [
            k
            for k in keys
            if k not in self._refreshing
            and ((seen := self._seen.get(k)) is None or now - seen.at >= self.refresh_s)
        ]
        if stale:
            self._refreshing.update(stale)
            if not self._spawn(self._refresh(stale)):
                self._refreshing.difference_update(stale)

    async def _flush(self, key: BreakerKey) -> None:
        """Send this key's unflushed counts; counts that arrive meanwhile go in the next
        round of the same task (one flush in flight per key)."""
        pending = self._pending.get(key)
        if pending is None:
            return
        try:
            while pending.ok or pending.failed or pending.neutral:
                ok, failed = pending.ok, pending.failed
                pending.ok, pending.failed, pending.neutral = 0, 0, False
                pending.sending_ok, pending.sending_failed = ok, failed
                pending.flushed_at = self._clock()
                store = self._store()
                status = await self._guard(
                    store.breaker_record(
                        key=self._name(store, key), ok=ok, failed=failed, policy=self._policy()
                    )
                )
                pending.sending_ok = pending.sending_failed = 0
                if status is not None:
                    self._learn(key, status)
        finally:
            pending.sending_ok = pending.sending_failed = 0
            pending.flushing = False

    # -- async API (exact) ---------------------------------------------------------------
    async def available(self, keys: list[BreakerKey]) -> list[bool]:
        store = self._store()
        statuses = await self._guard(
            store.breaker_status(keys=[self._name(store, k) for k in keys], policy=self._policy())
        )
        if statuses is None:
            return [True] * len(keys)
        for key, status in zip(keys, statuses, strict=True):
            self._learn(key, status)
        return [s.allowed for s in statuses]

    async def acquire(self, key: BreakerKey) -> bool:
        seen = self._seen.get(key)
        if (
            seen is not None
            and seen.status.state == "closed"
            and (self._clock() - seen.at < self.refresh_s)
        ):
            return True
        store = self._store()
        status = await self._guard(
            store.breaker_acquire(key=self._name(store, key), policy=self._policy())
        )
        if status is None:
            return True
        self._learn(key, status)
        return status.allowed

    async def record(self, key: BreakerKey, error: ProviderError | None) -> BreakerStatus | None:
        outcome = breaker_outcome(error)
        store = self._store()
        status = await self._guard(
            store.breaker_record(
                key=self._name(store, key),
                ok=int(outcome == "ok"),
                failed=int(outcome == "fail"),
                policy=self._policy(),
            )
        )
        if status is not None:
            self._learn(key, status)
        return status

    # -- sync API (mirror + background store calls) --------------------------------------
    def available_now(self, keys: list[BreakerKey]) -> list[bool]:
        self._refresh_stale(keys)
        return [self._available_mirror(k) for k in keys]

    def acquire_now(self, key: BreakerKey) -> bool:
        seen = self._seen.get(key)
        if seen is None:
            self._refresh_stale([key])
            return True
        status = self._aged(seen)
        if status.state == "closed":
            self._refresh_stale([key])
            return True
        if status.state == "open" or not self._available_mirror(key):
            return False
        # Half-open: this process hands out its one probe and tells the store (whose answer,
        # if another process holds the global probe, updates the mirror).
        seen.local_probe_at = self._clock()
        if status.state != seen.status.state:
            self._log("breaker.half_open", key, status)
            seen.status, seen.at = status, self._clock()
        self._spawn(self._acquire_in_store(key))
        return True

    async def _acquire_in_store(self, key: BreakerKey) -> None:
        store = self._store()
        await self._guard(store.breaker_acquire(key=self._name(store, key), policy=self._policy()))

    def record_now(self, key: BreakerKey, error: ProviderError | None) -> None:
        outcome = breaker_outcome(error)
        pending = self._pending.setdefault(key, _Pending())
        now = self._clock()
        if outcome == "ok":
            # Successes wait locally, only as long as the window they count in.
            if now - pending.ok_since > self._policy().window_ms / 1000:
                pending.ok, pending.ok_since = 0, now
            pending.ok += 1
        elif outcome == "fail":
            pending.failed += 1
        else:
            pending.neutral = True
        seen = self._seen.get(key)
        if seen is not None and seen.local_probe_at is not None:
            seen.local_probe_at = None
            self._local_probe_result(key, seen, outcome)
        elif outcome == "fail":
            self._local_verdict(key, seen, pending)
        # A healthy deployment (closed, no failure in its window) costs no store call: its
        # successes ride along with the next failure's flush. A suspect one flushes them at
        # most every flush_s, so the shared failure rate counts them.
        suspect = seen is not None and (seen.status.state != "closed" or seen.status.failures)
        if pending.flushing:
            return
        if outcome != "ok" or (suspect and now - pending.flushed_at >= self.flush_s):
            pending.flushing = True
            if not self._spawn(self._flush(key)):
                pending.flushing = False

    def _local_probe_result(self, key: BreakerKey, seen: _Seen, outcome: str) -> None:
        """The sync path's probe came back: act on it now (the store agrees on flush)."""
        if outcome == "fail":
            policy = self._policy()
            self._learn(key, BreakerStatus("open", False, policy.cooldown_ms))
        elif outcome == "ok":
            self._learn(key, BreakerStatus("closed", True))

    def _local_verdict(self, key: BreakerKey, seen: _Seen | None, pending: _Pending) -> None:
        """Open the mirror at once when this process's own counts (the store's last window
        plus what is not flushed yet) already cross the line; the store's answer to the
        flush, which counts every process's calls, replaces it."""
        policy = self._policy()
        calls = pending.ok + pending.failed + pending.sending_ok + pending.sending_failed
        failures = pending.failed + pending.sending_failed
        if seen is not None and seen.status.state == "closed":
            calls += seen.status.calls
            failures += seen.status.failures
        if (
            (seen is None or seen.status.state == "closed")
            and calls >= policy.min_volume
            and failures * 1000 > round(policy.failure_ratio * 1000) * calls
        ):
            self._learn(key, BreakerStatus("open", False, policy.cooldown_ms))

    async def drain(self) -> None:
        """Wait for this board's background store calls (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def reset(self) -> None:
        """Forget this process's mirror, unflushed counts and settings read (tests)."""
        self._policy_cached = None
        self._refresh_s, self._flush_s = self._refresh_default, self._flush_default
        self._seen.clear()
        self._pending.clear()
        self._refreshing.clear()
        self._tasks.clear()

    def provider_states(self) -> dict[int, str]:
        """Provider id -> the worst state this process sees among its deployments that are not
        closed (the metrics API's provider health)."""
        rank = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}
        worst: dict[int, BreakerState] = {}
        for key in list(self._seen):
            state = self.state(key)
            if rank[state] > rank[worst.get(key[0], BreakerState.CLOSED)]:
                worst[key[0]] = state
        return {provider_id: str(state) for provider_id, state in worst.items()}

    def _log(self, event: str, key: BreakerKey, status: BreakerStatus) -> None:
        breaker_state_observe(provider_id=key[0], model_id=key[1], state=status.state)
        level = logging.WARNING if event == "breaker.open" else logging.INFO
        logger.log(
            level,
            "breaker.opened" if event == "breaker.open" else event,
            extra={
                "provider_id": str(key[0]),
                "model_id": str(key[1]),
                "retry_after_ms": status.retry_after_ms,
            },
        )


_board = BreakerBoard()


def breaker_board() -> BreakerBoard:
    return _board


# -- what InferenceCall uses (sync: current callers) -------------------------------------------
def breaker_available_targets(targets: list[Target], *, route_name: str) -> list[Target]:
    """`targets` without the open deployments, order kept. When every one is open the
    request is answered at once with CircuitOpen (503), never sent to a known-bad upstream."""
    if not targets:
        return targets
    flags = _board.available_now([target_key(t) for t in targets])
    available = [t for t, ok in zip(targets, flags, strict=True) if ok]
    if not available:
        raise circuit_open_error(targets, route_name=route_name)
    return available


def circuit_open_error(targets: list[Target], *, route_name: str) -> CircuitOpen:
    return CircuitOpen(
        f"Every deployment of '{route_name}' is failing; try again shortly",
        retry_after=_board.retry_after([target_key(t) for t in targets]),
    )


def breaker_acquire(target: Target) -> bool:
    return _board.acquire_now(target_key(target))


def breaker_record(target: Target, error: ProviderError | None) -> None:
    _board.record_now(target_key(target), error)


# -- async (exact) -----------------------------------------------------------------------------
async def breaker_available_targets_async(
    targets: list[Target], *, route_name: str
) -> list[Target]:
    """As `breaker_available_targets`, read from the store now (one call for all targets)."""
    if not targets:
        return targets
    flags = await _board.available([target_key(t) for t in targets])
    available = [t for t, ok in zip(targets, flags, strict=True) if ok]
    if not available:
        raise circuit_open_error(targets, route_name=route_name)
    return available


async def breaker_acquire_async(target: Target) -> bool:
    """Claim the right to call `target` now (a half-open one: the single probe, across every
    process). A closed breaker seen within the refresh interval costs no store call."""
    return await _board.acquire(target_key(target))


async def breaker_record_async(target: Target, error: ProviderError | None) -> None:
    await _board.record(target_key(target), error)
