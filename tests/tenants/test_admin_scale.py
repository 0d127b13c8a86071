"""Admin changelists built for a million keys: no full-table COUNT, bounded counts, prefix
searches an index can serve, a tenant filter that does not list every tenant."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test.utils import CaptureQueriesContext

from tenants import services
from tenants.models import ApiKey, Tenant
from tenants.paging import EstimatedCountPaginator
from tests.factories import TenantFactory

pytestmark = pytest.mark.django_db

CHANGELISTS = [
    "/admin/tenants/tenant/",
    "/admin/tenants/apikey/",
    "/admin/tenants/auditevent/",
    "/admin/audit/auditentry/",
    "/admin/usage/usageevent/",
    "/admin/usage/usagerollup/",
]


@pytest.fixture
def root_client(client):
    root = get_user_model().objects.create_superuser("root", password="pw-root-123")
    client.force_login(root)
    return client


@pytest.fixture
def keys():
    tenants = [TenantFactory(slug=f"scale-{i:02d}") for i in range(3)]
    return [services.api_key_create(tenant=t, name=f"k-{t.slug}")[0] for t in tenants]


def _uncapped_counts(queries) -> list[str]:
    return [
        q["sql"]
        for q in queries
        if re.search(r"COUNT\(\*\)", q["sql"], re.I) and "LIMIT" not in q["sql"].upper()
    ]


@pytest.mark.parametrize("url", CHANGELISTS)
def test_changelists_never_count_a_whole_table(root_client, keys, url):
    with CaptureQueriesContext(connection) as ctx:
        response = root_client.get(url)
    assert response.status_code == 200
    assert _uncapped_counts(ctx.captured_queries) == []


def test_filtered_and_searched_key_lists_count_at_most_the_cap(root_client, keys):
    with CaptureQueriesContext(connection) as ctx:
        response = root_client.get(f"/admin/tenants/apikey/?status=active&q={keys[0].prefix}")
    assert response.status_code == 200
    assert [k.pk for k in response.context["cl"].result_list] == [keys[0].pk]
    assert _uncapped_counts(ctx.captured_queries) == []


@pytest.mark.skipif(connection.vendor != "postgresql", reason="pg_class estimate")
def test_an_unfiltered_count_is_the_planner_estimate_and_a_filtered_one_is_capped(
    keys, monkeypatch
):
    monkeypatch.setattr(EstimatedCountPaginator, "count_cap", 2)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE tenants_tenant")
    assert EstimatedCountPaginator(Tenant.objects.all(), 10).count == 3
    assert EstimatedCountPaginator(Tenant.objects.filter(slug__startswith="scale"), 10).count == 2


def test_key_search_is_a_prefix_search_and_wildcards_are_literal(root_client, keys):
    prefix = keys[1].prefix
    found = root_client.get(f"/admin/tenants/apikey/?q={prefix[:6]}").context["cl"].result_list
    assert keys[1].pk in [k.pk for k in found]
    inner = root_client.get(f"/admin/tenants/apikey/?q={prefix[3:]}").context["cl"].result_list
    assert keys[1].pk not in [k.pk for k in inner]
    assert list(root_client.get("/admin/tenants/apikey/?q=%25").context["cl"].result_list) == []


@pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL plans")
@pytest.mark.parametrize(
    ("sql", "index"),
    [
        ("SELECT id FROM tenants_apikey WHERE prefix LIKE 'gw-ab%%'", "apikey_prefix_like"),
        ("SELECT id FROM tenants_tenant WHERE slug LIKE 'acme%%'", "tenant_slug_like"),
        (
            "SELECT id FROM usage_usageevent WHERE outcome = 'error' ORDER BY created_at DESC "
            "LIMIT 100",
            "usage_outcome_time",
        ),
        (
            "SELECT id FROM tenants_apikey WHERE revoked_at IS NOT NULL ORDER BY created_at DESC "
            "LIMIT 50",
            "apikey_revoked_created",
        ),
    ],
)
def test_admin_searches_and_filters_have_an_index(sql, index):
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("EXPLAIN " + sql)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert index in plan, plan


def test_the_tenant_filter_lists_a_bounded_number_of_tenants_plus_the_chosen_one(root_client):
    Tenant.objects.bulk_create([Tenant(slug=f"t-{i:03d}", name=f"T {i}") for i in range(60)])
    last = Tenant.objects.get(slug="t-059")
    response = root_client.get(f"/admin/tenants/apikey/?tenant={last.pk}")
    assert response.status_code == 200
    spec = next(f for f in response.context["cl"].filter_specs if f.parameter_name == "tenant")
    choices = dict(spec.lookup_choices)
    assert len(choices) == 51 and choices[str(last.pk)] == "t-059"


def test_key_form_uses_autocomplete_for_the_tenant(root_client, keys):
    page = root_client.get("/admin/tenants/apikey/add/").content.decode()
    assert "admin-autocomplete" in page
    found = root_client.get(
        "/admin/autocomplete/?app_label=tenants&model_name=apikey&field_name=tenant&term=scale-01"
    ).json()
    assert [r["text"] for r in found["results"]] == ["scale-01"]
    assert ApiKey.objects.count() == 3
