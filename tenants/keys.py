"""Key material: generation, hashing, parsing. Raw keys never leave this module except once,
to the operator who created them."""

from __future__ import annotations

import hashlib
import secrets

from django.conf import settings

DISPLAY_PREFIX_LENGTH = 12


def api_key_generate() -> str:
    return f"{settings.GATEWAY_KEY_PREFIX}{secrets.token_urlsafe(32)}"


OPERATOR_TOKEN_PREFIX = "gwop_"


def operator_token_generate() -> str:
    return f"{OPERATOR_TOKEN_PREFIX}{secrets.token_urlsafe(32)}"


def api_key_public_id_new() -> str:
    """A stable, non-secret id of a key record: it survives rotation (the raw key and its hash
    change, the record and its usage history do not) and is safe to show and log."""
    return f"key_{secrets.token_hex(10)}"


def api_key_hash(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode()).hexdigest()


def api_key_display_prefix(raw_key: str) -> str:
    return raw_key[:DISPLAY_PREFIX_LENGTH]


def api_key_from_headers(authorization: str | None, x_api_key: str | None) -> str | None:
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    if x_api_key and x_api_key.strip():
        return x_api_key.strip()
    return None
