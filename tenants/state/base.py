"""The state-store contract: what admission and settlement need from shared state.

Both backends (Redis for many processes, in-process memory for the embedded default) implement
it and pass one contract test suite (tests/tenants/test_state_contract.py).

Each request makes exactly two calls, each one atomic step:

- `admit`: for every scope (the key, then its tenant) check and take, all or nothing: a request
  and its estimated tokens in the sliding one-minute windows, a concurrency slot, and a budget
  reservation against the period's spend counter. Slots and reservations are held under the
  request's ticket with an expiry, so a process that dies leaks nothing for longer than
  `hold_ms`.
- `settle`: replace the reservation by the real cost, release the slot, correct the token
  window to the real count and, when asked, append the usage event to the usage stream.

Money crosses this boundary as integer nano-USD (see tenants.money)."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from enum import IntEnum

RATE_WINDOW_MS = 60_000

# Rate windows are bucketed (a fixed number of buckets per window) so that an admission's work
# is bounded whatever a window holds. An entry counts from its admission until the end of its
# bucket plus one whole window: never less than the window, at most one bucket width more.
WINDOW_BUCKETS = 60


def window_bucket_ms(window_ms: int) -> int:
    """Width of one bucket of a window (1 s for the one-minute windows)."""
    return max(1, -(-window_ms // WINDOW_BUCKETS))


class DenialKind(IntEnum):
    BUDGET = 1
    REQUESTS = 2
    TOKENS = 3
    CONCURRENCY = 4
    # A single request asks for more tokens than the whole per-minute limit: never admissible.
    TOKENS_TOO_LARGE = 5


@dataclass(frozen=True, slots=True)
class ScopeKeys:
    """Names of one scope's structures. Every name carries the same hash tag, so the keys of
    one request (key scope, tenant scope, config version, usage stream) share a Redis Cluster
    slot and one script may touch them all."""

    requests: str  # bucketed window (hash): bucket -> requests, 'n' live total (see below)
    tokens: str  # bucketed window (hash): bucket -> tokens, 'n' live total
    token_counts: str  # hash ticket -> "bucket,ends_ms,tokens" until settlement
    token_total: str  # unused since the windows are bucketed (kept: the layout stays put)
    slots: str  # zset ticket -> expires at (ms)
    spend: str  # int nano-USD spent in the period (missing = must be seeded)
    reservations: str  # hash ticket -> nano-USD reserved
    reservation_expiry: str  # zset ticket -> expires at (ms)
    reservation_total: str  # int: sum of reservations

    def as_list(self) -> list[str]:
        return [
            self.requests,
            self.tokens,
            self.token_counts,
            self.token_total,
            self.slots,
            self.spend,
            self.reservations,
            self.reservation_expiry,
            self.reservation_total,
        ]


KEYS_PER_SCOPE = 9


@dataclass(frozen=True, slots=True)
class ScopeLimits:
    """One scope of one request. A limit of None is not enforced and not tracked."""

    scope: str  # "key" | "tenant"
    scope_id: int
    keys: ScopeKeys
    rpm: int | None = None
    tpm: int | None = None
    max_concurrency: int | None = None
    budget_nano: int | None = None
    spend_ttl_ms: int | None = None  # None: the counter never expires (lifetime budgets)


@dataclass(frozen=True, slots=True)
class AdmitRequest:
    ticket: str
    tokens: int
    reserve_nano: int
    hold_ms: int
    scopes: tuple[ScopeLimits, ...]
    window_ms: int = RATE_WINDOW_MS
    # Durable hold: what the sweeper needs to end this admission if nobody settles it
    # (kept with its deadline, now + hold_ms, in the same atomic step). None: no record.
    hold: bytes | None = None


@dataclass(frozen=True, slots=True)
class RateInfo:
    """The binding scope's view of one window, for the x-ratelimit-* headers."""

    limit: int
    remaining: int
    reset_ms: int


@dataclass(frozen=True, slots=True)
class AdmitResult:
    outcome: str  # "ok" | "seed" | "denied"
    version: str
    missing: tuple[int, ...] = ()  # scope indexes whose spend counter must be seeded
    denial: DenialKind | None = None
    denied_scope: int | None = None
    retry_after_ms: int | None = None
    requests: RateInfo | None = None
    tokens: RateInfo | None = None


@dataclass(frozen=True, slots=True)
class SettleRequest:
    ticket: str
    tokens: int
    cost_nano: int
    hold_ms: int
    scopes: tuple[ScopeLimits, ...]
    event: bytes | None = None  # usage event (orjson) to append to the stream, if any
    # Release an admission that was refused after the fact: also forget its window entries.
    release: bool = False
    # Charge only counters that exist instead of asking for a seed (last resort, see settle).
    allow_missing: bool = False
    window_ms: int = RATE_WINDOW_MS
    # "" (the admission kept no hold record), "owner" (the request itself settles) or
    # "sweeper" (the hold expired: usage.holds settles it). A hold ends once: the second of
    # the two changes nothing and gets outcome "gone".
    hold_mode: str = ""


@dataclass(frozen=True, slots=True)
class SpendChange:
    before_nano: int
    after_nano: int


@dataclass(frozen=True, slots=True)
class SettleResult:
    outcome: str  # "ok" | "seed" | "gone" (the hold was already ended by the other party)
    stored_event: bool = False
    missing: tuple[int, ...] = ()
    # Per scope: the spend counter before and after the charge (None when not charged).
    spend: tuple[SpendChange | None, ...] = field(default_factory=tuple)


# -- routing health: circuit breakers, latency EWMA, in-flight counts ---------------------------
BREAKER_BUCKETS = 10  # the failure-rate window is counted in this many buckets


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """When a deployment's breaker opens and how it recovers (the same for every process)."""

    window_ms: int = 60_000  # failure rate measured over this sliding window
    min_volume: int = 10  # no verdict on fewer calls than this in the window
    failure_ratio: float = 0.5  # open when failures / calls exceeds this
    cooldown_ms: int = 30_000  # open -> half-open after this
    probe_ttl_ms: int = 30_000  # a probe that never reports back is given up after this


@dataclass(frozen=True, slots=True)
class BreakerStatus:
    """One deployment's breaker as the store sees it. `allowed`: for `breaker_acquire`, this
    caller may call the deployment now (it holds the probe when half-open); for the other
    calls, a request may plan to try it. `retry_after_ms`: until an open breaker may be
    probed. `calls`/`failures`: counted in the current window (closed state only)."""

    state: str  # "closed" | "open" | "half_open"
    allowed: bool
    retry_after_ms: int = 0
    calls: int = 0
    failures: int = 0


BREAKER_CLOSED = BreakerStatus(state="closed", allowed=True)


class StateStore(abc.ABC):
    """One per process (see tenants.state.state_store)."""

    name: str = ""
    supports_stream: bool = False

    @abc.abstractmethod
    def scope_keys(
        self, *, scope: str, tenant_id: int, scope_id: int, period_key: str
    ) -> ScopeKeys:
        """Key names for one scope; the period key names the spend counter and reservations."""

    @abc.abstractmethod
    async def admit(self, request: AdmitRequest) -> AdmitResult: ...

    @abc.abstractmethod
    async def settle(self, request: SettleRequest) -> SettleResult: ...

    @abc.abstractmethod
    async def spend_seed(self, *, keys: ScopeKeys, amount_nano: int, ttl_ms: int | None) -> bool:
        """Create the spend counter with `amount_nano` unless it exists (SET NX). True if set."""

    @abc.abstractmethod
    async def spend_get(self, *, keys: ScopeKeys) -> int | None:
        """The period's spend counter, or None when it is missing (admin views, tests)."""

    @abc.abstractmethod
    async def config_version_get(self) -> str: ...

    @abc.abstractmethod
    def config_version_bump(self) -> str:
        """Move the shared config version (sync: called from transaction.on_commit)."""

    @abc.abstractmethod
    async def unauth_hit(self, *, client: str, window_ms: int) -> tuple[int, int]:
        """Count one unauthenticated request from a client address in the current fixed
        window of `window_ms`; returns (count in this window, ms until it ends)."""

    @abc.abstractmethod
    async def unauth_count(self, *, client: str, window_ms: int) -> tuple[int, int]:
        """(unauthenticated requests from the address in the current window, ms until it
        ends), without counting."""

    # -- routing health (shared by every process) ----------------------------------------
    @abc.abstractmethod
    def health_key(self, kind: str, name: str) -> str:
        """Key name of one routing-health structure (`kind`: breaker, ewma, inflight) of one
        deployment `name`."""

    @abc.abstractmethod
    async def breaker_record(
        self, *, key: str, ok: int, failed: int, policy: BreakerPolicy
    ) -> BreakerStatus:
        """Count `ok` successes and `failed` failures of calls to a deployment, in one step.
        Closed: counted in the window; opens when the window holds at least
        `policy.min_volume` calls and failures / calls > `policy.failure_ratio`. Half-open
        (the probe's result): any failure opens it again for a cooldown, else any success
        closes it; ok = failed = 0 (an outcome that says nothing about health, e.g. a 429)
        only gives the probe back. Open: nothing is counted (calls started before it opened).
        Returns the status after the step."""

    @abc.abstractmethod
    async def breaker_acquire(self, *, key: str, policy: BreakerPolicy) -> BreakerStatus:
        """Claim the right to call a deployment now: closed always; open only once cooled
        down, which turns it half-open and hands this caller the one probe; half-open only
        when no probe is out (or the one out is older than `probe_ttl_ms`)."""

    @abc.abstractmethod
    async def breaker_status(
        self, *, keys: list[str], policy: BreakerPolicy
    ) -> list[BreakerStatus]:
        """Read several breakers in one step, changing nothing."""

    @abc.abstractmethod
    async def ewma_observe(self, *, key: str, value: float, alpha: float) -> float:
        """Fold `value` into the key's exponentially weighted moving average (the first value
        starts it); returns the new average. Kept for a day without observations."""

    @abc.abstractmethod
    async def ewma_get(self, *, keys: list[str]) -> list[float | None]: ...

    @abc.abstractmethod
    async def inflight_add(self, *, key: str, ticket: str, hold_ms: int) -> int:
        """Count one call in flight under `ticket` (expires after `hold_ms`, so a dead
        process leaks nothing for longer); returns the count."""

    @abc.abstractmethod
    async def inflight_remove(self, *, key: str, ticket: str) -> int: ...

    @abc.abstractmethod
    async def inflight_get(self, *, keys: list[str]) -> list[int]: ...

    # -- durable holds (see usage/holds.py) ----------------------------------------------
    @abc.abstractmethod
    async def holds_expired(self, *, limit: int) -> list[tuple[str, bytes]]:
        """Up to `limit` open holds whose deadline passed, oldest first: (ticket, payload)."""

    @abc.abstractmethod
    async def holds_open_count(self) -> int:
        """How many holds are open (admitted, not settled)."""

    @abc.abstractmethod
    async def holds_done_prune(self, *, older_than_ms: int) -> int:
        """Forget the sweeper's marks of holds ended more than `older_than_ms` ago."""

    # -- idempotency records (Idempotency-Key; see routing/idempotency.py) ----------------
    @abc.abstractmethod
    def idempotency_name(self, *, key_id: int, token: str) -> str:
        """The record's name for an API key and a (hashed) client idempotency key."""

    @abc.abstractmethod
    async def idempotency_claim(self, *, name: str, value: bytes, ttl_ms: int) -> bytes | None:
        """Create the record unless it exists (SET NX PX). None when this call created it,
        else the existing record's value."""

    @abc.abstractmethod
    async def idempotency_store(self, *, name: str, value: bytes, ttl_ms: int) -> None:
        """Replace the record's value and expiry."""

    @abc.abstractmethod
    async def idempotency_release(self, *, name: str) -> None:
        """Forget the record (the request failed: a retry runs again)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections (tests, shutdown)."""
