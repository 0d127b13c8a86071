"""Catalog writes go through providers.services: validation, sealed secrets, price history,
and a catalog invalidation after commit."""

from __future__ import annotations

import logging
from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError

from providers.catalog import _change_listeners, catalog_change_listener_add, catalog_load
from providers.models import Model, ModelPrice, Provider
from providers.secrets import secret_open
from providers.services import (
    model_create,
    model_update,
    model_upsert,
    provider_create,
    provider_deactivate,
    provider_update,
)

pytestmark = pytest.mark.django_db

SECRET = "sk-service-test-SECRET-123456"


@pytest.fixture
def catalog_changes():
    calls: list[int] = []

    def listener() -> None:
        calls.append(1)

    catalog_change_listener_add(listener)
    yield calls
    _change_listeners.remove(listener)


def test_provider_create_seals_the_secret_and_invalidates_the_catalog(
    catalog_changes, django_capture_on_commit_callbacks, caplog
):
    caplog.set_level(logging.DEBUG)
    with django_capture_on_commit_callbacks(execute=True):
        provider = provider_create(name="openai-main", kind="openai", secret=SECRET)

    stored = Provider.objects.get(pk=provider.pk)
    assert SECRET not in stored.secret_encrypted
    assert secret_open(stored.secret_encrypted) == SECRET
    assert catalog_load().providers[provider.pk].secret == SECRET
    assert catalog_changes == [1]
    assert all(SECRET not in str(vars(r)) for r in caplog.records)


def test_provider_update_replaces_keeps_or_clears_the_secret():
    provider = provider_create(name="p", kind="anthropic", secret=SECRET)
    sealed = provider.secret_encrypted

    provider_update(provider=provider, fields={"first_byte_timeout_s": 30.0})
    assert Provider.objects.get(pk=provider.pk).secret_encrypted == sealed

    provider_update(provider=provider, secret="sk-new-secret-value")
    assert (
        secret_open(Provider.objects.get(pk=provider.pk).secret_encrypted) == "sk-new-secret-value"
    )

    provider_update(provider=provider, clear_secret=True)
    assert Provider.objects.get(pk=provider.pk).secret_encrypted == ""


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"kind": "openai_compatible", "base_url": ""}, "base_url"),
        ({"kind": "azure_openai", "base_url": ""}, "base_url"),
        ({"kind": "openai", "total_timeout_s": 0}, "total_timeout_s"),
        ({"kind": "openai", "options": {"headers": {"x": 1}}}, "options"),
        ({"kind": "not-a-kind"}, "kind"),
    ],
)
def test_provider_create_rejects_invalid_settings(fields, field):
    with pytest.raises(ValidationError) as caught:
        provider_create(name="bad", **fields)

    assert field in caught.value.error_dict
    assert not Provider.objects.filter(name="bad").exists()


def test_provider_update_rejects_unknown_fields():
    provider = provider_create(name="p", kind="openai")
    with pytest.raises(ValidationError):
        provider_update(provider=provider, fields={"secret_encrypted": "x"})


def test_deactivated_provider_leaves_the_catalog():
    provider = provider_create(name="p", kind="mock")
    model_create(name="m", provider=provider, upstream_model="m")
    provider_deactivate(provider=provider)

    catalog = catalog_load()
    assert provider.pk not in catalog.providers
    assert "m" not in catalog.models


def test_model_price_change_is_recorded_in_the_price_history():
    provider = provider_create(name="p", kind="mock")
    model = model_create(
        name="m",
        provider=provider,
        upstream_model="up",
        input_price_per_mtok="1",
        output_price_per_mtok="2",
    )

    model_update(
        model=model, fields={"input_price_per_mtok": Decimal("3.5"), "context_window": 16000}
    )

    stored = Model.objects.get(pk=model.pk)
    assert stored.input_price_per_mtok == Decimal("3.5")
    assert stored.output_price_per_mtok == Decimal("2")
    assert stored.context_window == 16000
    history = list(ModelPrice.objects.filter(model=model).order_by("effective_from"))
    assert [h.input_price_per_mtok for h in history] == [Decimal("1"), Decimal("3.5")]


def test_model_update_without_a_price_change_leaves_no_history():
    provider = provider_create(name="p", kind="mock")
    model = model_create(name="m", provider=provider, upstream_model="up", input_price_per_mtok="1")

    model_update(
        model=model, fields={"input_price_per_mtok": Decimal("1.000000"), "is_active": False}
    )

    assert not ModelPrice.objects.filter(model=model).exists()
    assert Model.objects.get(pk=model.pk).is_active is False


def test_model_output_limit_cannot_exceed_the_context_window():
    provider = provider_create(name="p", kind="mock")
    with pytest.raises(ValidationError) as caught:
        model_create(
            name="m",
            provider=provider,
            upstream_model="m",
            context_window=1000,
            max_output_tokens=2000,
        )

    assert "max_output_tokens" in caught.value.error_dict


def test_model_upsert_is_idempotent_by_name():
    provider = provider_create(name="p", kind="mock")
    first, created = model_upsert(
        name="m", provider=provider, upstream_model="a", context_window=4096, max_output_tokens=1024
    )
    second, created_again = model_upsert(
        name="m", provider=provider, upstream_model="b", context_window=4096, max_output_tokens=1024
    )

    assert (created, created_again) == (True, False)
    assert first.pk == second.pk
    assert Model.objects.get(pk=first.pk).upstream_model == "b"
    assert Model.objects.filter(name="m").count() == 1


def test_base_url_may_name_a_dotless_host_but_must_be_http():
    provider = provider_create(
        name="vllm", kind="openai_compatible", base_url="http://vllm:8000/v1"
    )
    assert provider.pk

    with pytest.raises(ValidationError) as caught:
        provider_create(name="ftp", kind="openai_compatible", base_url="ftp://x/v1")
    assert "base_url" in caught.value.error_dict
