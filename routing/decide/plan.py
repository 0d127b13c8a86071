"""One call that makes every decision before the first upstream attempt, in order:

1. capabilities: drop the route's deployments that lack what the request needs
   (CapabilityMissing when none is left);
2. task: the request's, or the classifier's when asked for (`classify=True`; the scored
   strategy always classifies, since quality is per task);
3. context windows: skip the steps the prompt does not fit; on overflow reject, truncate or
   plan a summary (ContextOverflow);
4. order by the route's strategy: fallback (as written), loadbalance (weighted, least
   latency, least busy), scored (preference and constraints; NoCandidate), parallel and
   consensus (the first `options.n` steps, every step by default);
5. the attempt budget of the chain.

`decision_plan` returns a `Decision`; InferenceCall then filters by breakers, runs the
attempts (or the race, or the vote), records `Decision.skipped` as attempts that made no call
(`skipped: context_window`, `skipped: capability`), and puts `Decision.routing` in the
native answer. Nothing here calls an upstream or touches money."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from routing.decide.attempts import AttemptBudget
from routing.decide.capabilities import CapabilityMissing, capabilities_required, capability_filter
from routing.decide.context import ContextPlan, context_plan
from routing.decide.scoring import ScoredChoice, scored_choose
from routing.decide.tasks import task_classify
from routing.options import Constraints
from routing.snapshot import ResolvedRoute, Target
from routing.strategies.base import distinct_targets
from routing.strategies.loadbalance import loadbalance_order_async


def _key(target: Target) -> tuple[int, int]:
    return (target.provider.id, target.model.id)


@dataclass(slots=True)
class Decision:
    strategy: str
    targets: list[Target]  # the order to try (or to race / to ask), each deployment once
    messages: list[dict[str, Any]]  # what to send (truncated, or to be summarized first)
    context: ContextPlan
    budget: AttemptBudget
    task: str | None = None
    task_rule: str = ""  # "request" | "request_tools" | "patterns" | "default" | ""
    scored: ScoredChoice | None = None
    skipped: list[tuple[Target, str]] = field(default_factory=list)
    n: int = 1  # parallel / consensus: how many to ask at once
    routing_time_ms: float = 0.0

    def routing(self) -> dict[str, Any]:
        """The native API's `routing` object (scores only for the scored strategy)."""
        first = self.targets[0]
        data: dict[str, Any] = {
            "selected_model": first.model.name,
            "provider": first.provider.name,
            "strategy": self.strategy,
            "task": self.task,
        }
        if self.scored is not None:
            best = self.scored.chosen
            data.update(
                reason=self.scored.reason(),
                cost_score=round(best.cost_score, 4),
                latency_score=round(best.latency_score, 4),
                quality_score=round(best.quality_score, 4),
                final_score=round(best.final_score, 4),
                candidates=[c.as_dict() for c in self.scored.ranked + self.scored.excluded],
            )
        else:
            data["reason"] = f"{self.strategy} route, first step that fits the request"
        return data


async def decision_plan(
    route: ResolvedRoute,
    *,
    messages: list[dict[str, Any]],
    endpoint: str = "chat",
    max_tokens: int | None = None,
    stream: bool = False,
    tools: list[dict[str, Any]] | None = None,
    response_format: Any = None,
    task: str | None = None,
    classify: bool = False,
    preference: str | None = None,
    constraints: Constraints | None = None,
    summarizer: Callable[[str], Target | None] | None = None,
) -> Decision:
    """Every decision for one request (see the module docstring). `summarizer` looks a model
    name up in the snapshot (for on_context_overflow = summarize)."""
    started = time.perf_counter()
    options = route.options
    chain = distinct_targets(route.targets)
    skipped: list[tuple[Target, str]] = []

    required = capabilities_required(
        endpoint=endpoint,
        messages=messages,
        tools=tools,
        response_format=response_format,
        stream=stream,
    )
    eligible, lacking = capability_filter(chain, required) if required else (chain, {})
    if not eligible:
        raise CapabilityMissing(chain, required)
    skipped.extend((t, "capability") for t in chain if _key(t) in lacking)

    task_rule = "request" if task else ""
    if task is None and (classify or route.strategy == "scored"):
        found = task_classify(messages=messages, has_tools=bool(tools))
        task, task_rule = found.task, found.rule

    summarizer_target = None
    if options.on_context_overflow == "summarize" and options.summarizer and summarizer:
        summarizer_target = summarizer(options.summarizer)
    plan = context_plan(
        eligible,
        messages,
        max_tokens=max_tokens,
        on_overflow=options.on_context_overflow,
        tools=tools,
        summarizer=summarizer_target,
        exact=route.strategy == "scored",
    )
    skipped.extend((t, "context_window") for t in plan.skipped)
    fitting = {_key(t) for t in plan.targets}

    scored: ScoredChoice | None = None
    if route.strategy == "scored":
        excluded_before = {k: list(v) for k, v in lacking.items()}
        for target in plan.skipped:
            excluded_before.setdefault(_key(target), []).append("context_window: too small")
        scored = await scored_choose(
            [t for t in chain if _key(t) in fitting or _key(t) in excluded_before],
            task=task,
            preference=preference or options.preference,
            prompt_tokens=plan.prompt_tokens,
            max_tokens=max_tokens,
            constraints=constraints or options.constraints,
            weights=options.weights_dict() or None,
            excluded_before=excluded_before,
        )
        ordered = scored.targets
    elif route.strategy == "loadbalance":
        ordered = await loadbalance_order_async(route)
    else:
        ordered = chain
    ordered = [t for t in ordered if _key(t) in fitting]

    n = 1
    if route.strategy in ("parallel", "consensus"):
        n = min(len(ordered), options.n or len(ordered))
    return Decision(
        strategy=route.strategy,
        targets=ordered,
        messages=plan.messages,
        context=plan,
        budget=AttemptBudget.for_route(route),
        task=task,
        task_rule=task_rule,
        scored=scored,
        skipped=skipped,
        n=max(1, n),
        routing_time_ms=round((time.perf_counter() - started) * 1000, 3),
    )
