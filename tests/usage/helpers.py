"""Usage events built exactly as routing builds them: a real InferenceCall over the catalog
snapshot, finished into routing.services.usage_event_payload (no hand-made dicts)."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal

from providers.catalog import catalog_load
from providers.pricing import cost_usd
from providers.types import Usage
from routing.inference import AttemptRecord, InferenceCall, usage_event_payload
from routing.snapshot import ResolvedRoute, Target
from tenants.models import ApiKey
from tenants.selectors import key_policy_from


class PayloadMaker:
    """Builds payloads for one key over one route; prices come from the catalog snapshot's
    price schedule at the event's time (ModelEntry.price_at), as routing must charge them."""

    def __init__(self, *, key: ApiKey, route_name: str, model_names: list[str]) -> None:
        self.catalog = catalog_load()
        self.policy = key_policy_from(ApiKey.objects.select_related("tenant").get(pk=key.pk))
        targets = []
        for name in model_names:
            entry = self.catalog.models[name]
            targets.append(Target(entry, self.catalog.providers[entry.provider_id]))
        self.route = ResolvedRoute(
            name=route_name, strategy="fallback", targets=tuple(targets), max_attempts=3
        )

    def payload(
        self,
        *,
        created_at: datetime,
        tokens_in: int,
        tokens_out: int,
        target_index: int = 0,
        outcome: str = "ok",
        status_code: int = 200,
        cache_read_tokens: int = 0,
        request_id: str | None = None,
    ) -> dict:
        call = InferenceCall(
            request_id=request_id or uuid.uuid4().hex, policy=self.policy, route=self.route
        )
        call.created_at = created_at
        target = self.route.targets[target_index]
        price_in, price_out = target.model.price_at(created_at)
        call.served = Target(
            model=_with_prices(target.model, price_in, price_out), provider=target.provider
        )
        call.attempts.append(
            AttemptRecord(
                model_id=target.model.id,
                provider_id=target.provider.id,
                status_code=status_code,
                error_type="",
                latency_ms=12.5,
            )
        )
        call.cost = cost_usd(
            tokens_in=tokens_in,
            tokens_out=tokens_out,
            input_price_per_mtok=price_in,
            output_price_per_mtok=price_out,
        )
        return usage_event_payload(
            call=call,
            usage=Usage(
                prompt_tokens=tokens_in,
                completion_tokens=tokens_out,
                cache_read_tokens=cache_read_tokens,
            ),
            status_code=status_code,
            outcome=outcome,
            error_type="",
        )


def _with_prices(entry, price_in: Decimal, price_out: Decimal):
    import dataclasses

    return dataclasses.replace(
        entry, input_price_per_mtok=price_in, output_price_per_mtok=price_out
    )
