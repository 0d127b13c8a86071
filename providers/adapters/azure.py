"""Azure OpenAI (kind "azure_openai"): OpenAI's wire format on per-deployment URLs.

URL: {base_url}/openai/deployments/{deployment}/chat/completions?api-version={api_version},
where the deployment is the catalog model's upstream id. Auth: the `api-key` header, or a
Microsoft Entra token as `Authorization: Bearer` with the option `auth: "bearer"`.

Options: api_version (default 2024-10-21), auth ("api-key" | "bearer"), plus the OpenAI
adapter's (max_tokens_param, stream_usage, headers, pool settings)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from providers.adapters.base import register_adapter
from providers.adapters.openai import OpenAIAdapter
from providers.types import ChatRequest

DEFAULT_API_VERSION = "2024-10-21"


@register_adapter
class AzureOpenAIAdapter(OpenAIAdapter):
    kind = "azure_openai"
    default_base_url = ""

    @property
    def api_version(self) -> str:
        return str(self.config.options.get("api_version") or DEFAULT_API_VERSION)

    def build_headers(self) -> dict[str, str]:
        headers = super().build_headers()
        headers.pop("Authorization", None)
        if self.config.secret:
            if self.config.options.get("auth") == "bearer":
                headers["Authorization"] = f"Bearer {self.config.secret}"
            else:
                headers["api-key"] = self.config.secret
        return headers

    def _deployment_url(self, deployment: str, operation: str) -> str:
        # Operators paste the resource endpoint with or without the /openai suffix.
        base = self.base_url.removesuffix("/openai")
        return (
            f"{base}/openai/deployments/{quote(deployment, safe='')}/{operation}"
            f"?api-version={quote(self.api_version, safe='')}"
        )

    def chat_url(self, model: str) -> str:
        return self._deployment_url(model, "chat/completions")

    def embeddings_url(self, model: str) -> str:
        return self._deployment_url(model, "embeddings")

    def chat_body(self, request: ChatRequest, *, stream: bool) -> dict[str, Any]:
        body = super().chat_body(request, stream=stream)
        # The deployment in the URL names the model; Azure ignores a body `model`.
        body.pop("model", None)
        return body
