from __future__ import annotations

from django.db import models


class Strategy(models.TextChoices):
    FALLBACK = "fallback", "Fallback (in order)"
    LOADBALANCE = "loadbalance", "Load balance (weighted, least latency, least busy)"
    PARALLEL = "parallel", "Parallel (race, first answer wins)"
    CONSENSUS = "consensus", "Consensus (majority vote)"
    SCORED = "scored", "Scored (per request: price, latency, quality)"


class Route(models.Model):
    """A name clients call (as `model`), resolved to an ordered chain of catalog models."""

    name = models.CharField(max_length=128, unique=True)
    strategy = models.CharField(max_length=16, choices=Strategy.choices, default=Strategy.FALLBACK)
    description = models.CharField(max_length=500, blank=True)
    max_attempts = models.PositiveSmallIntegerField(default=3)
    # Answered (200, flagged, billed 0) when every step failed; empty: the last error.
    default_message = models.TextField(blank=True)
    # Per-strategy options (validated by routing.route_options; see docs/catalog.md).
    options = models.JSONField(default=dict, blank=True)
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class RouteStep(models.Model):
    route = models.ForeignKey(Route, on_delete=models.CASCADE, related_name="steps")
    position = models.PositiveSmallIntegerField(default=0)
    model = models.ForeignKey("providers.Model", on_delete=models.PROTECT, related_name="+")
    weight = models.PositiveSmallIntegerField(default=1)

    class Meta:
        ordering = ["route", "position"]
        constraints = [
            models.UniqueConstraint(fields=["route", "position"], name="uniq_route_step_position")
        ]

    def __str__(self) -> str:
        return f"{self.route_id}#{self.position}"
