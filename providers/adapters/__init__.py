"""Importing this package registers every adapter kind."""

from providers.adapters import mock  # noqa: F401
from providers.adapters.base import (  # noqa: F401
    ProviderAdapter,
    ProviderConfig,
    adapter_class_for,
    register_adapter,
    registered_kinds,
)

try:  # adapters that talk HTTP register themselves when present
    from providers.adapters import openai  # noqa: F401
except ImportError:  # pragma: no cover - during bootstrap only
    pass
