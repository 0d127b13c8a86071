from django.core.management.base import BaseCommand

from audit.context import audit_actor
from routing.demo import demo_seed


class Command(BaseCommand):
    help = (
        "Create the demo tenant, the mock provider, two models and a fallback route "
        "(idempotent), and a demo key. Prints the raw key as the last line."
    )

    def add_arguments(self, parser):
        parser.add_argument("--key", default=None, help="Use this raw key for the demo key")
        parser.add_argument(
            "--quickstart",
            action="store_true",
            help="Issue a fresh demo key (revoking the previous one) and print a ready curl line",
        )
        parser.add_argument("--port", type=int, default=8000, help="Port for the curl line")

    def handle(self, *args, **options):
        # Every audited change this command makes is attributed to it.
        with audit_actor("command:seed_demo"):
            self._handle(**options)

    def _handle(self, **options):
        result = demo_seed(raw_key=options["key"], rotate=options["quickstart"])
        self.stdout.write(f"tenant: {result.tenant_slug}  route: {result.route_name}")
        if not result.raw_key:
            self.stdout.write("demo key already exists (raw keys are shown only once)")
            return
        if options["quickstart"]:
            port = options["port"]
            self.stdout.write("")
            self.stdout.write("Try it:")
            self.stdout.write(
                f"  curl http://127.0.0.1:{port}/v1/chat/completions "
                f"-H 'Authorization: Bearer {result.raw_key}' -H 'Content-Type: application/json' "
                f'-d \'{{"model": "{result.route_name}", '
                f'"messages": [{{"role": "user", "content": "Hello!"}}]}}\''
            )
            self.stdout.write(f"  Playground (paste the key): http://127.0.0.1:{port}/")
            self.stdout.write(f"  API docs: http://127.0.0.1:{port}/v1/docs")
            self.stdout.write("")
            self.stdout.write("demo key:")
        self.stdout.write(result.raw_key)
