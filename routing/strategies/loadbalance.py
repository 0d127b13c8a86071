"""Weighted load balancing: the snapshot repeats a step `weight` times, so a uniform pick over
the repeated chain is a weighted pick of the first deployment; the others follow in chain
order as fallbacks."""

from __future__ import annotations

import random

from routing.snapshot import ResolvedRoute, Target
from routing.strategies.base import distinct_targets


def loadbalance_order(route: ResolvedRoute) -> list[Target]:
    targets = list(route.targets)
    if len(targets) > 1:
        start = random.randrange(len(targets))  # noqa: S311 - spreading load, not crypto
        targets = targets[start:] + targets[:start]
    return distinct_targets(targets)
