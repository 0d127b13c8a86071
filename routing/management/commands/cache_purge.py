"""python manage.py cache_purge [--tenant SLUG] [--route NAME] [--key PREFIX]"""

from __future__ import annotations

import asyncio

from django.core.management.base import BaseCommand, CommandError

from routing.cache import response_cache_purge_now
from tenants.models import ApiKey, Tenant


class Command(BaseCommand):
    help = "Drop cached answers of the response cache: all, or one tenant, route or key."

    def add_arguments(self, parser):
        parser.add_argument("--tenant", help="tenant slug (default: every tenant)")
        parser.add_argument("--route", help="only this route or model name")
        parser.add_argument("--key", help="only this API key (its prefix, e.g. gw-AbCdEf12)")
        parser.add_argument("--all", action="store_true", help="confirm a purge of every tenant")

    def handle(self, *args, tenant=None, route=None, key=None, all=False, **options):
        tenant_id = None
        key_id = None
        if tenant:
            found = Tenant.objects.filter(slug=tenant).values_list("id", flat=True).first()
            if found is None:
                raise CommandError(f"No tenant with slug {tenant!r}")
            tenant_id = found
        if key:
            api_key = ApiKey.objects.filter(prefix=key).values("id", "tenant_id").first()
            if api_key is None:
                raise CommandError(f"No API key with prefix {key!r}")
            key_id = api_key["id"]
            if tenant_id is not None and tenant_id != api_key["tenant_id"]:
                raise CommandError("That key belongs to another tenant")
            tenant_id = api_key["tenant_id"]
        if tenant_id is None and not route and not all:
            raise CommandError("Name --tenant, --route or --key, or pass --all to purge everything")
        removed = asyncio.run(
            response_cache_purge_now(tenant_id=tenant_id, route=route, key_id=key_id)
        )
        self.stdout.write(f"Purged {removed} cached answers")
