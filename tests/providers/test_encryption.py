"""Provider secrets are sealed with GATEWAY_ENCRYPTION_KEYS (MultiFernet: the first seals,
all open); `reseal_secrets` moves them to the first key; a secret no key opens raises and is
never sent as an empty credential."""

from __future__ import annotations

import pytest
from cryptography.fernet import Fernet
from django.core.management import CommandError, call_command

from providers.adapters.base import adapter_for
from providers.catalog import provider_config_from
from providers.models import Provider, ProviderKind
from providers.secrets import (
    EncryptionKeyError,
    fernet_cache_clear,
    secret_open,
    secret_seal,
)
from providers.services import provider_create
from providers.types import ChatRequest, ProviderCredentialsUnavailable

pytestmark = pytest.mark.django_db

OLD = Fernet.generate_key().decode()
NEW = Fernet.generate_key().decode()


@pytest.fixture
def keys(settings):
    """Set GATEWAY_ENCRYPTION_KEYS for a test; the cached MultiFernet follows."""

    def use(*values: str) -> None:
        settings.GATEWAY_ENCRYPTION_KEYS = list(values)
        settings.GATEWAY_ENCRYPTION_KEY = ""
        fernet_cache_clear()

    yield use
    fernet_cache_clear()


def test_the_first_key_seals_and_every_key_opens(keys):
    keys(OLD)
    sealed_old = secret_seal("sk-old")
    keys(NEW, OLD)
    sealed_new = secret_seal("sk-new")
    assert secret_open(sealed_old) == "sk-old" and secret_open(sealed_new) == "sk-new"
    assert Fernet(NEW.encode()).decrypt(sealed_new.encode()) == b"sk-new"


def test_a_secret_no_key_opens_raises_instead_of_returning_empty(keys):
    keys(OLD)
    sealed = secret_seal("sk-live")
    keys(NEW)
    with pytest.raises(EncryptionKeyError):
        secret_open(sealed)


async def test_a_provider_whose_secret_no_key_opens_is_never_called(keys):
    keys(OLD)
    sealed = secret_seal("sk-live")
    keys(NEW)
    config = provider_config_from(
        Provider(id=7, name="rotated", kind=ProviderKind.OPENAI, secret_encrypted=sealed)
    )
    assert config.secret == "" and "GATEWAY_ENCRYPTION_KEYS" in config.secret_error
    with pytest.raises(ProviderCredentialsUnavailable) as caught:
        await adapter_for(config).chat(
            ChatRequest(model="m", messages=[{"role": "user", "content": "x"}])
        )
    assert caught.value.status == 503 and "rotated" not in caught.value.message


def test_reseal_secrets_moves_every_secret_to_the_first_key(keys):
    keys(OLD)
    provider_create(name="a", kind=ProviderKind.OPENAI, secret="sk-a")
    provider_create(name="b", kind=ProviderKind.ANTHROPIC, secret="sk-b")
    provider_create(name="none", kind=ProviderKind.MOCK)
    keys(NEW, OLD)
    call_command("reseal_secrets")
    keys(NEW)  # the old key is dropped: everything still opens
    assert {p.name: secret_open(p.secret_encrypted) for p in Provider.objects.all()} == {
        "a": "sk-a",
        "b": "sk-b",
        "none": "",
    }


def test_reseal_secrets_reports_secrets_no_key_opens_and_leaves_them(keys):
    keys(OLD)
    provider_create(name="lost", kind=ProviderKind.OPENAI, secret="sk-lost")
    before = Provider.objects.get(name="lost").secret_encrypted
    keys(NEW)
    with pytest.raises(CommandError, match="lost"):
        call_command("reseal_secrets")
    assert Provider.objects.get(name="lost").secret_encrypted == before


def test_reseal_secrets_migrates_secrets_sealed_with_the_secret_key_derived_key(keys, settings):
    import base64
    import hashlib

    legacy = base64.urlsafe_b64encode(hashlib.sha256(settings.SECRET_KEY.encode()).digest())
    Provider.objects.create(
        name="legacy",
        kind=ProviderKind.OPENAI,
        secret_encrypted=Fernet(legacy).encrypt(b"sk-legacy").decode(),
    )
    keys(NEW)
    with pytest.raises(CommandError):
        call_command("reseal_secrets")
    call_command("reseal_secrets", "--legacy-secret-key")
    assert secret_open(Provider.objects.get(name="legacy").secret_encrypted) == "sk-legacy"
