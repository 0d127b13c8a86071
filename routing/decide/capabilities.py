"""Capabilities: a request that needs tools, images, JSON mode, embeddings or streaming only
goes to models whose catalog entry declares them (providers.Model.supports_tools,
supports_vision, supports_json_mode, supports_embeddings, supports_streaming).

`capabilities_required` reads what a request needs; `capability_filter` splits a route's
targets into those that have everything and, for the others, what each lacks (the same
"excluded" reasons scored routing reports). When none is left, `CapabilityMissing` is the
400 to answer (`model_capability_missing`), naming the missing capability per model."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from routing.errors import GatewayError
from routing.snapshot import Target

TargetKey = tuple[int, int]

_FIELDS = {
    "tools": "supports_tools",
    "vision": "supports_vision",
    "json_mode": "supports_json_mode",
    "embeddings": "supports_embeddings",
    "streaming": "supports_streaming",
}
_IMAGE_PARTS = {"image_url", "image", "input_image"}


def _has_image(messages: Iterable[dict[str, Any]]) -> bool:
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and part.get("type") in _IMAGE_PARTS:
                    return True
    return False


def capabilities_required(
    *,
    endpoint: str = "chat",
    messages: Sequence[dict[str, Any]] = (),
    tools: Sequence[Any] | None = None,
    functions: Sequence[Any] | None = None,
    response_format: Any = None,
    stream: bool = False,
) -> frozenset[str]:
    """What the request needs from a model. `response_format` as the client sent it
    ({"type": "json_object"} or {"type": "json_schema", ...})."""
    if endpoint == "embeddings":
        return frozenset({"embeddings"})
    needed: set[str] = set()
    if tools or functions:
        needed.add("tools")
    if _has_image(messages):
        needed.add("vision")
    if isinstance(response_format, dict) and response_format.get("type") in (
        "json_object",
        "json_schema",
    ):
        needed.add("json_mode")
    if stream:
        needed.add("streaming")
    return frozenset(needed)


def capabilities_missing(target: Target, required: Iterable[str]) -> list[str]:
    return [cap for cap in sorted(required) if not getattr(target.model, _FIELDS[cap], False)]


def capability_filter(
    targets: Sequence[Target], required: Iterable[str]
) -> tuple[list[Target], dict[TargetKey, list[str]]]:
    """(targets that have every required capability, {excluded target: reasons})."""
    required = list(required)
    eligible: list[Target] = []
    excluded: dict[TargetKey, list[str]] = {}
    for target in targets:
        missing = capabilities_missing(target, required)
        if missing:
            excluded[(target.provider.id, target.model.id)] = [
                f"capability: {cap} not supported" for cap in missing
            ]
        else:
            eligible.append(target)
    return eligible, excluded


class CapabilityMissing(GatewayError):
    def __init__(self, targets: Sequence[Target], required: Iterable[str]) -> None:
        required = sorted(required)
        detail = "; ".join(
            f"{t.model.name} lacks {', '.join(capabilities_missing(t, required))}" for t in targets
        )
        super().__init__(
            status=400,
            message=f"No model of this route supports {', '.join(required)} ({detail})",
            code="model_capability_missing",
        )


def capability_targets(targets: Sequence[Target], required: Iterable[str]) -> list[Target]:
    """The targets that can serve the request, or CapabilityMissing."""
    required = frozenset(required)
    if not required:
        return list(targets)
    eligible, _ = capability_filter(targets, required)
    if not eligible:
        raise CapabilityMissing(targets, required)
    return eligible
