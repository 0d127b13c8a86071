"""Scored routing: choose per request among a route's candidates by preference.

Each candidate gets three scores in [0, 1], relative to the other candidates of the request:
- cost: estimated cost of this request (prompt tokens x input price + expected output tokens x
  output price, catalog prices in force now) as `cheapest / this` (the cheapest scores 1, one
  twice as expensive 0.5);
- latency: the deployment's latency EWMA (shared by every process through the state store,
  fed by `latency_observe` after every attempt) as `fastest / this`; a deployment without an
  average yet gets the median of the known ones (all unknown: 1);
- quality: the catalog model's `quality` for the task (0-1; unrated: 0.5).

and an availability factor: 0 for an open breaker (excluded), 0.5 while half-open, otherwise
`1 - failure rate` of the breaker's current window.

`final = (w_cost*cost + w_latency*latency + w_quality*quality [+ w_availability*availability])
/ sum(w) * availability`. Preferences set the weights (the orchestration seed's 60 % rule):
`fast` 0.6 latency, `cheap` 0.6 cost, `best` 0.6 quality, the other two 0.2 each; `balanced`
1/3 each. A route's `options.weights` replaces them.

Constraints exclude before scoring: `max_cost_usd` against the worst case (prompt tokens and
`max_tokens`, or the model's `max_output_tokens` when the request sets none, so the cap
holds whatever the answer's length) and `max_latency_ms` against the EWMA (a deployment
without an average is not excluded: nothing says it is slow). Open breakers, models not
serving the task, and candidates dropped earlier (capabilities, context window) are reported
the same way: when nothing is left, `NoCandidate` (400 `no_candidate_satisfies_constraints`)
names what excluded each candidate."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

from providers.pricing import cost_usd
from routing.errors import GatewayError
from routing.options import Constraints
from routing.snapshot import Target
from tenants.state import state_store
from tenants.state.base import BreakerStatus

TargetKey = tuple[int, int]
DIMENSIONS = ("cost", "latency", "quality")
PREFERRED_WEIGHT = 0.6
UNRATED_QUALITY = 0.5
EWMA_ALPHA = 0.2  # each new observation moves the average a fifth of the way
_PREFERRED_DIMENSION = {"fast": "latency", "cheap": "cost", "best": "quality"}
_TINY_USD = 1e-9  # keeps free models comparable (cost ratios never divide by zero)


def _key(target: Target) -> TargetKey:
    return (target.provider.id, target.model.id)


def weights_for(preference: str, override: Mapping[str, float] | None = None) -> dict[str, float]:
    """The weights of a preference (or the route's explicit ones), summing to 1."""
    if override:
        total = sum(override.values())
        return {name: value / total for name, value in override.items()}
    preferred = _PREFERRED_DIMENSION.get(preference)
    if preferred is None:  # balanced (and anything unknown): equal
        return {name: 1 / len(DIMENSIONS) for name in DIMENSIONS}
    rest = (1 - PREFERRED_WEIGHT) / (len(DIMENSIONS) - 1)
    return {name: PREFERRED_WEIGHT if name == preferred else rest for name in DIMENSIONS}


@dataclass(frozen=True, slots=True)
class Candidate:
    target: Target
    estimated_cost_usd: Decimal  # worst case of this request (constraint and cost score)
    latency_ms: float | None  # the EWMA, None when unknown
    quality: float
    availability: float
    cost_score: float = 0.0
    latency_score: float = 0.0
    quality_score: float = 0.0
    final_score: float = 0.0
    excluded: tuple[str, ...] = ()  # why it cannot serve this request (empty: eligible)

    def as_dict(self) -> dict:
        """The native API's `routing.candidates[]` entry."""
        return {
            "model": self.target.model.name,
            "provider": self.target.provider.name,
            "cost_score": round(self.cost_score, 4),
            "latency_score": round(self.latency_score, 4),
            "quality_score": round(self.quality_score, 4),
            "final_score": round(self.final_score, 4),
            "estimated_cost_usd": format(self.estimated_cost_usd, "f"),
            "latency_ms": None if self.latency_ms is None else round(self.latency_ms, 1),
            "excluded": list(self.excluded),
        }


@dataclass(frozen=True, slots=True)
class ScoredChoice:
    ranked: list[Candidate]  # eligible, best first: the order to try them
    excluded: list[Candidate]
    preference: str
    weights: dict[str, float] = field(default_factory=dict)
    task: str | None = None

    @property
    def chosen(self) -> Candidate:
        return self.ranked[0]

    @property
    def targets(self) -> list[Target]:
        return [c.target for c in self.ranked]

    def reason(self) -> str:
        """One line for `routing.reason`."""
        best = self.chosen
        task = f" for {self.task}" if self.task else ""
        return (
            f"highest {self.preference} score{task} among {len(self.ranked)} candidate(s): "
            f"cost {best.cost_score:.2f}, latency {best.latency_score:.2f}, "
            f"quality {best.quality_score:.2f}"
            + (f"; {len(self.excluded)} excluded" if self.excluded else "")
        )


class NoCandidate(GatewayError):
    """Every candidate was excluded; the body lists each one's reasons."""

    def __init__(self, candidates: Sequence[Candidate]) -> None:
        self.candidates = list(candidates)
        detail = "; ".join(
            f"{c.target.model.name}: {', '.join(c.excluded)}" for c in self.candidates
        )
        super().__init__(
            status=400,
            message=f"No candidate satisfies this request ({detail or 'the route has none'})",
            code="no_candidate_satisfies_constraints",
        )

    def body(self) -> dict:
        body = super().body()
        body["error"]["candidates"] = [
            {
                "model": c.target.model.name,
                "provider": c.target.provider.name,
                "excluded": list(c.excluded),
            }
            for c in self.candidates
        ]
        return body


def estimated_cost_usd(
    target: Target, *, prompt_tokens: int, max_tokens: int | None, when: datetime | None = None
) -> Decimal:
    """Worst case of one request on `target`, at the catalog price in force `when`."""
    price_in, price_out = target.model.price_at(when or datetime.now(tz=UTC))
    out = min(max_tokens, target.model.max_output_tokens) if max_tokens else None
    return cost_usd(
        tokens_in=max(0, prompt_tokens),
        tokens_out=out if out is not None else target.model.max_output_tokens,
        input_price_per_mtok=price_in,
        output_price_per_mtok=price_out,
    )


def availability_of(status: BreakerStatus | None) -> float:
    if status is None or status.state == "closed":
        if status is None or status.calls == 0:
            return 1.0
        return max(0.0, 1.0 - status.failures / status.calls)
    if status.state == "open" or not status.allowed:
        return 0.0
    return 0.5


def score_candidates(
    targets: Sequence[Target],
    *,
    task: str | None,
    preference: str,
    prompt_tokens: int,
    max_tokens: int | None,
    constraints: Constraints,
    latencies: Mapping[TargetKey, float | None],
    health: Mapping[TargetKey, BreakerStatus],
    weights: Mapping[str, float] | None = None,
    excluded_before: Mapping[TargetKey, Sequence[str]] | None = None,
    when: datetime | None = None,
) -> ScoredChoice:
    """Pure: rank `targets` (each deployment once) for one request. Raises NoCandidate."""
    chosen_weights = weights_for(preference, weights)
    drafts: list[Candidate] = []
    for target in targets:
        key = _key(target)
        reasons = list((excluded_before or {}).get(key, ()))
        estimate = estimated_cost_usd(
            target, prompt_tokens=prompt_tokens, max_tokens=max_tokens, when=when
        )
        latency = latencies.get(key)
        status = health.get(key)
        availability = availability_of(status)
        if not target.model.serves_task(task):
            reasons.append(f"task: does not serve {task}")
        if availability == 0.0:
            reasons.append("availability: circuit breaker open")
        if constraints.max_cost_usd is not None and estimate > constraints.max_cost_usd:
            reasons.append(
                f"max_cost_usd: estimated {format(estimate, 'f')} > "
                f"{format(constraints.max_cost_usd, 'f')}"
            )
        if (
            constraints.max_latency_ms is not None
            and latency is not None
            and latency > constraints.max_latency_ms
        ):
            reasons.append(
                f"max_latency_ms: average {latency:.0f} > {constraints.max_latency_ms:.0f}"
            )
        quality = target.model.quality_for(task) if task else None
        drafts.append(
            Candidate(
                target=target,
                estimated_cost_usd=estimate,
                latency_ms=latency,
                quality=UNRATED_QUALITY if quality is None else quality,
                availability=availability,
                excluded=tuple(reasons),
            )
        )
    eligible = [c for c in drafts if not c.excluded]
    excluded = [c for c in drafts if c.excluded]
    if not eligible:
        raise NoCandidate(excluded)

    cheapest = float(min(c.estimated_cost_usd for c in eligible)) + _TINY_USD
    known = [c.latency_ms for c in eligible if c.latency_ms is not None]
    prior = statistics.median(known) if known else None
    fastest = min(known) if known else None
    scored: list[Candidate] = []
    for c in eligible:
        cost_score = cheapest / (float(c.estimated_cost_usd) + _TINY_USD)
        latency = c.latency_ms if c.latency_ms is not None else prior
        if latency is None or fastest is None:
            latency_score = 1.0
        else:
            latency_score = max(fastest, 1e-3) / max(latency, 1e-3)
        parts = {
            "cost": cost_score,
            "latency": latency_score,
            "quality": c.quality,
            "availability": c.availability,
        }
        final = sum(w * parts[name] for name, w in chosen_weights.items()) * c.availability
        scored.append(
            Candidate(
                target=c.target,
                estimated_cost_usd=c.estimated_cost_usd,
                latency_ms=c.latency_ms,
                quality=c.quality,
                availability=c.availability,
                cost_score=cost_score,
                latency_score=latency_score,
                quality_score=c.quality,
                final_score=final,
            )
        )
    # Best first; equal scores keep route order (a stable sort).
    scored.sort(key=lambda c: -c.final_score)
    return ScoredChoice(
        ranked=scored,
        excluded=excluded,
        preference=preference,
        weights=chosen_weights,
        task=task,
    )


def savings_usd(
    chosen: Target,
    candidates: Sequence[Candidate],
    *,
    tokens_in: int,
    tokens_out: int,
    when: datetime | None = None,
) -> Decimal:
    """What this request would have cost on the most expensive candidate that could have
    served it, minus what it cost on `chosen` (same tokens; never negative)."""
    moment = when or datetime.now(tz=UTC)

    def cost_on(target: Target) -> Decimal:
        price_in, price_out = target.model.price_at(moment)
        return cost_usd(
            tokens_in=tokens_in,
            tokens_out=tokens_out,
            input_price_per_mtok=price_in,
            output_price_per_mtok=price_out,
        )

    actual = cost_on(chosen)
    dearest = max((cost_on(c.target) for c in candidates), default=actual)
    return max(Decimal(0), dearest - actual)


# -- live figures in the state store -------------------------------------------------------
def _name(kind: str, target: Target) -> str:
    return state_store().health_key(kind, f"{target.provider.id}:{target.model.id}")


async def latency_observe(target: Target, ms: float) -> float:
    """Fold one attempt's latency (ms, to the answer or the first chunk) into the
    deployment's EWMA shared by every process. Call it after every attempt, failed ones too
    (a timeout is latency a client would have paid)."""
    return await state_store().ewma_observe(
        key=_name("ewma", target), value=max(0.0, float(ms)), alpha=EWMA_ALPHA
    )


async def latency_get(targets: Sequence[Target]) -> dict[TargetKey, float | None]:
    values = await state_store().ewma_get(keys=[_name("ewma", t) for t in targets])
    return {_key(t): v for t, v in zip(targets, values, strict=True)}


async def health_get(targets: Sequence[Target]) -> dict[TargetKey, BreakerStatus]:
    from routing.breakers import breaker_policy

    store = state_store()
    statuses = await store.breaker_status(
        keys=[_name("breaker", t) for t in targets], policy=breaker_policy()
    )
    return {_key(t): s for t, s in zip(targets, statuses, strict=True)}


async def scored_choose(
    targets: Sequence[Target],
    *,
    task: str | None,
    preference: str,
    prompt_tokens: int,
    max_tokens: int | None,
    constraints: Constraints,
    weights: Mapping[str, float] | None = None,
    excluded_before: Mapping[TargetKey, Sequence[str]] | None = None,
) -> ScoredChoice:
    """`score_candidates` with live figures: the EWMAs and breaker states of every target,
    read from the state store (two calls). Raises NoCandidate."""
    latencies = await latency_get(targets)
    health = await health_get(targets)
    return score_candidates(
        targets,
        task=task,
        preference=preference,
        prompt_tokens=prompt_tokens,
        max_tokens=max_tokens,
        constraints=constraints,
        latencies=latencies,
        health=health,
        weights=weights,
        excluded_before=excluded_before,
    )
