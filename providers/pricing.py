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


def usage_cost_usd(
    *,
    prompt_tokens: int,
    completion_tokens: int,
    cache_read_tokens: int,
    cache_write_tokens: int,
    input_price_per_mtok: Decimal,
    output_price_per_mtok: Decimal,
    cache_read_price_per_mtok: Decimal | None = None,
    cache_write_price_per_mtok: Decimal | None = None,
) -> Decimal:
    """The cost of one request's usage. `prompt_tokens` is the whole prompt (cached parts
    included, as Usage counts it); the cached parts are charged at their own prices when the
    model has them, else at the input price (then this equals cost_usd)."""
    cache_read = max(0, min(cache_read_tokens, prompt_tokens))
    cache_write = max(0, min(cache_write_tokens, prompt_tokens - cache_read))
    uncached = prompt_tokens - cache_read - cache_write
    read_price = (
        input_price_per_mtok if cache_read_price_per_mtok is None else cache_read_price_per_mtok
    )
    write_price = (
        input_price_per_mtok if cache_write_price_per_mtok is None else cache_write_price_per_mtok
    )
    raw = (
        Decimal(uncached) * input_price_per_mtok
        + Decimal(cache_read) * read_price
        + Decimal(cache_write) * write_price
        + Decimal(completion_tokens) * output_price_per_mtok
    ) / _MILLION
    return raw.quantize(COST_QUANTUM)
