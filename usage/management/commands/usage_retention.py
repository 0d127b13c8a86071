"""Delete raw usage events older than GATEWAY_USAGE_RETENTION_DAYS once rolled up."""

from __future__ import annotations

from django.core.management.base import BaseCommand

from usage.rollups import usage_retention


class Command(BaseCommand):
    help = "Purge old raw usage events (their totals stay in the rollups)."

    def handle(self, *args, **options) -> None:
        result = usage_retention()
        self.stdout.write(f"deleted={result.deleted} cutoff={result.cutoff.isoformat()}")
