"""decision_plan: capabilities, task, context windows, strategy order and the attempt budget
decided in one call, before any upstream attempt."""

from __future__ import annotations

from decimal import Decimal

import pytest

from routing.decide.capabilities import CapabilityMissing
from routing.decide.context import ContextOverflow
from routing.decide.plan import decision_plan
from routing.decide.scoring import NoCandidate
from routing.options import Constraints, RouteOptions
from routing.strategies.loadbalance import inflight_enter
from tests.routing.orchestration_support import resolved, target

HELLO = [{"role": "user", "content": "hello"}]
LONG = [{"role": "user", "content": "summarize this: " + "word " * 600}]


async def test_fallback_skips_steps_too_small_and_keeps_the_written_order():
    tiny, mid, big = (
        target("tiny", context_window=200),
        target("mid", context_window=4000),
        target("big", context_window=100_000),
    )
    decision = await decision_plan(resolved([tiny, mid, big]), messages=LONG, max_tokens=100)
    assert [t.model.name for t in decision.targets] == ["mid", "big"]
    assert [(t.model.name, why) for t, why in decision.skipped] == [("tiny", "context_window")]
    assert decision.task is None  # fallback does not classify unless asked
    assert decision.routing()["selected_model"] == "mid"
    assert decision.budget.max_attempts == 3


async def test_capabilities_narrow_the_route_and_none_left_is_a_400():
    plain = target("plain", embeddings=False)
    embedder = target("embedder", embeddings=True)
    decision = await decision_plan(resolved([plain, embedder]), messages=[], endpoint="embeddings")
    assert [t.model.name for t in decision.targets] == ["embedder"]
    assert decision.skipped[0][1] == "capability"
    with pytest.raises(CapabilityMissing):
        await decision_plan(resolved([plain]), messages=[], endpoint="embeddings")


async def test_scored_classifies_the_task_and_explains_the_choice():
    writer = target("writer", price_in="3", price_out="6", quality={"summarize": 0.95})
    cheap = target("cheap", price_in="0.1", price_out="0.2", quality={"summarize": 0.4})
    small = target("small", context_window=100, quality={"summarize": 1.0})
    route = resolved(
        [small, cheap, writer], strategy="scored", options=RouteOptions(preference="best")
    )
    decision = await decision_plan(route, messages=LONG, max_tokens=200)
    assert (decision.task, decision.task_rule) == ("summarize", "patterns")
    assert decision.targets[0].model.name == "writer"
    routing = decision.routing()
    assert routing["quality_score"] == 0.95 and "best" in routing["reason"]
    excluded = {c["model"]: c["excluded"] for c in routing["candidates"] if c["excluded"]}
    assert excluded == {"small": ["context_window: too small"]}
    cheap_first = await decision_plan(route, messages=LONG, max_tokens=200, preference="cheap")
    assert cheap_first.targets[0].model.name == "cheap"
    with pytest.raises(NoCandidate) as none_left:
        await decision_plan(
            route, messages=LONG, max_tokens=200, constraints=Constraints(max_cost_usd=Decimal(0))
        )
    reasons = {c["model"]: c["excluded"] for c in none_left.value.body()["error"]["candidates"]}
    assert reasons["small"][0] == "context_window: too small"
    assert reasons["writer"][0].startswith("max_cost_usd")


async def test_parallel_and_consensus_ask_n_steps():
    a, b, c = target("a"), target("b"), target("c")
    race = await decision_plan(
        resolved([a, b, c], strategy="parallel", options=RouteOptions(n=2)), messages=HELLO
    )
    assert race.n == 2 and [t.model.name for t in race.targets[: race.n]] == ["a", "b"]
    vote = await decision_plan(resolved([a, b, c], strategy="consensus"), messages=HELLO)
    assert vote.n == 3


async def test_overflow_follows_the_route_option():
    small = target("small", context_window=300)
    with pytest.raises(ContextOverflow):
        await decision_plan(resolved([small]), messages=LONG * 3, max_tokens=50)
    turns = [
        {"role": "system", "content": "Be brief."},
        *[{"role": "user", "content": f"turn {i} " + "word " * 80} for i in range(6)],
    ]
    cut = await decision_plan(
        resolved([small], options=RouteOptions(on_context_overflow="truncate")),
        messages=turns,
        max_tokens=50,
    )
    assert cut.context.action == "truncate"
    assert cut.messages[0] == turns[0] and cut.messages[-1] == turns[-1]


async def test_least_busy_route_orders_by_in_flight_calls():
    a, b = target("a"), target("b")
    await inflight_enter(a)
    route = resolved([a, b], strategy="loadbalance", options=RouteOptions(mode="least_busy"))
    decision = await decision_plan(route, messages=HELLO)
    assert [t.model.name for t in decision.targets] == ["b", "a"]
