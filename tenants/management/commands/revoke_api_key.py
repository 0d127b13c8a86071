from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from audit.context import audit_actor
from tenants.models import ApiKey
from tenants.selectors import api_key_find
from tenants.services import api_key_revoke


class Command(BaseCommand):
    help = "Revoke an API key given the raw key or its display prefix."

    def add_arguments(self, parser) -> None:
        parser.add_argument("key_or_prefix")

    def handle(self, *args, **options) -> None:
        # Every audited change this command makes is attributed to it.
        with audit_actor("command:revoke_api_key"):
            self._handle(**options)

    def _handle(self, **options) -> None:
        try:
            key = api_key_find(key_or_prefix=options["key_or_prefix"].strip())
        except ApiKey.DoesNotExist as exc:
            raise CommandError("No API key matches that key or prefix") from exc
        except ApiKey.MultipleObjectsReturned as exc:
            raise CommandError("Several keys share that prefix; pass the full key instead") from exc
        already = key.revoked_at is not None
        key = api_key_revoke(key=key, actor="cli")
        state = "was already revoked" if already else "revoked"
        self.stdout.write(f"API key {key.prefix}… {state} at {key.revoked_at.isoformat()}")
