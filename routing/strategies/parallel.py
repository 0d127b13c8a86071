"""Parallel: race N calls; the first successful one wins and the others are cancelled at once.

`race` takes coroutine factories (one per step, in route order), so it knows nothing of
InferenceCall: a factory is "call this deployment" for a JSON answer, or "open this stream
and wait for its first chunk" for a stream (the winner's stream then goes on to the client).
Cancelling a loser cancels its task; the adapters' HTTP client closes that upstream connection
on cancellation, so the upstream stops generating (and billing) at once.

What the caller gets back (`RaceResult`): the winner and every loser's outcome — failed
(with its error), cancelled (it was still running when the winner came in), or still
cancelling (it did not finish within `cancel_grace_s` of the cancel; it goes on ending in the
background). A factory that records what it consumed (tokens streamed, an attempt row) lets
the caller bill each loser's partial usage and record it as an attempt; `race` only reports.
When every factory fails, `RaceFailed` carries all the outcomes (the caller answers with the
last error, or the route's default message)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")

CANCEL_GRACE_S = 0.1


@dataclass(slots=True)
class RaceOutcome(Generic[T]):
    index: int  # the factory's position (route order)
    status: str  # "won" | "failed" | "cancelled" | "cancelling" | "rejected"
    result: T | None = None
    error: BaseException | None = None
    elapsed_ms: float = 0.0  # from the start of the race to this outcome


@dataclass(slots=True)
class RaceResult(Generic[T]):
    winner: RaceOutcome[T]
    losers: list[RaceOutcome[T]]

    @property
    def value(self) -> T:
        assert self.winner.result is not None
        return self.winner.result


class RaceFailed(Exception):
    """No factory produced an accepted result."""

    def __init__(self, outcomes: list[RaceOutcome]) -> None:
        super().__init__(f"all {len(outcomes)} racers failed")
        self.outcomes = outcomes

    @property
    def last_error(self) -> BaseException | None:
        errors = [o for o in self.outcomes if o.error is not None]
        return max(errors, key=lambda o: o.elapsed_ms).error if errors else None


async def race(
    factories: Sequence[Callable[[], Awaitable[T]]],
    *,
    accept: Callable[[T], bool] | None = None,
    cancel_grace_s: float = CANCEL_GRACE_S,
) -> RaceResult[T]:
    """Start every factory now; return when the first one succeeds (and `accept`s, when
    given: a rejected result counts as a loss, e.g. an empty answer). The others are cancelled
    before this returns; each loser's outcome is in the result. Cancelling `race` itself
    cancels every racer."""
    if not factories:
        raise ValueError("race needs at least one factory")
    started = time.perf_counter()

    def elapsed() -> float:
        return round((time.perf_counter() - started) * 1000, 3)

    tasks: dict[asyncio.Task[T], int] = {
        asyncio.ensure_future(factory()): index for index, factory in enumerate(factories)
    }
    outcomes: dict[int, RaceOutcome[T]] = {}
    winner: RaceOutcome[T] | None = None
    pending = set(tasks)
    try:
        while pending and winner is None:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            # Several may finish in the same tick: the lowest index (route order) wins.
            for task in sorted(done, key=lambda t: tasks[t]):
                index = tasks[task]
                if task.cancelled():
                    outcomes[index] = RaceOutcome(index, "cancelled", elapsed_ms=elapsed())
                    continue
                error = task.exception()
                if error is not None:
                    outcomes[index] = RaceOutcome(
                        index, "failed", error=error, elapsed_ms=elapsed()
                    )
                    continue
                result = task.result()
                if winner is None and (accept is None or accept(result)):
                    winner = RaceOutcome(index, "won", result=result, elapsed_ms=elapsed())
                    outcomes[index] = winner
                else:
                    status = "rejected" if winner is None else "cancelled"
                    outcomes[index] = RaceOutcome(
                        index, status, result=result, elapsed_ms=elapsed()
                    )
    finally:
        # The winner is in (or the race was cancelled, or every racer failed): stop the rest.
        for task in pending:
            task.cancel()
        if pending:
            done, still = await asyncio.wait(pending, timeout=cancel_grace_s)
            for task in done:
                index = tasks[task]
                if task.cancelled():
                    outcomes[index] = RaceOutcome(index, "cancelled", elapsed_ms=elapsed())
                elif task.exception() is not None:
                    outcomes[index] = RaceOutcome(
                        index, "failed", error=task.exception(), elapsed_ms=elapsed()
                    )
                else:
                    # Finished between the winner and the cancel: its answer is not used.
                    outcomes[index] = RaceOutcome(
                        index, "cancelled", result=task.result(), elapsed_ms=elapsed()
                    )
            for task in still:
                outcomes[tasks[task]] = RaceOutcome(tasks[task], "cancelling", elapsed_ms=elapsed())
    ordered = [outcomes[i] for i in sorted(outcomes)]
    if winner is None:
        raise RaceFailed(ordered)
    return RaceResult(winner=winner, losers=[o for o in ordered if o is not winner])
