"""Consensus: ask N steps, answer with the majority, report how many agreed.

Comparison. Two answers are the same when their normalized texts are equal: Unicode NFKC,
case-folded, punctuation removed, runs of whitespace collapsed to one space, trimmed ("Paris."
== "paris" == " PARIS! "). With a `similarity_threshold` (0-1), an answer also joins a group
when `difflib.SequenceMatcher(None, a, b).ratio()` between its normalized text and the group's
first member reaches the threshold. Groups form greedily in step order, so the result does
not depend on which upstream answered first.

Votes and the ratio. Every step asked has one vote; a step that failed votes for nothing. The
agreement ratio is `agreeing / asked` ("2/3": two of the three steps asked gave the winning
answer; a failed step lowers it).

Majority. The answer needs `min_agreement` agreeing votes (default: a strict majority of the
steps asked, `asked // 2 + 1`).
- `majority`: one largest group reaches it: its first answer in step order is the answer.
- `tie`: several largest groups of equal size reach it (only possible when `min_agreement`
  is at most half): the group holding the earliest step (route order: the operator's
  preference) wins, and the status says it was a tie.
- `no_majority`: no group reaches it (every step disagreed, or too many failed): the earliest
  answer of the largest group (ties as above) is returned with `agreed = False`; the caller
  decides whether to serve it flagged or fail (docs/routing.md: it is served, flagged).
- `no_answers`: every step failed (`answer_index` is None).

`consensus_gather` runs the N calls concurrently (all of them, no cancellation: every vote
counts) and returns each step's result or error with the decision, so the caller can bill
every attempt."""

from __future__ import annotations

import asyncio
import difflib
import re
import unicodedata
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")

_SPACES = re.compile(r"\s+")


def consensus_normalize(text: str) -> str:
    """The comparison form of an answer (see the module docstring)."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = "".join(" " if unicodedata.category(ch).startswith("P") else ch for ch in text)
    return _SPACES.sub(" ", text).strip()


@dataclass(frozen=True, slots=True)
class ConsensusDecision:
    status: str  # "majority" | "tie" | "no_majority" | "no_answers"
    answer_index: int | None  # the step whose answer is served
    agreeing: tuple[int, ...]  # steps in the winning group
    asked: int
    groups: tuple[tuple[int, ...], ...] = field(default=())  # every group, largest first

    @property
    def agreed(self) -> bool:
        return self.status in ("majority", "tie")

    @property
    def ratio(self) -> float:
        return len(self.agreeing) / self.asked if self.asked else 0.0

    @property
    def agreement(self) -> str:
        """`2/3`: the x-gateway-agreement header value."""
        return f"{len(self.agreeing)}/{self.asked}"


def _same(a: str, b: str, threshold: float | None) -> bool:
    if a == b:
        return True
    if threshold is None:
        return False
    return difflib.SequenceMatcher(None, a, b).ratio() >= threshold


def consensus_decide(
    answers: Sequence[str | None],
    *,
    min_agreement: int = 0,
    similarity_threshold: float | None = None,
) -> ConsensusDecision:
    """`answers[i]`: step i's answer text, None when it failed."""
    asked = len(answers)
    groups: list[list[int]] = []
    heads: list[str] = []
    for index, text in enumerate(answers):
        if text is None:
            continue
        normalized = consensus_normalize(text)
        for group, head in zip(groups, heads, strict=True):
            if _same(normalized, head, similarity_threshold):
                group.append(index)
                break
        else:
            groups.append([index])
            heads.append(normalized)
    if not groups:
        return ConsensusDecision("no_answers", None, (), asked)
    # Largest first; among equals, the group holding the earliest step first.
    groups.sort(key=lambda g: (-len(g), g[0]))
    need = min_agreement if min_agreement > 0 else asked // 2 + 1
    best = groups[0]
    tied = [g for g in groups if len(g) == len(best)]
    if len(best) < need:
        status = "no_majority"
    elif len(tied) > 1:
        status = "tie"
    else:
        status = "majority"
    return ConsensusDecision(
        status=status,
        answer_index=best[0],
        agreeing=tuple(best),
        asked=asked,
        groups=tuple(tuple(g) for g in groups),
    )


@dataclass(slots=True)
class ConsensusResult(Generic[T]):
    decision: ConsensusDecision
    results: list[T | None]  # per step, None when it failed
    errors: list[BaseException | None]  # per step

    @property
    def answer(self) -> T | None:
        index = self.decision.answer_index
        return None if index is None else self.results[index]


async def consensus_gather(
    factories: Sequence[Callable[[], Awaitable[T]]],
    *,
    text_of: Callable[[T], str | None],
    min_agreement: int = 0,
    similarity_threshold: float | None = None,
) -> ConsensusResult[T]:
    """Run every factory concurrently, then decide on their answers' texts (`text_of`)."""
    outcomes = await asyncio.gather(*(factory() for factory in factories), return_exceptions=True)
    results: list[T | None] = []
    errors: list[BaseException | None] = []
    for outcome in outcomes:
        if isinstance(outcome, asyncio.CancelledError):
            raise outcome
        if isinstance(outcome, BaseException):
            results.append(None)
            errors.append(outcome)
        else:
            results.append(outcome)
            errors.append(None)
    texts = [None if r is None else text_of(r) for r in results]
    decision = consensus_decide(
        texts, min_agreement=min_agreement, similarity_threshold=similarity_threshold
    )
    return ConsensusResult(decision=decision, results=results, errors=errors)
