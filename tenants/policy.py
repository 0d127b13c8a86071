"""Frozen, in-process views of a key and its tenant: what the hot path reads instead of rows."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal


@dataclass(frozen=True, slots=True)
class LimitPolicy:
    budget_usd: Decimal | None = None
    budget_period: str = "monthly"
    rpm: int | None = None
    tpm: int | None = None
    max_concurrency: int | None = None


@dataclass(frozen=True, slots=True)
class KeyPolicy:
    key_id: int
    tenant_id: int
    tenant_slug: str
    prefix: str
    allowed_models: frozenset[str]
    expires_at: datetime | None
    revoked: bool
    tenant_active: bool
    key_limits: LimitPolicy
    tenant_limits: LimitPolicy
    tenant_timezone: str = "UTC"
    # Budget alert thresholds in percent of a budget (the tenant's, applied to its keys too).
    alert_thresholds: tuple[int, ...] = (50, 80, 100)

    def allows_model(self, name: str) -> bool:
        return not self.allowed_models or name in self.allowed_models

    def usable_at(self, now: datetime) -> bool:
        if self.revoked or not self.tenant_active:
            return False
        return self.expires_at is None or self.expires_at > now
