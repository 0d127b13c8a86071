"""Prepare the benchmark database: the catalog of bench/catalog.toml, a tenant with every
limit switched on (so admission does all its work) and a fresh API key, printed as the last
line of stdout. Run with the gateway's environment (DATABASE_URL, REDIS_URL...)."""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway_project.settings")

import django  # noqa: E402

django.setup()

from django.core.management import call_command  # noqa: E402

from tenants.models import Tenant  # noqa: E402
from tenants.services import api_key_create, tenant_create  # noqa: E402

TENANT_SLUG = "bench"
# High enough never to refuse a benchmark request, set so that every check runs.
LIMITS = {
    "budget_usd": Decimal("1000000"),
    "rpm_limit": 100_000_000,
    "tpm_limit": 2_000_000_000,
    "max_concurrency": 100_000,
}


def main() -> None:
    call_command("load_catalog", str(ROOT / "bench" / "catalog.toml"))
    tenant = Tenant.objects.filter(slug=TENANT_SLUG).first()
    if tenant is None:
        tenant = tenant_create(slug=TENANT_SLUG, name="Benchmark", actor="bench", **LIMITS)
    _key, raw = api_key_create(
        tenant=tenant,
        actor="bench",
        name=f"bench {datetime.now(tz=UTC):%Y-%m-%d %H:%M:%S}",
        **LIMITS,
    )
    print(raw)


if __name__ == "__main__":
    main()
