"""Admission and settlement: the two state-store calls each request makes.

`request_admit` runs ONE atomic state-store step before any upstream call (rate windows, the
concurrency slot and a worst-case budget reservation, for the key and its tenant);
`request_settle` runs ONE when the request ends (real cost, real tokens, slot released, usage
event appended to the stream in stream mode). In the steady state neither touches the database.

The database is read only when something moved:
- a period's spend counter is missing (restart, eviction, FLUSHDB): it is rebuilt through the
  spend loader (`spend_loader_set`) and seeded with SET NX before anything is admitted on it;
- the shared config version differs from the one this process's caches were built at: the
  caches are dropped, listeners run, and this request's key policy is read again.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Protocol

import orjson
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import DatabaseError, close_old_connections
from redis.exceptions import RedisError

from tenants import selectors
from tenants.money import budget_to_nano, nano_to_usd, usd_to_nano_ceil, worst_case_cost_usd
from tenants.periods import PeriodBounds, budget_period_bounds
from tenants.policy import KeyPolicy, LimitPolicy
from tenants.state import state_store
from tenants.state.base import (
    AdmitRequest,
    AdmitResult,
    DenialKind,
    RateInfo,
    ScopeLimits,
    SettleRequest,
    SettleResult,
    StateStore,
)

logger = logging.getLogger("gateway.tenants")

# Seeding a counter and retrying can only race with a FLUSHDB in a loop; stop after a few.
_ADMIT_ATTEMPTS = 4
_SETTLE_ATTEMPTS = 3


class AdmissionDenied(Exception):
    def __init__(
        self,
        *,
        status: int,
        code: str,
        error_type: str,
        message: str,
        retry_after: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.error_type = error_type
        self.message = message
        self.retry_after = retry_after
        self.headers = headers or {}


@dataclass(slots=True)
class Admission:
    request_id: str
    policy: KeyPolicy
    reserved_usd: Decimal
    estimated_tokens: int
    headers: dict[str, str] = field(default_factory=dict)
    admitted_at: float = field(default_factory=time.monotonic)
    # What settlement needs to undo and charge exactly what admission took.
    ticket: str = ""
    reserved_nano: int = 0
    scopes: tuple[ScopeLimits, ...] = ()
    periods: tuple[PeriodBounds, ...] = ()
    settled: bool = False
    # The admission left a durable hold record (ended by settlement or by the sweeper).
    held: bool = False


def hold_payload(
    *,
    ticket: str,
    policy: KeyPolicy,
    scopes: tuple[ScopeLimits, ...],
    periods: tuple[PeriodBounds, ...],
    reserve_nano: int,
    tokens: int,
    event: dict[str, Any],
) -> bytes:
    """What the sweeper needs to end a hold nobody settled: the scopes to release (names are
    rebuilt from these ids and period keys), the reservation to charge, and the usage event's
    fields known at admission."""

    def limit(value: int | None) -> int:
        return -1 if value is None else int(value)

    return orjson.dumps(
        {
            "v": 1,
            "ticket": ticket,
            "tenant_id": policy.tenant_id,
            "reserve_nano": reserve_nano,
            "tokens": tokens,
            "scopes": [
                [
                    scope.scope,
                    scope.scope_id,
                    bounds.key,
                    limit(scope.rpm),
                    limit(scope.tpm),
                    limit(scope.max_concurrency),
                    limit(scope.budget_nano),
                ]
                for scope, bounds in zip(scopes, periods, strict=True)
            ],
            "event": event,
        },
        default=_json_default,
    )


def hold_scopes(store: StateStore, payload: dict[str, Any]) -> tuple[ScopeLimits, ...]:
    """The ScopeLimits of a hold payload (see hold_payload)."""

    def limit(value: int) -> int | None:
        return None if value < 0 else value

    tenant_id = int(payload["tenant_id"])
    return tuple(
        ScopeLimits(
            scope=scope,
            scope_id=int(scope_id),
            keys=store.scope_keys(
                scope=scope, tenant_id=tenant_id, scope_id=int(scope_id), period_key=period
            ),
            rpm=limit(rpm),
            tpm=limit(tpm),
            max_concurrency=limit(conc),
            budget_nano=limit(budget),
        )
        for scope, scope_id, period, rpm, tpm, conc, budget in payload["scopes"]
    )


# -- spend loader (wired to usage.selectors.spend_sum by routing/wiring.py) --------------------
class SpendLoader(Protocol):
    def __call__(
        self, *, scope: str, scope_id: int, start: datetime, end: datetime | None
    ) -> Awaitable[Decimal]: ...


async def spend_loader_unwired_zero(
    *, scope: str, scope_id: int, start: datetime, end: datetime | None
) -> Decimal:
    """Used until the usage room's loader is wired: counts nothing spent before this counter."""
    logger.warning("tenants.spend_loader_unwired", extra={"scope": scope, "scope_id": scope_id})
    return Decimal(0)


_spend_loader: SpendLoader = spend_loader_unwired_zero


def spend_loader_set(fn: SpendLoader | None) -> None:
    """Register the async function that sums a scope's spend in [start, end) from the
    database (None restores the unwired default)."""
    global _spend_loader
    _spend_loader = fn or spend_loader_unwired_zero


# -- config version and change listeners ------------------------------------------------------
_listeners: list[Callable[[], None]] = []
_known_version: str | None = None


def config_change_listener_add(fn: Callable[[], None]) -> None:
    """Run `fn` (sync, cheap: drop a cache) whenever the shared config version moves."""
    if fn not in _listeners:
        _listeners.append(fn)


def _caches_drop() -> None:
    selectors.policy_cache_clear()
    for fn in list(_listeners):
        try:
            fn()
        except Exception:
            # A broken listener must not stop the others (or the request) from going on.
            logger.exception("tenants.config_listener_failed", extra={"listener": repr(fn)})


def config_changed_notify() -> None:
    """Keys, limits, budgets or the catalog changed: tell every process. Sync, meant for
    transaction.on_commit. This process drops its caches at once; the others do on their next
    admission, which returns the moved version."""
    try:
        version = state_store().config_version_bump()
    except (RedisError, OSError):
        logger.exception("tenants.config_version_bump_failed")
    else:
        logger.info("tenants.config_changed", extra={"version": version})
    _caches_drop()


def _version_observe(version: str) -> bool:
    """True when the version moved since this process last looked (the first look counts as
    moved: caches filled before it cannot be trusted)."""
    global _known_version
    if version == _known_version:
        return False
    _known_version = version
    _caches_drop()
    return True


# -- building the state-store request ---------------------------------------------------------
def _scope_limits(
    store: StateStore,
    *,
    scope: str,
    scope_id: int,
    tenant_id: int,
    limits: LimitPolicy,
    bounds: PeriodBounds,
    now: datetime,
) -> ScopeLimits:
    return ScopeLimits(
        scope=scope,
        scope_id=scope_id,
        keys=store.scope_keys(
            scope=scope, tenant_id=tenant_id, scope_id=scope_id, period_key=bounds.key
        ),
        rpm=limits.rpm,
        tpm=limits.tpm,
        max_concurrency=limits.max_concurrency,
        budget_nano=budget_to_nano(limits.budget_usd),
        spend_ttl_ms=bounds.counter_ttl_ms(now),
    )


# key id -> (policy, store, valid from, valid until (epoch s), scopes, periods). The scopes of a
# key only change with its policy (a new object after every reload) or when a period rolls over.
_scopes_cache: dict[int, tuple[KeyPolicy, StateStore, float, float, tuple, tuple]] = {}
_SCOPES_CACHE_MAX = 100_000


def _scopes_build(
    store: StateStore, policy: KeyPolicy, now: datetime
) -> tuple[tuple[ScopeLimits, ...], tuple[PeriodBounds, ...]]:
    key_bounds = budget_period_bounds(
        period=policy.key_limits.budget_period, tz_name=policy.tenant_timezone, now=now
    )
    tenant_bounds = budget_period_bounds(
        period=policy.tenant_limits.budget_period, tz_name=policy.tenant_timezone, now=now
    )
    scopes = (
        _scope_limits(
            store,
            scope="key",
            scope_id=policy.key_id,
            tenant_id=policy.tenant_id,
            limits=policy.key_limits,
            bounds=key_bounds,
            now=now,
        ),
        _scope_limits(
            store,
            scope="tenant",
            scope_id=policy.tenant_id,
            tenant_id=policy.tenant_id,
            limits=policy.tenant_limits,
            bounds=tenant_bounds,
            now=now,
        ),
    )
    return scopes, (key_bounds, tenant_bounds)


def _scopes_for(
    store: StateStore, policy: KeyPolicy, now: datetime
) -> tuple[tuple[ScopeLimits, ...], tuple[PeriodBounds, ...]]:
    at = now.timestamp()
    cached = _scopes_cache.get(policy.key_id)
    if (
        cached is not None
        and cached[0] is policy
        and cached[1] is store
        and cached[2] <= at < cached[3]
    ):
        return cached[4], cached[5]
    scopes, periods = _scopes_build(store, policy, now)
    valid_from = max(p.start for p in periods).timestamp()
    ends = [p.end.timestamp() for p in periods if p.end is not None]
    if len(_scopes_cache) >= _SCOPES_CACHE_MAX:
        _scopes_cache.clear()
    _scopes_cache[policy.key_id] = (
        policy,
        store,
        valid_from,
        min(ends) if ends else float("inf"),
        scopes,
        periods,
    )
    return scopes, periods


async def _seed(
    store: StateStore,
    scopes: tuple[ScopeLimits, ...],
    periods: tuple[PeriodBounds, ...],
    missing: tuple[int, ...],
) -> None:
    """Rebuild missing spend counters from the database. SET NX: when several processes race,
    the first seed wins and the others' (equal) values are dropped."""
    now = datetime.now(tz=UTC)
    for index in missing:
        scope, bounds = scopes[index], periods[index]
        spent = await _spend_loader(
            scope=scope.scope, scope_id=scope.scope_id, start=bounds.start, end=bounds.end
        )
        seeded = await store.spend_seed(
            keys=scope.keys, amount_nano=usd_to_nano_ceil(spent), ttl_ms=bounds.counter_ttl_ms(now)
        )
        logger.info(
            "tenants.spend_seeded",
            extra={
                "scope": scope.scope,
                "scope_id": scope.scope_id,
                "period": bounds.key,
                "spend_usd": format(spent, "f"),
                "seeded": seeded,
            },
        )


# -- headers and refusals ---------------------------------------------------------------------
def duration_format(ms: int) -> str:
    """A duration the way OpenAI's x-ratelimit-reset-* headers write it: 120ms, 1.5s, 1m0s."""
    ms = max(0, int(ms))
    if ms < 1000:
        return f"{ms}ms"
    minutes, rest = divmod(ms, 60_000)
    seconds = f"{rest / 1000:.3f}".rstrip("0").rstrip(".")
    return f"{minutes}m{seconds}s" if minutes else f"{seconds}s"


def rate_headers(*, requests: RateInfo | None, tokens: RateInfo | None) -> dict[str, str]:
    """OpenAI's x-ratelimit-* headers for the binding scope of each window. A window with no
    limit on the key or its tenant has no headers (there is no number to announce)."""
    headers: dict[str, str] = {}
    for name, info in (("requests", requests), ("tokens", tokens)):
        if info is not None:
            headers[f"x-ratelimit-limit-{name}"] = str(info.limit)
            headers[f"x-ratelimit-remaining-{name}"] = str(info.remaining)
            headers[f"x-ratelimit-reset-{name}"] = duration_format(info.reset_ms)
    return headers


def _denial(result: AdmitResult, scopes: tuple[ScopeLimits, ...], periods) -> AdmissionDenied:
    index = result.denied_scope or 0
    scope = scopes[index]
    who = "this API key" if scope.scope == "key" else "this API key's tenant"
    headers = rate_headers(requests=result.requests, tokens=result.tokens)
    retry_s = (result.retry_after_ms or 1000) / 1000
    kind = result.denial
    if kind is DenialKind.BUDGET:
        headers["x-should-retry"] = "false"
        bounds = periods[index]
        period = "lifetime" if bounds.end is None else f"period {bounds.key[1:]}"
        return AdmissionDenied(
            status=402,
            code="budget_exceeded",
            error_type="insufficient_quota",
            message=f"The budget of {who} is exhausted for its {period}; "
            "this request's worst-case cost does not fit in what is left.",
            headers=headers,
        )
    if kind is DenialKind.TOKENS_TOO_LARGE:
        headers["x-should-retry"] = "false"
        return AdmissionDenied(
            status=429,
            code="rate_limit_exceeded",
            error_type="rate_limit_error",
            message=f"Request too large for the tokens-per-minute limit of {who} "
            f"(limit {scope.tpm}); lower max_tokens or shorten the prompt.",
            headers=headers,
        )
    headers["x-should-retry"] = "true"
    if kind is DenialKind.CONCURRENCY:
        return AdmissionDenied(
            status=429,
            code="concurrency_limit_exceeded",
            error_type="rate_limit_error",
            message=f"Too many requests in flight for {who} (limit {scope.max_concurrency}).",
            retry_after=retry_s,
            headers=headers,
        )
    what = "requests" if kind is DenialKind.REQUESTS else "tokens"
    limit = scope.rpm if kind is DenialKind.REQUESTS else scope.tpm
    return AdmissionDenied(
        status=429,
        code="rate_limit_exceeded",
        error_type="rate_limit_error",
        message=f"Rate limit reached for {who}: {limit} {what} per minute. "
        f"Please try again in {duration_format(int(retry_s * 1000))}.",
        retry_after=retry_s,
        headers=headers,
    )


def _unusable(policy: KeyPolicy | None) -> AdmissionDenied:
    if policy is None:
        code = "invalid_api_key"
    elif policy.revoked:
        code = "revoked_api_key"
    elif not policy.tenant_active:
        code = "tenant_disabled"
    else:
        code = "expired_api_key"
    return AdmissionDenied(
        status=401,
        code=code,
        error_type="authentication_error",
        message="This API key is no longer valid",
    )


def _unavailable() -> AdmissionDenied:
    return AdmissionDenied(
        status=503,
        code="state_store_unavailable",
        error_type="server_error",
        message="The gateway cannot check limits right now; please retry shortly.",
        retry_after=1.0,
        headers={"x-should-retry": "true"},
    )


# -- the two calls ----------------------------------------------------------------------------
async def request_admit(
    *,
    policy: KeyPolicy,
    request_id: str,
    estimated_prompt_tokens: int,
    max_output_tokens: int,
    input_price_per_mtok: Decimal,
    output_price_per_mtok: Decimal,
    now: datetime | None = None,
    hold_s: float | None = None,
    hold_event: dict[str, Any] | None = None,
) -> Admission:
    """Admit one request or raise AdmissionDenied. `now` (aware) picks the budget period; it
    defaults to the current time. `hold_s`: how long the slot and reservation are held when
    nobody settles them (default GATEWAY_ADMISSION_TTL_SECONDS). `hold_event`: the usage
    event's fields known now; given, the admission leaves a durable hold record that the
    sweeper (usage.holds) ends with an `orphaned` event if nobody settles it in time."""
    store = state_store()
    reserved = worst_case_cost_usd(
        prompt_tokens=estimated_prompt_tokens,
        max_output_tokens=max_output_tokens,
        input_price_per_mtok=input_price_per_mtok,
        output_price_per_mtok=output_price_per_mtok,
    )
    reserve_nano = usd_to_nano_ceil(reserved)
    tokens = max(0, estimated_prompt_tokens) + max(0, max_output_tokens)
    hold_ms = int((hold_s or settings.GATEWAY_ADMISSION_TTL_SECONDS) * 1000)
    moved = False  # the config version moved while admitting: re-check this key's policy
    rechecked = False
    for _attempt in range(_ADMIT_ATTEMPTS):
        when = now or datetime.now(tz=UTC)
        scopes, periods = _scopes_for(store, policy, when)
        # Tickets are unique per admission: request ids may come from clients.
        ticket = f"{request_id}:{random.getrandbits(48):012x}"
        hold = None
        if hold_event is not None:
            hold = hold_payload(
                ticket=ticket,
                policy=policy,
                scopes=scopes,
                periods=periods,
                reserve_nano=reserve_nano,
                tokens=tokens,
                event=hold_event,
            )
        try:
            result = await store.admit(
                AdmitRequest(
                    ticket=ticket,
                    tokens=tokens,
                    reserve_nano=reserve_nano,
                    hold_ms=hold_ms,
                    scopes=scopes,
                    hold=hold,
                )
            )
        except (RedisError, OSError) as exc:
            logger.error(
                "tenants.admit_store_failed",
                extra={"request_id": request_id, "error_class": type(exc).__name__},
            )
            raise _unavailable() from exc
        moved = _version_observe(result.version) or moved
        if result.outcome == "seed":
            await _seed(store, scopes, periods, result.missing)
            continue
        admission = Admission(
            request_id=request_id,
            policy=policy,
            reserved_usd=nano_to_usd(reserve_nano),
            estimated_tokens=tokens,
            headers=rate_headers(requests=result.requests, tokens=result.tokens),
            ticket=ticket,
            reserved_nano=reserve_nano,
            scopes=scopes,
            periods=periods,
            held=hold is not None,
        )
        if moved and not rechecked:
            rechecked, moved = True, False
            current = await selectors.api_key_policy_reload(key_id=policy.key_id)
            if current != policy:
                if result.outcome == "ok":
                    await admission_release(admission=admission)
                if current is None or not current.usable_at(datetime.now(tz=UTC)):
                    logger.info(
                        "tenants.admission_refused_after_change",
                        extra={"request_id": request_id, "api_key_id": policy.key_id},
                    )
                    raise _unusable(current)
                # Limits or budgets changed under this request: admit it again under them.
                policy = current
                continue
        if result.outcome == "denied":
            raise _denial(result, scopes, periods)
        return admission
    logger.error("tenants.admit_gave_up", extra={"request_id": request_id})
    raise _unavailable()


async def admission_release(*, admission: Admission) -> None:
    """Undo an admission that will not run (refused after the fact): slot, reservation and its
    place in the rate windows are given back; nothing is charged."""
    if admission.settled:
        return
    admission.settled = True
    try:
        await state_store().settle(
            SettleRequest(
                ticket=admission.ticket,
                tokens=0,
                cost_nano=0,
                hold_ms=0,
                scopes=admission.scopes,
                release=True,
                hold_mode="owner" if admission.held else "",
            )
        )
    except (RedisError, OSError):
        # The slot and reservation expire on their own (hold TTL).
        logger.exception("tenants.release_failed", extra={"request_id": admission.request_id})


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return format(value, "f")
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


async def request_settle(
    *,
    admission: Admission,
    cost_usd: Decimal,
    tokens_used: int,
    usage_event: dict[str, Any],
) -> bool:
    """Replace the reservation by the real cost and release the slot. Returns True when the
    state store took the usage event in the same atomic call (Redis stream mode), or when the
    hold was already ended by the sweeper (its `orphaned` event stands for this request);
    then the caller must not write it itself."""
    if admission.settled:
        return False
    store = state_store()
    stream = settings.GATEWAY_USAGE_WRITE_MODE == "stream" and store.supports_stream
    event = orjson.dumps(usage_event, default=_json_default) if stream else None
    cost_nano = usd_to_nano_ceil(cost_usd)
    result: SettleResult | None = None
    try:
        for attempt in range(_SETTLE_ATTEMPTS):
            result = await store.settle(
                SettleRequest(
                    ticket=admission.ticket,
                    tokens=max(0, tokens_used),
                    cost_nano=cost_nano,
                    hold_ms=0,
                    scopes=admission.scopes,
                    event=event,
                    # Last resort: charge the counters that exist rather than never settle.
                    allow_missing=attempt == _SETTLE_ATTEMPTS - 1,
                    hold_mode="owner" if admission.held else "",
                )
            )
            if result.outcome == "gone":
                # The call outlived its hold and the sweeper already ended it with an
                # `orphaned` event charging the reservation: nothing more to charge or write.
                logger.warning(
                    "tenants.settle_after_orphaned", extra={"request_id": admission.request_id}
                )
                admission.settled = True
                return True
            if result.outcome != "seed":
                break
            try:
                await _seed(store, admission.scopes, admission.periods, result.missing)
            except DatabaseError as exc:
                # The database cannot rebuild the counter now: charge the counters that
                # exist (the next try allows missing ones); the missing one is rebuilt from
                # PostgreSQL, this request's event included, when it is next needed.
                logger.error(
                    "tenants.settle_seed_failed",
                    extra={"request_id": admission.request_id, "error_class": type(exc).__name__},
                )
                result = await store.settle(
                    SettleRequest(
                        ticket=admission.ticket,
                        tokens=max(0, tokens_used),
                        cost_nano=cost_nano,
                        hold_ms=0,
                        scopes=admission.scopes,
                        event=event,
                        allow_missing=True,
                        hold_mode="owner" if admission.held else "",
                    )
                )
                if result.outcome == "gone":
                    admission.settled = True
                    return True
                break
    except (RedisError, OSError) as exc:
        # The money is not lost: the usage event goes to PostgreSQL (the caller writes it when
        # we return False); the hold stays open, and when it expires the sweeper finds that
        # event and charges the counters with it (usage.holds), releasing slot and reservation.
        logger.error(
            "tenants.settle_store_failed",
            extra={"request_id": admission.request_id, "error_class": type(exc).__name__},
        )
        admission.settled = True
        return False
    admission.settled = True
    if result is None or result.outcome != "ok":
        return False
    _alerts_check(admission, result)
    return result.stored_event


# -- budget alerts (dispatched off the request path) ------------------------------------------
_background: set[asyncio.Task] = set()


def thresholds_crossed(
    *, thresholds: tuple[int, ...], budget_nano: int, before_nano: int, after_nano: int
) -> list[int]:
    """Thresholds (percent) that this charge moved the spend across: before < t% <= after."""
    if budget_nano <= 0:
        return []
    return [t for t in thresholds if before_nano * 100 < budget_nano * t <= after_nano * 100]


def _alerts_check(admission: Admission, result: SettleResult) -> None:
    policy = admission.policy
    for scope, bounds, change in zip(
        admission.scopes, admission.periods, result.spend, strict=False
    ):
        if change is None or scope.budget_nano is None:
            continue
        crossed = thresholds_crossed(
            thresholds=policy.alert_thresholds,
            budget_nano=scope.budget_nano,
            before_nano=change.before_nano,
            after_nano=change.after_nano,
        )
        if crossed:
            _alerts_schedule(
                tenant_id=policy.tenant_id,
                scope=scope.scope,
                scope_id=scope.scope_id,
                period_key=bounds.key,
                thresholds=crossed,
                budget_usd=format(nano_to_usd(scope.budget_nano), "f"),
                spend_usd=format(nano_to_usd(change.after_nano), "f"),
            )


def _alerts_enqueue(**kwargs: Any) -> None:
    from tenants.tasks import budget_alerts_dispatch

    try:
        budget_alerts_dispatch.delay(**kwargs)
    finally:
        # Eager mode runs the task here, in a worker thread: give its connection back.
        close_old_connections()


def _alerts_schedule(**kwargs: Any) -> None:
    """Hand the crossing to Celery without holding the request (enqueueing is a network call,
    and in eager mode the whole task)."""
    logger.info("tenants.budget_thresholds_crossed", extra=kwargs)
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        _alerts_enqueue(**kwargs)
        return
    task = loop.create_task(sync_to_async(_alerts_enqueue, thread_sensitive=False)(**kwargs))
    _background.add(task)
    task.add_done_callback(_alert_task_done)


def _alert_task_done(task: asyncio.Task) -> None:
    _background.discard(task)
    if not task.cancelled() and task.exception() is not None:
        logger.error(
            "tenants.budget_alert_enqueue_failed",
            exc_info=task.exception(),
        )


async def alert_dispatches_wait(timeout_s: float = 10.0) -> None:
    """Wait for scheduled alert hand-offs of this process (graceful shutdown, tests)."""
    pending = [task for task in _background if not task.done()]
    if pending:
        await asyncio.wait(pending, timeout=timeout_s)


# -- operator view of a budget ----------------------------------------------------------------
async def budget_status_get(*, scope: str, scope_id: int, tenant, owner) -> dict[str, Any]:
    """A scope's budget and its spend in the current period: the state store's counter when
    it exists (it includes requests not yet in PostgreSQL), else the database's sum.
    `owner` is the Tenant or ApiKey row holding the limits."""
    now = datetime.now(tz=UTC)
    bounds = budget_period_bounds(period=owner.budget_period, tz_name=tenant.timezone, now=now)
    store = state_store()
    keys = store.scope_keys(
        scope=scope, tenant_id=tenant.pk, scope_id=scope_id, period_key=bounds.key
    )
    try:
        counter = await store.spend_get(keys=keys)
    except (RedisError, OSError):
        counter = None
    if counter is not None:
        spend = nano_to_usd(counter)
    else:
        spend = await _spend_loader(
            scope=scope, scope_id=scope_id, start=bounds.start, end=bounds.end
        )
    budget = owner.budget_usd
    return {
        "scope": scope,
        "scope_id": scope_id,
        "budget_usd": budget,
        "budget_period": owner.budget_period,
        "period": bounds.key,
        "period_start": bounds.start,
        "period_end": bounds.end,
        "spend_usd": spend,
        "remaining_usd": None if budget is None else max(Decimal(0), budget - spend),
    }
