"""Provider secrets at rest: Fernet-encrypted with a key derived from GATEWAY_ENCRYPTION_KEY
(or SECRET_KEY). Only `secret_seal` and `secret_open` ever see the plain text."""

from __future__ import annotations

import base64
import functools
import hashlib
import os

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings


@functools.cache
def _fernet() -> Fernet:
    material = settings.GATEWAY_ENCRYPTION_KEY or settings.SECRET_KEY
    key = base64.urlsafe_b64encode(hashlib.sha256(material.encode()).digest())
    return Fernet(key)


def secret_seal(plain: str) -> str:
    return _fernet().encrypt(plain.encode()).decode() if plain else ""


def secret_open(sealed: str) -> str:
    if not sealed:
        return ""
    try:
        return _fernet().decrypt(sealed.encode()).decode()
    except InvalidToken:
        return ""


def provider_secret_resolve(*, secret_env: str, secret_encrypted: str) -> str:
    """The secret to send upstream: the sealed one if set, else the named env variable."""
    if secret_encrypted:
        return secret_open(secret_encrypted)
    if secret_env:
        return os.environ.get(secret_env, "")
    return ""
