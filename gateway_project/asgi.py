"""The ASGI application: one entry point for uvicorn (production) and daphne (runserver).

HTTP requests on the inference paths (settings.INFERENCE_PATHS: /v1/..., /api/v1/generate) go
to the thread-free `InferenceASGIHandler`; every other HTTP path (admin, the DRF management
API, /metrics, health, any sync view) goes to Django's stock `ASGIHandler`; websockets go to
the channels URLRouter of routing/ws_urls.py; "lifespan" closes pooled upstream clients and
flushes in-process usage writers on shutdown. See docs/asgi.md.
"""

from __future__ import annotations

import logging
import os
from typing import Any

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway_project.settings")

from channels.routing import URLRouter  # noqa: E402
from django.conf import settings  # noqa: E402
from django.core.asgi import get_asgi_application  # noqa: E402

stock_http = get_asgi_application()  # django.setup() happens here, before our imports below
if settings.GATEWAY_SERVE_STATIC:
    from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402

    # Admin and API-docs assets under uvicorn, from the apps' static folders (no collectstatic
    # step); turn off when a CDN or reverse proxy serves STATIC_URL.
    stock_http = ASGIStaticFilesHandler(stock_http)

from gateway_project.fast_asgi import InferenceASGIHandler, Receive, Scope, Send  # noqa: E402
from gateway_project.metrics import metrics_process_exit  # noqa: E402
from gateway_project.ws_guard import WebsocketGuard  # noqa: E402
from providers.adapters.base import adapters_close  # noqa: E402
from providers.http import http_clients_close  # noqa: E402
from routing.tracing import tracing_shutdown  # noqa: E402
from routing.ws_urls import websocket_urlpatterns  # noqa: E402
from usage.services import usage_events_flush  # noqa: E402

logger = logging.getLogger("gateway.asgi")


async def shutdown_cleanup() -> None:
    """What a worker does once no request is left: hand in-process usage events to their
    store, then close the upstream connection pools. Each step runs even if another failed."""
    steps = (
        # Direct write mode queues events in-process; they must reach the database first.
        ("usage_events_flush", usage_events_flush),
        ("adapters_close", adapters_close),
        # Sessions opened outside an adapter (none today) are pooled there too.
        ("http_clients_close", http_clients_close),
        # Buffered spans (tracing on) go to the collector before the process exits.
        ("tracing_shutdown", tracing_shutdown),
    )
    for name, step in steps:
        try:
            await step()
        except Exception:
            logger.exception("asgi.shutdown_step_failed", extra={"step": name})
    # Last: this worker's live gauges (breakers, pools) leave the merged /metrics.
    metrics_process_exit()


async def lifespan(scope: Scope, receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        kind = message["type"]
        if kind == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif kind == "lifespan.shutdown":
            await shutdown_cleanup()
            await send({"type": "lifespan.shutdown.complete"})
            return


def path_matcher(paths: tuple[str, ...] | list[str]):
    """A predicate for "this path belongs to the inference handler"."""
    prefixes = tuple(p for p in paths if p.endswith("/"))
    exact = frozenset(p for p in paths if not p.endswith("/")) | frozenset(
        p + "/" for p in paths if not p.endswith("/")
    )

    def matches(path: str) -> bool:
        return path in exact or path.startswith(prefixes)

    return matches


class GatewayApplication:
    """Dispatch by scope type, then (HTTP) by path."""

    def __init__(
        self,
        *,
        inference_http: Any,
        stock_http: Any,
        websocket: Any,
        inference_paths: tuple[str, ...] | list[str],
    ) -> None:
        self.inference_http = inference_http
        self.stock_http = stock_http
        self.websocket = websocket
        self.is_inference_path = path_matcher(inference_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            path = scope["path"]
            root = scope.get("root_path", "")
            if root and path.startswith(root):
                path = path[len(root) :]
            if self.is_inference_path(path):
                await self.inference_http(scope, receive, send)
            else:
                await self.stock_http(scope, receive, send)
        elif kind == "websocket":
            await self.websocket(scope, receive, send)
        elif kind == "lifespan":
            await lifespan(scope, receive, send)
        else:
            raise ValueError(f"unsupported ASGI scope type {kind!r}")


inference_http = InferenceASGIHandler()

application = GatewayApplication(
    inference_http=inference_http,
    stock_http=stock_http,
    websocket=WebsocketGuard(URLRouter(websocket_urlpatterns)),
    inference_paths=settings.INFERENCE_PATHS,
)
