"""Parallel (race), consensus (majority vote) and load balancing by latency or in-flight count,
each over callables: races and votes over the real adapters against the fake upstream, whose
connection log shows the losers' upstream connections closing."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from providers.adapters.base import adapter_for
from providers.types import ChatRequest, ProviderUnavailable
from routing.options import RouteOptions
from routing.strategies.consensus import consensus_decide, consensus_gather, consensus_normalize
from routing.strategies.loadbalance import (
    inflight_enter,
    inflight_leave,
    least_busy_order,
    least_latency_order,
    loadbalance_order_async,
)
from routing.strategies.parallel import RaceFailed, race
from tests.routing.orchestration_support import provider_config, resolved, target

HELLO = [{"role": "user", "content": "hi"}]
SLOW = "fault:slow_headers:delay_ms=5000"


async def _closed_at(fake, port: int, timeout_s: float = 3.0) -> float | None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for peer, at in list(fake.disconnects):
            if peer == port:
                return at
        await asyncio.sleep(0.002)
    return None


def _peer_of(fake, model: str) -> int:
    return next(r.peer_port for r in fake.requests if r.body and r.body.get("model") == model)


# -- parallel ---------------------------------------------------------------------------------
async def test_race_returns_the_fastest_and_closes_the_losers_connection_within_100ms(
    fake_upstream,
):
    config = provider_config(fake=fake_upstream)
    adapter = adapter_for(config)

    def call(model: str):
        return lambda: adapter.chat(ChatRequest(model=model, messages=HELLO, max_tokens=5))

    result = await race([call(SLOW), call("fast-model")])
    returned = time.monotonic()

    assert result.winner.index == 1 and result.value.content
    [loser] = result.losers
    assert (loser.index, loser.status) == (0, "cancelled")
    closed = await _closed_at(fake_upstream, _peer_of(fake_upstream, SLOW))
    assert closed is not None, "the loser's upstream connection was never closed"
    assert closed - returned < 0.1, f"closed {1000 * (closed - returned):.0f} ms after the race"


async def test_streams_race_to_the_first_chunk_and_the_winner_streams_on(fake_upstream):
    config = provider_config(fake=fake_upstream)
    adapter = adapter_for(config)

    def opened(model: str):
        async def first_chunk():
            stream = adapter.stream_chat(
                ChatRequest(model=model, messages=HELLO, stream=True, include_usage=True)
            )
            first = await anext(stream)
            return first, stream

        return first_chunk

    result = await race([opened(SLOW), opened("fast-stream")])
    returned = time.monotonic()
    first, stream = result.value
    rest = [chunk async for chunk in stream]
    text = (first.content or "") + "".join(c.content or "" for c in rest)
    assert text == fake_upstream.reply_text
    assert result.losers[0].status == "cancelled"
    closed = await _closed_at(fake_upstream, _peer_of(fake_upstream, SLOW))
    assert closed is not None and closed - returned < 0.1


async def test_a_failing_racer_does_not_win_and_all_failing_raises_with_every_outcome(
    fake_upstream,
):
    adapter = adapter_for(provider_config(fake=fake_upstream))

    def call(model: str):
        return lambda: adapter.chat(ChatRequest(model=model, messages=HELLO, max_tokens=5))

    result = await race([call("fault:500"), call("fault:slow_headers:delay_ms=100")])
    assert result.winner.index == 1
    assert result.losers[0].status == "failed"
    assert isinstance(result.losers[0].error, ProviderUnavailable | Exception)

    with pytest.raises(RaceFailed) as failed:
        await race([call("fault:500"), call("fault:503"), lambda: _boom()])
    assert [o.status for o in failed.value.outcomes] == ["failed", "failed", "failed"]
    assert failed.value.last_error is not None


async def _boom():
    raise RuntimeError("a racer with a bug")


async def test_a_rejected_result_is_not_a_win():
    async def empty():
        return ""

    async def late():
        await asyncio.sleep(0.01)
        return "answer"

    result = await race([empty, late], accept=bool)
    assert result.value == "answer"
    assert result.losers[0].status == "rejected"


async def test_cancelling_the_race_cancels_every_racer():
    cancelled: list[int] = []

    def sleeper(i: int):
        async def run():
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                cancelled.append(i)
                raise

        return run

    task = asyncio.ensure_future(race([sleeper(0), sleeper(1)]))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sorted(cancelled) == [0, 1]


async def test_race_needs_a_racer():
    with pytest.raises(ValueError, match="at least one"):
        await race([])


# -- consensus --------------------------------------------------------------------------------
def test_normalization_ignores_case_whitespace_and_punctuation():
    assert consensus_normalize("  Paris.\n") == consensus_normalize("paris") == "paris"
    assert consensus_normalize("It's  POSITIVE!") == "it s positive"


@pytest.mark.parametrize(
    ("answers", "kwargs", "status", "index", "agreement"),
    [
        (["Paris", "paris.", "Lyon"], {}, "majority", 0, "2/3"),
        (["Lyon", "Paris", "PARIS"], {}, "majority", 1, "2/3"),
        (["a", "b", "c"], {}, "no_majority", 0, "1/3"),
        # One of three failed: two agree, still a majority of the three asked.
        ([None, "yes", "Yes!"], {}, "majority", 1, "2/3"),
        # Two failed: the one answer is no majority of three.
        ([None, None, "yes"], {}, "no_majority", 2, "1/3"),
        ([None, None], {}, "no_answers", None, "0/2"),
        # 2-2 with min_agreement 2: a tie, broken by route order.
        (["x", "y", "y", "x"], {"min_agreement": 2}, "tie", 0, "2/4"),
        (["x", "y", "y", "x"], {}, "no_majority", 0, "2/4"),
        (
            ["The answer is 42.", "the answer is 42", "The answer is forty-two"],
            {"similarity_threshold": 0.8},
            "majority",
            0,
            "2/3",
        ),
        (
            ["The capital is Paris", "The capital is Paris!", "The capital is Pari"],
            {"similarity_threshold": 0.9},
            "majority",
            0,
            "3/3",
        ),
    ],
)
def test_consensus_decides_majority_ties_and_no_majority(answers, kwargs, status, index, agreement):
    decision = consensus_decide(answers, **kwargs)
    assert decision.status == status
    assert decision.answer_index == index
    assert decision.agreement == agreement
    assert decision.agreed is (status in ("majority", "tie"))


async def test_consensus_over_the_fake_upstream_reports_the_agreement_ratio(fake_upstream):
    adapter = adapter_for(provider_config(fake=fake_upstream))

    def call(model: str):
        return lambda: adapter.chat(ChatRequest(model=model, messages=HELLO, max_tokens=50))

    result = await consensus_gather(
        [call("m1"), call("fault:500"), call("m3")], text_of=lambda r: r.content
    )
    assert result.decision.status == "majority"
    assert result.decision.agreement == "2/3"
    assert result.answer.content == fake_upstream.reply_text
    assert result.errors[1] is not None and result.results[1] is None


# -- load balancing ---------------------------------------------------------------------------
def test_least_latency_never_sends_first_to_the_slowest_of_three():
    a, b, c = target("a"), target("b"), target("c")
    route = resolved([a, b, c])
    latencies = {(t.provider.id, t.model.id): ms for t, ms in ((a, 50.0), (b, 80.0), (c, 900.0))}
    firsts = {
        least_latency_order(route, latencies, rng=random.Random(s))[0].model.name
        for s in range(200)
    }  # noqa: E501
    assert firsts == {"a", "b"}
    # Unknown latency counts as fastest: a new deployment gets traffic.
    new = target("new")
    route = resolved([c, new])
    assert least_latency_order(route, latencies, rng=random.Random(1))[0].model.name == "new"
    order = least_latency_order(resolved([a, b, c]), latencies, rng=random.Random(3))
    assert sorted(t.model.name for t in order) == ["a", "b", "c"]  # every deployment once


def test_least_busy_prefers_the_emptiest_and_breaks_ties_at_random():
    a, b, c = target("a"), target("b"), target("c")
    route = resolved([a, b, c])
    counts = {(a.provider.id, a.model.id): 3, (b.provider.id, b.model.id): 0}
    firsts = {
        least_busy_order(route, counts, rng=random.Random(s))[0].model.name for s in range(50)
    }
    assert firsts == {"b", "c"}


async def test_least_busy_reads_in_flight_counts_shared_through_the_state_store():
    a, b = target("a"), target("b")
    route = resolved([a, b], strategy="loadbalance", options=RouteOptions(mode="least_busy"))
    tickets = [await inflight_enter(a), await inflight_enter(a)]
    held_b = await inflight_enter(b)
    assert (await loadbalance_order_async(route))[0] is b
    await inflight_leave(b, held_b)
    await inflight_enter(b)
    await inflight_enter(b)
    await inflight_enter(b)
    assert (await loadbalance_order_async(route))[0] is a
    for ticket in tickets:
        await inflight_leave(a, ticket)


async def test_least_latency_reads_the_shared_ewma():
    from routing.decide.scoring import latency_observe

    fast, slow = target("fast"), target("slow")
    await latency_observe(fast, 40)
    await latency_observe(slow, 700)
    route = resolved(
        [slow, fast], strategy="loadbalance", options=RouteOptions(mode="least_latency")
    )  # noqa: E501
    for _ in range(10):
        assert (await loadbalance_order_async(route))[0] is fast
