"""Pages for people (not for SDKs): the playground at `/` and `/playground/`.

The page is static HTML plus one vanilla-JS file; the browser itself calls the public API
(`GET /v1/models`, the `/ws/v1/chat` websocket) with the key the person pastes, so the view
reads nothing and writes nothing: it only renders the template with the API's paths and a
strict Content-Security-Policy (no inline script, no third-party origin: works offline)."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.views.decorators.http import require_safe

# 'self' covers same-origin ws:/wss: (CSP level 3). The key lives in sessionStorage; nothing
# from another origin may run on, frame, or receive data from this page.
PLAYGROUND_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)


@require_safe
def playground(request: HttpRequest) -> HttpResponse:
    response = TemplateResponse(
        request,
        "playground/playground.html",
        {"ws_path": "/ws/v1/chat", "models_path": "/v1/models", "docs_path": "/v1/docs"},
    )
    response["Content-Security-Policy"] = PLAYGROUND_CSP
    response["Referrer-Policy"] = "no-referrer"
    response["Cache-Control"] = "no-store"
    return response
