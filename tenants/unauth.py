"""Per-address limit of unauthenticated traffic (issue 14, item 6).

Every request with a missing or wrong key costs a key lookup (a database query unless the
negative cache has it). Each 401 is counted per client address in the state store (a fixed
one-minute window shared by all processes); once an address has had
`GATEWAY_UNAUTH_PER_IP_PER_MINUTE` of them, its requests are refused with 429 until the minute
ends, before any lookup, unless they present a key this process already knows (so a valid
client behind the same address keeps working).

Honest traffic pays nothing: the shared counter is read only for addresses this process has
itself answered 401 within the last minute (a bounded in-process LRU of suspects). With W
processes an address gets at most limit + W attempts a minute."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict

from django.conf import settings

from tenants.selectors import api_key_policy_cached
from tenants.state import state_store

logger = logging.getLogger("gateway.tenants")

WINDOW_MS = 60_000
_MAX_SUSPECTS = 10_000
# client address -> monotonic time of its last 401 seen by this process
_suspects: OrderedDict[str, float] = OrderedDict()


def unauth_limit() -> int:
    return settings.GATEWAY_UNAUTH_PER_IP_PER_MINUTE


async def unauth_refusal(*, client: str, raw_key: str | None) -> int | None:
    """Milliseconds to wait when requests from `client` are refused now, else None."""
    limit = unauth_limit()
    if limit <= 0 or not client:
        return None
    seen = _suspects.get(client)
    if seen is None or time.monotonic() - seen >= WINDOW_MS / 1000:
        return None
    if raw_key is not None and api_key_policy_cached(raw_key=raw_key) is not None:
        return None
    try:
        count, left_ms = await state_store().unauth_count(client=client, window_ms=WINDOW_MS)
    except Exception:  # noqa: BLE001 - the limit is a defence, not a dependency
        logger.warning("unauth.count_failed", exc_info=True)
        return None
    return left_ms if count >= limit else None


async def unauth_failure_note(*, client: str) -> None:
    """Count one 401 answered to `client`."""
    if unauth_limit() <= 0 or not client:
        return
    _suspects[client] = time.monotonic()
    _suspects.move_to_end(client)
    while len(_suspects) > _MAX_SUSPECTS:
        _suspects.popitem(last=False)
    try:
        count, _ = await state_store().unauth_hit(client=client, window_ms=WINDOW_MS)
    except Exception:  # noqa: BLE001
        logger.warning("unauth.count_failed", exc_info=True)
        return
    if count == unauth_limit():
        logger.warning("unauth.address_limited", extra={"client": client, "count": count})


def unauth_suspects_clear() -> None:
    _suspects.clear()
