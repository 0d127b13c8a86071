"""Retries never multiply: one budget per request for every attempt of its chain.

Today a chain may make `steps x (1 + provider.max_retries)` attempts and wait up to
RETRY_MAX_DELAY_S between each. `AttemptBudget.for_route` caps that with the route's
`options.max_attempts` (total upstream attempts, retries included; 0: the chain's own
product) and `options.max_total_wait_ms` (total backoff time; 0: no cap). InferenceCall asks
`take()` before each attempt and `wait(delay_s)` before each backoff sleep: `None` means
"do not wait, move on to the next step" (or stop, when `take()` then says no).

An answer produced after the gateway already retried says `x-should-retry: false`
(`should_retry_header`): the client retrying on top would multiply the load again."""

from __future__ import annotations

from dataclasses import dataclass

from routing.snapshot import ResolvedRoute
from routing.strategies.base import distinct_targets


@dataclass(slots=True)
class AttemptBudget:
    max_attempts: int
    max_total_wait_ms: int = 0  # 0: no cap
    attempts: int = 0
    waited_ms: float = 0.0

    @classmethod
    def for_route(cls, route: ResolvedRoute) -> AttemptBudget:
        steps = distinct_targets(route.targets)
        steps = steps[: route.max_attempts] if route.max_attempts else steps
        natural = sum(1 + max(0, t.provider.max_retries) for t in steps)
        cap = route.options.max_attempts
        return cls(
            max_attempts=min(natural, cap) if cap else natural,
            max_total_wait_ms=route.options.max_total_wait_ms,
        )

    @property
    def exhausted(self) -> bool:
        return self.attempts >= self.max_attempts

    def take(self) -> bool:
        """Claim one upstream attempt; False when the budget is spent."""
        if self.exhausted:
            return False
        self.attempts += 1
        return True

    def wait(self, delay_s: float) -> float | None:
        """The backoff to sleep before retrying (`delay_s`), or None when it would exceed
        the total wait cap (then fall back at once instead)."""
        delay_ms = max(0.0, delay_s) * 1000
        if self.max_total_wait_ms and self.waited_ms + delay_ms > self.max_total_wait_ms:
            return None
        self.waited_ms += delay_ms
        return delay_s

    @property
    def retried(self) -> bool:
        return self.attempts > 1


def should_retry_header(budget: AttemptBudget) -> dict[str, str]:
    """`x-should-retry: false` once the gateway retried for the client."""
    return {"x-should-retry": "false"} if budget.retried else {}
