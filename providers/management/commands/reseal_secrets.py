from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from providers.services import provider_secrets_reseal


class Command(BaseCommand):
    help = (
        "Re-seal every stored provider secret with the first key of GATEWAY_ENCRYPTION_KEYS "
        "(run after prepending a new key; then drop the old one)."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--legacy-secret-key",
            action="store_true",
            help="Also open secrets sealed by earlier versions with a key derived from "
            "SECRET_KEY (migration to GATEWAY_ENCRYPTION_KEYS).",
        )

    def handle(self, *args, **options) -> None:
        resealed, failed = provider_secrets_reseal(legacy_secret_key=options["legacy_secret_key"])
        self.stdout.write(f"Re-sealed {resealed} provider secret(s).")
        if failed:
            raise CommandError(
                f"{len(failed)} secret(s) open with no configured key (left unchanged): "
                + ", ".join(sorted(failed))
            )
