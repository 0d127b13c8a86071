"""Request fields that change what the upstream charges beyond the catalog's per-token prices.

The gateway charges every call at its catalog prices (input, output per 1M tokens). A field
that makes the provider bill differently (a priority or flex service tier, built-in web
search, audio output, provider-hosted tools) would be billed by the provider at one price and
by us at another, so it is refused with a clear 400 before anything is reserved or sent.
docs/usage.md lists them."""

from __future__ import annotations

from typing import Any

from providers.types import ChatRequest
from routing.errors import GatewayError

# service_tier values billed at the standard price (OpenAI "default", Anthropic
# "standard_only"); "auto" may run on priority or scale capacity billed at other prices.
STANDARD_SERVICE_TIERS = frozenset({"default", "standard_only"})
# Top-level fields whose use is billed apart from tokens.
PRICED_APART = {
    "web_search_options": "web search is billed per call by the provider",
    "audio": "audio output is billed at audio token prices",
}


def _unsupported(param: str, why: str) -> GatewayError:
    return GatewayError(
        status=400,
        message=f"'{param}' is not supported by this gateway: {why}, which the catalog does "
        "not price. Remove it or ask the operator for a model priced for it.",
        code="unsupported_parameter",
        param=param,
    )


def _native_anthropic_refuse(body: dict[str, Any]) -> None:
    """The same tier refusal for the client's own /v1/messages body, which Anthropic targets
    get as it came (its fields never reach `chat.extra`). Server tools are forwarded there
    (Claude Code sends them; docs/anthropic.md), see docs/usage.md."""
    tier = body.get("service_tier")
    if tier is not None and tier not in STANDARD_SERVICE_TIERS:
        raise _unsupported("service_tier", f"the '{tier}' tier is billed at its own prices")


def price_changing_params_refuse(chat: ChatRequest) -> None:
    """Raise a 400 GatewayError for a field that would change the upstream price."""
    native = chat.native
    if native is not None and native.protocol == "anthropic" and isinstance(native.body, dict):
        _native_anthropic_refuse(native.body)
    extra: dict[str, Any] = chat.extra or {}
    tier = extra.get("service_tier")
    if tier is not None and tier not in STANDARD_SERVICE_TIERS:
        raise _unsupported("service_tier", f"the '{tier}' tier is billed at its own prices")
    for name, why in PRICED_APART.items():
        if extra.get(name) is not None:
            raise _unsupported(name, why)
    modalities = extra.get("modalities")
    if isinstance(modalities, list) and "audio" in modalities:
        raise _unsupported("modalities", "audio output is billed at audio token prices")
    for index, tool in enumerate(chat.tools or ()):
        kind = tool.get("type", "function") if isinstance(tool, dict) else None
        if kind != "function":
            raise _unsupported(
                f"tools[{index}].type", f"the provider-hosted tool '{kind}' is billed per use"
            )
