"""Provider and model admin: the secret is write-only, saves go through the services."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model

from providers.models import Model, ModelPrice, Provider
from providers.secrets import secret_open
from providers.services import model_create, provider_create

pytestmark = pytest.mark.django_db

SECRET = "sk-admin-test-SECRET-abcdef"


@pytest.fixture
def admin_client(client):
    user = get_user_model().objects.create_superuser("root", "root@example.com", "pw-123456")
    client.force_login(user)
    return client


def provider_form(**overrides) -> dict:
    data = {
        "name": "openai-main",
        "kind": "openai",
        "base_url": "",
        "secret": "",
        "secret_env": "",
        "options": "{}",
        "connect_timeout_s": "5",
        "first_byte_timeout_s": "60",
        "stream_idle_timeout_s": "60",
        "total_timeout_s": "600",
        "max_retries": "1",
        "is_active": "on",
        "models-TOTAL_FORMS": "0",
        "models-INITIAL_FORMS": "0",
        "models-MIN_NUM_FORMS": "0",
        "models-MAX_NUM_FORMS": "1000",
    }
    data.update(overrides)
    return data


def test_adding_a_provider_seals_the_secret_and_never_shows_it(admin_client):
    response = admin_client.post("/admin/providers/provider/add/", provider_form(secret=SECRET))
    assert response.status_code == 302, response.content.decode()[:2000]

    provider = Provider.objects.get(name="openai-main")
    assert secret_open(provider.secret_encrypted) == SECRET
    for url in (f"/admin/providers/provider/{provider.pk}/change/", "/admin/providers/provider/"):
        page = admin_client.get(url).content.decode()
        assert SECRET not in page
        assert provider.secret_encrypted not in page
        assert "set (encrypted)" in page


def test_an_empty_secret_field_keeps_the_stored_secret(admin_client):
    provider = provider_create(name="openai-main", kind="openai", secret=SECRET)
    response = admin_client.post(
        f"/admin/providers/provider/{provider.pk}/change/", provider_form(first_byte_timeout_s="30")
    )
    assert response.status_code == 302

    provider.refresh_from_db()
    assert provider.first_byte_timeout_s == 30
    assert secret_open(provider.secret_encrypted) == SECRET


def test_service_validation_errors_show_on_the_form(admin_client):
    response = admin_client.post(
        "/admin/providers/provider/add/", provider_form(kind="azure_openai", base_url="")
    )

    assert response.status_code == 200
    assert "required for Azure OpenAI providers" in response.content.decode()
    assert not Provider.objects.exists()


def test_provider_list_filters_and_searches(admin_client):
    provider_create(name="alpha", kind="openai")
    provider_create(name="beta", kind="anthropic")

    page = admin_client.get("/admin/providers/provider/?kind__exact=anthropic").content.decode()
    assert "beta" in page and "alpha" not in page
    page = admin_client.get("/admin/providers/provider/?q=alp").content.decode()
    assert "alpha" in page and "beta" not in page


def test_changing_a_model_price_in_admin_records_history(admin_client):
    provider = provider_create(name="p", kind="mock")
    model = model_create(
        name="m",
        provider=provider,
        upstream_model="up",
        input_price_per_mtok="1",
        output_price_per_mtok="2",
    )
    data = {
        "name": "m",
        "provider": str(provider.pk),
        "upstream_model": "up",
        "is_active": "on",
        "input_price_per_mtok": "4",
        "output_price_per_mtok": "2",
        "context_window": "8192",
        "max_output_tokens": "4096",
        "supports_streaming": "on",
        "prices-TOTAL_FORMS": "0",
        "prices-INITIAL_FORMS": "0",
        "prices-MIN_NUM_FORMS": "0",
        "prices-MAX_NUM_FORMS": "1000",
    }
    response = admin_client.post(f"/admin/providers/model/{model.pk}/change/", data)
    assert response.status_code == 302, response.content.decode()[:3000]

    assert Model.objects.get(pk=model.pk).input_price_per_mtok == Decimal("4")
    assert ModelPrice.objects.filter(model=model).count() == 2
    assert admin_client.get("/admin/providers/model/?q=up").status_code == 200
