"""routing/decide: tasks (templates, the rules-first classifier and its measured accuracy),
scoring (preferences, live latency from real calls to the fake upstream, constraints, the
error naming what excluded each candidate), context windows, capabilities."""

from __future__ import annotations

import json
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path

import orjson
import pytest

from providers.adapters.base import adapter_for
from providers.types import ChatRequest
from routing.decide.capabilities import (
    CapabilityMissing,
    capabilities_required,
    capability_filter,
    capability_targets,
)
from routing.decide.context import (
    SUMMARY_PREFIX,
    ContextOverflow,
    context_apply_summary,
    context_plan,
    prompt_tokens_count,
)
from routing.decide.scoring import (
    NoCandidate,
    latency_observe,
    savings_usd,
    score_candidates,
    scored_choose,
    weights_for,
)
from routing.decide.tasks import (
    TASK_NAMES,
    UnknownTask,
    task_classify,
    task_messages,
    task_request_extra,
)
from routing.options import Constraints
from tenants.state.base import BreakerStatus
from tests.routing.orchestration_support import provider_config, target

DATA = Path(__file__).resolve().parent / "data" / "task_prompts.jsonl"
ACCURACY_FLOOR = 0.85


# -- tasks ------------------------------------------------------------------------------------
def test_classifier_accuracy_on_the_labelled_set(capsys):
    rows = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
    assert len(rows) >= 60
    assert {r["task"] for r in rows} == set(TASK_NAMES)
    misses = []
    per_task = Counter()
    right = Counter()
    for row in rows:
        got = task_classify(text=row["prompt"]).task
        per_task[row["task"]] += 1
        if got == row["task"]:
            right[row["task"]] += 1
        else:
            misses.append((row["task"], got, row["prompt"][:60]))
    accuracy = sum(right.values()) / len(rows)
    with capsys.disabled():
        print(f"\ntask classifier: {sum(right.values())}/{len(rows)} = {accuracy:.1%}")  # noqa: T201
        for task in TASK_NAMES:
            print(f"  {task:10} {right[task]}/{per_task[task]}")  # noqa: T201
        for expected, got, prompt in misses:
            print(f"  miss: {expected} -> {got}: {prompt}")  # noqa: T201
    assert accuracy >= ACCURACY_FLOOR


def test_classifier_rules_tools_first_then_patterns_then_chat():
    assert task_classify(text="summarize this", has_tools=True).task == "tools"
    assert task_classify(text="").task == "chat"
    assert task_classify(text="").rule == "default"
    last_user = [
        {"role": "user", "content": "Write a Python function to add numbers"},
        {"role": "assistant", "content": "def add(a, b): return a + b"},
        {"role": "user", "content": [{"type": "text", "text": "Now summarize what it does"}]},
    ]
    assert task_classify(messages=last_user).task == "summarize"


def test_classifier_survives_hostile_input():
    huge = "summarize " + ("a" * 2_000_000) + " ```code```"
    assert task_classify(text=huge).task == "summarize"  # only the start is read
    assert task_classify(messages=[{"role": "user", "content": None}]).task == "chat"
    assert task_classify(messages=[{"role": "user", "content": [1, {"type": "image"}]}]).task == (
        "chat"
    )


def test_task_templates_and_sentiment_json():
    messages = task_messages("sentiment", text="I love it")
    assert messages[0]["role"] == "system" and "JSON" in messages[0]["content"]
    assert messages[1] == {
        "role": "user",
        "content": "Classify the sentiment of this text:\n\nI love it",
    }
    own = [{"role": "user", "content": "hi"}]
    assert task_messages("chat", messages=own)[1:] == own
    assert task_request_extra("sentiment", supports_json_mode=True) == {
        "response_format": {"type": "json_object"}
    }
    assert task_request_extra("sentiment", supports_json_mode=False) == {}
    assert task_request_extra("code", supports_json_mode=True) == {}
    with pytest.raises(UnknownTask):
        task_messages("poetry", text="x")


# -- scoring ----------------------------------------------------------------------------------
def test_preferences_put_sixty_percent_on_their_dimension():
    assert weights_for("fast") == pytest.approx({"latency": 0.6, "cost": 0.2, "quality": 0.2})
    assert weights_for("cheap")["cost"] == pytest.approx(0.6)
    assert weights_for("best")["quality"] == pytest.approx(0.6)
    assert weights_for("balanced") == pytest.approx(
        {"cost": 1 / 3, "latency": 1 / 3, "quality": 1 / 3}
    )
    assert weights_for("fast", {"cost": 1, "quality": 3}) == {"cost": 0.25, "quality": 0.75}


def _keys(*targets):
    return [(t.provider.id, t.model.id) for t in targets]


def test_best_prefers_quality_for_the_task_and_unrated_is_half():
    good = target("good", price_in="10", price_out="30", quality={"code": 0.95})
    plain = target("plain", price_in="1", price_out="2")
    choice = score_candidates(
        [plain, good],
        task="code",
        preference="best",
        prompt_tokens=100,
        max_tokens=100,
        constraints=Constraints(),
        latencies={},
        health={},
    )
    assert choice.chosen.target is good
    assert [c.quality_score for c in choice.ranked] == [0.95, 0.5]
    assert "best" in choice.reason() and "code" in choice.reason()


async def test_scored_chooses_differently_for_fast_and_cheap_after_warm_up(fake_upstream):
    """Latencies come from real calls (the slow deployment answers its headers 150 ms late),
    fed through latency_observe into the shared EWMA."""
    fast_provider = provider_config("fast-prov", fake=fake_upstream)
    slow_provider = provider_config("slow-prov", fake=fake_upstream)
    quick = target("quick-dear", price_in="5", price_out="15", provider=fast_provider)
    slow = target("slow-cheap", price_in="0.1", price_out="0.2", provider=slow_provider)
    warm_up = [(quick, "quick"), (slow, "fault:slow_headers:delay_ms=150")]
    for _ in range(3):
        for t, upstream_model in warm_up:
            started = time.perf_counter()
            await adapter_for(t.provider).chat(
                ChatRequest(model=upstream_model, messages=[{"role": "user", "content": "hi"}])
            )
            await latency_observe(t, (time.perf_counter() - started) * 1000)

    def choose(preference, constraints=None):
        return scored_choose(
            [slow, quick],
            task="chat",
            preference=preference,
            prompt_tokens=200,
            max_tokens=300,
            constraints=constraints or Constraints(),
        )

    fast_choice = await choose("fast")
    cheap_choice = await choose("cheap")
    assert fast_choice.chosen.target is quick
    assert cheap_choice.chosen.target is slow
    assert fast_choice.chosen.latency_ms < cheap_choice.chosen.latency_ms
    assert cheap_choice.chosen.cost_score == pytest.approx(1.0)

    # max_cost_usd drops the dear one even for "fast"; max_latency_ms the slow one for "cheap".
    budget = (await choose("fast", Constraints(max_cost_usd=Decimal("0.001")))).chosen
    assert budget.target is slow
    hurry = await choose("cheap", Constraints(max_latency_ms=100))
    assert hurry.chosen.target is quick
    assert [c.target for c in hurry.excluded] == [slow]
    assert hurry.excluded[0].excluded[0].startswith("max_latency_ms: average")

    with pytest.raises(NoCandidate) as none_left:
        await choose("balanced", Constraints(max_cost_usd=Decimal("0.001"), max_latency_ms=100))
    error = none_left.value
    assert (error.status, error.code) == (400, "no_candidate_satisfies_constraints")
    reasons = {c["model"]: c["excluded"] for c in error.body()["error"]["candidates"]}
    assert reasons["quick-dear"][0].startswith("max_cost_usd: estimated")
    assert reasons["slow-cheap"][0].startswith("max_latency_ms")
    assert "quick-dear" in error.message and "slow-cheap" in error.message


def test_open_breakers_tasks_and_earlier_filters_exclude_with_reasons():
    a, b, c = target("a"), target("b", tasks=("code",)), target("c")
    ka, kb, kc = _keys(a, b, c)
    with pytest.raises(NoCandidate) as err:
        score_candidates(
            [a, b, c],
            task="summarize",
            preference="balanced",
            prompt_tokens=10,
            max_tokens=10,
            constraints=Constraints(),
            latencies={},
            health={ka: BreakerStatus("open", False, 1000)},
            excluded_before={kc: ["capability: tools not supported"]},
        )
    reasons = {c.target.model.name: c.excluded for c in err.value.candidates}
    assert reasons == {
        "a": ("availability: circuit breaker open",),
        "b": ("task: does not serve summarize",),
        "c": ("capability: tools not supported",),
    }
    # A deployment whose window shows failures scores lower; half-open is halved.
    choice = score_candidates(
        [a, c],
        task=None,
        preference="balanced",
        prompt_tokens=10,
        max_tokens=10,
        constraints=Constraints(),
        latencies={},
        health={
            ka: BreakerStatus("closed", True, 0, calls=10, failures=4),
            kc: BreakerStatus("half_open", True),
        },  # noqa: E501
    )
    assert [x.availability for x in choice.ranked] == [0.6, 0.5]


def test_cost_constraint_uses_the_worst_case_and_savings_compare_with_the_dearest():
    cheap = target("cheap", price_in="1", price_out="1", max_output_tokens=1000)
    dear = target("dear", price_in="10", price_out="10", max_output_tokens=1000)
    # No max_tokens: the model's max_output_tokens bounds the estimate (1000 + 1000 tokens).
    choice = score_candidates(
        [cheap, dear],
        task=None,
        preference="cheap",
        prompt_tokens=1000,
        max_tokens=None,
        constraints=Constraints(max_cost_usd=Decimal("0.002")),
        latencies={},
        health={},
    )
    assert choice.chosen.estimated_cost_usd == Decimal("0.002")
    assert [c.target for c in choice.excluded] == [dear]
    saved = savings_usd(cheap, choice.ranked + choice.excluded, tokens_in=500, tokens_out=500)
    assert saved == Decimal("0.009")
    assert savings_usd(dear, choice.ranked + choice.excluded, tokens_in=5, tokens_out=5) == 0


# -- context windows --------------------------------------------------------------------------
def _turns(n: int, words: int = 200) -> list[dict]:
    messages = [{"role": "system", "content": "Be brief."}]
    for i in range(n):
        role = "user" if i % 2 == 0 else "assistant"
        messages.append({"role": role, "content": f"turn {i} " + "word " * words})
    return messages


def test_steps_whose_window_is_too_small_are_skipped():
    small = target("small", context_window=300)
    large = target("large", context_window=100_000)
    plan = context_plan([small, large], _turns(3), max_tokens=50)
    assert plan.action == "none"
    assert plan.targets == [large] and plan.skipped == [small]


def test_no_step_fits_rejects_by_default():
    small = target("small", context_window=300)
    with pytest.raises(ContextOverflow) as err:
        context_plan([small], _turns(6), max_tokens=50)
    assert (err.value.status, err.value.code) == (400, "context_length_exceeded")


def test_truncate_drops_the_oldest_turns_and_keeps_system_and_last():
    window = target("w", context_window=700)
    messages = _turns(7)
    plan = context_plan([window], messages, max_tokens=100, on_overflow="truncate")
    assert plan.action == "truncate" and plan.dropped > 0
    assert plan.messages[0] == messages[0]
    assert plan.messages[-1] == messages[-1]
    assert plan.messages == [messages[0], *messages[1 + plan.dropped :]]
    assert prompt_tokens_count(plan.messages) + 100 <= 700
    assert plan.targets == [window]


def test_truncate_cannot_save_a_last_message_larger_than_every_window():
    window = target("w", context_window=300)
    messages = [{"role": "user", "content": "word " * 1000}]
    with pytest.raises(ContextOverflow, match="even with only the system messages"):
        context_plan([window], messages, max_tokens=10, on_overflow="truncate")


def test_summarize_plans_the_summarizer_call_then_retries_with_the_summary():
    window = target("w", context_window=1200)
    summarizer = target("sum", context_window=100_000)
    messages = _turns(9)
    plan = context_plan(
        [window], messages, max_tokens=100, on_overflow="summarize", summarizer=summarizer
    )
    assert plan.action == "summarize" and plan.dropped > 0
    request = plan.summary_messages
    assert request[0]["role"] == "system" and "Summarize" in request[0]["content"]
    assert "turn 0" in request[1]["content"]  # the oldest turns go to the summarizer
    assert "turn 8" not in request[1]["content"]  # the last one stays in the conversation
    retry = context_apply_summary(plan, "They talked.", [window], max_tokens=100)
    assert retry.messages[0] == messages[0]
    assert retry.messages[1] == {"role": "system", "content": f"{SUMMARY_PREFIX} They talked."}
    assert retry.messages[-1] == messages[-1]
    assert retry.targets == [window]


def test_summarize_without_a_summarizer_rejects():
    window = target("w", context_window=300)
    with pytest.raises(ContextOverflow):
        context_plan([window], _turns(6), max_tokens=10, on_overflow="summarize")


def test_a_prompt_that_surely_fits_is_not_tokenized_and_the_bound_holds():
    from routing.decide.context import prompt_tokens_upper_bound

    big = target("big", context_window=100_000)
    short = [{"role": "user", "content": "héllo wörld, ünïcode 日本語 " * 20}]
    plan = context_plan([big], short, max_tokens=100)
    assert plan.action == "none" and not plan.prompt_tokens_exact
    assert plan.prompt_tokens >= prompt_tokens_count(short)
    exact = context_plan([big], short, max_tokens=100, exact=True)
    assert exact.prompt_tokens_exact and exact.prompt_tokens == prompt_tokens_count(short)
    tricky = [{"role": "user", "content": "\x00" * 50 + "🙂" * 50 + "a" * 500}]
    assert prompt_tokens_upper_bound(tricky) >= prompt_tokens_count(tricky)


def test_tools_count_towards_the_prompt():
    tools = [{"type": "function", "function": {"name": "f", "description": "x " * 500}}]
    plain = prompt_tokens_count([{"role": "user", "content": "hi"}])
    assert prompt_tokens_count([{"role": "user", "content": "hi"}], tools=tools) > plain + 400


# -- capabilities -----------------------------------------------------------------------------
def test_required_capabilities_are_read_from_the_request():
    image = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what is this"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}},
            ],
        }
    ]
    assert capabilities_required(messages=image) == {"vision"}
    assert capabilities_required(tools=[{"type": "function"}]) == {"tools"}
    assert capabilities_required(response_format={"type": "json_schema"}) == {"json_mode"}
    assert capabilities_required(response_format={"type": "text"}) == frozenset()
    assert capabilities_required(endpoint="embeddings", tools=[1]) == {"embeddings"}
    assert capabilities_required(stream=True) == {"streaming"}


def test_only_models_declaring_a_capability_get_the_request():
    chat_only = target("chat-only", embeddings=False, vision=False)
    embedder = target("embedder", embeddings=True)
    seeing = target("seeing", vision=True, json_mode=False)
    assert capability_targets([chat_only, embedder], {"embeddings"}) == [embedder]
    eligible, excluded = capability_filter([chat_only, seeing], {"vision", "json_mode"})
    assert eligible == []
    assert excluded[_keys(seeing)[0]] == ["capability: json_mode not supported"]
    with pytest.raises(CapabilityMissing) as err:
        capability_targets([chat_only], {"embeddings"})
    assert err.value.code == "model_capability_missing"
    assert "chat-only lacks embeddings" in err.value.message
    body = orjson.loads(orjson.dumps(err.value.body()))
    assert body["error"]["type"] == "invalid_request_error"
    assert capability_targets([chat_only], set()) == [chat_only]


# -- attempt budget ---------------------------------------------------------------------------
def test_a_chain_never_makes_more_attempts_or_waits_longer_than_its_caps():
    from dataclasses import replace

    from routing.decide.attempts import AttemptBudget, should_retry_header
    from routing.options import RouteOptions
    from tests.routing.orchestration_support import resolved

    retrying = replace(provider_config("retrying"), max_retries=2)
    a, b = target("a", provider=retrying), target("b", provider=retrying)
    natural = AttemptBudget.for_route(resolved([a, b]))
    assert natural.max_attempts == 6  # 2 steps x (1 + 2 retries)
    capped = AttemptBudget.for_route(
        resolved([a, b], options=RouteOptions(max_attempts=3, max_total_wait_ms=250))
    )
    assert [capped.take() for _ in range(5)] == [True, True, True, False, False]
    assert capped.wait(0.2) == 0.2
    assert capped.wait(0.1) is None  # 300 ms would pass the 250 ms cap: fall back at once
    assert capped.wait(0.05) == 0.05
    assert should_retry_header(capped) == {"x-should-retry": "false"}
    fresh = AttemptBudget.for_route(resolved([a]))
    fresh.take()
    assert should_retry_header(fresh) == {}
