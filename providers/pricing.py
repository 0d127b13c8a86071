"""Cost arithmetic. Decimal only; USD per 1M tokens; exact at 12 decimal places."""

from __future__ import annotations

from decimal import Decimal

COST_QUANTUM = Decimal("0.000000000001")
_MILLION = Decimal(1_000_000)


def cost_usd(
    *,
    tokens_in: int,
    tokens_out: int,
    input_price_per_mtok: Decimal,
    output_price_per_mtok: Decimal,
) -> Decimal:
    raw = (
        Decimal(tokens_in) * input_price_per_mtok + Decimal(tokens_out) * output_price_per_mtok
    ) / _MILLION
    return raw.quantize(COST_QUANTUM)
