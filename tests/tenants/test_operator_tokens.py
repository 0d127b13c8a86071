"""Operator tokens of the management and reports APIs: stored hashed, expiring, read-only or
read-write, optionally limited to one tenant; unknown, revoked and expired tokens get 401."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.utils import timezone
from rest_framework.test import APIClient

from tenants import services
from tenants.keys import api_key_hash
from tenants.models import OperatorToken, TenantMembership
from tests.factories import TenantFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def world():
    ours, theirs = TenantFactory(slug="ours"), TenantFactory(slug="theirs")
    services.api_key_create(tenant=ours, name="our-key")
    services.api_key_create(tenant=theirs, name="their-key")
    root = get_user_model().objects.create_superuser("root", password="pw-root-12345")
    alice = get_user_model().objects.create_user("alice", password="pw-alice-123", is_staff=True)
    TenantMembership.objects.create(user=alice, tenant=ours)
    return {"ours": ours, "theirs": theirs, "root": root, "alice": alice}


def client_with(raw: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {raw}")
    return client


def test_tokens_are_stored_as_hashes_only(world):
    token, raw = services.operator_token_create(user=world["root"], scope="write")
    stored = OperatorToken.objects.get(pk=token.pk)
    assert stored.key_hash == api_key_hash(raw) and raw not in stored.key_hash
    assert raw.startswith(stored.prefix)
    assert not OperatorToken.objects.filter(key_hash=raw).exists()
    assert stored.expires_at > timezone.now() + timedelta(days=80)


def test_a_read_token_reads_but_cannot_write(world):
    _token, raw = services.operator_token_create(user=world["root"], scope="read")
    client = client_with(raw)
    assert client.get("/api/manage/keys/").status_code == 200
    answer = client.post("/api/manage/keys/", {"tenant": "ours"}, format="json")
    assert answer.status_code == 403
    assert client.post("/api/manage/tenants/", {"slug": "x"}, format="json").status_code == 403


def test_a_tenant_limited_token_sees_only_that_tenant_even_for_a_superuser(world):
    _token, raw = services.operator_token_create(
        user=world["root"], scope="write", tenant=world["ours"]
    )
    client = client_with(raw)
    listed = client.get("/api/manage/tenants/").json()["results"]
    assert [t["slug"] for t in listed] == ["ours"]
    keys = client.get("/api/manage/keys/").json()["results"]
    assert {k["tenant"] for k in keys} == {"ours"}
    assert client.get("/api/manage/tenants/theirs/").status_code == 404
    issued = client.post("/api/manage/keys/", {"tenant": "theirs"}, format="json")
    assert issued.status_code == 400
    assert client.post("/api/manage/tenants/", {"slug": "new"}, format="json").status_code == 403
    report = client.get("/api/reports/usage/", {"tenant": world["theirs"].pk})
    assert report.status_code == 403


def test_expired_revoked_and_unknown_tokens_are_refused_alike(world):
    expired, raw_expired = services.operator_token_create(user=world["root"], scope="write")
    OperatorToken.objects.filter(pk=expired.pk).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    revoked, raw_revoked = services.operator_token_create(user=world["root"], scope="write")
    services.operator_token_revoke(token=revoked)
    for raw in (raw_expired, raw_revoked, "gwop_not-a-real-token"):
        answer = client_with(raw).get("/api/manage/keys/")
        assert answer.status_code == 401
        assert answer.json()["detail"] == "Invalid or expired token."


def test_tokens_are_only_for_operators_and_their_own_tenants(world):
    outsider = get_user_model().objects.create_user("bob", password="pw-bob-12345")
    with pytest.raises(ValidationError):
        services.operator_token_create(user=outsider)
    with pytest.raises(ValidationError):
        services.operator_token_create(user=world["alice"], tenant=world["theirs"])
    with pytest.raises(ValidationError):
        services.operator_token_create(user=world["root"], expires_in_days=10_000)


def test_create_operator_token_prints_the_raw_token_last(world, capsys):
    call_command("create_operator_token", "alice", "--scope", "write", "--tenant", "ours")
    raw = capsys.readouterr().out.strip().splitlines()[-1]
    token = OperatorToken.objects.get(key_hash=api_key_hash(raw))
    assert token.scope == "write" and token.tenant == world["ours"]
    assert client_with(raw).get("/api/manage/tenants/ours/").status_code == 200
