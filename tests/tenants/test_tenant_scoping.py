"""A tenant admin sees and manages only their tenant, in the admin and in the management API;
platform staff see everything."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from rest_framework.test import APIClient

from tenants import services
from tenants.models import ApiKey, TenantMembership
from tests.factories import TenantFactory, operator_token_for

pytestmark = pytest.mark.django_db


@pytest.fixture
def world():
    ours, theirs = TenantFactory(slug="ours"), TenantFactory(slug="theirs")
    our_key, _ = services.api_key_create(tenant=ours, name="our-key")
    their_key, _ = services.api_key_create(tenant=theirs, name="their-key", rpm_limit=5)
    user = get_user_model().objects.create_user("alice", password="pw-alice-123", is_staff=True)
    TenantMembership.objects.create(user=user, tenant=ours)
    root = get_user_model().objects.create_superuser("root", password="pw-root-123")
    return {
        "ours": ours,
        "theirs": theirs,
        "our_key": our_key,
        "their_key": their_key,
        "user": user,
        "root": root,
    }


def api_client(user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {operator_token_for(user)}")
    return client


# -- admin ---------------------------------------------------------------------------------
def test_tenant_admin_lists_only_their_keys_in_the_admin(client, world):
    client.force_login(world["user"])
    page = client.get("/admin/tenants/apikey/")
    assert page.status_code == 200
    body = page.content.decode()
    assert world["our_key"].prefix in body
    assert world["their_key"].prefix not in body
    assert "theirs" not in body  # not even as a filter choice


def test_tenant_admin_cannot_open_or_change_another_tenants_key_by_url(client, world):
    client.force_login(world["user"])
    their = world["their_key"]
    url = f"/admin/tenants/apikey/{their.pk}/change/"
    opened = client.get(url)
    assert opened.status_code in (302, 404)
    assert their.prefix not in opened.content.decode()
    changed = client.post(url, {"name": "hijacked", "rpm_limit": "1000"})
    assert changed.status_code in (302, 403, 404)
    their.refresh_from_db()
    assert (their.name, their.rpm_limit) == ("their-key", 5)
    revoke = client.post(
        "/admin/tenants/apikey/",
        {"action": "revoke_selected", "_selected_action": [str(their.pk)]},
    )
    assert revoke.status_code in (200, 302)
    their.refresh_from_db()
    assert their.revoked_at is None


def test_tenant_admin_cannot_rotate_or_issue_keys_of_another_tenant_by_forged_posts(client, world):
    client.force_login(world["user"])
    their = world["their_key"]
    before = their.key_hash
    for action in ("rotate_selected", "rotate_now_selected"):
        client.post(
            "/admin/tenants/apikey/", {"action": action, "_selected_action": [str(their.pk)]}
        )
    their.refresh_from_db()
    assert their.key_hash == before and their.previous_key_hash is None
    forged = client.post(
        "/admin/tenants/apikey/add/",
        {"tenant": world["theirs"].pk, "name": "planted", "budget_period": "monthly"},
    )
    assert forged.status_code == 200  # the form again, with an error
    assert "Select a valid choice" in forged.content.decode()
    assert not ApiKey.objects.filter(name="planted").exists()


def test_tenant_admin_key_form_offers_only_their_tenant(client, world):
    # The tenant field is an autocomplete (10,000 tenants do not fit in a <select>): its
    # choices come from the tenant admin's scoped queryset, and the form refuses the rest.
    client.force_login(world["user"])
    found = client.get(
        "/admin/autocomplete/?app_label=tenants&model_name=apikey&field_name=tenant&term="
    ).json()
    assert [r["id"] for r in found["results"]] == [str(world["ours"].pk)]
    response = client.post(
        "/admin/tenants/apikey/add/",
        {"tenant": world["theirs"].pk, "name": "sneaky", "budget_period": "monthly"},
    )
    assert response.status_code == 200 and "Select a valid choice" in response.content.decode()
    assert not ApiKey.objects.filter(name="sneaky").exists()


def test_creating_a_key_in_the_admin_shows_the_raw_key_once_and_stores_its_hash(client, world):
    client.force_login(world["user"])
    response = client.post(
        "/admin/tenants/apikey/add/",
        {
            "tenant": world["ours"].pk,
            "name": "from-admin",
            "budget_period": "monthly",
            "allowed_models": "[]",
        },
        follow=True,
    )
    assert response.status_code == 200
    messages = [str(m) for m in response.context["messages"]]
    raw = next(m for m in messages if "shown once" in m).rsplit(" ", 1)[-1]
    key = ApiKey.objects.get(name="from-admin")
    assert raw.startswith(key.prefix) and key.key_hash != raw
    from tenants.keys import api_key_hash

    assert key.key_hash == api_key_hash(raw)


def test_superuser_sees_every_tenants_keys(client, world):
    client.force_login(world["root"])
    body = client.get("/admin/tenants/apikey/").content.decode()
    assert world["our_key"].prefix in body and world["their_key"].prefix in body


# -- management API --------------------------------------------------------------------------
def test_tenant_admin_cannot_read_or_change_another_tenants_keys_through_the_api(world):
    client = api_client(world["user"])
    listed = client.get("/api/manage/keys/").json()
    assert [k["prefix"] for k in listed["results"]] == [world["our_key"].prefix]
    their = world["their_key"]
    assert client.get(f"/api/manage/keys/{their.pk}/").status_code == 404
    assert (
        client.patch(
            f"/api/manage/keys/{their.pk}/limits/", {"rpm_limit": 999}, format="json"
        ).status_code
        == 404
    )
    assert client.post(f"/api/manage/keys/{their.pk}/revoke/").status_code == 404
    assert client.post(f"/api/manage/keys/{their.pk}/rotate/").status_code == 404
    issued = client.post("/api/manage/keys/", {"tenant": "theirs"}, format="json")
    assert issued.status_code == 400
    assert client.get("/api/manage/tenants/theirs/").status_code == 404
    their.refresh_from_db()
    assert their.rpm_limit == 5 and their.revoked_at is None
    assert ApiKey.objects.filter(tenant=world["theirs"]).count() == 1


def test_tenant_admin_issues_rotates_limits_and_revokes_their_keys(world):
    client = api_client(world["user"])
    issued = client.post(
        "/api/manage/keys/",
        {
            "tenant": "ours",
            "name": "ci",
            "budget_usd": "12.5",
            "budget_period": "daily",
            "rpm_limit": 60,
        },
        format="json",
    )
    assert issued.status_code == 201
    body = issued.json()
    key_id, raw = body["key"]["id"], body["raw_key"]
    assert raw.startswith(body["key"]["prefix"])
    limits = client.patch(f"/api/manage/keys/{key_id}/limits/", {"tpm_limit": 1000}, format="json")
    assert limits.json()["tpm_limit"] == 1000 and limits.json()["rpm_limit"] == 60
    budget = client.get(f"/api/manage/keys/{key_id}/budget/").json()
    assert Decimal(budget["budget_usd"]) == Decimal("12.5") and budget["period"].startswith("d")
    rotated = client.post(f"/api/manage/keys/{key_id}/rotate/", {"grace_seconds": 60}).json()
    assert rotated["raw_key"] != raw
    assert rotated["key"]["id"] == key_id  # the same key record, a new secret
    assert rotated["key"]["public_id"] == body["key"]["public_id"]
    assert rotated["key"]["previous_valid_until"] is not None
    refused = client.post(f"/api/manage/keys/{key_id}/rotate/", {"grace_seconds": -1})
    assert refused.status_code == 400
    revoked = client.post(f"/api/manage/keys/{rotated['key']['id']}/revoke/").json()
    assert revoked["revoked"] is True


def test_only_platform_staff_change_a_tenants_caps(world):
    member = api_client(world["user"])
    assert (
        member.patch(
            "/api/manage/tenants/ours/limits/", {"rpm_limit": 1}, format="json"
        ).status_code
        == 403
    )
    assert member.patch(
        "/api/manage/tenants/ours/alerts/", {"alert_thresholds": [90]}, format="json"
    ).json()["alert_thresholds"] == [90]
    root = api_client(world["root"])
    changed = root.patch("/api/manage/tenants/theirs/limits/", {"rpm_limit": 1}, format="json")
    assert changed.json()["rpm_limit"] == 1
    created = root.post(
        "/api/manage/tenants/", {"slug": "new-co", "timezone": "Europe/Paris"}, format="json"
    )
    assert created.status_code == 201


def test_management_api_requires_an_operator_token(world):
    assert APIClient().get("/api/manage/keys/").status_code == 401
    # A token whose user no longer administers any tenant opens nothing.
    former = get_user_model().objects.create_user("bob", password="pw-bob-1234", is_staff=True)
    membership = TenantMembership.objects.create(user=former, tenant=world["ours"])
    client = api_client(former)
    membership.delete()
    assert client.get("/api/manage/keys/").status_code == 403


def test_management_api_is_described_by_an_openapi_schema(world):
    schema = api_client(world["root"]).get("/api/manage/schema/", HTTP_ACCEPT="application/json")
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    assert "/api/manage/keys/{id}/rotate/" in paths
    assert "/api/manage/tenants/{slug}/limits/" in paths


def test_a_limit_beyond_any_integer_is_capped_not_a_server_error(world):
    client = api_client(world["root"])
    answer = client.get("/api/manage/tenants/", {"limit": 10**40, "offset": -5})
    assert answer.status_code == 200
    assert {t["slug"] for t in answer.json()["results"]} == {"ours", "theirs"}
    keys = client.get("/api/manage/keys/", {"limit": 10**30, "offset": 1})
    assert keys.status_code == 200 and len(keys.json()["results"]) == 1
