"""Roll usage up: the buckets touched since the last run, or a whole window with --from/--to."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from usage.rollups import usage_rollup, usage_rollup_window

from ._dates import parse_when


class Command(BaseCommand):
    help = "Recompute usage rollups (idempotent)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--from", dest="start")
        parser.add_argument("--to", dest="end")

    def handle(self, *args, **options) -> None:
        if bool(options["start"]) != bool(options["end"]):
            raise CommandError("give both --from and --to, or neither")
        if options["start"]:
            result = usage_rollup_window(
                start=parse_when(options["start"]), end=parse_when(options["end"])
            )
        else:
            result = usage_rollup()
        self.stdout.write(f"hours={result.hours} days={result.days} rows={result.rows}")
