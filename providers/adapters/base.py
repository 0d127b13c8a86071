"""The one adapter interface every provider kind implements, and the registry by kind.

Routing never branches on a provider's name or kind: it asks the registry for the adapter of
a ProviderConfig and calls these methods."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

from providers.http import http_client_close, http_clients_close
from providers.types import (
    ChatRequest,
    ChatResponse,
    Chunk,
    EmbeddingRequest,
    EmbeddingResponse,
    EmbeddingsNotSupported,
    ProviderCredentialsUnavailable,
)


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    """What an adapter needs to call one upstream account; built by the catalog snapshot."""

    id: int
    name: str
    kind: str
    base_url: str
    secret: str = field(default="", repr=False)
    # Why the configured secret could not be loaded ('' when it could, or none is configured).
    # Such a provider is never called: see CredentialsUnavailableAdapter.
    secret_error: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    connect_timeout_s: float = 5.0
    first_byte_timeout_s: float = 60.0
    stream_idle_timeout_s: float = 60.0
    total_timeout_s: float = 600.0
    max_retries: int = 1


class ProviderAdapter(ABC):
    kind: ClassVar[str]

    def __init__(self, config: ProviderConfig) -> None:
        self.config = config

    @abstractmethod
    async def chat(self, request: ChatRequest) -> ChatResponse:
        """One non-streaming completion. Raises a ProviderError subclass on failure."""

    @abstractmethod
    def stream_chat(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        """Streamed completion: an async iterator of chunks; the last carries usage when the
        upstream reports it. Closing the iterator (aclose) must close the upstream request."""

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResponse:
        raise EmbeddingsNotSupported(f"provider kind {self.kind} has no embeddings endpoint")

    async def aclose(self) -> None:
        """Release this provider's pooled connections (on the running loop)."""
        await http_client_close(self.config.id)


_REGISTRY: dict[str, type[ProviderAdapter]] = {}


def register_adapter(cls: type[ProviderAdapter]) -> type[ProviderAdapter]:
    _REGISTRY[cls.kind] = cls
    return cls


def adapter_class_for(kind: str) -> type[ProviderAdapter]:
    return _REGISTRY[kind]


def registered_kinds() -> list[str]:
    return sorted(_REGISTRY)


class CredentialsUnavailableAdapter(ProviderAdapter):
    """Stands in for a provider whose credential could not be loaded: every call raises
    ProviderCredentialsUnavailable, so no request goes upstream with an empty credential."""

    kind = "credentials_unavailable"

    def _error(self) -> ProviderCredentialsUnavailable:
        return ProviderCredentialsUnavailable(
            f"provider {self.config.name!r} has no usable credential: {self.config.secret_error}"
        )

    async def chat(self, request: ChatRequest) -> ChatResponse:
        raise self._error()

    async def stream_chat(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        raise self._error()
        yield  # pragma: no cover - makes this an async generator

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResponse:
        raise self._error()


_instances: dict[int, ProviderAdapter] = {}


def adapter_for(config: ProviderConfig) -> ProviderAdapter:
    """The process-wide adapter (and so connection pool) of one provider; rebuilt when the
    provider's configuration changes."""
    if config.secret_error:
        return CredentialsUnavailableAdapter(config)
    adapter = _instances.get(config.id)
    if adapter is not None and adapter.config is config:
        return adapter  # the snapshot hands out the same config object until it reloads
    if adapter is None or adapter.config != config:
        adapter = adapter_class_for(config.kind)(config)
        _instances[config.id] = adapter
    else:
        adapter.config = config  # an equal config from a reloaded snapshot
    return adapter


async def adapters_close() -> None:
    """Shutdown: release every adapter and every pooled HTTP session of the running loop."""
    adapters = list(_instances.values())
    _instances.clear()
    for adapter in adapters:
        await adapter.aclose()
    await http_clients_close()
