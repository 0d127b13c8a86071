"""Tasks: the orchestration seed's task names, their prompt templates, and the classifier that
names the task of a request that does not say.

Templates. `task_messages(task, text=..., messages=...)` builds the upstream messages: the
task's system prompt first, then the client's messages (or its `text` wrapped in the task's
user template). A client's own system message is kept after ours. `sentiment` answers JSON
(`{"sentiment": "positive" | "negative" | "neutral" | "mixed", "confidence": 0-1,
"explanation": "..."}`); `task_request_extra` adds `response_format: json_object` for it when
the serving model declares JSON mode.

Classifier (`task_classify`). Rules first, no model call, so it costs microseconds and is
measurable: a request carrying tools is `tools`; otherwise each task has weighted patterns
(phrases that name the job: "summarize", "tl;dr", "rewrite", "sentiment", code fences,
"compare"...) matched on the last user message; the highest total wins, ties going to the
earlier task in RULE_ORDER, and no hit at all means `chat`. Its accuracy on the labelled set
in tests/routing/data/task_prompts.jsonl is printed by
tests/routing/test_decide.py::test_classifier_accuracy_on_the_labelled_set."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

TASK_NAMES = ("summarize", "sentiment", "rewrite", "chat", "code", "analysis", "tools")

_SYSTEM = {
    "summarize": (
        "You summarize text. Keep the key facts, names and numbers; drop repetition. Answer "
        "with the summary only, at most a short paragraph or five bullet points."
    ),
    "sentiment": (
        "You classify the sentiment of text. Answer with one JSON object and nothing else: "
        '{"sentiment": "positive" | "negative" | "neutral" | "mixed", '
        '"confidence": a number from 0 to 1, "explanation": one short sentence}.'
    ),
    "rewrite": (
        "You rewrite text to be clearer and better written while keeping its meaning, facts "
        "and language. Answer with the rewritten text only."
    ),
    "chat": "You are a helpful assistant.",
    "code": (
        "You are an expert programmer. Answer with correct, idiomatic code in fenced blocks, "
        "and explain only what is not obvious."
    ),
    "analysis": (
        "You analyse content in depth: structure your answer, weigh evidence and trade-offs, "
        "and state your conclusions and their confidence."
    ),
    "tools": (
        "You complete the user's request with the tools provided. Call a tool whenever it "
        "can answer better than you can; do not invent tool results."
    ),
}
_USER = {
    "summarize": "Summarize the following text:\n\n{text}",
    "sentiment": "Classify the sentiment of this text:\n\n{text}",
    "rewrite": "Rewrite the following text:\n\n{text}",
    "chat": "{text}",
    "code": "{text}",
    "analysis": "Analyse the following:\n\n{text}",
    "tools": "{text}",
}


class UnknownTask(ValueError):
    pass


def task_system_prompt(task: str) -> str:
    if task not in _SYSTEM:
        raise UnknownTask(f"unknown task '{task}'; tasks are {', '.join(TASK_NAMES)}")
    return _SYSTEM[task]


def task_messages(
    task: str, *, text: str | None = None, messages: list[dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """The upstream messages for `task`: our system prompt, then the client's messages (or
    its text in the task's template)."""
    system = {"role": "system", "content": task_system_prompt(task)}
    if messages:
        return [system, *messages]
    return [system, {"role": "user", "content": _USER[task].format(text=text or "")}]


def task_request_extra(task: str, *, supports_json_mode: bool) -> dict[str, Any]:
    """Extra request fields the task wants (JSON mode for sentiment, where available)."""
    if task == "sentiment" and supports_json_mode:
        return {"response_format": {"type": "json_object"}}
    return {}


# -- the classifier ---------------------------------------------------------------------------
RULE_ORDER = ("tools", "code", "sentiment", "summarize", "rewrite", "analysis", "chat")

_RULES: dict[str, list[tuple[str, int]]] = {
    "tools": [
        (r"\b(call|use|invoke) (the |a |an )?(\w+ )?(tool|function|api|endpoint)s?\b", 3),
        (
            r"\b(book|schedule|reserve) (me |us )?(a |an |the )?(\w+ )?"
            r"(table|flight|room|meeting|hotel|appointment|seat|call|car)s?\b",
            2,
        ),
        (r"\b(send|create) (an? )?(email|calendar (event|invite)|ticket|reminder)\b", 2),
        (r"\blook ?up\b.*\b(weather|price|stock|order|flight|status)\b", 2),
        (r"\b(current|today'?s|live) (weather|stock price|exchange rate)\b", 2),
    ],
    "code": [
        (r"```", 3),
        (r"\b(def|class|function|return|import|const|let|var)\b.*[({:=]", 2),
        (
            r"\b(python|javascript|typescript|java|golang|rust|c\+\+|sql|bash|regex|"
            r"html|css|django|react|kotlin|swift)\b",
            2,
        ),
        (
            r"\b(write|implement|refactor|debug|fix) (a |an |the |this |my )?(\w+ )?"
            r"(function|script|class|method|query|program|bug|code|test|endpoint)s?\b",
            3,
        ),
        (r"\b(stack ?trace|traceback|exception|segfault|compile|compiler|syntax error)\b", 2),
        (r"\b(unit tests?|algorithm|big-?o|time complexity|recursion|api client)\b", 1),
    ],
    "sentiment": [
        (r"\bsentiment\b", 4),
        (r"\b(positive|negative)\b.*\b(or|vs\.?)\b.*\b(negative|positive|neutral)\b", 3),
        (r"\b(tone|mood|emotion|feeling)s? (of|in|behind|expressed)\b", 3),
        (
            r"\bhow (does|do|did) (the |this )?(customer|user|reviewer|author|writer|client)s? feel\b",
            3,
        ),
        (
            r"\b(is|was) (this|the) (review|tweet|comment|feedback|message) (positive|negative|happy|angry)",
            3,
        ),
        (r"\b(happy|angry|satisfied|unhappy|upset|frustrated) or (not|happy|angry|satisfied)\b", 2),
    ],
    "summarize": [
        (r"\bsummar(y|ise|ize|ized|ised|izing|ising)\b", 4),
        (r"\btl;? ?dr\b", 4),
        (r"\b(key|main) (points|takeaways|ideas)\b", 3),
        (
            r"\b(condense|boil (it|this) down|in (a few|one|two|three|\d+) (sentences?|bullets?|"
            r"words|lines))\b",
            3,
        ),
        (r"\b(brief|short|quick) (overview|recap|synopsis)\b", 3),
        (r"\bgist\b", 3),
    ],
    "rewrite": [
        (r"\b(rewrite|re-write|rephrase|reword|paraphrase)\b", 4),
        (r"\b(proofread|copy-?edit|polish|tighten)\b", 3),
        (
            r"\b(fix|correct|improve) (the |my |this )?(grammar|spelling|wording|phrasing|style|"
            r"clarity|flow)\b",
            3,
        ),
        (r"\bmake (it|this|my \w+) (more |less |sound )+\w+", 3),
        (r"\b(more|less) (formal|casual|concise|professional|friendly|polite)\b", 2),
        (r"\b(shorten|simplify) (this|the|my)\b", 2),
    ],
    "analysis": [
        (r"\b(analy[sz]e|analysis|analytical)\b", 3),
        (r"\b(compare|comparison|contrast)\b", 3),
        (r"\b(evaluate|assess|critique|examine|investigate)\b", 3),
        (r"\b(pros and cons|trade-?offs?|strengths and weaknesses|swot)\b", 3),
        (r"\b(root cause|implications?|impact of|what explains|why did)\b", 2),
        (r"\b(trend|correlation|insights?) (in|from|of|between)\b", 2),
    ],
}
# Per rule, substrings of which at least one must be in the (lower-cased) text for the rule's
# pattern to match: a C-speed `in` test skips most regex searches (each pattern's first
# mandatory group, or a literal it cannot match without).
_TRIGGERS: dict[str, list[tuple[str, ...]]] = {
    "tools": [
        ("call ", "use ", "invoke "),
        ("book ", "schedule ", "reserve "),
        ("send ", "create "),
        ("look",),
        ("current ", "today", "live "),
    ],
    "code": [
        ("```",),
        ("def", "class", "function", "return", "import", "const", "let", "var"),
        (
            "python",
            "javascript",
            "typescript",
            "java",
            "golang",
            "rust",
            "c++",
            "sql",
            "bash",
            "regex",
            "html",
            "css",
            "django",
            "react",
            "kotlin",
            "swift",
        ),
        ("write ", "implement ", "refactor ", "debug ", "fix "),
        ("stack", "trace", "exception", "segfault", "compile", "syntax error"),
        ("unit test", "algorithm", "big", "time complexity", "recursion", "api client"),
    ],
    "sentiment": [
        ("sentiment",),
        ("positive", "negative"),
        ("tone", "mood", "emotion", "feeling"),
        ("how ",),
        ("is ", "was "),
        (" or ",),
    ],
    "summarize": [
        ("summar",),
        ("tl",),
        ("key ", "main "),
        ("condense", "boil ", "in "),
        ("brief ", "short ", "quick "),
        ("gist",),
    ],
    "rewrite": [
        ("rewrite", "re-write", "rephrase", "reword", "paraphrase"),
        ("proofread", "copy", "polish", "tighten"),
        ("fix ", "correct ", "improve "),
        ("make ",),
        ("more ", "less "),
        ("shorten ", "simplify "),
    ],
    "analysis": [
        ("analy",),
        ("compar", "contrast"),
        ("evaluate", "assess", "critique", "examine", "investigate"),
        ("pros and cons", "trade", "strengths and weaknesses", "swot"),
        ("root cause", "implication", "impact of", "what explains", "why did"),
        ("trend ", "correlation ", "insight"),
    ],
}
_COMPILED = {
    task: [
        (triggers, re.compile(pattern, re.DOTALL), weight)
        for triggers, (pattern, weight) in zip(_TRIGGERS[task], rules, strict=True)
    ]
    for task, rules in _RULES.items()
}


@dataclass(frozen=True, slots=True)
class Classification:
    task: str
    rule: str  # "request_tools" | "patterns" | "default"
    scores: tuple[tuple[str, int], ...] = ()


def _last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(
                    part.get("text", "")
                    for part in content
                    if isinstance(part, dict) and isinstance(part.get("text"), str)
                )
    return ""


def task_classify(
    *,
    text: str | None = None,
    messages: list[dict[str, Any]] | None = None,
    has_tools: bool = False,
) -> Classification:
    """The task of a request that names none (see the module docstring)."""
    if has_tools:
        return Classification("tools", "request_tools")
    subject = text if text is not None else _last_user_text(messages or [])
    # The instruction is at the start or the end of a message; a long paste costs no more.
    if len(subject) > 3000:
        subject = subject[:2000] + "\n" + subject[-1000:]
    subject = subject.lower()
    scores: dict[str, int] = {}
    for task, rules in _COMPILED.items():
        total = sum(
            weight
            for triggers, pattern, weight in rules
            if any(t in subject for t in triggers) and pattern.search(subject)
        )
        if total:
            scores[task] = total
    if not scores:
        return Classification("chat", "default")
    best = max(scores.values())
    task = next(t for t in RULE_ORDER if scores.get(t) == best)
    return Classification(task, "patterns", tuple(sorted(scores.items())))
