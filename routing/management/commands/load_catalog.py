from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from audit.context import audit_actor
from routing.catalog_file import CatalogFileError, catalog_file_load, catalog_file_parse


class Command(BaseCommand):
    help = "Load a declarative catalog file (TOML or JSON): providers, models with prices, routes."

    def add_arguments(self, parser):
        parser.add_argument("file", type=Path)
        parser.add_argument(
            "--prune",
            action="store_true",
            help="Deactivate providers, models and routes that the file does not list",
        )

    def handle(self, *args, **options):
        # Every audited change this command makes is attributed to it.
        with audit_actor(f"catalog:{options['file']}"):
            self._handle(**options)

    def _handle(self, **options):
        try:
            result = catalog_file_load(
                data=catalog_file_parse(options["file"]), prune=options["prune"]
            )
        except CatalogFileError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(result.summary())
