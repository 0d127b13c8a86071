"""Enroll a staff user's TOTP device for two-factor admin login; prints the otpauth:// URL
(and the secret) to add to an authenticator app. The URL is the last line of stdout."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from tenants.services import staff_totp_device_create


class Command(BaseCommand):
    help = "Create a TOTP device for a staff user (two-factor admin login)."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--name", default="authenticator", help="Device name")
        parser.add_argument(
            "--replace", action="store_true", help="Delete the user's existing TOTP devices first"
        )

    def handle(self, *args, **options):
        user = get_user_model().objects.filter(username=options["username"]).first()
        if user is None:
            raise CommandError(f"No user {options['username']!r}")
        try:
            device = staff_totp_device_create(
                user=user, name=options["name"], replace=options["replace"], actor="command"
            )
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from exc
        self.stdout.write(
            f"TOTP device {device.name!r} created for {user.get_username()}. Add this URL (or "
            f"scan it as a QR code) in an authenticator app; it is shown once:"
        )
        self.stdout.write(device.config_url)
