from __future__ import annotations

from datetime import datetime

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from audit.context import audit_actor
from tenants.management.commands._limits import add_limit_arguments, limits_from
from tenants.models import Tenant
from tenants.services import api_key_create


class Command(BaseCommand):
    help = "Issue an API key. The raw key is printed once, as the last line of stdout."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--tenant", required=True, help="Tenant slug")
        parser.add_argument("--name", default="")
        parser.add_argument("--models", default="", help="Comma-separated allowed models")
        parser.add_argument("--expires-at", default=None, help="ISO 8601 with a time zone")
        add_limit_arguments(parser)

    def handle(self, *args, **options) -> None:
        # Every audited change this command makes is attributed to it.
        with audit_actor("command:create_api_key"):
            self._handle(**options)

    def _handle(self, **options) -> None:
        tenant = Tenant.objects.filter(slug=options["tenant"]).first()
        if tenant is None:
            raise CommandError(f"No tenant with slug {options['tenant']!r}")
        expires_at = None
        if options["expires_at"]:
            try:
                expires_at = datetime.fromisoformat(options["expires_at"])
            except ValueError as exc:
                raise CommandError(
                    f"--expires-at must be ISO 8601, got {options['expires_at']!r}"
                ) from exc
            if expires_at.tzinfo is None:
                raise CommandError("--expires-at needs a time zone (e.g. 2026-01-31T00:00:00Z)")
        models = [m.strip() for m in options["models"].split(",") if m.strip()]
        try:
            key, raw = api_key_create(
                tenant=tenant,
                actor="cli",
                name=options["name"],
                allowed_models=models,
                expires_at=expires_at,
                **limits_from(options),
            )
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from exc
        self.stdout.write(f"Created API key {key.prefix}… for tenant {tenant.slug} (id {key.pk})")
        self.stdout.write(raw)
