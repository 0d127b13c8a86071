"""Websocket chat: `/ws/v1/chat`.

Protocol (JSON text frames):

- auth: the key in the handshake headers (`Authorization: Bearer <key>` or `X-API-Key`), or
  as the first message `{"type": "auth", "api_key": "<key>"}` within
  GATEWAY_WS_AUTH_TIMEOUT_SECONDS. Answered `{"type": "auth_ok"}`; a bad key gets an error
  message and the socket is closed with code 4401.
- `{"type": "request", "id": "<client id>", <OpenAI chat completion body>}` streams back
  `{"type": "delta", "id", "content"}` (and `"tool_calls"` deltas) and ends with exactly one
  of `{"type": "done", "id", "model", "finish_reason", "usage", "cost_usd"}` or
  `{"type": "error", "id", "error": {OpenAI error shape}}`.
- `{"type": "cancel", "id"}` stops that request's upstream call at once; it is settled with
  the tokens produced so far (usage outcome "cancelled") and ends with a `done` message whose
  finish_reason is "cancelled". A cancel for an id not in flight is ignored.
- `{"type": "ping"}` -> `{"type": "pong"}`.

Several requests may be in flight on one connection (GATEWAY_WS_MAX_CONCURRENT_REQUESTS);
each runs as its own task through the same InferenceCall as the HTTP API, so limits, routes,
fallbacks, breakers and the one-usage-event rule hold unchanged. Closing the socket cancels
every request in flight (outcome "cancelled", error_type "client_disconnected")."""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import aclosing
from typing import Any

import orjson
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings

from providers.types import ProviderError, Usage
from routing.endpoints.openai import chat_request_from
from routing.errors import GatewayError, gateway_error_from_provider
from routing.inference import InferenceCall, inference_call_open, usage_event_payload
from routing.ingress import (
    Ingress,
    client_request_id_clean,
    ingress_authenticate,
    ingress_refusal_record,
    ingress_resolve,
    new_request_id,
    payload_validate,
)
from routing.schemas import ChatCompletionIn
from tenants.keys import api_key_from_headers
from tenants.policy import KeyPolicy
from usage.services import usage_event_record

logger = logging.getLogger("gateway.ws")

ENDPOINT = "ws_chat"
CLOSE_UNAUTHENTICATED = 4401
_MAX_CLIENT_ID_LENGTH = 128


def _error(status: int, message: str, *, code: str | None, error_type: str | None = None):
    return GatewayError(
        status=status,
        message=message,
        code=code,
        error_type=error_type
        or {401: "authentication_error", 429: "rate_limit_error"}.get(
            status, "invalid_request_error"
        ),
    )


async def policy_for_key(raw_key: str | None) -> KeyPolicy:
    """The usable policy of a presented key, or the same 401 errors as the HTTP API."""
    return await ingress_authenticate(
        Ingress(request_id="", client_request_id="", started=0.0, endpoint=ENDPOINT),
        raw_key or None,
    )


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers") or ():
        if key.lower() == name:
            return value.decode("latin-1")
    return None


class ChatConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self) -> None:
        self._raw_key: str | None = None
        self._authenticated = False
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._calls: dict[str, InferenceCall] = {}
        self._cancelled: set[str] = set()
        self._send_lock = asyncio.Lock()
        self._auth_deadline: asyncio.Task[None] | None = None
        self._closing = False
        await self.accept()
        raw_key = api_key_from_headers(
            _header(self.scope, b"authorization"), _header(self.scope, b"x-api-key")
        )
        if raw_key is not None:
            await self._authenticate(raw_key)
        else:
            self._auth_deadline = asyncio.get_running_loop().create_task(self._expire_auth())

    async def _expire_auth(self) -> None:
        await asyncio.sleep(settings.GATEWAY_WS_AUTH_TIMEOUT_SECONDS)
        if not self._authenticated:
            await self._refuse(_error(401, "No API key received in time", code="auth_timeout"))

    async def _authenticate(self, raw_key: str | None) -> bool:
        try:
            await policy_for_key(raw_key)
        except GatewayError as error:
            await self._refuse(error)
            return False
        self._raw_key = raw_key
        self._authenticated = True
        if self._auth_deadline is not None:
            self._auth_deadline.cancel()
            self._auth_deadline = None
        await self._send({"type": "auth_ok"})
        return True

    async def _refuse(self, error: GatewayError) -> None:
        await self._send({"type": "error", "id": None, "error": error.body()["error"]})
        self._closing = True
        await self.close(code=CLOSE_UNAUTHENTICATED)

    async def _send(self, message: dict[str, Any]) -> None:
        # Request tasks send concurrently; one frame at a time keeps frames whole and
        # makes a slow client slow down every producer of this connection (back-pressure).
        async with self._send_lock:
            await self.send_json(message)

    # -- incoming ------------------------------------------------------------------------
    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        if self._closing:
            return
        if not isinstance(content, dict):
            await self._send_error(
                None, _error(400, "Expected a JSON object", code="invalid_message")
            )
            return
        kind = content.get("type")
        if kind == "request":
            await self._on_request(content)
        elif kind == "cancel":
            self._on_cancel(content.get("id"))
        elif kind == "auth":
            if self._authenticated:
                await self._send({"type": "auth_ok"})
            else:
                key = content.get("api_key")
                await self._authenticate(key if isinstance(key, str) else None)
        elif kind == "ping":
            await self._send({"type": "pong"})
        else:
            await self._send_error(
                content.get("id"),
                _error(400, f"Unknown message type {kind!r}", code="invalid_message"),
            )

    async def receive(
        self, text_data: str | None = None, bytes_data: bytes | None = None, **kwargs
    ):
        if text_data is None:
            await self._send_error(
                None, _error(400, "Send JSON text frames, not binary", code="invalid_message")
            )
            return
        await super().receive(text_data=text_data, **kwargs)

    async def decode_json(self, text_data: str) -> Any:
        # orjson, as the HTTP endpoints: Python's json accepts what the gateway cannot carry
        # further (integers beyond 64 bits, lone surrogates, NaN), and the request's task
        # then died on its first orjson.dumps with no answer to the client.
        try:
            return orjson.loads(text_data)
        except orjson.JSONDecodeError:
            return None  # answered as "Expected a JSON object"

    async def _send_error(self, client_id: Any, error: GatewayError) -> None:
        await self._send({"type": "error", "id": client_id, "error": error.body()["error"]})

    def _ingress(self, client_id: Any) -> Ingress:
        return Ingress(
            request_id=new_request_id(),
            client_request_id=client_request_id_clean(client_id),
            started=time.perf_counter(),
            endpoint=ENDPOINT,
        )

    async def _on_request(self, content: dict[str, Any]) -> None:
        client_id = content.get("id")
        ingress = self._ingress(client_id)
        if not isinstance(client_id, str | int) or not 0 < len(str(client_id)) <= 128:
            error = _error(
                400, "A request needs an 'id' (string, 1-128 characters)", code="invalid_id"
            )
        elif not self._authenticated:
            error = _error(401, "Authenticate first", code="missing_api_key")
        elif str(client_id) in self._tasks:
            error = _error(400, "A request with this id is in flight", code="duplicate_id")
        elif len(self._tasks) >= settings.GATEWAY_WS_MAX_CONCURRENT_REQUESTS:
            error = _error(
                429,
                "Too many requests in flight on this connection",
                code="too_many_concurrent_requests",
            )
        else:
            key = str(client_id)
            body = {k: v for k, v in content.items() if k not in ("type", "id")}
            task = asyncio.get_running_loop().create_task(self._run(client_id, body, ingress))
            self._tasks[key] = task
            task.add_done_callback(lambda _t, key=key: self._forget(key))
            return
        if self._authenticated:
            try:
                await ingress_authenticate(ingress, self._raw_key)
            except GatewayError:
                pass
        ingress.route_name = str(content.get("model") or "")[:128]
        await ingress_refusal_record(ingress, error)
        await self._send_error(client_id, error)

    def _forget(self, key: str) -> None:
        self._tasks.pop(key, None)
        self._calls.pop(key, None)

    def _on_cancel(self, client_id: Any) -> None:
        key = str(client_id)
        task = self._tasks.get(key)
        if task is not None and not task.done():
            call = self._calls.get(key)
            if call is not None:
                call.cancel_reason = "client_cancelled"
            self._cancelled.add(key)
            task.cancel()

    # -- one request -------------------------------------------------------------------
    async def _open(self, body: dict[str, Any], ingress: Ingress) -> tuple[InferenceCall, Any]:
        # Re-read the key: revocation reaches open sockets.
        await ingress_authenticate(ingress, self._raw_key)
        payload = payload_validate(ChatCompletionIn, body)
        await ingress_resolve(ingress, payload.model)
        chat = chat_request_from(payload, raw_messages=body.get("messages"))
        chat.stream = True
        chat.include_usage = True
        return await inference_call_open(ingress=ingress, chat=chat), chat

    async def _run(self, client_id: Any, body: dict[str, Any], ingress: Ingress) -> None:
        key = str(client_id)
        try:
            call, chat = await self._open(body, ingress)
        except GatewayError as error:
            await ingress_refusal_record(ingress, error)
            await self._send_error(client_id, error)
            return
        except asyncio.CancelledError:
            # Cancelled before admission finished: nothing reserved, nothing called upstream,
            # still one usage event when the key is known.
            if ingress.policy is not None:
                payload = usage_event_payload(
                    call=None,
                    usage=Usage(),
                    status_code=499,
                    outcome="cancelled",
                    error_type="client_cancelled"
                    if key in self._cancelled
                    else "client_disconnected",
                    request_id=ingress.request_id,
                    client_request_id=ingress.client_request_id,
                    policy=ingress.policy,
                    route_name=ingress.route_name,
                    endpoint=ENDPOINT,
                    started=ingress.started,
                )
                await asyncio.shield(usage_event_record(payload=payload))
            raise
        self._calls[key] = call
        if key in self._cancelled:
            call.cancel_reason = "client_cancelled"
        await self._stream(client_id, call, chat)

    async def _stream(self, client_id: Any, call: InferenceCall, chat: Any) -> None:
        """Shapes the call's chunks into messages; the call settles itself on every exit."""
        finish_reason: str | None = None
        try:
            async with aclosing(call.run_stream(chat)) as chunks:
                async for chunk in chunks:
                    if chunk.finish_reason:
                        finish_reason = chunk.finish_reason
                    if chunk.content or chunk.tool_calls:
                        message: dict[str, Any] = {"type": "delta", "id": client_id}
                        if chunk.content:
                            message["content"] = chunk.content
                        if chunk.tool_calls:
                            message["tool_calls"] = chunk.tool_calls
                        await self._send(message)
        except ProviderError as exc:
            await self._send_error(client_id, gateway_error_from_provider(exc))
            return
        except asyncio.CancelledError:
            if call.cancel_reason == "client_cancelled":
                await asyncio.shield(self._send_done(client_id, call, "cancelled"))
            raise
        except Exception as exc:
            logger.error(
                "ws.request_failed",
                exc_info=exc,
                extra={"request_id": call.request_id, "error_class": type(exc).__name__},
            )
            await self._send_error(
                client_id,
                GatewayError(
                    status=500, message="Internal gateway error", error_type="server_error"
                ),
            )
            return
        await self._send_done(client_id, call, finish_reason or "stop")

    async def _send_done(self, client_id: Any, call: InferenceCall, finish_reason: str) -> None:
        usage = call.settled_usage
        await self._send(
            {
                "type": "done",
                "id": client_id,
                "model": call.served.model.name if call.served else call.route.name,
                "finish_reason": finish_reason,
                "usage": usage.to_openai() if usage else None,
                "cost_usd": format(call.cost, "f"),
                "request_id": call.request_id,
                "client_request_id": call.client_request_id,
            }
        )

    # -- teardown ----------------------------------------------------------------------
    async def disconnect(self, code: int) -> None:
        self._closing = True
        if self._auth_deadline is not None:
            self._auth_deadline.cancel()
        tasks = [t for t in self._tasks.values() if not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            # Each cancelled request settles (closes its upstream, leaves its usage event)
            # before the consumer goes away; bounded so a stuck close cannot pin the worker.
            await asyncio.wait(tasks, timeout=10)
