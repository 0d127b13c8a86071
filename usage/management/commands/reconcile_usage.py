"""Prove for a period that statement totals = sum of events = sum of rollups, per tenant.

    manage.py reconcile_usage --from 2026-11-01 --to 2026-12-01 [--tenant acme]

--to is exclusive. Exits non-zero and lists every difference when any source disagrees."""

from __future__ import annotations

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from tenants.models import Tenant
from usage.live_spend import live_spend_check, usage_stream_backlog
from usage.models import UsageEvent, UsageRollup
from usage.selectors import reconciliation_totals

from ._dates import parse_when


class Command(BaseCommand):
    help = "Reconcile statements, raw events and rollups for a period; non-zero exit on difference."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--from", dest="start", required=True, help="YYYY-MM-DD (inclusive)")
        parser.add_argument("--to", dest="end", required=True, help="YYYY-MM-DD (exclusive)")
        parser.add_argument("--tenant", help="tenant id or slug (default: every tenant with usage)")

    def handle(self, *args, **options) -> None:
        start, end = parse_when(options["start"]), parse_when(options["end"])
        if end <= start:
            raise CommandError("--to must be after --from")
        if options["tenant"]:
            raw = options["tenant"]
            tenant = Tenant.objects.filter(
                **({"pk": int(raw)} if raw.isdigit() else {"slug": raw})
            ).first()
            if tenant is None:
                raise CommandError(f"no tenant {raw!r}")
            tenant_ids = [tenant.pk]
        else:
            ids = set(
                UsageEvent.objects.filter(
                    created_at__gte=start, created_at__lt=end, tenant_id__isnull=False
                )
                .order_by()
                .values_list("tenant_id", flat=True)
                .distinct()
            )
            ids |= set(
                UsageRollup.objects.filter(bucket_start__gte=start, bucket_start__lt=end)
                .exclude(tenant_id=0)
                .order_by()
                .values_list("tenant_id", flat=True)
                .distinct()
            )
            tenant_ids = sorted(ids)
        differences = 0
        for tenant_id in tenant_ids:
            sources = reconciliation_totals(tenant_id=tenant_id, start=start, end=end)
            reference = sources["events"]
            self.stdout.write(
                f"tenant {tenant_id}: requests={reference.requests} tokens_in={reference.tokens_in} "
                f"tokens_out={reference.tokens_out} cost_usd={reference.cost_usd}"
            )
            for name, totals in sources.items():
                if totals.differs(reference):
                    differences += 1
                    self.stdout.write(
                        f"  DIFFERENCE {name}: requests={totals.requests} "
                        f"tokens_in={totals.tokens_in} tokens_out={totals.tokens_out} "
                        f"cost_usd={totals.cost_usd} (events: cost_usd={reference.cost_usd}, "
                        f"delta={format(totals.cost_usd - reference.cost_usd, 'f')})"
                    )
        differences += self._live_spend(tenant_ids)
        if differences:
            raise CommandError(f"{differences} difference(s) found")
        self.stdout.write(
            f"OK: {len(tenant_ids)} tenant(s) reconcile exactly for [{start.isoformat()}, {end.isoformat()})"
        )

    def _live_spend(self, tenant_ids: list[int]) -> int:
        """Redis spend counters of the open periods against PostgreSQL (usage.live_spend)."""
        if settings.GATEWAY_STATE_BACKEND != "redis":
            return 0  # the in-process store lives in the server process, not here
        backlog = usage_stream_backlog()
        if backlog:
            self.stdout.write(f"live spend: skipped, {backlog} event(s) not yet drained")
            return 0
        differences = 0
        for row in live_spend_check(tenant_ids=tenant_ids):
            if not row.sound:
                differences += 1
                self.stdout.write(
                    f"  DIFFERENCE live spend {row.scope} {row.scope_id} {row.period}: "
                    f"counter={row.counter_nano} nano, stored={row.stored_nano} nano "
                    f"(+ up to {row.events} for rounding)"
                )
        return differences
