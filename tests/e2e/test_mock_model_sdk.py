"""The built-in mock, driven by the official openai SDK through a live gateway: every client
feature works without a provider key (tools, structured output, embeddings in the SDK's
default base64 encoding and in floats, streams)."""

from __future__ import annotations

import json

import openai
import pytest
from pydantic import BaseModel

from tests.routing.support import caches_clear, mock_provider, model_on, route, tenant_key

pytestmark = pytest.mark.live_server_process

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
            "required": ["city", "unit"],
        },
    },
}
HELLO = [{"role": "user", "content": "Weather in Paris?"}]


class Forecast(BaseModel):
    city: str
    high: int
    rain: bool


@pytest.fixture
def mock_key(transactional_db) -> str:
    provider = mock_provider("mock-sdk", embedding_dimensions=12)
    route("mock-chat", [model_on(provider, "mock-sdk-model", supports_embeddings=True)])
    _, _, raw = tenant_key()
    caches_clear()
    return raw


def test_openai_sdk_gets_tool_calls_structured_output_and_embeddings_from_the_mock(
    live_gateway, mock_key
):
    with live_gateway(env={"GATEWAY_USAGE_WRITE_MODE": "direct"}) as base:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key=mock_key, max_retries=0)
        called = client.chat.completions.create(
            model="mock-chat", messages=HELLO, tools=[WEATHER], tool_choice="required"
        )
        [call] = called.choices[0].message.tool_calls
        arguments = json.loads(call.function.arguments)
        assert call.function.name == "get_weather" and arguments["unit"] in ("c", "f")
        assert called.choices[0].finish_reason == "tool_calls"

        streamed = client.chat.completions.create(
            model="mock-chat", messages=HELLO, tools=[WEATHER], stream=True
        )
        pieces = [
            c.choices[0].delta.tool_calls[0].function.arguments or ""
            for c in streamed
            if c.choices and c.choices[0].delta.tool_calls
        ]
        assert json.loads("".join(pieces)) == arguments

        parsed = client.chat.completions.parse(
            model="mock-chat", messages=HELLO, response_format=Forecast
        )
        forecast = parsed.choices[0].message.parsed
        assert isinstance(forecast, Forecast) and isinstance(forecast.rain, bool)

        default = client.embeddings.create(model="mock-chat", input=["a", "b"])  # base64
        assert [len(d.embedding) for d in default.data] == [12, 12]
        floats = client.embeddings.create(
            model="mock-chat", input="a", dimensions=32, encoding_format="float"
        )
        assert len(floats.data[0].embedding) == 32
        again = client.embeddings.create(model="mock-chat", input="a", dimensions=32)
        assert [round(x, 4) for x in again.data[0].embedding] == [
            round(x, 4) for x in floats.data[0].embedding
        ]
        with pytest.raises(openai.BadRequestError):
            client.embeddings.create(model="mock-chat", input="a", dimensions=100_000)
