"""Rotate a key (cron-friendly scheduled rotation): a new secret for the same key record; the
old secret keeps working for the grace period. The new raw key is the last line of stdout."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from tenants.models import ApiKey
from tenants.selectors import api_key_find
from tenants.services import api_key_rotate


class Command(BaseCommand):
    help = "Rotate an API key given the raw key, its public id (key_...) or its display prefix."

    def add_arguments(self, parser) -> None:
        parser.add_argument("key")
        parser.add_argument(
            "--grace-seconds",
            type=int,
            default=None,
            help="How long the old secret keeps working (default: "
            "GATEWAY_KEY_ROTATION_GRACE_SECONDS; 0 stops it at once)",
        )

    def handle(self, *args, **options) -> None:
        try:
            key = api_key_find(key_or_prefix=options["key"].strip())
        except ApiKey.DoesNotExist as exc:
            raise CommandError("No API key matches that key, id or prefix") from exc
        except ApiKey.MultipleObjectsReturned as exc:
            raise CommandError("Several keys share that prefix; pass the public id") from exc
        try:
            key, raw = api_key_rotate(key=key, actor="cli", grace_seconds=options["grace_seconds"])
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from exc
        self.stdout.write(
            f"API key {key.public_id} rotated; the old secret works until "
            f"{key.previous_valid_until.isoformat()}. New key (shown once):"
        )
        self.stdout.write(raw)
