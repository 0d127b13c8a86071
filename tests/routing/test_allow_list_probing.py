"""A key limited to some models cannot tell, through any inference endpoint, which other
models the gateway serves: a name outside its allow-list is refused the same way (403
model_not_allowed) whether it exists or not, on chat, responses, completions, messages,
count_tokens and the websocket, against a live gateway; and it never reaches the upstream."""

from __future__ import annotations

import json

import httpx
import pytest
from websockets.sync.client import connect as ws_connect

from tests.factories import TenantFactory, api_key_create_for_test
from tests.routing.support import LIVE_ENV, mock_provider, model_on, route
from usage.models import UsageEvent

pytestmark = pytest.mark.live_server_process

HELLO = [{"role": "user", "content": "hi"}]

BODIES = {
    "/v1/chat/completions": lambda m: {"model": m, "messages": HELLO},
    "/v1/responses": lambda m: {"model": m, "input": "hi"},
    "/v1/completions": lambda m: {"model": m, "prompt": "hi"},
    "/v1/messages": lambda m: {"model": m, "messages": HELLO, "max_tokens": 5},
    "/v1/messages/count_tokens": lambda m: {"model": m, "messages": HELLO},
}


def _refusal(response: httpx.Response) -> tuple[int, str]:
    error = response.json()["error"]
    return response.status_code, error.get("code") or error["type"]


def test_a_limited_key_cannot_tell_existing_models_from_unknown_ones(live_gateway):
    provider = mock_provider("allow-list-mock")
    route("allowed-route", [model_on(provider, "allowed-model")])
    route("secret-route", [model_on(provider, "secret-model")])
    _, raw = api_key_create_for_test(tenant=TenantFactory(), allowed_models=["allowed-route"])
    auth = {"Authorization": f"Bearer {raw}"}
    with live_gateway(env=LIVE_ENV) as base, httpx.Client(base_url=base, timeout=30) as client:
        for path, body in BODIES.items():
            existing = client.post(path, json=body("secret-route"), headers=auth)
            unknown = client.post(path, json=body("no-such-route-xyz"), headers=auth)
            assert existing.status_code == 403, (path, existing.text)
            assert _refusal(existing) == _refusal(unknown), path
            assert "secret" not in unknown.text
            # The allowed one works (the limit is not a blanket refusal).
            assert client.post(path, json=body("allowed-route"), headers=auth).status_code == 200
        # /v1/models/{id} already answered alike (404) for both.
        assert client.get("/v1/models/secret-route", headers=auth).status_code == 404
        url = base.replace("http://", "ws://") + "/ws/v1/chat"
        with ws_connect(url, additional_headers={"x-api-key": raw}) as ws:
            assert json.loads(ws.recv(timeout=10)) == {"type": "auth_ok"}
            answers = []
            for i, model in enumerate(["secret-route", "no-such-route-xyz"]):
                ws.send(
                    json.dumps({"type": "request", "id": str(i), "model": model, "messages": HELLO})
                )
                answers.append(json.loads(ws.recv(timeout=10)))
        assert [a["type"] for a in answers] == ["error", "error"]
        assert answers[0]["error"]["code"] == answers[1]["error"]["code"] == "model_not_allowed"
    assert (
        not UsageEvent.objects.filter(model__in=["secret-model"])
        .exclude(outcome="rejected")
        .exists()
    )
