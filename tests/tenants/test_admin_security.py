"""Admin: a new key's raw value never travels in a cookie, and deletes reach every process
within a second (the shared config version moves on commit)."""

from __future__ import annotations

import pytest
from asgiref.sync import async_to_sync
from django.contrib.auth import get_user_model

from tenants import services
from tenants.keys import api_key_hash
from tenants.models import ApiKey, AuditEvent
from tenants.state import state_store
from tests.factories import TenantFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def root_client(client):
    client.force_login(get_user_model().objects.create_superuser("root", password="pw-root-12345"))
    return client


def test_a_new_keys_raw_value_is_shown_once_but_never_put_in_a_cookie(root_client):
    tenant = TenantFactory()
    created = root_client.post(
        "/admin/tenants/apikey/add/",
        {"tenant": tenant.pk, "name": "k", "budget_period": "monthly", "allowed_models": "[]"},
    )
    assert created.status_code == 302
    key = ApiKey.objects.get(name="k")
    for morsel in created.cookies.values():
        assert key.prefix not in morsel.value  # no messages cookie carrying the raw key
    assert "messages" not in created.cookies
    page = root_client.get(created["Location"])
    shown = [str(m) for m in page.context["messages"] if "shown once" in str(m)]
    raw = shown[0].rsplit(" ", 1)[-1]
    assert api_key_hash(raw) == key.key_hash
    again = root_client.get(created["Location"])
    assert not [m for m in again.context["messages"] if "shown once" in str(m)]


def _version() -> str:
    return async_to_sync(state_store().config_version_get)()


def test_deleting_a_key_in_the_admin_moves_the_config_version(
    root_client, django_capture_on_commit_callbacks
):
    key, _ = services.api_key_create(tenant=TenantFactory())
    before = _version()
    with django_capture_on_commit_callbacks(execute=True):
        answer = root_client.post(f"/admin/tenants/apikey/{key.pk}/delete/", {"post": "yes"})
    assert answer.status_code == 302
    assert not ApiKey.objects.filter(pk=key.pk).exists()
    assert _version() != before
    assert AuditEvent.objects.filter(action="api_key.delete", target=key.prefix).exists()


def test_bulk_deleting_keys_and_tenants_moves_the_config_version(
    root_client, django_capture_on_commit_callbacks
):
    tenant = TenantFactory()
    keys = [services.api_key_create(tenant=tenant)[0] for _ in range(2)]
    before = _version()
    with django_capture_on_commit_callbacks(execute=True):
        root_client.post(
            "/admin/tenants/apikey/",
            {"action": "delete_selected", "_selected_action": [k.pk for k in keys], "post": "yes"},
        )
    assert not ApiKey.objects.filter(pk__in=[k.pk for k in keys]).exists()
    middle = _version()
    assert middle != before
    with django_capture_on_commit_callbacks(execute=True):
        root_client.post(
            "/admin/tenants/tenant/",
            {"action": "delete_selected", "_selected_action": [tenant.pk], "post": "yes"},
        )
    assert _version() != middle
