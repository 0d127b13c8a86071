"""Strategy ordering: fallback keeps the chain, loadbalance picks the first by weight."""

from __future__ import annotations

from collections import Counter
from decimal import Decimal

from providers.adapters.base import ProviderConfig
from providers.catalog import ModelEntry
from routing.snapshot import ResolvedRoute, Target
from routing.strategies import strategy_order


def _target(model_id: int) -> Target:
    entry = ModelEntry(
        id=model_id,
        name=f"m{model_id}",
        provider_id=1,
        upstream_model=f"m{model_id}",
        input_price_per_mtok=Decimal(1),
        output_price_per_mtok=Decimal(1),
        context_window=8192,
        max_output_tokens=100,
        supports_streaming=True,
        supports_tools=True,
        supports_vision=False,
        supports_embeddings=False,
    )
    return Target(model=entry, provider=ProviderConfig(id=1, name="p", kind="mock", base_url=""))


def test_fallback_keeps_the_written_order_once_each():
    a, b = _target(1), _target(2)
    route = ResolvedRoute(name="r", strategy="fallback", targets=(a, b, a), max_attempts=3)
    assert strategy_order(route) == [a, b]


def test_unknown_strategy_falls_back_to_the_written_order():
    a, b = _target(1), _target(2)
    route = ResolvedRoute(name="r", strategy="from-the-future", targets=(a, b), max_attempts=3)
    assert strategy_order(route) == [a, b]


def test_loadbalance_picks_the_first_by_weight_and_keeps_the_rest_as_fallbacks():
    a, b = _target(1), _target(2)
    # Weight 3 for a, 1 for b: the snapshot repeats a three times.
    route = ResolvedRoute(name="r", strategy="loadbalance", targets=(a, a, a, b), max_attempts=3)
    firsts = Counter()
    for _ in range(4000):
        order = strategy_order(route)
        assert sorted(t.model.id for t in order) == [1, 2]
        firsts[order[0].model.id] += 1
    assert 2700 < firsts[1] < 3300
