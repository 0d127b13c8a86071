"""Context windows: count the prompt before calling, skip steps it does not fit, and when it
fits none, do what the route says (`options.on_context_overflow`):

- `reject`: 400 `context_length_exceeded` (ContextOverflow), no upstream call;
- `truncate`: drop the oldest non-system turns until the prompt fits the largest window among
  the route's steps (system messages and the last message always stay; a prompt whose kept
  part alone is too large is rejected);
- `summarize`: the oldest non-system turns are replaced by a summary that the route's
  summarizer model writes (`ContextPlan.summary_messages` is its request; the caller runs it
  as its own attempt, billed, then `context_apply_summary` builds the messages to retry with).

Counting uses providers.tokens (the offline cl100k encoding, per message overhead included)
plus the tools' JSON, the same estimate for every model. A request "fits" a model when prompt
tokens + the tokens reserved for the answer (`max_tokens`, at least 1) <= its
`context_window`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from providers.tokens import count_message_tokens, count_text_tokens
from routing.errors import GatewayError
from routing.snapshot import Target

SUMMARY_PREFIX = "Summary of the earlier conversation:"
_SUMMARIZE_INSTRUCTIONS = (
    "Summarize the following conversation turns so the conversation can continue without "
    "them. Keep every fact, decision, name, number and open question; drop pleasantries. "
    "Answer with the summary only."
)
# Room kept for the summary itself when choosing which turns to summarize.
SUMMARY_BUDGET_TOKENS = 512


class ContextOverflow(GatewayError):
    def __init__(self, *, prompt_tokens: int, largest_window: int, detail: str = "") -> None:
        self.prompt_tokens = prompt_tokens
        self.largest_window = largest_window
        super().__init__(
            status=400,
            message=(
                f"This request needs {prompt_tokens} prompt tokens; the largest context window "
                f"of this route is {largest_window} tokens" + (f" ({detail})" if detail else "")
            ),
            code="context_length_exceeded",
            param="messages",
        )


def prompt_tokens_count(
    messages: list[dict[str, Any]], *, tools: list[dict[str, Any]] | None = None
) -> int:
    total = count_message_tokens(messages)
    if tools:
        total += count_text_tokens(orjson.dumps(tools).decode())
    return total


def prompt_tokens_upper_bound(
    messages: list[dict[str, Any]], *, tools: list[dict[str, Any]] | None = None
) -> int:
    """A bound no tokenizer pass can exceed: every cl100k token is at least one UTF-8 byte,
    plus the per-message framing. Microseconds, where counting costs a tokenizer pass."""
    total = 3
    for message in messages:
        total += 3 + len(_text(message.get("content")).encode())
        if message.get("name"):
            total += len(str(message["name"]).encode())
        for call in message.get("tool_calls") or ():
            fn = call.get("function") or {}
            total += len(str(fn.get("name", "")).encode())
            total += len(str(fn.get("arguments", "")).encode())
    if tools:
        total += len(orjson.dumps(tools))
    return total


def fits(target: Target, *, prompt_tokens: int, max_tokens: int | None) -> bool:
    return prompt_tokens + max(1, max_tokens or 0) <= target.model.context_window


@dataclass(slots=True)
class ContextPlan:
    action: str  # "none" | "truncate" | "summarize"
    messages: list[dict[str, Any]]  # what to send (for summarize: after the summary)
    targets: list[Target]  # the steps that fit `messages`, in order
    skipped: list[Target] = field(default_factory=list)  # recorded as skipped: context_window
    prompt_tokens: int = 0
    # False: prompt_tokens is the byte upper bound (every step fit it; no count was needed).
    prompt_tokens_exact: bool = True
    dropped: int = 0  # turns removed (truncate) or replaced by the summary (summarize)
    summary_messages: list[dict[str, Any]] = field(default_factory=list)
    kept: list[dict[str, Any]] = field(default_factory=list)


def _split(messages: list[dict[str, Any]]) -> tuple[list[int], list[int]]:
    system = [i for i, m in enumerate(messages) if m.get("role") in ("system", "developer")]
    others = [i for i, m in enumerate(messages) if i not in set(system)]
    return system, others


def _truncated(
    messages: list[dict[str, Any]], *, budget: int, tools: list[dict[str, Any]] | None
) -> tuple[list[dict[str, Any]], int] | None:
    """Drop the oldest non-system turns until the prompt fits `budget` prompt tokens; the
    last message always stays. None when even that is too large."""
    system, others = _split(messages)
    droppable = others[:-1]
    dropped: set[int] = set()
    for index in [None, *droppable]:
        if index is not None:
            dropped.add(index)
            # A tool answer without the assistant call it answers is refused upstream: drop
            # the tool messages that follow a dropped turn with it.
            follow = index + 1
            while follow in droppable and messages[follow].get("role") == "tool":
                dropped.add(follow)
                follow += 1
        kept = [m for i, m in enumerate(messages) if i not in dropped]
        if prompt_tokens_count(kept, tools=tools) <= budget:
            return kept, len(dropped)
    return None


def context_plan(
    targets: Sequence[Target],
    messages: list[dict[str, Any]],
    *,
    max_tokens: int | None,
    on_overflow: str = "reject",
    tools: list[dict[str, Any]] | None = None,
    summarizer: Target | None = None,
    exact: bool = False,
) -> ContextPlan:
    """Which steps fit, and what to send. Raises ContextOverflow. When the byte upper bound
    already fits every step (the usual chat request), no tokenizer pass is made unless
    `exact` (scored routing prices the prompt)."""
    if not exact and targets:
        bound = prompt_tokens_upper_bound(messages, tools=tools)
        if all(fits(t, prompt_tokens=bound, max_tokens=max_tokens) for t in targets):
            return ContextPlan(
                "none", messages, list(targets), prompt_tokens=bound, prompt_tokens_exact=False
            )
    tokens = prompt_tokens_count(messages, tools=tools)
    fitting = [t for t in targets if fits(t, prompt_tokens=tokens, max_tokens=max_tokens)]
    skipped = [t for t in targets if t not in fitting]
    if fitting:
        return ContextPlan("none", messages, fitting, skipped, prompt_tokens=tokens)
    if not targets:
        raise ContextOverflow(prompt_tokens=tokens, largest_window=0)
    largest = max(targets, key=lambda t: t.model.context_window)
    budget = largest.model.context_window - max(1, max_tokens or 0)
    if on_overflow == "truncate":
        result = _truncated(messages, budget=budget, tools=tools)
        if result is None:
            raise ContextOverflow(
                prompt_tokens=tokens,
                largest_window=largest.model.context_window,
                detail="too large even with only the system messages and the last message",
            )
        kept, dropped = result
        new_tokens = prompt_tokens_count(kept, tools=tools)
        return ContextPlan(
            "truncate",
            kept,
            [t for t in targets if fits(t, prompt_tokens=new_tokens, max_tokens=max_tokens)],
            skipped,
            prompt_tokens=new_tokens,
            dropped=dropped,
        )
    if on_overflow == "summarize" and summarizer is not None:
        result = _truncated(messages, budget=budget - SUMMARY_BUDGET_TOKENS, tools=tools)
        if result is None:
            raise ContextOverflow(
                prompt_tokens=tokens,
                largest_window=largest.model.context_window,
                detail="too large even after summarizing every earlier turn",
            )
        kept, dropped = result
        kept_ids = {id(m) for m in kept}
        old = [m for m in messages if id(m) not in kept_ids]
        transcript = "\n".join(f"{m.get('role')}: {_text(m.get('content'))}" for m in old)
        summary_request = [
            {"role": "system", "content": _SUMMARIZE_INSTRUCTIONS},
            {"role": "user", "content": transcript},
        ]
        summary_tokens = prompt_tokens_count(summary_request)
        if not fits(summarizer, prompt_tokens=summary_tokens, max_tokens=SUMMARY_BUDGET_TOKENS):
            raise ContextOverflow(
                prompt_tokens=tokens,
                largest_window=largest.model.context_window,
                detail="the turns to summarize do not fit the summarizer either",
            )
        return ContextPlan(
            "summarize",
            kept,
            [largest],
            skipped,
            prompt_tokens=prompt_tokens_count(kept, tools=tools),
            dropped=dropped,
            summary_messages=summary_request,
            kept=kept,
        )
    raise ContextOverflow(prompt_tokens=tokens, largest_window=largest.model.context_window)


def context_apply_summary(
    plan: ContextPlan,
    summary: str,
    targets: Sequence[Target],
    *,
    max_tokens: int | None,
    tools: list[dict[str, Any]] | None = None,
) -> ContextPlan:
    """The messages to retry with once the summarizer answered: the system messages, the
    summary (as a system message), then the kept turns; and the steps they fit."""
    system, _ = _split(plan.kept)
    head = [plan.kept[i] for i in system]
    rest = [m for i, m in enumerate(plan.kept) if i not in set(system)]
    messages = [*head, {"role": "system", "content": f"{SUMMARY_PREFIX} {summary}"}, *rest]
    tokens = prompt_tokens_count(messages, tools=tools)
    fitting = [t for t in targets if fits(t, prompt_tokens=tokens, max_tokens=max_tokens)]
    if not fitting:
        raise ContextOverflow(
            prompt_tokens=tokens,
            largest_window=max((t.model.context_window for t in targets), default=0),
            detail="the summary left it too large",
        )
    return ContextPlan(
        "summarize",
        messages,
        fitting,
        [t for t in targets if t not in fitting],
        prompt_tokens=tokens,
        dropped=plan.dropped,
    )


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict) and "text" in p)
    return "" if content is None else str(content)
