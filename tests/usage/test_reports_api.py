"""The reporting API: grouping, JSON and CSV, streaming exports, tenant scoping for tenant
admins (TenantMembership) and the admin dashboard/statement pages."""

from __future__ import annotations

import csv
import io
from decimal import Decimal

import pytest
from django.contrib.auth.models import User
from django.http import StreamingHttpResponse
from django.test import Client

from tenants.models import TenantMembership
from tests.usage.conftest import at
from usage.rollups import usage_rollup
from usage.services import usage_events_write


@pytest.fixture
def reported(usage_world, maker):
    payloads = {}
    for key in ("key_a", "key_b", "key_g"):
        m = maker(usage_world[key])
        payloads[key] = [
            m.payload(
                created_at=at(d, h), tokens_in=1500 + d, tokens_out=700 + h, target_index=h % 2
            )
            for d in (3, 4)
            for h in (1, 13)
        ]
    usage_events_write(payloads=[p for ps in payloads.values() for p in ps])
    usage_rollup()
    return payloads


def _client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def superuser(db):
    return User.objects.create_superuser("root", "root@example.com", "pw-123456789")


@pytest.fixture
def acme_admin(usage_world):
    user = User.objects.create_user("acme-admin", password="pw-123456789", is_staff=True)
    TenantMembership.objects.create(user=user, tenant=usage_world["acme"])
    return user


def _cost(payloads) -> Decimal:
    return sum((Decimal(p["cost_usd"]) for p in payloads), Decimal(0))


def test_report_groups_by_tenant_with_exact_costs(reported, usage_world, superuser):
    response = _client(superuser).get(
        "/api/reports/usage/", {"start": "2026-10-01", "end": "2026-10-31", "group_by": "tenant"}
    )
    assert response.status_code == 200
    by_tenant = {r["tenant_id"]: r for r in response.json()["results"]}
    acme = by_tenant[usage_world["acme"].id]
    assert acme["label"] == "acme"
    assert Decimal(acme["cost_usd"]) == _cost(reported["key_a"] + reported["key_b"])
    assert acme["requests"] == 8


@pytest.mark.parametrize("group_by", ["key", "model", "provider", "day", "hour"])
def test_every_grouping_sums_to_the_same_total(reported, superuser, group_by):
    response = _client(superuser).get(
        "/api/reports/usage/", {"start": "2026-10-03", "end": "2026-10-04", "group_by": group_by}
    )
    assert response.status_code == 200
    rows = response.json()["results"]
    assert sum(Decimal(r["cost_usd"]) for r in rows) == _cost(
        [p for ps in reported.values() for p in ps]
    )


def test_tenant_admin_sees_only_their_tenant(reported, usage_world, acme_admin):
    client = _client(acme_admin)
    response = client.get(
        "/api/reports/usage/", {"start": "2026-10-01", "end": "2026-10-31", "group_by": "key"}
    )
    assert response.status_code == 200
    assert {r["tenant_id"] for r in response.json()["results"]} == {usage_world["acme"].id}
    forbidden = client.get("/api/reports/usage/", {"tenant": usage_world["globex"].id})
    assert forbidden.status_code == 403
    assert (
        client.get(f"/api/reports/statements/{usage_world['globex'].id}/2026-10/").status_code
        == 403
    )
    events = client.get("/api/reports/events/", {"start": "2026-10-01", "end": "2026-10-31"})
    body = b"".join(events.streaming_content).decode()
    assert str(usage_world["globex"].id) not in {row[2] for row in csv.reader(io.StringIO(body))}
    assert (
        client.get(
            "/admin/usage/usageevent/dashboard/", {"tenant": usage_world["globex"].id}
        ).status_code
        == 403
    )


def test_csv_report_and_event_export_stream(reported, superuser):
    client = _client(superuser)
    response = client.get(
        "/api/reports/usage/",
        {"start": "2026-10-01", "end": "2026-10-31", "group_by": "day", "format": "csv"},
    )
    assert response.status_code == 200
    assert isinstance(response, StreamingHttpResponse)
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert [r["day"][:10] for r in rows] == ["2026-10-03", "2026-10-04"]
    export = client.get("/api/reports/events/", {"start": "2026-10-01", "end": "2026-10-31"})
    assert isinstance(export, StreamingHttpResponse)
    lines = list(csv.DictReader(io.StringIO(b"".join(export.streaming_content).decode())))
    assert len(lines) == 12
    assert sum(Decimal(r["cost_usd"]) for r in lines) == _cost(
        [p for ps in reported.values() for p in ps]
    )


def test_statement_api_and_admin_pages_render(reported, usage_world, acme_admin):
    client = _client(acme_admin)
    acme_id = usage_world["acme"].id
    statement = client.get(f"/api/reports/statements/{acme_id}/2026-10/").json()
    assert Decimal(statement["total_usd"]) == _cost(reported["key_a"] + reported["key_b"])
    csv_response = client.get(f"/api/reports/statements/{acme_id}/2026-10/", {"format": "csv"})
    assert csv_response["Content-Type"].startswith("text/csv")
    page = client.get("/admin/usage/usageevent/statement/", {"tenant": acme_id, "month": "2026-10"})
    assert page.status_code == 200
    assert statement["total_usd_cents"] in page.content.decode()
    dashboard = client.get(
        "/admin/usage/usageevent/dashboard/", {"start": "2026-10-01", "end": "2026-10-31"}
    )
    assert dashboard.status_code == 200
    html = dashboard.content.decode()
    assert "<svg" in html and "acme-prod" in html and "globex-main" not in html
    assert client.get("/admin/usage/usageevent/").status_code == 200


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/admin/usage/usageevent/dashboard/", {"tenant": "²"}),  # str.isdigit() says yes
        ("/admin/usage/usageevent/statement/", {"tenant": "①"}),
        ("/admin/usage/usageevent/statement.csv", {"tenant": "²"}),
        ("/admin/usage/usageevent/statement/", {"month": "9999-12"}),  # next month: year 10000
        ("/admin/usage/usageevent/statement.csv", {"month": "9999-12"}),
        ("/admin/usage/usageevent/dashboard/", {"end": "0001-01-01"}),
    ],
)
def test_admin_usage_pages_never_answer_500_to_odd_parameters(
    reported, usage_world, acme_admin, path, params
):
    client = Client(raise_request_exception=False)
    client.force_login(acme_admin)
    response = client.get(path, params)
    assert response.status_code < 500, (path, params)


def test_statement_api_refuses_the_last_month_of_the_calendar_with_400(
    reported, usage_world, acme_admin
):
    response = _client(acme_admin).get(f"/api/reports/statements/{usage_world['acme'].id}/9999-12/")
    assert response.status_code == 400
