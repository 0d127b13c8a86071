"""Money in the state store: integer nano-USD (1 USD = 10^9 units).

Why nano: the cheapest prices are fractions of a cent per million tokens, so one token can cost
well under a micro-dollar; nano keeps a single token's cost visible. Why integers below 2^53:
Redis Lua numbers are doubles, exact only up to 2^53, which here is about 9,007,199 USD per
budget period; larger budgets are clamped to it (see docs/limits.md).

Rounding: every amount going into the store (a reservation, a real cost, a seed from the
database) is rounded UP to the next nano-USD, so the store never holds less than was spent and
a budget enforced on it is never overshot; the store may over-count by under one nano-USD per
request. PostgreSQL keeps the exact cost (12 decimal places)."""

from __future__ import annotations

from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

NANO_PER_USD = 10**9
MAX_NANO = 2**53 - 1
_NANO = Decimal(NANO_PER_USD)


def usd_to_nano_ceil(amount: Decimal) -> int:
    """USD -> nano-USD, rounded up (never negative)."""
    if amount <= 0:
        return 0
    return min(MAX_NANO, int((amount * _NANO).to_integral_value(rounding=ROUND_CEILING)))


def budget_to_nano(budget_usd: Decimal | None) -> int | None:
    """A budget in nano-USD (rounded down, clamped below 2^53); None stays unlimited."""
    if budget_usd is None:
        return None
    if budget_usd <= 0:
        return 0
    return min(MAX_NANO, int((budget_usd * _NANO).to_integral_value(rounding=ROUND_FLOOR)))


def nano_to_usd(amount: int) -> Decimal:
    return Decimal(amount) / _NANO


def worst_case_cost_usd(
    *,
    prompt_tokens: int,
    max_output_tokens: int,
    input_price_per_mtok: Decimal,
    output_price_per_mtok: Decimal,
) -> Decimal:
    """What a request can cost at most: its prompt plus every output token it may produce."""
    return (
        Decimal(max(0, prompt_tokens)) * input_price_per_mtok
        + Decimal(max(0, max_output_tokens)) * output_price_per_mtok
    ) / Decimal(1_000_000)
