"""Frames that Python's json accepts but the gateway's JSON (orjson, as on HTTP) cannot carry
— integers beyond 64 bits, lone UTF-16 surrogates — are answered on a live websocket with an
error message, instead of the request's task dying silently and the client waiting forever;
the connection keeps serving afterwards."""

from __future__ import annotations

import json

import pytest
from websockets.sync.client import connect as ws_connect

from tests.routing.support import LIVE_ENV, mock_provider, model_on, route, tenant_key

pytestmark = pytest.mark.live_server_process

HELLO = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    "frame",
    [
        '{"type":"request","id":"big","model":"ws-hostile","messages":'
        '[{"role":"user","content":"hi"}],"max_tokens":' + "1" + "0" * 30 + "}",
        '{"type":"request","id":"surrogate","model":"ws-hostile","messages":'
        '[{"role":"user","content":"\\ud800"}]}',
    ],
)
def test_a_frame_orjson_cannot_carry_gets_an_error_not_silence(live_gateway, frame):
    route("ws-hostile", [model_on(mock_provider("ws-hostile-mock"), "ws-hostile-model")])
    _, _, raw = tenant_key()
    with live_gateway(env=LIVE_ENV) as base:
        url = base.replace("http://", "ws://") + "/ws/v1/chat"
        with ws_connect(url, additional_headers={"x-api-key": raw}) as ws:
            assert json.loads(ws.recv(timeout=10)) == {"type": "auth_ok"}
            ws.send(frame)
            answer = json.loads(ws.recv(timeout=10))
            assert answer["type"] == "error"
            assert answer["error"]["type"] == "invalid_request_error"
            ws.send(
                json.dumps(
                    {"type": "request", "id": "ok", "model": "ws-hostile", "messages": HELLO}
                )
            )
            kinds = []
            while not kinds or kinds[-1] not in ("done", "error"):
                kinds.append(json.loads(ws.recv(timeout=10))["type"])
            assert kinds[-1] == "done"
