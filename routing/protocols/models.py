"""Model objects in OpenAI's and Anthropic's shapes (`/v1/models` answers in Anthropic's when
the request carries `anthropic-version`, as the Anthropic SDK's always does)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any


def wants_anthropic_shape(meta: dict[str, Any]) -> bool:
    return bool(meta.get("HTTP_ANTHROPIC_VERSION"))


def openai_model_object(name: str, *, created: int) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": "gateway"}


def anthropic_model_object(name: str, *, created: int) -> dict[str, Any]:
    created_at = datetime.fromtimestamp(created, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"type": "model", "id": name, "display_name": name, "created_at": created_at}


def anthropic_model_list(names: list[str], *, created: int) -> dict[str, Any]:
    """Anthropic's list page: everything in one page (`has_more: false`)."""
    return {
        "data": [anthropic_model_object(n, created=created) for n in names],
        "has_more": False,
        "first_id": names[0] if names else None,
        "last_id": names[-1] if names else None,
    }
