"""Importing this package registers every adapter kind."""

from providers.adapters import anthropic, azure, compatible, mock, openai  # noqa: F401
from providers.adapters.base import (  # noqa: F401
    ProviderAdapter,
    ProviderConfig,
    adapter_class_for,
    register_adapter,
    registered_kinds,
)
