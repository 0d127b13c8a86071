"""Strategies: how a route orders its deployments for one request.

A strategy is a function `(route) -> list[Target]` giving every distinct deployment at most
once, in the order to try them. InferenceCall walks that order (retrying a deployment when
its provider allows, then falling back to the next one); circuit breakers drop open
deployments from it. Strategies register by the name stored on Route.strategy.

The orchestration strategies run differently and are called by InferenceCall directly once
wired (docs/routing.md, "What is wired"): `parallel.race` (a race of coroutine factories),
`consensus.consensus_gather` (a vote), `loadbalance.loadbalance_order_async` (least latency,
least busy) and routing.decide.scoring.scored_choose (per request). Until then their routes
are walked as a fallback chain in the order written."""

from __future__ import annotations

from routing.snapshot import ResolvedRoute, Target
from routing.strategies.base import StrategyOrder, distinct_targets
from routing.strategies.fallback import fallback_order
from routing.strategies.loadbalance import loadbalance_order

_STRATEGIES: dict[str, StrategyOrder] = {
    "fallback": fallback_order,
    "loadbalance": loadbalance_order,
    # Not wired into InferenceCall yet: the chain as written (docs/routing.md).
    "parallel": fallback_order,
    "consensus": fallback_order,
    "scored": fallback_order,
}


def strategy_order(route: ResolvedRoute) -> list[Target]:
    """The deployments of `route` in the order its strategy tries them. An unknown strategy
    name (a row written by a newer release) falls back to the chain as written."""
    return _STRATEGIES.get(route.strategy, fallback_order)(route)


__all__ = ["StrategyOrder", "distinct_targets", "strategy_order"]
