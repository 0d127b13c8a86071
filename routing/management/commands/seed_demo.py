from django.core.management.base import BaseCommand

from routing.demo import demo_seed


class Command(BaseCommand):
    help = "Create the demo tenant, a demo key, the mock provider, models and a route (idempotent)."

    def add_arguments(self, parser):
        parser.add_argument("--key", default=None, help="Use this raw key for the demo key")

    def handle(self, *args, **options):
        result = demo_seed(raw_key=options["key"])
        self.stdout.write(f"tenant: {result.tenant_slug}")
        self.stdout.write(f"model: {result.model_name}  route: {result.route_name}")
        if result.raw_key:
            self.stdout.write(result.raw_key)
        else:
            self.stdout.write("demo key already exists (raw keys are shown only once)")
