"""Provider secrets: sealed at rest with Fernet, or read from an allowed environment variable.

Only `secret_seal` and `secret_open` ever see the plain text of a sealed secret.

Environment variables: a provider's `secret_env` is operator input that the server later reads
and sends upstream as a credential, so it could exfiltrate any variable of the process
(`DATABASE_URL`, `SECRET_KEY`...). Only names starting with one of
GATEWAY_PROVIDER_SECRET_ENV_PREFIXES (default `GATEWAY_PROVIDER_`) or listed in
GATEWAY_PROVIDER_SECRET_ENV_ALLOWED are accepted; the gateway's own secrets are refused
whatever those settings say. Checked when written (service, catalog loader, admin form) and
when read.

A secret that cannot be used (a name no longer allowed, an unset variable, a sealed value
that no configured key opens) raises ProviderSecretError: the provider then answers with a
typed error and the request is never sent with an empty credential.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import os
import re

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ValidationError

_ENV_NAME = re.compile(r"^[A-Z][A-Z0-9_]{0,127}$")

# The gateway's own secrets: never a provider credential, whatever the allow-list says.
FORBIDDEN_SECRET_ENV = frozenset(
    {
        "SECRET_KEY",
        "DATABASE_URL",
        "REDIS_URL",
        "CELERY_BROKER_URL",
        "CELERY_RESULT_BACKEND",
        "GATEWAY_ENCRYPTION_KEYS",
        "GATEWAY_ENCRYPTION_KEY",
        "GATEWAY_METRICS_TOKEN",
        "GATEWAY_WEBHOOK_PROXY",
        "GATEWAY_CACHE_REDIS_URL",
        "GATEWAY_OPS_ALERT_WEBHOOK_URL",
        "GATEWAY_OPS_ALERT_SLACK_WEBHOOK_URL",
        "OTEL_EXPORTER_OTLP_HEADERS",
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
        "EMAIL_HOST_PASSWORD",
    }
)


class ProviderSecretError(Exception):
    """A provider's credential cannot be used. The message is for logs (never a secret)."""


class EncryptionKeyError(Exception):
    """No configured key opens a sealed secret (or no key is configured)."""


def _derived_key(material: str) -> bytes:
    """The pre-GATEWAY_ENCRYPTION_KEYS scheme: a Fernet key from SHA-256 of a passphrase."""
    return base64.urlsafe_b64encode(hashlib.sha256(material.encode()).digest())


def fernet_keys(*, legacy_secret_key: bool = False) -> list[bytes]:
    """The keys in order: GATEWAY_ENCRYPTION_KEYS (the first seals, all open), then the key
    derived from the legacy GATEWAY_ENCRYPTION_KEY passphrase (opens only). With DEBUG on and
    neither set, a development key derived from SECRET_KEY (what earlier versions used; not
    for production: a database dump plus SECRET_KEY opens every secret).
    `legacy_secret_key` adds that SECRET_KEY-derived key in production too (reseal_secrets
    --legacy-secret-key, to migrate secrets sealed by earlier versions)."""
    keys = [k.encode() for k in settings.GATEWAY_ENCRYPTION_KEYS]
    if settings.GATEWAY_ENCRYPTION_KEY:
        keys.append(_derived_key(settings.GATEWAY_ENCRYPTION_KEY))
    if legacy_secret_key or (not keys and settings.DEBUG):
        keys.append(_derived_key(settings.SECRET_KEY))
    if not keys:
        raise EncryptionKeyError("GATEWAY_ENCRYPTION_KEYS is not set")
    return keys


def secret_env_allowed(name: str) -> bool:
    if not _ENV_NAME.match(name) or name in FORBIDDEN_SECRET_ENV:
        return False
    if name in settings.GATEWAY_PROVIDER_SECRET_ENV_ALLOWED:
        return True
    return any(name.startswith(p) for p in settings.GATEWAY_PROVIDER_SECRET_ENV_PREFIXES)


def secret_env_validate(name: str) -> None:
    """Write-time check of a `secret_env` value ('' means none)."""
    if name and not secret_env_allowed(name):
        prefixes = ", ".join(settings.GATEWAY_PROVIDER_SECRET_ENV_PREFIXES) or "(none)"
        raise ValidationError(
            {
                "secret_env": f"{name!r} is not an allowed variable name: use a name starting "
                f"with {prefixes} (e.g. GATEWAY_PROVIDER_OPENAI_API_KEY), or list it in "
                "GATEWAY_PROVIDER_SECRET_ENV_ALLOWED"
            },
            code="secret_env_not_allowed",
        )


@functools.cache
def _fernet(legacy_secret_key: bool = False) -> MultiFernet:
    return MultiFernet([Fernet(key) for key in fernet_keys(legacy_secret_key=legacy_secret_key)])


def secret_seal(plain: str) -> str:
    """Encrypt with the first key of GATEWAY_ENCRYPTION_KEYS."""
    return _fernet().encrypt(plain.encode()).decode() if plain else ""


def secret_open(sealed: str) -> str:
    """Decrypt with any configured key. Raises EncryptionKeyError when none opens it (a
    rotated-away key, a database from another installation): never returns ''."""
    if not sealed:
        return ""
    try:
        return _fernet().decrypt(sealed.encode()).decode()
    except InvalidToken as exc:
        raise EncryptionKeyError(
            "a sealed provider secret does not open with any key of GATEWAY_ENCRYPTION_KEYS"
        ) from exc


def secret_reseal(sealed: str, *, legacy_secret_key: bool = False) -> str:
    """The same secret sealed with the first key (rotation); raises EncryptionKeyError."""
    if not sealed:
        return ""
    try:
        return _fernet(legacy_secret_key).rotate(sealed.encode()).decode()
    except InvalidToken as exc:
        raise EncryptionKeyError("a sealed provider secret does not open with any key") from exc


def fernet_cache_clear() -> None:
    """Forget the keys (tests that change GATEWAY_ENCRYPTION_KEYS)."""
    _fernet.cache_clear()


def provider_secret_resolve(*, secret_env: str, secret_encrypted: str) -> str:
    """The secret to send upstream: the sealed one if set, else the named env variable; ''
    when neither is configured. Raises ProviderSecretError when one is configured but cannot
    be used."""
    if secret_encrypted:
        try:
            return secret_open(secret_encrypted)
        except EncryptionKeyError as exc:
            raise ProviderSecretError(str(exc)) from exc
    if secret_env:
        if not secret_env_allowed(secret_env):
            raise ProviderSecretError(f"secret_env {secret_env!r} is not an allowed name")
        value = os.environ.get(secret_env, "")
        if not value:
            raise ProviderSecretError(f"environment variable {secret_env} is unset or empty")
        return value
    return ""
