"""bench/admin_scale.py at a tiny scale: the generator loads what it says, every timed page
answers, and only the "Admin at scale" section of the report file is replaced."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from audit.models import AuditEntry
from tenants.models import ApiKey, Tenant
from usage.models import UsageEvent, UsageRollup

ROOT = Path(__file__).resolve().parents[2]


def _module():
    spec = importlib.util.spec_from_file_location("admin_scale", ROOT / "bench" / "admin_scale.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


admin_scale = _module()


@pytest.mark.django_db
def test_the_generator_loads_the_data_set_and_every_admin_page_answers():
    lines: list[str] = []
    counts = admin_scale.generate(
        keys=200, tenants=20, events=1_000, active_keys=50, log=lines.append
    )

    assert counts["tenants"] == Tenant.objects.count() == 20
    assert counts["keys"] == ApiKey.objects.count() == 200
    assert counts["events"] == UsageEvent.objects.count() == 1_000
    assert ApiKey.objects.filter(revoked_at__isnull=False).count() == 2
    assert AuditEntry.objects.filter(object_type="tenants.apikey").count() == 200
    assert UsageEvent.objects.values("api_key_id").distinct().count() == 50
    assert counts["rollups"] == UsageRollup.objects.count() > 0
    # The rollups hold exactly the events' money.
    day = sum(r.cost_usd for r in UsageRollup.objects.filter(period="day"))
    assert day == sum(e.cost_usd for e in UsageEvent.objects.all())
    assert len(lines) == 5

    root = get_user_model().objects.create_superuser("root", password="pw-root-123")
    client = Client()
    client.force_login(root)
    results = admin_scale.time_pages(client, admin_scale.pages(), repeat=1)
    assert {r["page"] for r in results} >= {
        "tenants",
        "keys",
        "usage events",
        "providers",
        "models",
        "routes",
        "audit log",
        "dashboard",
    }
    assert [r["url"] for r in results if r["status"] != 200] == []
    searched = client.get(next(r["url"] for r in results if r["variant"] == "search: key prefix"))
    assert len(searched.context["cl"].result_list) >= 1
    assert "| keys | list |" in admin_scale.table(results)


def test_only_the_admin_at_scale_section_is_replaced(tmp_path):
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n## Results\n\nkeep me\n")
    admin_scale.section_replace(doc, "## Admin at scale\n\nfirst\n")
    admin_scale.section_replace(doc, "## Admin at scale\n\nsecond\n")
    text = doc.read_text()
    assert "keep me" in text and "second" in text and "first" not in text
    doc.write_text(text + "\n## Later\n\nalso kept\n")
    admin_scale.section_replace(doc, "## Admin at scale\n\nthird\n")
    text = doc.read_text()
    assert "third" in text and "second" not in text and "also kept" in text
    assert text.count("## Admin at scale") == 1
