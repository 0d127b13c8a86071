from __future__ import annotations

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from tenants.models import Tenant
from tenants.services import operator_token_create


class Command(BaseCommand):
    help = (
        "Issue a management/reports API token for a user (superuser or tenant admin). Stored "
        "hashed; the raw token is printed once, as the last line of stdout."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("username")
        parser.add_argument("--scope", choices=["read", "write"], default="read")
        parser.add_argument("--tenant", default=None, help="Limit the token to this tenant slug")
        parser.add_argument("--days", type=int, default=None, help="Lifetime in days")
        parser.add_argument("--name", default="")

    def handle(self, *args, **options) -> None:
        user = get_user_model().objects.filter(username=options["username"]).first()
        if user is None:
            raise CommandError(f"No user {options['username']!r}")
        tenant = None
        if options["tenant"]:
            tenant = Tenant.objects.filter(slug=options["tenant"]).first()
            if tenant is None:
                raise CommandError(f"No tenant with slug {options['tenant']!r}")
        try:
            token, raw = operator_token_create(
                user=user,
                actor="cli",
                name=options["name"],
                scope=options["scope"],
                tenant=tenant,
                expires_in_days=options["days"],
            )
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from exc
        self.stderr.write(
            f"Token {token.prefix}… for {user.get_username()} ({token.scope}"
            f"{', tenant ' + tenant.slug if tenant else ''}), expires {token.expires_at:%Y-%m-%d}"
        )
        self.stdout.write(raw)
