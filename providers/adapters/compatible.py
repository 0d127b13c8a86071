"""Any server that speaks OpenAI's Chat Completions wire format (vLLM, llama.cpp, Ollama,
LM Studio, LocalAI, OpenRouter, Together, Groq...): kind "openai_compatible".

Differences from OpenAI: the base URL is required, the key is optional (no Authorization
header without one), and some servers reject or ignore `stream_options`: set the option
`stream_usage: false` for those. A stream that reports no usage leaves Chunk.usage unset, and
routing counts the tokens itself."""

from __future__ import annotations

from providers.adapters.base import register_adapter
from providers.adapters.openai import OpenAIAdapter
from providers.types import ProviderUnavailable


@register_adapter
class OpenAICompatibleAdapter(OpenAIAdapter):
    kind = "openai_compatible"
    default_base_url = ""

    def chat_url(self, model: str) -> str:
        self._require_base_url()
        return super().chat_url(model)

    def embeddings_url(self, model: str) -> str:
        self._require_base_url()
        return super().embeddings_url(model)

    def _require_base_url(self) -> None:
        if not self.base_url:
            raise ProviderUnavailable(
                f"Upstream provider '{self.config.name}' has no base URL configured"
            )
