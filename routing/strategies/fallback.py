"""Fallback: the chain as the operator wrote it, first step first."""

from __future__ import annotations

from routing.snapshot import ResolvedRoute, Target
from routing.strategies.base import distinct_targets


def fallback_order(route: ResolvedRoute) -> list[Target]:
    return distinct_targets(route.targets)
