"""Ending holds nobody settled (durable holds, see tenants/state/base.py).

Every admission leaves a hold record (ticket, deadline = admission + the call's hold TTL,
payload) in the state store in the same atomic step; the request's settlement removes it in
its own atomic step. A hold still open after its deadline belongs to a call that can no
longer settle it (its process was killed, or Redis lost a settlement). The Celery beat task
`usage.tasks.usage_orphaned_holds_settle` ends each one, exactly once (the settle script
marks it ended; a late settlement by its owner then changes nothing):

- if PostgreSQL already has the request's event (its settlement reached the database but
  not the state store): the counters are charged with that event's cost and tokens, slot
  and reservation released, no new event;
- else: an event with outcome `orphaned` is written, charging the reservation (the
  worst-case cost of the call, at its route's highest prices), usage flagged as estimated,
  error_type `hold_expired`; slot and reservation released.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import orjson
from asgiref.sync import sync_to_async
from django.conf import settings

from tenants.admission import hold_scopes
from tenants.money import nano_to_usd, usd_to_nano_ceil
from tenants.state import state_store
from tenants.state.base import SettleRequest
from usage.models import UsageEvent
from usage.services import usage_events_write

logger = logging.getLogger("gateway.usage.holds")

HOLDS_DONE_KEEP_MS = 86_400_000


@dataclass(slots=True)
class HoldSweep:
    expired: int = 0
    orphaned: int = 0
    recovered: int = 0
    gone: int = 0
    failed: int = 0

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


def orphan_event(payload: dict[str, Any]) -> dict[str, Any]:
    """The usage event of a hold that expired unsettled: its reservation, estimated."""
    event = dict(payload["event"])
    event.update(
        cost_usd=format(nano_to_usd(int(payload["reserve_nano"])), "f"),
        usage_estimated=True,
        outcome="orphaned",
        status_code=500,
        error_type="hold_expired",
        latency_ms=0,
        ttft_ms=None,
        fallbacks=0,
        cache_read_tokens=0,
        cache_write_tokens=0,
        attempts=[],
    )
    return event


async def hold_expired_settle(ticket: str, raw: bytes) -> str:
    """End one expired hold. Returns "orphaned", "recovered" or "gone"."""
    store = state_store()
    payload = orjson.loads(raw)
    scopes = hold_scopes(store, payload)
    request_id = payload["event"]["request_id"]
    stored = await UsageEvent.objects.filter(request_id=request_id).afirst()
    event: dict[str, Any] | None
    if stored is not None:
        cost_nano = usd_to_nano_ceil(stored.cost_usd)
        tokens = stored.tokens_in + stored.tokens_out
        event = None
    else:
        event = orphan_event(payload)
        cost_nano = int(payload["reserve_nano"])
        tokens = int(payload["tokens"])
    stream = settings.GATEWAY_USAGE_WRITE_MODE == "stream" and store.supports_stream
    result = await store.settle(
        SettleRequest(
            ticket=ticket,
            tokens=tokens,
            cost_nano=cost_nano,
            hold_ms=0,
            scopes=scopes,
            event=orjson.dumps(event) if (event is not None and stream) else None,
            # A counter that vanished is re-seeded from PostgreSQL at the next admission,
            # which then includes this event.
            allow_missing=True,
            hold_mode="sweeper",
        )
    )
    if result.outcome == "gone":
        return "gone"
    if event is not None and not result.stored_event:
        await sync_to_async(usage_events_write, thread_sensitive=False)(payloads=[event])
    logger.warning(
        "usage.hold_expired",
        extra={
            "request_id": request_id,
            "ticket": ticket,
            "recovered": stored is not None,
            "cost_usd": format(
                stored.cost_usd if stored is not None else nano_to_usd(cost_nano), "f"
            ),
        },
    )
    return "recovered" if stored is not None else "orphaned"


async def holds_expired_settle(*, limit: int = 500) -> HoldSweep:
    """End every hold whose deadline passed (up to `limit` per run)."""
    store = state_store()
    sweep = HoldSweep()
    for ticket, raw in await store.holds_expired(limit=limit):
        sweep.expired += 1
        try:
            outcome = await hold_expired_settle(ticket, raw)
        except Exception:
            # One bad record must not stop the others; it stays open and is retried next run.
            logger.exception("usage.hold_settle_failed", extra={"ticket": ticket})
            sweep.failed += 1
            continue
        setattr(sweep, outcome, getattr(sweep, outcome) + 1)
    await store.holds_done_prune(older_than_ms=HOLDS_DONE_KEEP_MS)
    return sweep
