"""Key rotation with a grace period: the key record (id, public id, limits, usage) stays, the
new secret works at once, the replaced one until its grace period ends (then 401), both billed
to the same record; reminders of expiries and grace ends go out once per date."""

from __future__ import annotations

from datetime import timedelta

import httpx
import openai
import pytest
from django.core import mail
from django.core.management import CommandError, call_command
from django.utils import timezone

from tenants import services
from tenants.keys import api_key_hash
from tenants.models import ApiKey, AuditEvent
from tenants.selectors import api_key_find, api_key_policy_get, policy_cache_clear
from tenants.tasks import api_key_reminders_dispatch
from tenants.webhooks import WEBHOOK_FAILED_TEXT
from tests.conftest import free_port
from tests.factories import TenantFactory
from tests.routing.support import (
    LIVE_ENV,
    caches_clear,
    mock_provider,
    model_on,
    usage_events_wait_sync,
    wait_until_sync,
)
from usage.models import UsageEvent

HELLO = [{"role": "user", "content": "hello"}]


def _past(seconds: int = 1):
    return timezone.now() - timedelta(seconds=seconds)


# -- authentication of the old and new secrets -----------------------------------------------
@pytest.mark.django_db(transaction=True)
async def test_old_secret_authenticates_as_the_same_key_until_its_grace_period_ends():
    from asgiref.sync import sync_to_async

    tenant = await sync_to_async(TenantFactory)()
    key, old_raw = await sync_to_async(services.api_key_create)(tenant=tenant, rpm_limit=7)
    rotated, new_raw = await sync_to_async(services.api_key_rotate)(key=key, grace_seconds=600)
    old = await api_key_policy_get(raw_key=old_raw)
    new = await api_key_policy_get(raw_key=new_raw)
    now = timezone.now()
    assert old.key_id == new.key_id == key.id
    assert old.key_limits == new.key_limits and old.key_limits.rpm == 7
    assert old.usable_at(now) and new.usable_at(now)
    assert old.expires_at == rotated.previous_valid_until and new.expires_at is None
    assert not old.usable_at(rotated.previous_valid_until + timedelta(seconds=1))

    # The stored end of the grace period is what counts (no clock is faked).
    await ApiKey.objects.filter(pk=key.id).aupdate(previous_valid_until=_past())
    policy_cache_clear()
    assert not (await api_key_policy_get(raw_key=old_raw)).usable_at(timezone.now())
    assert (await api_key_policy_get(raw_key=new_raw)).usable_at(timezone.now())


@pytest.mark.django_db
def test_grace_never_outlives_the_keys_own_expiry_and_revocation_stops_both_secrets():
    tenant = TenantFactory()
    expires = timezone.now() + timedelta(minutes=5)
    key, old_raw = services.api_key_create(tenant=tenant, expires_at=expires)
    key, new_raw = services.api_key_rotate(key=key, grace_seconds=3600)
    policy_cache_clear()
    old = async_get(old_raw)
    assert old.expires_at == expires
    services.api_key_revoke(key=key)
    policy_cache_clear()
    assert async_get(old_raw).revoked and async_get(new_raw).revoked


@pytest.mark.django_db
def test_a_second_rotation_ends_the_oldest_secret_at_once():
    key, first = services.api_key_create(tenant=TenantFactory())
    key, second = services.api_key_rotate(key=key, grace_seconds=3600)
    key, third = services.api_key_rotate(key=key, grace_seconds=3600)
    policy_cache_clear()
    assert async_get(first) is None
    assert async_get(second).key_id == async_get(third).key_id == key.id
    events = AuditEvent.objects.filter(action="api_key.rotate", target=key.public_id)
    assert events.count() == 2 and first not in str(list(events.values("details")))


@pytest.mark.django_db
@pytest.mark.parametrize("grace", [-1, 31 * 86400, True, "60"])
def test_rotation_refuses_a_bad_grace_period(grace):
    key, raw = services.api_key_create(tenant=TenantFactory())
    with pytest.raises(services.ValidationError):
        services.api_key_rotate(key=key, grace_seconds=grace)
    key.refresh_from_db()
    assert key.previous_key_hash is None and key.rotated_at is None


@pytest.mark.django_db
def test_the_old_secret_still_finds_the_key_for_revocation_during_grace():
    key, old_raw = services.api_key_create(tenant=TenantFactory())
    services.api_key_rotate(key=key)
    assert api_key_find(key_or_prefix=old_raw).pk == key.pk
    call_command("revoke_api_key", old_raw)
    key.refresh_from_db()
    assert key.revoked_at is not None


def async_get(raw: str):
    from asgiref.sync import async_to_sync

    return async_to_sync(api_key_policy_get)(raw_key=raw)


# -- through a live gateway with the openai SDK -----------------------------------------------
@pytest.mark.live_server_process
def test_rotated_key_works_through_its_grace_period_then_stops_all_billed_to_one_record(
    live_gateway,
):
    model_on(mock_provider("rot-mock"), "rot-model")
    key, old_raw = services.api_key_create(tenant=TenantFactory(), name="svc")
    caches_clear()
    with live_gateway(env=LIVE_ENV) as base:

        def client(raw):
            return openai.OpenAI(base_url=f"{base}/v1", api_key=raw, max_retries=0)

        client(old_raw).chat.completions.create(model="rot-model", messages=HELLO)
        key, new_raw = services.api_key_rotate(key=key, grace_seconds=3600, actor="test")
        for raw in (new_raw, old_raw):  # both work during the grace period
            answer = client(raw).chat.completions.create(model="rot-model", messages=HELLO)
            assert answer.choices[0].message.content

        # The grace period ends: move its stored end into the past.
        ApiKey.objects.filter(pk=key.pk).update(previous_valid_until=_past())

        def old_refused() -> bool:
            r = httpx.get(f"{base}/v1/models", headers={"Authorization": f"Bearer {old_raw}"})
            return r.status_code == 401

        assert wait_until_sync(old_refused, timeout_s=10)
        with pytest.raises(openai.AuthenticationError) as refused:
            client(old_raw).chat.completions.create(model="rot-model", messages=HELLO)
        assert refused.value.body["code"] == "expired_api_key"
        assert old_raw not in str(refused.value.body)
        client(new_raw).chat.completions.create(model="rot-model", messages=HELLO)

        events = usage_events_wait_sync(4)
        served = [e for e in events if e.outcome == "ok"]
        assert len(served) == 4
        assert {(e.api_key_id, e.tenant_id) for e in served} == {(key.pk, key.tenant_id)}
        assert sum(e.cost_usd for e in served) > 0
        # The expired secret is not authenticated: its refusal leaves no row (metrics and a
        # log line only, docs/usage.md), so a stranger can never write into the tenant's records.
        assert [e for e in events if e.outcome != "ok"] == []
        assert UsageEvent.objects.filter(api_key_id=key.pk, outcome="ok").count() == 4


# -- reminders --------------------------------------------------------------------------------
@pytest.mark.django_db
def test_expiry_and_grace_reminders_go_out_once_per_date_through_the_alert_channels():
    tenant = TenantFactory(alert_email="ops@example.com")
    soon, _ = services.api_key_create(
        tenant=tenant, name="soon", expires_at=timezone.now() + timedelta(days=2)
    )
    services.api_key_create(
        tenant=tenant, name="later", expires_at=timezone.now() + timedelta(days=30)
    )
    gone, _ = services.api_key_create(
        tenant=tenant, name="gone", expires_at=timezone.now() + timedelta(days=1)
    )
    services.api_key_revoke(key=gone)
    rotated, _ = services.api_key_create(tenant=tenant, name="rotated")
    services.api_key_rotate(key=rotated, grace_seconds=3600)

    assert api_key_reminders_dispatch() == 2
    subjects = sorted(m.subject for m in mail.outbox)
    assert len(subjects) == 2 and "old secret" in subjects[0] and "expires soon" in subjects[1]
    assert soon.public_id in "".join(m.body for m in mail.outbox)
    assert api_key_reminders_dispatch() == 0  # once per date
    assert AuditEvent.objects.filter(action="api_key.expiry_reminder").count() == 1

    # A new expiry date earns a new reminder.
    services.api_key_update_limits(key=soon, expires_at=timezone.now() + timedelta(days=3))
    assert api_key_reminders_dispatch() == 1 and len(mail.outbox) == 3


@pytest.mark.django_db
def test_a_reminder_whose_every_channel_fails_is_retried_on_the_next_run(settings):
    settings.GATEWAY_WEBHOOK_ALLOW_HTTP = True
    settings.GATEWAY_WEBHOOK_ALLOWED_NETWORKS = ["127.0.0.1/32"]  # a loopback test receiver
    dead = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there
    tenant = TenantFactory(alert_webhook_url=dead)
    key, _ = services.api_key_create(tenant=tenant, expires_at=timezone.now() + timedelta(days=1))
    assert api_key_reminders_dispatch() == 0
    key.refresh_from_db()
    assert key.expiry_reminded_at is None
    tenant.alert_email = "ops@example.com"
    tenant.save(update_fields=["alert_email"])
    assert api_key_reminders_dispatch() == 1  # the email went out; the webhook error is kept
    audit = AuditEvent.objects.get(action="api_key.expiry_reminder")
    # Generic text for the tenant (the error class would be a port-scan oracle).
    assert audit.details["errors"] == [WEBHOOK_FAILED_TEXT]


@pytest.mark.django_db
def test_rotate_command_prints_the_new_key_last_and_refuses_a_revoked_key(capsys):
    key, old_raw = services.api_key_create(tenant=TenantFactory())
    call_command("rotate_api_key", key.public_id, "--grace-seconds", "120")
    new_raw = capsys.readouterr().out.strip().splitlines()[-1]
    key.refresh_from_db()
    assert key.key_hash == api_key_hash(new_raw) and key.previous_key_hash == api_key_hash(old_raw)
    assert (
        timedelta(seconds=100) < key.previous_valid_until - key.rotated_at <= timedelta(seconds=120)
    )
    services.api_key_revoke(key=key)
    with pytest.raises(CommandError, match="revoked"):
        call_command("rotate_api_key", new_raw)
    with pytest.raises(CommandError, match="No API key"):
        call_command("rotate_api_key", "key_nothing")


# -- the migration ----------------------------------------------------------------------------
@pytest.mark.django_db(transaction=True)
def test_migration_gives_every_existing_key_its_own_public_id():
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    before = [("tenants", "0002_budget_alert")]
    executor = MigrationExecutor(connection)
    executor.migrate(before)
    try:
        old_apps = executor.loader.project_state(before).apps
        OldTenant = old_apps.get_model("tenants", "Tenant")
        OldKey = old_apps.get_model("tenants", "ApiKey")
        tenant = OldTenant.objects.create(slug="legacy", name="Legacy")
        for i in range(3):
            OldKey.objects.create(tenant=tenant, prefix=f"gw-old{i}", key_hash=f"{i:064d}")
    finally:
        executor = MigrationExecutor(connection)
        executor.loader.build_graph()
        executor.migrate(executor.loader.graph.leaf_nodes())
    ids = list(ApiKey.objects.filter(tenant__slug="legacy").values_list("public_id", flat=True))
    assert len(ids) == 3 and len(set(ids)) == 3 and all(i.startswith("key_") for i in ids)
