"""Admission and settlement: the two state-store calls each request makes.

PLACEHOLDER internals (single-process only) until the state-store work lands; the public
signatures here are the contract routing calls."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from tenants.policy import KeyPolicy


class AdmissionDenied(Exception):
    def __init__(
        self,
        *,
        status: int,
        code: str,
        error_type: str,
        message: str,
        retry_after: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.error_type = error_type
        self.message = message
        self.retry_after = retry_after
        self.headers = headers or {}


@dataclass(slots=True)
class Admission:
    request_id: str
    policy: KeyPolicy
    reserved_usd: Decimal
    estimated_tokens: int
    headers: dict[str, str] = field(default_factory=dict)
    admitted_at: float = field(default_factory=time.monotonic)


async def request_admit(
    *,
    policy: KeyPolicy,
    request_id: str,
    estimated_prompt_tokens: int,
    max_output_tokens: int,
    input_price_per_mtok: Decimal,
    output_price_per_mtok: Decimal,
) -> Admission:
    reserved = (
        Decimal(estimated_prompt_tokens) * input_price_per_mtok
        + Decimal(max_output_tokens) * output_price_per_mtok
    ) / Decimal(1_000_000)
    return Admission(
        request_id=request_id,
        policy=policy,
        reserved_usd=reserved,
        estimated_tokens=estimated_prompt_tokens + max_output_tokens,
    )


async def request_settle(
    *,
    admission: Admission,
    cost_usd: Decimal,
    tokens_used: int,
    usage_event: dict[str, Any],
) -> bool:
    """Replace the reservation by the real cost and release the slot. Returns True when the
    state store took the usage event in the same atomic call (Redis stream mode)."""
    return False
