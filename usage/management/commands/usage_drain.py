"""Drain the usage stream once in this process (operators; Celery does it in production)."""

from __future__ import annotations

from django.core.management.base import BaseCommand

from usage.stream import usage_stream_drain


class Command(BaseCommand):
    help = "Drain the Redis usage stream into the database."

    def handle(self, *args, **options) -> None:
        self.stdout.write(str(usage_stream_drain().as_dict()))
