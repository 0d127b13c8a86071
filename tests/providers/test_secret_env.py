"""A provider's `secret_env` cannot exfiltrate the server's environment: only allowed names
are accepted (service, catalog loader, admin form) and read (at use time); a provider whose
credential cannot be loaded is never called with an empty one."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.test import AsyncClient

from providers.adapters.base import adapter_for
from providers.catalog import provider_config_from
from providers.models import Provider, ProviderKind
from providers.secrets import ProviderSecretError, provider_secret_resolve
from providers.services import provider_create, provider_update
from providers.types import ChatRequest, ProviderCredentialsUnavailable
from routing.catalog_file import CatalogFileError, catalog_file_load, catalog_file_parse
from tests.factories import TenantFactory, api_key_create_for_test
from tests.fake_upstream.fixtures import fake_upstream  # noqa: F401
from tests.routing.support import caches_clear, fake_provider, model_on, route

pytestmark = pytest.mark.django_db

FORBIDDEN = [
    "DATABASE_URL",
    "SECRET_KEY",
    "REDIS_URL",
    "GATEWAY_ENCRYPTION_KEYS",
    "PATH",
    "HOME",
    "OPENAI_API_KEY",  # not allowed unless listed explicitly
    "gateway_provider_lowercase",
    "GATEWAY_PROVIDER_X;rm",
]


@pytest.mark.parametrize("name", FORBIDDEN)
def test_service_refuses_secret_env_names_outside_the_allow_list(name):
    with pytest.raises(ValidationError) as caught:
        provider_create(name="p", kind=ProviderKind.OPENAI, secret_env=name)
    assert "secret_env" in caught.value.message_dict
    provider = provider_create(name="ok", kind=ProviderKind.OPENAI)
    with pytest.raises(ValidationError):
        provider_update(provider=provider, fields={"secret_env": name})
    assert Provider.objects.get(pk=provider.pk).secret_env == ""


def test_prefixed_names_and_explicitly_allowed_names_are_accepted(settings):
    provider_create(name="a", kind=ProviderKind.OPENAI, secret_env="GATEWAY_PROVIDER_OPENAI_KEY")
    settings.GATEWAY_PROVIDER_SECRET_ENV_ALLOWED = frozenset({"OPENAI_API_KEY", "SECRET_KEY"})
    provider_create(name="b", kind=ProviderKind.OPENAI, secret_env="OPENAI_API_KEY")
    # The gateway's own secrets stay refused even when an operator lists them.
    with pytest.raises(ValidationError):
        provider_create(name="c", kind=ProviderKind.OPENAI, secret_env="SECRET_KEY")


def test_catalog_loader_refuses_a_file_naming_database_url(tmp_path):
    path = tmp_path / "catalog.toml"
    path.write_text('[[providers]]\nname = "evil"\nkind = "openai"\nsecret_env = "DATABASE_URL"\n')
    with pytest.raises(CatalogFileError, match="secret_env"):
        catalog_file_load(data=catalog_file_parse(path))
    assert not Provider.objects.filter(name="evil").exists()


def test_admin_form_refuses_secret_key_as_secret_env(client):
    from tests.providers.test_admin import provider_form

    root = get_user_model().objects.create_superuser("root", "root@example.com", "pw-123456")
    client.force_login(root)
    answer = client.post("/admin/providers/provider/add/", provider_form(secret_env="SECRET_KEY"))
    assert answer.status_code == 200
    assert "not an allowed variable name" in answer.content.decode()
    assert not Provider.objects.filter(name="openai-main").exists()


def test_a_stored_forbidden_name_is_not_read_at_use_time(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgres://user:hunter2@db/prod")
    with pytest.raises(ProviderSecretError):
        provider_secret_resolve(secret_env="DATABASE_URL", secret_encrypted="")
    # A row written around the service (an old row, a direct SQL edit).
    Provider.objects.create(name="old", kind=ProviderKind.OPENAI, secret_env="DATABASE_URL")
    config = provider_config_from(Provider.objects.get(name="old"))
    assert config.secret == "" and "not an allowed name" in config.secret_error


async def test_a_provider_without_a_usable_credential_is_never_called():
    config = provider_config_from(
        Provider(id=99, name="unset", kind=ProviderKind.OPENAI, secret_env="GATEWAY_PROVIDER_X")
    )
    adapter = adapter_for(config)
    with pytest.raises(ProviderCredentialsUnavailable):
        await adapter.chat(ChatRequest(model="m", messages=[{"role": "user", "content": "x"}]))


@pytest.mark.django_db(transaction=True)
async def test_gateway_answers_a_generic_503_and_sends_nothing_upstream(
    fake_upstream,  # noqa: F811
    monkeypatch,
):
    from asgiref.sync import sync_to_async

    monkeypatch.delenv("GATEWAY_PROVIDER_UNSET_KEY", raising=False)

    def build() -> str:
        provider = fake_provider(fake_upstream, ProviderKind.OPENAI, name="needs-env")
        Provider.objects.filter(pk=provider.pk).update(
            secret_encrypted="", secret_env="GATEWAY_PROVIDER_UNSET_KEY"
        )
        route("needs-env-route", [model_on(provider, "needs-env-model")])
        _, raw = api_key_create_for_test(tenant=TenantFactory())
        caches_clear()
        return raw

    raw = await sync_to_async(build)()
    response = await AsyncClient().post(
        "/v1/chat/completions",
        {"model": "needs-env-route", "messages": [{"role": "user", "content": "hi"}]},
        content_type="application/json",
        headers={"Authorization": f"Bearer {raw}"},
    )
    assert response.status_code == 503, response.content
    body = response.json()
    assert body["error"]["code"] == "upstream_credentials_unavailable"
    assert "GATEWAY_PROVIDER_UNSET_KEY" not in body["error"]["message"]
    assert fake_upstream.requests == []


@pytest.mark.parametrize(
    "name",
    [
        "GATEWAY_CACHE_REDIS_URL",  # may carry the Redis password
        "GATEWAY_OPS_ALERT_WEBHOOK_URL",
        "GATEWAY_OPS_ALERT_SLACK_WEBHOOK_URL",  # a Slack webhook URL is a bearer credential
        "CELERY_RESULT_BACKEND",
        "OTEL_EXPORTER_OTLP_HEADERS",  # the OTLP collector's auth headers
    ],
)
def test_every_gateway_secret_stays_refused_under_a_wide_prefix(settings, name):
    """An operator who widens the prefix to GATEWAY_ (or lists the name) still cannot turn
    one of the gateway's own secrets into a provider credential sent upstream."""
    settings.GATEWAY_PROVIDER_SECRET_ENV_PREFIXES = ("GATEWAY_", "OTEL_", "CELERY_")
    settings.GATEWAY_PROVIDER_SECRET_ENV_ALLOWED = frozenset({name})
    assert provider_create(name="wide", kind=ProviderKind.OPENAI, secret_env="GATEWAY_X_KEY")
    with pytest.raises(ValidationError):
        provider_create(name="leak", kind=ProviderKind.OPENAI, secret_env=name)
