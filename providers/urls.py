"""Provider base URLs in either convention.

Operators copy whichever base URL they know: OpenAI's SDK uses `https://api.openai.com/v1`,
Anthropic's `https://api.anthropic.com` (its SDK appends `/v1/messages`), self-hosted servers
are often given as `http://host:8000` or with a full endpoint pasted. `base_url_normalize`
turns each into the API root an adapter appends its paths to, and says what it changed."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

# Endpoint suffixes an operator may paste with the root; the adapter adds them itself.
_ENDPOINTS = {
    "openai": ("/chat/completions", "/completions", "/embeddings", "/responses"),
    "openai_compatible": ("/chat/completions", "/completions", "/embeddings", "/responses"),
    "anthropic": ("/messages", "/messages/count_tokens"),
}


def base_url_normalize(kind: str, url: str) -> tuple[str, str | None]:
    """(the API root for this kind, a note saying what was normalized or None).

    - openai, openai_compatible, anthropic: a URL with no path gets `/v1` (the API version
      root both conventions share); a pasted endpoint (`/chat/completions`, `/messages`...)
      is removed. Other paths are kept as given (`https://host/api/v1`, Gemini's
      `/v1beta/openai`).
    - azure_openai: the resource root; a trailing `/openai` or a pasted deployment path is
      removed (the adapter builds `/openai/deployments/...`).
    - trailing slashes are dropped for every kind."""
    original = (url or "").strip()
    if not original:
        return "", None
    parts = urlsplit(original)
    path = parts.path.rstrip("/")
    changes: list[str] = []
    if kind == "azure_openai":
        lowered = path.lower()
        cut = lowered.find("/openai")
        if cut != -1 and (lowered.endswith("/openai") or "/openai/deployments" in lowered):
            path = path[:cut]
            changes.append("removed the '/openai…' suffix (the adapter adds it)")
    elif kind in _ENDPOINTS:
        for suffix in sorted(_ENDPOINTS[kind], key=len, reverse=True):
            if path.lower().endswith(suffix):
                path = path[: -len(suffix)]
                changes.append(f"removed the pasted endpoint '{suffix}'")
                break
        if not path:
            path = "/v1"
            changes.append("added '/v1'")
    normalized = urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))
    if normalized == original:
        return normalized, None
    if not changes:
        changes.append("removed the trailing '/'")
    return normalized, f"base_url {original!r} -> {normalized!r}: {'; '.join(changes)}"
