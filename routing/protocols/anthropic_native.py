"""How a `/v1/messages` request reaches each kind of upstream without losing anything.

- Anthropic targets get the client's own request (`NativeRequest`): every documented field
  (`cache_control` on system, blocks and tools, `thinking` and signed thinking blocks,
  `top_k`, every `tool_choice` variant, `output_config`, `metadata`, server tools, any
  future field) and the client's `anthropic-beta` header, sent on as they are; the answer
  and the stream events come back verbatim.
- Other kinds get the normalized (OpenAI-shaped) request, and fields that have no
  equivalent are translated (`thinking` and `output_config.effort` -> `reasoning_effort`,
  `output_config.format` / `output_format` -> `response_format`, `service_tier`;
  `cache_control` marks are accepted because OpenAI-kind upstreams cache prompt prefixes
  on their own) or refused with an Anthropic-shaped 400 naming the field: never silently
  dropped. The mock honours what it can simulate and ignores the rest.

Pure functions: the view calls `messages_chat_request` once after resolving the route."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from providers.types import ChatRequest, NativeRequest
from routing.errors import GatewayError
from routing.snapshot import ResolvedRoute

# Top-level fields an OpenAI-kind upstream can honour (some after translation).
TRANSLATABLE = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "system",
        "stop_sequences",
        "stream",
        "temperature",
        "top_p",
        "tools",
        "tool_choice",
        "metadata",
        "thinking",
        "output_config",
        "output_format",
        "cache_control",
        "service_tier",
    }
)
NATIVE_KINDS = frozenset({"anthropic"})
# Kinds that simulate a model: they ignore what they cannot honour instead of refusing.
LENIENT_KINDS = frozenset({"mock"})
_EFFORTS = {"low": "low", "medium": "medium", "high": "high", "xhigh": "high", "max": "high"}


def _invalid(message: str, param: str | None = None) -> GatewayError:
    return GatewayError(status=400, message=message, code="unsupported_parameter", param=param)


def _effort_of_thinking(thinking: Any) -> str | None:
    if not isinstance(thinking, dict):
        return None
    kind = thinking.get("type")
    if kind == "enabled":
        budget = thinking.get("budget_tokens")
        budget = budget if isinstance(budget, int) else 0
        return "low" if budget < 4096 else ("medium" if budget < 16384 else "high")
    if kind == "adaptive":
        return "medium"
    return None


def _response_format(body: dict[str, Any]) -> dict[str, Any] | None:
    config = body.get("output_config")
    spec = config.get("format") if isinstance(config, dict) else None
    spec = spec or body.get("output_format")
    if not isinstance(spec, dict):
        return None
    if spec.get("type") != "json_schema" or not isinstance(spec.get("schema"), dict):
        raise _invalid(
            "output format: only json_schema with a schema is supported", "output_config"
        )
    return {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": spec["schema"], "strict": True},
    }


def translated_extra(body: dict[str, Any]) -> dict[str, Any]:
    """Chat extras standing for Anthropic-only fields, for non-Anthropic targets."""
    extra: dict[str, Any] = {}
    effort = _effort_of_thinking(body.get("thinking"))
    config = body.get("output_config")
    if isinstance(config, dict) and config.get("effort") in _EFFORTS:
        effort = _EFFORTS[config["effort"]]
    if effort:
        extra["reasoning_effort"] = effort
    response_format = _response_format(body)
    if response_format is not None:
        extra["response_format"] = response_format
    tier = body.get("service_tier")
    if tier in ("auto", "standard_only"):
        extra["service_tier"] = "auto" if tier == "auto" else "default"
    return extra


def untranslatable_refuse(body: dict[str, Any], *, route: ResolvedRoute, kinds: set[str]) -> None:
    """Anthropic-shaped 400 for a field a non-Anthropic target of the route cannot honour."""
    strict = sorted(kinds - NATIVE_KINDS - LENIENT_KINDS)
    if not strict:
        return
    served = ", ".join(strict)
    for name in body:
        if name not in TRANSLATABLE:
            raise _invalid(
                f"{name}: not supported when '{route.name}' is served by {served} providers "
                "(only Anthropic upstreams honour it); remove it or use an Anthropic model",
                name,
            )


def _text_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    """Plain-text messages for admission estimates when only Anthropic targets answer and the
    request holds blocks the OpenAI-shaped conversion does not model."""
    out: list[dict[str, Any]] = []
    system = body.get("system")
    if system:
        out.append({"role": "system", "content": orjson.dumps(system).decode()})
    for message in body.get("messages") or ():
        if isinstance(message, dict):
            content = message.get("content")
            text = content if isinstance(content, str) else orjson.dumps(content).decode()
            role = message.get("role") if message.get("role") in ("user", "assistant") else "user"
            out.append({"role": role, "content": text})
    return out


def messages_chat_request(
    payload: Any,
    *,
    body: bytes,
    route: ResolvedRoute,
    beta: str | None,
    convert: Callable[[Any], ChatRequest],
) -> ChatRequest:
    """The normalized request for a validated Messages payload on this route, carrying the
    client's own request for Anthropic targets (see the module docstring)."""
    raw = orjson.loads(body)
    kinds = {t.provider.kind for t in route.targets}
    untranslatable_refuse(raw, route=route, kinds=kinds)
    only_native = kinds <= NATIVE_KINDS
    if only_native and payload.tools:
        # Server tools and other Anthropic tool types go in the native body only.
        payload.tools = [t for t in payload.tools if t.get("type") in (None, "custom")] or None
    try:
        chat = convert(payload)
    except GatewayError:
        if not only_native:
            raise
        chat = ChatRequest(
            model=payload.model,
            messages=_text_messages(raw),
            stream=bool(raw.get("stream")),
            max_tokens=payload.max_tokens,
            include_usage=True,
        )
    if kinds - NATIVE_KINDS:
        chat.extra.update(translated_extra(raw))
    if kinds & NATIVE_KINDS:
        headers = {"anthropic-beta": beta} if beta else {}
        chat.native = NativeRequest(protocol="anthropic", body=raw, headers=headers)
    return chat
