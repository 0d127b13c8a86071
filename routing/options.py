"""A route's per-strategy options (Route.options, JSON), parsed once into a frozen value the
snapshot carries. `route_options_parse` is the one validator: the catalog file loader, the
admin form and the snapshot all go through it (the snapshot keeps defaults for a row it
cannot parse, and logs it). Fields and defaults: docs/catalog.md."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from routing.cache import CACHE_OPTION_NAMES, CachePolicy

PREFERENCES = ("fast", "cheap", "best", "balanced")
OVERFLOW_ACTIONS = ("reject", "truncate", "summarize")
LOADBALANCE_MODES = ("weighted", "least_latency", "least_busy")
WEIGHT_NAMES = ("cost", "latency", "quality", "availability")


class RouteOptionsError(ValueError):
    """Route options that do not validate; the message names the field."""


@dataclass(frozen=True, slots=True)
class Constraints:
    max_cost_usd: Decimal | None = None
    max_latency_ms: float | None = None


@dataclass(frozen=True, slots=True)
class RouteOptions:
    # parallel / consensus: how many steps to ask at once (0: every step).
    n: int = 0
    # consensus: the least number of agreeing answers that makes a majority (0: more than half).
    min_agreement: int = 0
    # consensus: answers whose difflib ratio reaches this count as the same (None: exact match
    # after normalization).
    similarity_threshold: float | None = None
    # scored: the default preference and weights (a request may override the preference).
    preference: str = "balanced"
    weights: tuple[tuple[str, float], ...] = ()
    constraints: Constraints = field(default_factory=Constraints)
    # context windows: what to do when no step fits the prompt.
    on_context_overflow: str = "reject"
    summarizer: str = ""
    # caps of one chain: attempts (0: the route's max_attempts) and total wait between retries.
    max_attempts: int = 0
    max_total_wait_ms: int = 0
    # loadbalance: how the first deployment is picked.
    mode: str = "weighted"
    # the response cache (routing/cache.py, docs/cache.md): off unless enabled here.
    cache: CachePolicy = field(default_factory=CachePolicy)

    def weights_dict(self) -> dict[str, float]:
        return dict(self.weights)


DEFAULT_OPTIONS = RouteOptions()

_KNOWN = {
    "n",
    "min_agreement",
    "similarity_threshold",
    "preference",
    "weights",
    "constraints",
    "on_context_overflow",
    "summarizer",
    "max_attempts",
    "max_total_wait_ms",
    "mode",
    "cache",
}


def _int(value: Any, name: str, *, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise RouteOptionsError(f"options.{name} must be an integer >= {minimum}")
    return value


def _number(value: Any, label: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RouteOptionsError(f"{label} must be a number")
    return float(value)


def _choice(value: Any, name: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise RouteOptionsError(f"options.{name} must be one of {', '.join(choices)}")
    return value


def constraints_parse(raw: Any, where: str = "constraints") -> Constraints:
    """`{"max_cost_usd": 0.01, "max_latency_ms": 2000}` (either may be absent)."""
    if raw is None:
        return Constraints()
    if not isinstance(raw, dict):
        raise RouteOptionsError(f"{where} must be an object")
    unknown = set(raw) - {"max_cost_usd", "max_latency_ms"}
    if unknown:
        raise RouteOptionsError(f"{where}: unknown fields {sorted(unknown)}")
    cost: Decimal | None = None
    if raw.get("max_cost_usd") is not None:
        value = raw["max_cost_usd"]
        if isinstance(value, bool):
            raise RouteOptionsError(f"{where}.max_cost_usd must be a number")
        try:
            cost = Decimal(str(value))
        except InvalidOperation as exc:
            raise RouteOptionsError(f"{where}.max_cost_usd must be a number") from exc
        if not cost.is_finite() or cost < 0:
            raise RouteOptionsError(f"{where}.max_cost_usd must be >= 0")
    latency: float | None = None
    if raw.get("max_latency_ms") is not None:
        latency = _number(raw["max_latency_ms"], f"{where}.max_latency_ms")
        if latency <= 0:
            raise RouteOptionsError(f"{where}.max_latency_ms must be > 0")
    return Constraints(max_cost_usd=cost, max_latency_ms=latency)


def route_options_parse(raw: Any) -> RouteOptions:
    """Validate Route.options (a JSON object; None or {} gives the defaults)."""
    if raw in (None, {}):
        return DEFAULT_OPTIONS
    if not isinstance(raw, dict):
        raise RouteOptionsError("options must be an object")
    unknown = set(raw) - _KNOWN
    if unknown:
        raise RouteOptionsError(f"options: unknown fields {sorted(unknown)}")
    values: dict[str, Any] = {}
    for name in ("n", "min_agreement", "max_attempts", "max_total_wait_ms"):
        if name in raw:
            values[name] = _int(raw[name], name)
    if raw.get("similarity_threshold") is not None:
        threshold = _number(raw["similarity_threshold"], "options.similarity_threshold")
        if not 0 < threshold <= 1:
            raise RouteOptionsError("options.similarity_threshold must be in (0, 1]")
        values["similarity_threshold"] = threshold
    if "preference" in raw:
        values["preference"] = _choice(raw["preference"], "preference", PREFERENCES)
    if "weights" in raw:
        weights = raw["weights"]
        if not isinstance(weights, dict) or not weights:
            raise RouteOptionsError("options.weights must be an object of weights")
        unknown_w = set(weights) - set(WEIGHT_NAMES)
        if unknown_w:
            raise RouteOptionsError(
                f"options.weights: unknown {sorted(unknown_w)}; use {', '.join(WEIGHT_NAMES)}"
            )
        parsed = {k: _number(v, f"options.weights.{k}") for k, v in weights.items()}
        if any(v < 0 for v in parsed.values()) or sum(parsed.values()) <= 0:
            raise RouteOptionsError("options.weights must be >= 0 with a positive sum")
        values["weights"] = tuple(sorted(parsed.items()))
    if "constraints" in raw:
        values["constraints"] = constraints_parse(raw["constraints"], "options.constraints")
    if "on_context_overflow" in raw:
        values["on_context_overflow"] = _choice(
            raw["on_context_overflow"], "on_context_overflow", OVERFLOW_ACTIONS
        )
    if "summarizer" in raw:
        if not isinstance(raw["summarizer"], str):
            raise RouteOptionsError("options.summarizer must be a model name")
        values["summarizer"] = raw["summarizer"]
    if "mode" in raw:
        values["mode"] = _choice(raw["mode"], "mode", LOADBALANCE_MODES)
    if "cache" in raw:
        if not isinstance(raw["cache"], dict):
            raise RouteOptionsError("options.cache must be an object")
        unknown_c = set(raw["cache"]) - CACHE_OPTION_NAMES
        if unknown_c:
            raise RouteOptionsError(f"options.cache: unknown fields {sorted(unknown_c)}")
        try:
            values["cache"] = CachePolicy.from_options(raw["cache"])
        except (ValueError, TypeError, ArithmeticError) as exc:
            raise RouteOptionsError(f"options.cache: {exc}") from None
    options = RouteOptions(**values)
    if options.on_context_overflow == "summarize" and not options.summarizer:
        raise RouteOptionsError("options.on_context_overflow=summarize needs options.summarizer")
    return options
