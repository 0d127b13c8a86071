"""The audit log: every write path records who, when and what changed, with secrets redacted,
and a tenant admin reads only their tenant's entries."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.core.management import call_command
from rest_framework.test import APIClient

from audit.context import audit_actor
from audit.models import AuditEntry
from providers.models import Model, ModelPrice, Provider
from providers.services import provider_create, provider_update
from routing.models import Route, RouteStep
from tenants import services
from tenants.keys import api_key_hash
from tenants.models import ApiKey, Tenant, TenantMembership
from tenants.services import operator_token_create
from tests.factories import TenantFactory

pytestmark = pytest.mark.django_db

PROVIDER_SECRET = "sk-audit-test-SECRET-0123456789"
HEADER_SECRET = "Bearer hdr-SECRET-987654"

CATALOG = """
[[providers]]
name = "mock-a"
kind = "mock"

[[models]]
name = "m-small"
provider = "mock-a"
upstream_model = "small"
input_price_per_mtok = "{price}"
output_price_per_mtok = "2"

[[models]]
name = "m-large"
provider = "mock-a"
upstream_model = "large"
input_price_per_mtok = "3"
output_price_per_mtok = "6"

[[routes]]
name = "chat"
steps = {steps}
"""


def entries_of(obj) -> list[AuditEntry]:
    return list(
        AuditEntry.objects.filter(
            object_type=obj._meta.label_lower, object_id=str(obj.pk)
        ).order_by("created_at", "id")
    )


def all_entries_text() -> str:
    return json.dumps(list(AuditEntry.objects.values()), default=str)


@pytest.fixture
def world():
    ours, theirs = TenantFactory(slug="ours"), TenantFactory(slug="theirs")
    our_key, our_raw = services.api_key_create(tenant=ours, name="our-key")
    their_key, their_raw = services.api_key_create(tenant=theirs, name="their-key")
    alice = get_user_model().objects.create_user("alice", password="pw-alice-123", is_staff=True)
    TenantMembership.objects.create(user=alice, tenant=ours)
    root = get_user_model().objects.create_superuser("root", password="pw-root-123")
    return {
        "ours": ours,
        "theirs": theirs,
        "our_key": our_key,
        "our_raw": our_raw,
        "their_key": their_key,
        "their_raw": their_raw,
        "alice": alice,
        "root": root,
    }


def catalog_file(tmp_path, *, price="1", steps='["m-small", "m-large"]', name="catalog.toml"):
    path = tmp_path / name
    path.write_text(CATALOG.format(price=price, steps=steps))
    return path


# -- admin ---------------------------------------------------------------------------------
def test_admin_provider_changes_are_recorded_with_the_secret_redacted(client, world):
    client.force_login(world["root"])
    form = {
        "name": "openai-main",
        "kind": "openai",
        "base_url": "",
        "secret": PROVIDER_SECRET,
        "secret_env": "",
        "options": json.dumps({"headers": {"Authorization": HEADER_SECRET}}),
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
    assert client.post("/admin/providers/provider/add/", form).status_code == 302
    provider = Provider.objects.get(name="openai-main")
    form.update(secret="sk-rotated-SECRET-xyz", first_byte_timeout_s="30")
    response = client.post(f"/admin/providers/provider/{provider.pk}/change/", form)
    assert response.status_code == 302

    created, updated = entries_of(provider)
    assert (created.action, created.actor, created.tenant_id) == ("create", "admin:root", None)
    assert created.changes["secret_encrypted"] == [None, "[redacted]"]
    assert created.changes["options"][1] == {"headers": {"Authorization": "[redacted]"}}
    assert updated.action == "update" and updated.actor == "admin:root"
    assert updated.changes["first_byte_timeout_s"] == [60.0, 30.0]
    assert updated.changes["secret_encrypted"] == ["[redacted]", "[redacted]"]
    provider.refresh_from_db()
    text = all_entries_text()
    for secret in (PROVIDER_SECRET, "sk-rotated-SECRET-xyz", HEADER_SECRET, "hdr-SECRET"):
        assert secret not in text
    assert provider.secret_encrypted not in text


def test_admin_tenant_change_records_limits_before_and_after(client, world):
    client.force_login(world["root"])
    tenant = world["ours"]
    form = {
        "name": tenant.name,
        "is_active": "on",
        "timezone": "UTC",
        "budget_usd": "25.5",
        "budget_period": "monthly",
        "rpm_limit": "100",
        "tpm_limit": "",
        "max_concurrency": "",
        "alert_thresholds": "[50, 80, 100]",
        "alert_webhook_url": "",
        "alert_email": "",
    }
    response = client.post(f"/admin/tenants/tenant/{tenant.pk}/change/", form)
    assert response.status_code == 302, response.content.decode()[:3000]

    entry = entries_of(tenant)[-1]
    assert entry.action == "update" and entry.actor == "admin:root"
    assert entry.tenant_id == tenant.pk
    assert entry.changes["budget_usd"] == [None, "25.5"]
    assert entry.changes["rpm_limit"] == [None, 100]


def test_admin_route_edit_and_its_steps_are_recorded_under_the_route(client, world):
    client.force_login(world["root"])
    provider = provider_create(name="mock-p", kind="mock")
    model = Model.objects.create(name="m1", provider=provider, upstream_model="m1")
    form = {
        "name": "r1",
        "strategy": "fallback",
        "description": "",
        "max_attempts": "3",
        "is_active": "on",
        "steps-TOTAL_FORMS": "1",
        "steps-INITIAL_FORMS": "0",
        "steps-MIN_NUM_FORMS": "0",
        "steps-MAX_NUM_FORMS": "1000",
        "steps-0-position": "0",
        "steps-0-model": str(model.pk),
        "steps-0-weight": "1",
    }
    response = client.post("/admin/routing/route/add/", form)
    assert response.status_code == 302, response.content.decode()[:3000]
    route = Route.objects.get(name="r1")

    history = client.get(f"/admin/routing/route/{route.pk}/history/").content.decode()
    assert "Audit log" in history and "routing.routestep" in history
    assert entries_of(route)[0].actor == "admin:root"
    step_entry = AuditEntry.objects.get(object_type="routing.routestep")
    assert step_entry.parent == f"routing.route:{route.pk}"
    assert step_entry.changes["model_id"] == [None, model.pk]


# -- DRF -----------------------------------------------------------------------------------
def test_management_api_changes_are_recorded_for_the_token_user(world):
    client = APIClient()
    _, raw_token = operator_token_create(user=world["alice"], scope="write")
    client.credentials(HTTP_AUTHORIZATION=f"Token {raw_token}")
    issued = client.post("/api/manage/keys/", {"tenant": "ours", "name": "ci"}, format="json")
    assert issued.status_code == 201
    key = ApiKey.objects.get(pk=issued.json()["key"]["id"])
    raw = issued.json()["raw_key"]
    patched = client.patch(f"/api/manage/keys/{key.pk}/limits/", {"rpm_limit": 7}, format="json")
    assert patched.status_code == 200

    created, updated = entries_of(key)
    assert created.actor == updated.actor == "api-token:alice"
    assert created.tenant_id == world["ours"].pk
    assert created.changes["key_hash"] == [None, "[redacted]"]
    assert updated.changes == {"rpm_limit": [None, 7]}
    text = all_entries_text()
    assert raw not in text and api_key_hash(raw) not in text


# -- management commands -------------------------------------------------------------------
def test_key_commands_are_recorded_as_the_command(world, capsys):
    call_command("create_api_key", "--tenant", "ours", "--name", "from-cli", "--rpm", "9")
    raw = capsys.readouterr().out.strip().splitlines()[-1]
    key = ApiKey.objects.get(key_hash=api_key_hash(raw))
    call_command("revoke_api_key", raw)

    created, revoked = entries_of(key)
    assert (created.action, created.actor) == ("create", "command:create_api_key")
    assert created.changes["rpm_limit"] == [None, 9]
    assert (revoked.action, revoked.actor) == ("update", "command:revoke_api_key")
    assert revoked.changes["revoked_at"][0] is None and revoked.changes["revoked_at"][1]
    text = all_entries_text()
    assert raw not in text and api_key_hash(raw) not in text


def test_catalog_file_loads_are_recorded_as_the_file_and_a_reload_records_nothing(tmp_path):
    path = catalog_file(tmp_path)
    call_command("load_catalog", str(path))
    actor = f"catalog:{path}"
    provider = Provider.objects.get(name="mock-a")
    small = Model.objects.get(name="m-small")
    route = Route.objects.get(name="chat")
    for obj in (provider, small, route, *RouteStep.objects.filter(route=route)):
        assert [(e.action, e.actor) for e in entries_of(obj)] == [("create", actor)]
    before = AuditEntry.objects.count()

    call_command("load_catalog", str(path))
    assert AuditEntry.objects.count() == before

    changed = catalog_file(tmp_path, price="1.5", steps='["m-large"]', name="v2.toml")
    call_command("load_catalog", str(changed), "--prune")
    actor2 = f"catalog:{changed}"
    price_change = entries_of(small)[-1]
    assert price_change.actor == actor2
    assert price_change.changes["input_price_per_mtok"] == ["1.000000", "1.500000"]
    new_price = ModelPrice.objects.filter(model=small).order_by("-effective_from").first()
    assert entries_of(new_price)[0].parent == f"providers.model:{small.pk}"
    step_actions = sorted(
        AuditEntry.objects.filter(parent=f"routing.route:{route.pk}", actor=actor2).values_list(
            "action", flat=True
        )
    )
    assert step_actions == ["create", "delete", "delete"]


def test_catalog_prune_records_each_deactivation(tmp_path):
    call_command("load_catalog", str(catalog_file(tmp_path)))
    only_provider = tmp_path / "p.toml"
    only_provider.write_text('[[providers]]\nname = "mock-a"\nkind = "mock"\n')
    call_command("load_catalog", str(only_provider), "--prune")

    for obj in (Model.objects.get(name="m-small"), Route.objects.get(name="chat")):
        last = entries_of(obj)[-1]
        assert last.changes == {"is_active": [True, False]}
        assert last.actor == f"catalog:{only_provider}"


# -- services from other contexts ----------------------------------------------------------
@pytest.mark.django_db(transaction=True)
async def test_an_actor_set_in_async_code_reaches_a_service_run_in_a_thread(world):
    key = world["our_key"]
    with audit_actor("worker:rotation"):
        await sync_to_async(services.api_key_revoke)(key=key, actor="worker")
    entry = (await sync_to_async(entries_of)(key))[-1]
    assert entry.actor == "worker:rotation" and "revoked_at" in entry.changes


def test_a_change_with_no_actor_set_is_attributed_to_system_and_no_op_saves_record_nothing():
    provider = provider_create(name="p-sys", kind="mock")
    provider_update(provider=provider, fields={"max_retries": 1})  # unchanged value
    assert [(e.action, e.actor) for e in entries_of(provider)] == [("create", "system")]


def test_deleting_a_tenant_in_the_admin_is_recorded(client, world):
    client.force_login(world["root"])
    tenant = TenantFactory(slug="gone", budget_usd=Decimal("5"))
    response = client.post(f"/admin/tenants/tenant/{tenant.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    entry = AuditEntry.objects.get(object_type="tenants.tenant", action="delete")
    assert entry.actor == "admin:root" and entry.changes["slug"] == ["gone", None]
    assert not Tenant.objects.filter(slug="gone").exists()


# -- visibility ----------------------------------------------------------------------------
def test_a_tenant_admin_sees_only_their_tenants_entries(client, world, tmp_path):
    call_command("load_catalog", str(catalog_file(tmp_path)))
    services.api_key_update_limits(key=world["their_key"], actor="x", rpm_limit=3)
    services.api_key_update_limits(key=world["our_key"], actor="x", rpm_limit=4)
    client.force_login(world["alice"])

    page = client.get("/admin/audit/auditentry/")
    assert page.status_code == 200
    visible = {e.tenant_id for e in page.context["cl"].result_list}
    assert visible == {world["ours"].pk}
    theirs = AuditEntry.objects.filter(tenant_id=world["theirs"].pk).first()
    catalog = AuditEntry.objects.filter(tenant_id__isnull=True).first()
    for entry in (theirs, catalog):
        assert client.get(f"/admin/audit/auditentry/{entry.pk}/change/").status_code in (302, 404)
    history = client.get(f"/admin/tenants/apikey/{world['our_key'].pk}/history/")
    assert history.status_code == 200 and "rpm_limit" in history.content.decode()
    assert client.get(
        f"/admin/providers/provider/{Provider.objects.get().pk}/history/"
    ).status_code in (302, 403)


def test_a_user_with_no_tenant_sees_no_audit_log(client, world):
    nobody = get_user_model().objects.create_user("bob", password="pw-bob-12345", is_staff=True)
    client.force_login(nobody)
    assert client.get("/admin/audit/auditentry/").status_code == 403


def test_the_audit_log_cannot_be_edited_or_deleted_in_the_admin(client, world):
    client.force_login(world["root"])
    entry = AuditEntry.objects.first()
    assert (
        client.post(f"/admin/audit/auditentry/{entry.pk}/delete/", {"post": "yes"}).status_code
        == 403
    )
    assert client.get("/admin/audit/auditentry/add/").status_code == 403
    page = client.get(f"/admin/audit/auditentry/{entry.pk}/change/")
    assert page.status_code == 200 and "before" in page.content.decode()


def test_redaction_is_by_secret_names_not_by_substrings():
    from audit.recorder import _SECRET_NAME

    for name in ("key_hash", "secret_encrypted", "Authorization", "x-api-key", "access_token"):
        assert _SECRET_NAME.search(name), name
    for name in ("max_output_tokens", "tokens_in", "prefix", "hashed_by", "tpm_limit"):
        assert not _SECRET_NAME.search(name), name
    provider = provider_create(name="p-open", kind="mock")
    model = Model.objects.create(name="m-open", provider=provider, upstream_model="m")
    model.max_output_tokens = 1024
    model.save()
    assert entries_of(model)[-1].changes == {"max_output_tokens": [4096, 1024]}


def test_the_scheduled_price_sync_is_recorded():
    from datetime import timedelta

    from django.utils import timezone

    from usage.tasks import model_prices_sync

    provider = provider_create(name="p-sync", kind="mock")
    model = Model.objects.create(name="m-sync", provider=provider, upstream_model="m")
    # A price that came into force since the last sync (as a scheduled change does).
    ModelPrice.objects.create(
        model=model,
        effective_from=timezone.now() - timedelta(minutes=1),
        input_price_per_mtok=Decimal("0.5"),
        output_price_per_mtok=Decimal("0.75"),
    )
    assert model_prices_sync() == 1  # the Celery task, called in-process

    entry = entries_of(model)[-1]
    assert entry.actor == "task:model_prices_sync"
    assert entry.changes == {
        "input_price_per_mtok": ["0.000000", "0.500000"],
        "output_price_per_mtok": ["0.000000", "0.750000"],
    }
