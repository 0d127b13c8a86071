from __future__ import annotations

from decimal import Decimal

from django.db import models


class ProviderKind(models.TextChoices):
    OPENAI = "openai", "OpenAI"
    ANTHROPIC = "anthropic", "Anthropic"
    AZURE_OPENAI = "azure_openai", "Azure OpenAI"
    OPENAI_COMPATIBLE = "openai_compatible", "OpenAI-compatible"
    MOCK = "mock", "Mock (built in)"


class Provider(models.Model):
    """An upstream account: a kind of wire protocol, where it lives and how we authenticate."""

    name = models.SlugField(max_length=64, unique=True)
    kind = models.CharField(max_length=32, choices=ProviderKind.choices)
    base_url = models.URLField(max_length=500, blank=True)
    # The secret is either read from an environment variable at call time (secret_env) or
    # stored encrypted (secret_encrypted); it is never stored or shown in plain text.
    secret_env = models.CharField(max_length=128, blank=True)
    secret_encrypted = models.TextField(blank=True, editable=False)
    # Provider-specific settings: api_version for Azure, extra headers, mock latency...
    options = models.JSONField(default=dict, blank=True)
    connect_timeout_s = models.FloatField(default=5.0)
    first_byte_timeout_s = models.FloatField(default=60.0)
    stream_idle_timeout_s = models.FloatField(default=60.0)
    total_timeout_s = models.FloatField(default=600.0)
    max_retries = models.PositiveSmallIntegerField(default=1)
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.kind})"

    @property
    def has_secret(self) -> bool:
        return bool(self.secret_encrypted or self.secret_env)


class Model(models.Model):
    """A catalog entry: the public name clients ask for and what it maps to upstream."""

    name = models.CharField(max_length=128, unique=True, help_text="Public model name")
    provider = models.ForeignKey(Provider, on_delete=models.PROTECT, related_name="models")
    upstream_model = models.CharField(max_length=200)
    # USD per 1M tokens. The current price; effective-dated history lives in ModelPrice.
    input_price_per_mtok = models.DecimalField(
        max_digits=14, decimal_places=6, default=Decimal("0")
    )
    output_price_per_mtok = models.DecimalField(
        max_digits=14, decimal_places=6, default=Decimal("0")
    )
    # Prompt-cache prices (Anthropic bills cache writes and reads apart from input; OpenAI's
    # cached input is cheaper). Empty: such tokens cost the input price. Current price only:
    # the effective-dated history covers input and output.
    cache_read_price_per_mtok = models.DecimalField(
        max_digits=14,
        decimal_places=6,
        null=True,
        blank=True,
        help_text="USD per 1M prompt tokens read from the prompt cache (empty: input price)",
    )
    cache_write_price_per_mtok = models.DecimalField(
        max_digits=14,
        decimal_places=6,
        null=True,
        blank=True,
        help_text="USD per 1M prompt tokens written to the prompt cache (empty: input price)",
    )
    context_window = models.PositiveIntegerField(default=8192)
    max_output_tokens = models.PositiveIntegerField(default=4096)
    supports_streaming = models.BooleanField(default=True)
    supports_tools = models.BooleanField(default=True)
    supports_vision = models.BooleanField(default=False)
    supports_embeddings = models.BooleanField(default=False)
    # JSON mode (response_format json_object / json_schema).
    supports_json_mode = models.BooleanField(default=True)
    # Orchestration: a quality score per task name, 0-1 ({"summarize": 0.8, "code": 0.6}),
    # and the tasks this model is a candidate for (empty: every task).
    quality = models.JSONField(default=dict, blank=True)
    tasks = models.JSONField(default=list, blank=True)
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class ModelPrice(models.Model):
    """An effective-dated price: valid from `effective_from` until the next row's start."""

    model = models.ForeignKey(Model, on_delete=models.CASCADE, related_name="prices")
    effective_from = models.DateTimeField()
    input_price_per_mtok = models.DecimalField(max_digits=14, decimal_places=6)
    output_price_per_mtok = models.DecimalField(max_digits=14, decimal_places=6)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["model", "-effective_from"]
        constraints = [
            models.UniqueConstraint(
                fields=["model", "effective_from"], name="uniq_model_price_start"
            )
        ]

    def __str__(self) -> str:
        return f"{self.model_id} from {self.effective_from:%Y-%m-%d %H:%M}"
