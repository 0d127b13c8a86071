"""An ASGI guard around the websocket application (issue 14, item 6).

uvicorn's `--ws-max-size` (in `make serve`) caps a message at the socket, but daphne
(`runserver`) and the tests do not run uvicorn, and nothing caps what an unauthenticated
client may send. This guard sits between the server and the consumers and checks every
incoming message before a consumer sees it:

- before authentication (until the consumer sends `auth_ok`): at most
  `GATEWAY_WS_PREAUTH_MAX_MESSAGES` messages of at most `GATEWAY_WS_PREAUTH_MAX_BYTES` each;
  beyond either, an error message and close 1008 (policy violation);
- after it: messages of at most `GATEWAY_WS_MAX_MESSAGE_BYTES` (close 1009, message too big);
- an address past its limit of authentication failures (tenants.unauth, shared with HTTP) has
  its handshake refused unless its header carries a key the process knows; every
  authentication error the consumer sends before `auth_ok` counts as one failure;
- JSON nested deeper than `GATEWAY_WS_MAX_JSON_DEPTH` is answered with an error message and
  never reaches the consumer (whose JSON decoder would raise RecursionError and drop the
  connection with a traceback); the connection stays open.

An error message has the consumer's shape: `{"type": "error", "id": null, "error": {...}}`."""

from __future__ import annotations

import logging
import re
from itertools import accumulate
from typing import Any

import orjson
from django.conf import settings
from django.db import Error as DbError

from tenants.keys import api_key_from_headers
from tenants.unauth import unauth_failure_note, unauth_refusal

logger = logging.getLogger("gateway.asgi")

CLOSE_POLICY_VIOLATION = 1008
CLOSE_TOO_BIG = 1009

_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKETS = re.compile(r"[^\[\]{}]+")
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


def json_depth_exceeds(text: str, limit: int) -> bool:
    """True when the JSON text nests arrays/objects deeper than `limit`, without parsing it:
    strings are dropped and the running depth of the brackets left is computed by C-level
    iterators (a few hundred ms for 4 MiB of brackets; nothing for ordinary messages, which
    hold fewer brackets than the limit)."""
    if text.count("[") + text.count("{") <= limit:
        return False
    brackets = _NOT_BRACKETS.sub("", _STRINGS.sub("", text))
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0) > limit


def _error_frame(message: str, code: str) -> dict[str, Any]:
    body = {
        "type": "error",
        "id": None,
        "error": {"message": message, "type": "invalid_request_error", "param": None, "code": code},
    }
    return {"type": "websocket.send", "text": orjson.dumps(body).decode()}


class WebsocketGuard:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive, send) -> None:
        state = {"accepted": False, "authenticated": False, "pre_auth": 0, "closed": False}
        client = (scope.get("client") or ("",))[0] or ""
        headers = dict(scope.get("headers") or ())
        raw_key = api_key_from_headers(
            headers.get(b"authorization", b"").decode("latin-1") or None,
            headers.get(b"x-api-key", b"").decode("latin-1") or None,
        )
        if await unauth_refusal(client=client, raw_key=raw_key) is not None:
            # Too many authentication failures from this address this minute (tenants.unauth):
            # the handshake is refused (HTTP 403) before a consumer exists.
            logger.warning("ws.guard_refused", extra={"code": "too_many_unauthenticated"})
            message = await receive()
            if message["type"] == "websocket.connect":
                await send({"type": "websocket.close", "code": CLOSE_POLICY_VIOLATION})
            return

        async def guarded_send(message: dict[str, Any]) -> None:
            kind = message["type"]
            if kind == "websocket.accept":
                state["accepted"] = True
            elif kind == "websocket.close":
                state["closed"] = True
            elif kind == "websocket.send" and not state["authenticated"]:
                text = message.get("text") or ""
                if '"auth_ok"' in text:
                    state["authenticated"] = True
                elif '"authentication_error"' in text:
                    await unauth_failure_note(client=client)
            await send(message)

        async def refuse(message: str, code: str, close_code: int) -> dict[str, Any]:
            logger.warning(
                "ws.guard_refused",
                extra={"code": code, "authenticated": state["authenticated"]},
            )
            if state["accepted"] and not state["closed"]:
                await send(_error_frame(message, code))
                await send({"type": "websocket.close", "code": close_code})
                state["closed"] = True
            return {"type": "websocket.disconnect", "code": close_code}

        async def guarded_receive() -> dict[str, Any]:
            while True:
                message = await receive()
                if message["type"] != "websocket.receive":
                    return message
                text, data = message.get("text"), message.get("bytes")
                size = len(text.encode()) if text is not None else len(data or b"")
                if not state["authenticated"]:
                    state["pre_auth"] += 1
                    if size > settings.GATEWAY_WS_PREAUTH_MAX_BYTES:
                        return await refuse(
                            "Message too large before authentication",
                            "message_too_large",
                            CLOSE_POLICY_VIOLATION,
                        )
                    if state["pre_auth"] > settings.GATEWAY_WS_PREAUTH_MAX_MESSAGES:
                        return await refuse(
                            "Too many messages before authentication",
                            "too_many_unauthenticated_messages",
                            CLOSE_POLICY_VIOLATION,
                        )
                elif size > settings.GATEWAY_WS_MAX_MESSAGE_BYTES:
                    return await refuse("Message too large", "message_too_large", CLOSE_TOO_BIG)
                if text is not None and json_depth_exceeds(
                    text, settings.GATEWAY_WS_MAX_JSON_DEPTH
                ):
                    if state["accepted"] and not state["closed"]:
                        await send(
                            _error_frame(
                                "JSON nested deeper than "
                                f"{settings.GATEWAY_WS_MAX_JSON_DEPTH} levels",
                                "invalid_message",
                            )
                        )
                    continue
                return message

        try:
            await self.app(scope, guarded_receive, guarded_send)
        except DbError as exc:
            # A key lookup with the database down and no cached copy (tenants.outage).
            logger.warning("ws.database_unavailable", extra={"error_class": type(exc).__name__})
            if state["accepted"] and not state["closed"]:
                frame = _error_frame(
                    "The gateway cannot reach its database; retry shortly",
                    "database_unavailable",
                )
                await send(frame)
                await send({"type": "websocket.close", "code": 1011})
