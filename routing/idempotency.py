"""`Idempotency-Key`: a client's retry of a request it is unsure about, without a second charge.

Scoped to the API key: the record's name is the key's id plus a hash of the client's key, so
two tenants (or two keys) never see each other's records. Semantics (docs/usage.md):

- first request with a key+Idempotency-Key: runs normally; the record is "pending" for as long
  as the call may live (its hold TTL);
- a retry while the first is still running: 409 `idempotency_key_in_use` (Retry-After: 1),
  nothing charged;
- a retry after a successful JSON answer, within GATEWAY_IDEMPOTENCY_TTL_SECONDS: the first
  answer again (status, body, gateway headers, `idempotent-replayed: true`), charged nothing;
  its usage event has outcome `replayed` and cost 0;
- a retry after a successful stream (streams are not stored) or with a different body: 409
  `idempotency_key_reused`, nothing charged;
- a first request that failed or was cancelled releases the record: the retry runs (and is
  charged) like a new request.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

import orjson
from django.conf import settings
from redis.exceptions import RedisError

from routing.errors import GatewayError
from tenants.state import state_store

logger = logging.getLogger("gateway.routing.idempotency")

IDEMPOTENCY_KEY_MAX = 255


@dataclass(slots=True)
class IdempotencyClaim:
    name: str
    fingerprint: str
    request_id: str


class IdempotentReplay(GatewayError):
    """Not an error: the stored answer of the first request with this Idempotency-Key."""

    def __init__(
        self, *, status: int, body: bytes, content_type: str, headers: dict, first_request_id: str
    ) -> None:
        super().__init__(status=status, message="replayed", code="idempotent_replay")
        self.body_bytes = body
        self.content_type = content_type
        self.replay_headers = dict(headers)
        self.first_request_id = first_request_id


def _conflict(code: str, message: str, **headers: str) -> GatewayError:
    return GatewayError(status=409, message=message, code=code, headers=headers)


async def idempotency_claim(
    *, raw: str, key_id: int, endpoint: str, body: bytes, request_id: str, pending_s: float
) -> IdempotencyClaim:
    """Claim the record of (key, Idempotency-Key) for this request, or raise: 400 for a bad
    header, 409 for a duplicate in flight or a reused key, IdempotentReplay for an answered
    one, 503 when the state store is away."""
    if not 0 < len(raw) <= IDEMPOTENCY_KEY_MAX or not raw.isprintable():
        raise GatewayError(
            status=400,
            message=f"Idempotency-Key must be 1-{IDEMPOTENCY_KEY_MAX} printable characters",
            code="invalid_idempotency_key",
            param="Idempotency-Key",
        )
    store = state_store()
    token = hashlib.sha256(raw.encode()).hexdigest()
    fingerprint = hashlib.sha256(endpoint.encode() + b"\0" + body).hexdigest()
    name = store.idempotency_name(key_id=key_id, token=token)
    pending = orjson.dumps({"state": "pending", "fp": fingerprint, "request_id": request_id})
    try:
        existing = await store.idempotency_claim(
            name=name, value=pending, ttl_ms=int(pending_s * 1000)
        )
    except (RedisError, OSError) as exc:
        logger.error("idempotency.claim_failed", extra={"error_class": type(exc).__name__})
        raise GatewayError(
            status=503,
            message="The gateway cannot check the Idempotency-Key right now; retry shortly.",
            error_type="server_error",
            code="state_store_unavailable",
            headers={"Retry-After": "1"},
        ) from exc
    if existing is None:
        return IdempotencyClaim(name=name, fingerprint=fingerprint, request_id=request_id)
    try:
        record = orjson.loads(existing)
    except orjson.JSONDecodeError:
        record = {}
    if record.get("fp") != fingerprint:
        raise _conflict(
            "idempotency_key_reused",
            "This Idempotency-Key was already used with a different request.",
        )
    if record.get("state") == "pending":
        raise _conflict(
            "idempotency_key_in_use",
            "A request with this Idempotency-Key is still in progress.",
            **{"Retry-After": "1"},
        )
    if record.get("body") is None:
        raise _conflict(
            "idempotency_key_reused",
            "A request with this Idempotency-Key was already answered (streamed answers are "
            "not replayed).",
        )
    raise IdempotentReplay(
        status=int(record.get("status", 200)),
        body=record["body"].encode(),
        content_type=record.get("content_type", "application/json"),
        headers=record.get("headers") or {},
        first_request_id=str(record.get("request_id", "")),
    )


async def idempotency_complete(
    claim: IdempotencyClaim,
    *,
    status: int = 200,
    body: bytes | None = None,
    content_type: str = "application/json",
    headers: dict[str, str] | None = None,
) -> None:
    """The first request succeeded: keep its answer for replays (None: answered, but not
    replayable, e.g. a stream or an answer over GATEWAY_IDEMPOTENCY_MAX_BODY_BYTES)."""
    if body is not None and len(body) > settings.GATEWAY_IDEMPOTENCY_MAX_BODY_BYTES:
        body = None
    record = {
        "state": "done",
        "fp": claim.fingerprint,
        "request_id": claim.request_id,
        "status": status,
        "content_type": content_type,
        "headers": headers or {},
        "body": body.decode() if body is not None else None,
    }
    try:
        await state_store().idempotency_store(
            name=claim.name,
            value=orjson.dumps(record),
            ttl_ms=int(settings.GATEWAY_IDEMPOTENCY_TTL_SECONDS * 1000),
        )
    except (RedisError, OSError, UnicodeDecodeError) as exc:
        logger.error("idempotency.store_failed", extra={"error_class": type(exc).__name__})


async def idempotency_release(claim: IdempotencyClaim) -> None:
    """The first request failed or was refused: a retry runs again."""
    try:
        await state_store().idempotency_release(name=claim.name)
    except (RedisError, OSError) as exc:
        logger.error("idempotency.release_failed", extra={"error_class": type(exc).__name__})
