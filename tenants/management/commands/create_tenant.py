from __future__ import annotations

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from audit.context import audit_actor
from tenants.management.commands._limits import add_limit_arguments, limits_from
from tenants.services import tenant_create


class Command(BaseCommand):
    help = "Create a tenant with optional limits and budget."

    def add_arguments(self, parser) -> None:
        parser.add_argument("slug")
        parser.add_argument("--name", default="")
        parser.add_argument("--timezone", default="UTC", help="IANA zone for budget periods")
        add_limit_arguments(parser)

    def handle(self, *args, **options) -> None:
        # Every audited change this command makes is attributed to it.
        with audit_actor("command:create_tenant"):
            self._handle(**options)

    def _handle(self, **options) -> None:
        try:
            tenant = tenant_create(
                slug=options["slug"],
                name=options["name"],
                actor="cli",
                timezone_name=options["timezone"],
                **limits_from(options),
            )
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from exc
        self.stdout.write(f"Created tenant {tenant.slug} (id {tenant.pk})")
