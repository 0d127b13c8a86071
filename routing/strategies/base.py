"""What every strategy shares."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from routing.snapshot import ResolvedRoute, Target

StrategyOrder = Callable[[ResolvedRoute], list[Target]]


def distinct_targets(targets: Iterable[Target]) -> list[Target]:
    """Each (model, provider) once, first occurrence kept (weights repeat targets)."""
    seen: set[tuple[int, int]] = set()
    ordered: list[Target] = []
    for target in targets:
        ident = (target.model.id, target.provider.id)
        if ident not in seen:
            seen.add(ident)
            ordered.append(target)
    return ordered
