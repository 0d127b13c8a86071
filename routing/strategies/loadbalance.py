"""Load balancing: which deployment of the route goes first; the others follow in chain order
as fallbacks. Three modes (route option `mode`):

- `weighted` (default, sync `loadbalance_order`): the snapshot repeats a step `weight` times,
  so a uniform pick over the repeated chain is a weighted pick of the first deployment.
- `least_latency`: power of two choices over the latency EWMA (routing.decide.scoring, shared
  by every process): pick two distinct deployments at random (weighted), send to the one with
  the lower average. A deployment with no average yet counts as the fastest, so new ones get
  traffic and an average. Two random choices, not the global minimum, so every process does
  not pile onto the one deployment that looked fastest a moment ago.
- `least_busy`: the deployment with the fewest calls in flight (counted in the state store by
  `inflight_enter` / `inflight_leave` around each upstream call, across every process);
  ties go to a weighted random pick among the tied.

`least_latency_order` and `least_busy_order` are pure (they take the figures); the async
`loadbalance_order_async` reads the figures from the state store in one call and applies the
route's mode."""

from __future__ import annotations

import random
import secrets
from collections.abc import Awaitable, Callable, Mapping

from django.conf import settings

from routing.snapshot import ResolvedRoute, Target
from routing.strategies.base import distinct_targets
from tenants.state import state_store

TargetKey = tuple[int, int]  # (provider id, model id)


def _key(target: Target) -> TargetKey:
    return (target.provider.id, target.model.id)


def _first_then_chain(first: Target, route: ResolvedRoute) -> list[Target]:
    chain = distinct_targets(route.targets)
    return [first, *[t for t in chain if _key(t) != _key(first)]]


def loadbalance_order(route: ResolvedRoute) -> list[Target]:
    targets = list(route.targets)
    if len(targets) > 1:
        start = random.randrange(len(targets))  # noqa: S311 - spreading load, not crypto
        targets = targets[start:] + targets[:start]
    return distinct_targets(targets)


def least_latency_order(
    route: ResolvedRoute,
    latencies: Mapping[TargetKey, float | None],
    *,
    rng: random.Random | None = None,
) -> list[Target]:
    """Power of two choices: two distinct deployments drawn by weight, the lower EWMA first
    (no average yet: first); the rest of the chain after it."""
    rng = rng or random  # type: ignore[assignment]
    chain = distinct_targets(route.targets)
    if len(chain) < 2:
        return chain
    first = rng.choice(route.targets)  # the repeated chain: a weighted draw
    others = [t for t in route.targets if _key(t) != _key(first)]
    second = rng.choice(others)

    def latency(target: Target) -> float:
        value = latencies.get(_key(target))
        return -1.0 if value is None else value

    pick = first if latency(first) <= latency(second) else second
    return _first_then_chain(pick, route)


def least_busy_order(
    route: ResolvedRoute,
    inflight: Mapping[TargetKey, int],
    *,
    rng: random.Random | None = None,
) -> list[Target]:
    """The deployment with the fewest calls in flight first (ties: weighted random)."""
    rng = rng or random  # type: ignore[assignment]
    chain = distinct_targets(route.targets)
    if len(chain) < 2:
        return chain
    fewest = min(inflight.get(_key(t), 0) for t in chain)
    tied = [t for t in route.targets if inflight.get(_key(t), 0) == fewest]
    return _first_then_chain(rng.choice(tied), route)


# -- the state store's figures ----------------------------------------------------------------
def _name(kind: str, target: Target) -> str:
    return state_store().health_key(kind, f"{target.provider.id}:{target.model.id}")


async def inflight_counts(targets: list[Target]) -> dict[TargetKey, int]:
    counts = await state_store().inflight_get(keys=[_name("inflight", t) for t in targets])
    return {_key(t): n for t, n in zip(targets, counts, strict=True)}


async def inflight_enter(target: Target, *, hold_ms: int | None = None) -> str:
    """Count one call to `target` in flight; returns the ticket for `inflight_leave`. The
    ticket expires on its own after `hold_ms` (default: GATEWAY_ADMISSION_TTL_SECONDS), so a
    process that dies leaks nothing for longer."""
    ticket = secrets.token_hex(8)
    hold = hold_ms or int(settings.GATEWAY_ADMISSION_TTL_SECONDS * 1000)
    await state_store().inflight_add(key=_name("inflight", target), ticket=ticket, hold_ms=hold)
    return ticket


async def inflight_leave(target: Target, ticket: str) -> None:
    await state_store().inflight_remove(key=_name("inflight", target), ticket=ticket)


LatencyReader = Callable[[list[Target]], Awaitable[Mapping[TargetKey, float | None]]]
InflightReader = Callable[[list[Target]], Awaitable[Mapping[TargetKey, int]]]


async def loadbalance_order_async(
    route: ResolvedRoute,
    *,
    latencies: LatencyReader | None = None,
    inflight: InflightReader | None = None,
) -> list[Target]:
    """The route's order for its `mode` (weighted needs no store call)."""
    mode = route.options.mode
    chain = distinct_targets(route.targets)
    if mode == "least_latency" and len(chain) > 1:
        if latencies is None:
            from routing.decide.scoring import latency_get

            latencies = latency_get
        return least_latency_order(route, await latencies(chain))
    if mode == "least_busy" and len(chain) > 1:
        return least_busy_order(route, await (inflight or inflight_counts)(chain))
    return loadbalance_order(route)
