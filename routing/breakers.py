"""Circuit breakers per deployment (provider, model).

A deployment that fails N times in a row with errors that say "this upstream is unwell"
(5xx, overload, timeouts, connection errors, 429, failed auth) is opened: requests skip it and
fall back to the next step of their route at once instead of paying its timeout. After a
cooldown it turns half-open: exactly one request at a time may probe it; a success closes it,
a failure opens it again for another cooldown.

State is in-process (each worker learns on its own, which is what a breaker needs: it
reacts within N requests of the worker that sees the failures). The board's interface is
what a shared (Redis) board would implement later. Every state change is a
log event (`breaker.opened`, `breaker.half_open`, `breaker.closed`) and sets the
`gateway_breaker_state` gauge.

Steady-state cost: deployments that never failed have no entry, so the hot path pays one
dict lookup per target and nothing else."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from django.conf import settings

from providers.types import ProviderError, ProviderUnavailable
from routing.metrics import breaker_state_observe
from routing.snapshot import Target

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
    public_message = "The upstream provider is temporarily unavailable; retry later."

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(slots=True)
class _Breaker:
    state: BreakerState = BreakerState.CLOSED
    failures: int = 0  # consecutive failures that count
    opened_at: float = 0.0
    # When the current half-open probe was handed out (None: no probe in flight). A probe
    # whose request never reports back (client gone) goes stale after one cooldown.
    probe_at: float | None = None


def target_key(target: Target) -> BreakerKey:
    return (target.provider.id, target.model.id)


def counts_as_failure(error: ProviderError | None) -> bool:
    """Retryable errors say the deployment is unwell; non-retryable ones (a 400 for this
    request's content) say it answered, which is health."""
    return error is not None and error.retryable


class BreakerBoard:
    def __init__(
        self,
        *,
        failure_threshold: int | Callable[[], int],
        cooldown_s: float | Callable[[], float],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._threshold = failure_threshold
        self._cooldown = cooldown_s
        self._clock = clock
        self._breakers: dict[BreakerKey, _Breaker] = {}

    @property
    def failure_threshold(self) -> int:
        value = self._threshold
        return max(1, int(value() if callable(value) else value))

    @property
    def cooldown_s(self) -> float:
        value = self._cooldown
        return max(0.0, float(value() if callable(value) else value))

    # -- reads -------------------------------------------------------------------------
    def state(self, key: BreakerKey) -> BreakerState:
        breaker = self._breakers.get(key)
        if breaker is None:
            return BreakerState.CLOSED
        if breaker.state is BreakerState.OPEN and self._cooled_down(breaker):
            return BreakerState.HALF_OPEN
        return breaker.state

    def available(self, key: BreakerKey) -> bool:
        """May a request plan to try this deployment? (Does not claim the probe.)"""
        breaker = self._breakers.get(key)
        if breaker is None or breaker.state is BreakerState.CLOSED:
            return True
        if breaker.state is BreakerState.OPEN:
            return self._cooled_down(breaker)
        return not self._probe_in_flight(breaker)

    def retry_after(self, keys: list[BreakerKey]) -> float | None:
        """Seconds until the first of these open deployments may be probed again."""
        now = self._clock()
        waits = [
            max(0.0, b.opened_at + self.cooldown_s - now)
            for key in keys
            if (b := self._breakers.get(key)) is not None and b.state is BreakerState.OPEN
        ]
        return min(waits) if waits else None

    # -- transitions -------------------------------------------------------------------
    def acquire(self, key: BreakerKey) -> bool:
        """Claim the right to call this deployment now. Closed: always; open: only once the
        cooldown is over, which turns it half-open and hands this caller the one probe."""
        breaker = self._breakers.get(key)
        if breaker is None or breaker.state is BreakerState.CLOSED:
            return True
        if breaker.state is BreakerState.OPEN:
            if not self._cooled_down(breaker):
                return False
            breaker.state = BreakerState.HALF_OPEN
            breaker.probe_at = self._clock()
            self._log("breaker.half_open", key, breaker)
            return True
        if self._probe_in_flight(breaker):
            return False
        breaker.probe_at = self._clock()
        return True

    def record(self, key: BreakerKey, error: ProviderError | None) -> None:
        """The outcome of one call to the deployment (error None: it answered)."""
        if counts_as_failure(error):
            self._failure(key)
            return
        breaker = self._breakers.get(key)
        if breaker is None:
            return
        previous = breaker.state
        del self._breakers[key]
        if previous is not BreakerState.CLOSED:
            self._log("breaker.closed", key, _Breaker())

    def provider_states(self) -> dict[int, str]:
        """Provider id -> the worst state among its deployments that are not closed."""
        rank = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}
        worst: dict[int, BreakerState] = {}
        for key in list(self._breakers):
            state = self.state(key)
            if rank[state] > rank[worst.get(key[0], BreakerState.CLOSED)]:
                worst[key[0]] = state
        return {provider_id: str(state) for provider_id, state in worst.items()}

    def reset(self) -> None:
        self._breakers.clear()

    # -- internals ---------------------------------------------------------------------
    def _failure(self, key: BreakerKey) -> None:
        breaker = self._breakers.setdefault(key, _Breaker())
        breaker.failures += 1
        if breaker.state is BreakerState.HALF_OPEN or (
            breaker.state is BreakerState.CLOSED and breaker.failures >= self.failure_threshold
        ):
            breaker.state = BreakerState.OPEN
            breaker.opened_at = self._clock()
            breaker.probe_at = None
            self._log("breaker.opened", key, breaker)

    def _cooled_down(self, breaker: _Breaker) -> bool:
        return self._clock() - breaker.opened_at >= self.cooldown_s

    def _probe_in_flight(self, breaker: _Breaker) -> bool:
        return breaker.probe_at is not None and self._clock() - breaker.probe_at < max(
            self.cooldown_s, 1.0
        )

    def _log(self, event: str, key: BreakerKey, breaker: _Breaker) -> None:
        breaker_state_observe(provider_id=key[0], model_id=key[1], state=breaker.state.value)
        level = logging.WARNING if event == "breaker.opened" else logging.INFO
        logger.log(
            level,
            event,
            extra={
                "provider_id": str(key[0]),
                "model_id": str(key[1]),
                "consecutive_failures": breaker.failures,
                "cooldown_s": self.cooldown_s,
            },
        )


_board = BreakerBoard(
    failure_threshold=lambda: settings.GATEWAY_BREAKER_FAILURE_THRESHOLD,
    cooldown_s=lambda: settings.GATEWAY_BREAKER_COOLDOWN_SECONDS,
)


def breaker_board() -> BreakerBoard:
    return _board


# -- what InferenceCall uses ---------------------------------------------------------------
def breaker_available_targets(targets: list[Target], *, route_name: str) -> list[Target]:
    """`targets` without the open deployments, order kept. When every one is open the
    request is answered at once with CircuitOpen (503), never sent to a known-bad upstream."""
    if not targets:
        return targets
    available = [t for t in targets if _board.available(target_key(t))]
    if not available:
        raise circuit_open_error(targets, route_name=route_name)
    return available


def circuit_open_error(targets: list[Target], *, route_name: str) -> CircuitOpen:
    return CircuitOpen(
        f"Every deployment of '{route_name}' is failing; try again shortly",
        retry_after=_board.retry_after([target_key(t) for t in targets]),
    )


def breaker_acquire(target: Target) -> bool:
    return _board.acquire(target_key(target))


def breaker_record(target: Target, error: ProviderError | None) -> None:
    _board.record(target_key(target), error)
