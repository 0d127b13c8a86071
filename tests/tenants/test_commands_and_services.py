"""Operator commands and the services under them."""

from __future__ import annotations

from decimal import Decimal
from io import StringIO

import pytest
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.core.management.base import CommandError

from tenants import services
from tenants.keys import api_key_hash
from tenants.models import ApiKey, AuditEvent, Tenant
from tests.factories import TenantFactory

pytestmark = pytest.mark.django_db


def run(*args) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def test_create_tenant_command_sets_limits_and_timezone():
    run(
        "create_tenant",
        "acme",
        "--name",
        "Acme",
        "--budget-usd",
        "100",
        "--budget-period",
        "weekly",
        "--rpm",
        "60",
        "--tpm",
        "10000",
        "--timezone",
        "Europe/Paris",
    )
    tenant = Tenant.objects.get(slug="acme")
    assert (
        tenant.budget_usd,
        tenant.budget_period,
        tenant.rpm_limit,
        tenant.tpm_limit,
        tenant.timezone,
    ) == (Decimal("100"), "weekly", 60, 10000, "Europe/Paris")
    assert AuditEvent.objects.filter(action="tenant.create", tenant=tenant).exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["create_tenant", "x", "--timezone", "Mars/Olympus"], "time zone"),
        (["create_tenant", "x", "--budget-usd", "lots"], "budget"),
        (["create_tenant", "x", "--rpm", "-1"], "rpm"),
    ],
)
def test_create_tenant_rejects_bad_input_clearly(args, message):
    with pytest.raises(CommandError, match=message):
        run(*args)


def test_create_tenant_refuses_a_duplicate_slug():
    TenantFactory(slug="dup")
    with pytest.raises(CommandError, match="already exists"):
        run("create_tenant", "dup")


def test_create_api_key_prints_the_raw_key_last_and_stores_only_its_hash():
    TenantFactory(slug="acme")
    out = run(
        "create_api_key",
        "--tenant",
        "acme",
        "--name",
        "ci",
        "--budget-usd",
        "5",
        "--budget-period",
        "daily",
        "--rpm",
        "10",
        "--tpm",
        "500",
        "--max-concurrency",
        "2",
        "--models",
        "gpt-a, gpt-b",
        "--expires-at",
        "2030-01-01T00:00:00Z",
    )
    raw = out.strip().splitlines()[-1]
    key = ApiKey.objects.get(key_hash=api_key_hash(raw))
    assert raw not in (key.key_hash, key.prefix) and raw.startswith(key.prefix)
    assert (
        key.budget_usd,
        key.budget_period,
        key.rpm_limit,
        key.tpm_limit,
        key.max_concurrency,
    ) == (Decimal("5"), "daily", 10, 500, 2)
    assert key.allowed_models == ["gpt-a", "gpt-b"]
    assert key.expires_at.year == 2030


@pytest.mark.parametrize(
    "args, message",
    [
        (["--tenant", "nope"], "No tenant"),
        (["--tenant", "acme", "--expires-at", "tomorrow"], "ISO 8601"),
        (["--tenant", "acme", "--expires-at", "2030-01-01T00:00:00"], "time zone"),
        (["--tenant", "acme", "--budget-period", "hourly"], "invalid choice"),
    ],
)
def test_create_api_key_rejects_bad_input_clearly(args, message):
    TenantFactory(slug="acme")
    with pytest.raises(CommandError, match=message):
        run("create_api_key", *args)


def test_revoke_api_key_by_raw_key_or_prefix():
    tenant = TenantFactory()
    key, raw = services.api_key_create(tenant=tenant)
    assert "revoked" in run("revoke_api_key", key.prefix)
    key.refresh_from_db()
    first = key.revoked_at
    assert first is not None
    assert "already revoked" in run("revoke_api_key", raw)
    key.refresh_from_db()
    assert key.revoked_at == first
    with pytest.raises(CommandError, match="No API key"):
        run("revoke_api_key", "gw-nothing")


def test_rotate_keeps_the_key_record_and_settings_and_refuses_a_revoked_key():
    tenant = TenantFactory()
    old, old_raw = services.api_key_create(
        tenant=tenant, name="svc", rpm_limit=9, allowed_models=["m"]
    )
    rotated, raw = services.api_key_rotate(key=old, grace_seconds=0)
    assert (rotated.pk, rotated.public_id) == (old.pk, old.public_id)
    assert (rotated.name, rotated.rpm_limit, rotated.allowed_models) == ("svc", 9, ["m"])
    assert rotated.key_hash == api_key_hash(raw) != api_key_hash(old_raw)
    assert rotated.previous_key_hash == api_key_hash(old_raw)
    assert rotated.revoked_at is None and rotated.prefix == raw[: len(rotated.prefix)]
    services.api_key_revoke(key=rotated)
    with pytest.raises(ValidationError):
        services.api_key_rotate(key=rotated)


def test_limit_updates_are_audited_with_old_and_new_values():
    tenant = TenantFactory()
    key, _ = services.api_key_create(tenant=tenant, rpm_limit=5)
    services.api_key_update_limits(key=key, rpm_limit=7, budget_usd=Decimal("1.5"), actor="me")
    event = AuditEvent.objects.get(action="api_key.update")
    assert event.details["rpm_limit"] == [5, 7]
    assert event.details["budget_usd"] == [None, "1.5"]
    assert event.actor == "me"


def test_services_notify_other_processes_on_commit(django_capture_on_commit_callbacks):
    from tenants.admission import config_changed_notify

    tenant = TenantFactory()
    with django_capture_on_commit_callbacks() as callbacks:
        key, _ = services.api_key_create(tenant=tenant)
        services.api_key_revoke(key=key)
    assert callbacks.count(config_changed_notify) == 2
