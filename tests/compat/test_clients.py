"""Client libraries people use today, unmodified, pointed at a live gateway: the official
openai and anthropic SDKs, the OpenAI Agents SDK (its default Responses model), pydantic-ai
(Responses and Chat models) and langchain-openai. Over the built-in mock (which answers tool
calls and structured output) and the fake upstream (OpenAI and Anthropic wire formats)."""

from __future__ import annotations

import asyncio

import anthropic
import openai
import pytest
from pydantic import BaseModel

from providers.models import ProviderKind
from tests.routing.support import (
    LIVE_ENV,
    caches_clear,
    fake_provider,
    mock_provider,
    model_on,
    route,
    tenant_key,
)

pytestmark = pytest.mark.live_server_process

HELLO = [{"role": "user", "content": "hello"}]


class Forecast(BaseModel):
    city: str
    high: int
    rain: bool


def get_weather(city: str) -> str:
    """Weather in a city."""
    return f"sunny in {city}"


@pytest.fixture
def catalog(transactional_db, fake_upstream_thread):
    fake = fake_upstream_thread
    route(
        "c-mock",
        [model_on(mock_provider("compat-mock"), "c-mock-model", supports_embeddings=True)],
    )
    route(
        "c-openai",
        [
            model_on(
                fake_provider(fake, ProviderKind.OPENAI), "c-openai-model", supports_embeddings=True
            )
        ],
    )
    route("c-claude", [model_on(fake_provider(fake, ProviderKind.ANTHROPIC), "c-claude-model")])
    route("c-limited", [model_on(mock_provider("compat-limited"), "c-limited-model")])
    _, _, raw = tenant_key()
    _, _, narrow = tenant_key(allowed_models=["c-mock"])
    caches_clear()
    return {"raw": raw, "narrow": narrow, "fake": fake}


def test_openai_python(live_gateway, catalog, cells):
    client_name = f"openai (Python {openai.__version__})"
    with live_gateway(env=LIVE_ENV) as base:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key=catalog["raw"], max_retries=0)
        for model in ("c-mock", "c-openai", "c-claude"):
            with cells.cell(client_name, f"chat ({model})"):
                assert client.chat.completions.create(model=model, messages=HELLO).choices[0]
            with cells.cell(client_name, f"stream with usage ({model})"):
                chunks = list(
                    client.chat.completions.create(
                        model=model,
                        messages=HELLO,
                        stream=True,
                        stream_options={"include_usage": True},
                    )
                )
                assert chunks[-1].usage.total_tokens > 0
            with cells.cell(client_name, f"responses create + stream ({model})"):
                assert client.responses.create(model=model, input="hi").output_text
                with client.responses.stream(model=model, input="hi") as stream:
                    assert stream.get_final_response().output_text
            with cells.cell(client_name, f"completions ({model})"):
                assert client.completions.create(model=model, prompt="hi").choices[0].text
        with cells.cell(client_name, "tools (mock)"):
            tool = {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "parameters": {
                        "type": "object",
                        "properties": {"city": {"type": "string"}},
                        "required": ["city"],
                    },
                },
            }
            called = client.chat.completions.create(model="c-mock", messages=HELLO, tools=[tool])
            assert called.choices[0].message.tool_calls[0].function.name == "get_weather"
        with cells.cell(client_name, "structured output (mock)"):
            parsed = client.chat.completions.parse(
                model="c-mock", messages=HELLO, response_format=Forecast
            )
            assert isinstance(parsed.choices[0].message.parsed, Forecast)
            assert isinstance(
                client.responses.parse(
                    model="c-mock", input="x", text_format=Forecast
                ).output_parsed,
                Forecast,
            )
        with cells.cell(client_name, "embeddings float + base64 (mock)"):
            assert len(client.embeddings.create(model="c-mock", input="a").data[0].embedding) == 16
            floats = client.embeddings.create(
                model="c-mock", input="a", encoding_format="float", dimensions=8
            )
            assert len(floats.data[0].embedding) == 8
        with cells.cell(client_name, "embeddings (OpenAI upstream)"):
            assert client.embeddings.create(model="c-openai", input=["a", "b"]).data[1].embedding
        with cells.cell(client_name, "models list + retrieve"):
            assert "c-mock" in {m.id for m in client.models.list().data}
            assert client.models.retrieve("c-mock").id == "c-mock"
        with cells.cell(client_name, "n > 1"):
            assert (
                len(client.chat.completions.create(model="c-mock", messages=HELLO, n=2).choices)
                == 2
            )
        with cells.cell(client_name, "errors 401/403/404/429"):
            with pytest.raises(openai.AuthenticationError):
                openai.OpenAI(base_url=f"{base}/v1", api_key="gw-bad", max_retries=0).models.list()
            narrow = openai.OpenAI(base_url=f"{base}/v1", api_key=catalog["narrow"], max_retries=0)
            with pytest.raises(openai.PermissionDeniedError):
                narrow.chat.completions.create(model="c-openai", messages=HELLO)
            with pytest.raises(openai.NotFoundError):
                client.chat.completions.create(model="nope", messages=HELLO)
            catalog["fake"].script("429:retry_after=1")
            with pytest.raises(openai.RateLimitError):
                client.chat.completions.create(model="c-openai", messages=HELLO)


def test_anthropic_python(live_gateway, catalog, cells):
    client_name = f"anthropic (Python {anthropic.__version__})"
    with live_gateway(env=LIVE_ENV) as base:
        client = anthropic.Anthropic(base_url=base, api_key=catalog["raw"], max_retries=0)
        for model in ("c-mock", "c-openai", "c-claude"):
            with cells.cell(client_name, f"messages + stream ({model})"):
                assert client.messages.create(model=model, max_tokens=64, messages=HELLO).content
                with client.messages.stream(model=model, max_tokens=64, messages=HELLO) as s:
                    assert s.get_final_message().usage.output_tokens > 0
            with cells.cell(client_name, f"count_tokens ({model})"):
                assert client.messages.count_tokens(model=model, messages=HELLO).input_tokens > 0
        with cells.cell(client_name, "tools (mock)"):
            answer = client.messages.create(
                model="c-mock",
                max_tokens=64,
                messages=HELLO,
                tools=[
                    {
                        "name": "get_weather",
                        "input_schema": {
                            "type": "object",
                            "properties": {"city": {"type": "string"}},
                        },
                    }
                ],
            )
            assert answer.stop_reason == "tool_use"
        with cells.cell(client_name, "models list + retrieve"):
            assert "c-mock" in {m.id for m in client.models.list().data}
            assert client.models.retrieve("c-mock").type == "model"
        with cells.cell(client_name, "errors 401/403/404/429"):
            with pytest.raises(anthropic.AuthenticationError):
                anthropic.Anthropic(base_url=base, api_key="gw-bad", max_retries=0).models.list()
            narrow = anthropic.Anthropic(base_url=base, api_key=catalog["narrow"], max_retries=0)
            with pytest.raises(anthropic.PermissionDeniedError):
                narrow.messages.create(model="c-openai", max_tokens=8, messages=HELLO)
            with pytest.raises(anthropic.NotFoundError):
                client.messages.create(model="nope", max_tokens=8, messages=HELLO)
            catalog["fake"].script("429:retry_after=1")
            with pytest.raises(anthropic.RateLimitError):
                client.messages.create(model="c-claude", max_tokens=8, messages=HELLO)


def test_openai_agents_sdk_default_responses_model_runs_a_tool_call(live_gateway, catalog, cells):
    import agents

    client_name = f"openai-agents {agents.__version__}"
    with live_gateway(env=LIVE_ENV) as base:
        agents.set_tracing_disabled(True)
        weather = agents.function_tool(get_weather)

        def client() -> openai.AsyncOpenAI:  # one per event loop (asyncio.run)
            return openai.AsyncOpenAI(base_url=f"{base}/v1", api_key=catalog["raw"], max_retries=0)

        async def run(model_name: str, *, streamed: bool) -> agents.RunResult:
            model = agents.OpenAIResponsesModel(model=model_name, openai_client=client())
            agent = agents.Agent(name="w", instructions="Use tools.", tools=[weather], model=model)
            if not streamed:
                return await agents.Runner.run(agent, "Weather in Paris?", max_turns=4)
            result = agents.Runner.run_streamed(agent, "Weather in Paris?", max_turns=4)
            async for _event in result.stream_events():
                pass
            return result

        with cells.cell(client_name, "agent with a tool call (Responses, mock)"):
            result = asyncio.run(run("c-mock", streamed=False))
            kinds = [item.type for item in result.new_items]
            assert "tool_call_item" in kinds and "tool_call_output_item" in kinds
            assert result.final_output
        with cells.cell(client_name, "streamed agent with a tool call (Responses, mock)"):
            result = asyncio.run(run("c-mock", streamed=True))
            assert "tool_call_output_item" in [item.type for item in result.new_items]
            assert result.final_output
        with cells.cell(client_name, "agent (Chat Completions model, mock)"):
            model = agents.OpenAIChatCompletionsModel(model="c-mock", openai_client=client())
            agent = agents.Agent(name="w", tools=[weather], model=model)
            result = asyncio.run(agents.Runner.run(agent, "Weather in Paris?", max_turns=4))
            assert result.final_output


def test_pydantic_ai(live_gateway, catalog, cells):
    import pydantic_ai
    from pydantic_ai.models.openai import OpenAIChatModel, OpenAIResponsesModel
    from pydantic_ai.providers.openai import OpenAIProvider

    client_name = f"pydantic-ai {pydantic_ai.__version__}"
    with live_gateway(env=LIVE_ENV) as base:
        provider = OpenAIProvider(base_url=f"{base}/v1", api_key=catalog["raw"])
        for label, model_class in (("Responses", OpenAIResponsesModel), ("Chat", OpenAIChatModel)):
            model = model_class("c-mock", provider=provider)
            with cells.cell(client_name, f"tool call ({label}, mock)"):
                agent = pydantic_ai.Agent(model, tools=[get_weather])
                result = agent.run_sync("Weather in Paris?")
                assert result.output
                assert any(
                    part.part_kind == "tool-return"
                    for message in result.all_messages()
                    for part in message.parts
                )
            with cells.cell(client_name, f"structured output ({label}, mock)"):
                agent = pydantic_ai.Agent(model, output_type=Forecast)
                assert isinstance(agent.run_sync("Forecast?").output, Forecast)
            with cells.cell(client_name, f"text ({label}, OpenAI upstream)"):
                agent = pydantic_ai.Agent(model_class("c-openai", provider=provider))
                assert agent.run_sync("hello").output


def test_langchain_openai(live_gateway, catalog, cells):
    import langchain_openai
    from langchain_openai import ChatOpenAI, OpenAIEmbeddings

    client_name = "langchain-openai " + getattr(langchain_openai, "__version__", "1.7.4")
    with live_gateway(env=LIVE_ENV) as base:
        common = {"base_url": f"{base}/v1", "api_key": catalog["raw"], "max_retries": 0}
        for model in ("c-mock", "c-openai", "c-claude"):
            chat = ChatOpenAI(model=model, **common)
            with cells.cell(client_name, f"invoke + stream ({model})"):
                assert chat.invoke("hello").content
                assert "".join(chunk.content for chunk in chat.stream("hello"))
        mock = ChatOpenAI(model="c-mock", **common)
        with cells.cell(client_name, "bind_tools (mock)"):
            message = mock.bind_tools([get_weather]).invoke("Weather in Paris?")
            assert message.tool_calls[0]["name"] == "get_weather"
        with cells.cell(client_name, "with_structured_output (mock)"):
            assert isinstance(mock.with_structured_output(Forecast).invoke("Forecast?"), Forecast)
        with cells.cell(client_name, "Responses API (use_responses_api, mock)"):
            responses = ChatOpenAI(model="c-mock", use_responses_api=True, **common)
            assert responses.invoke("hello").text
        with cells.cell(client_name, "embeddings (mock)"):
            embeddings = OpenAIEmbeddings(
                model="c-mock", check_embedding_ctx_length=False, **common
            )
            assert len(embeddings.embed_documents(["a", "b"])) == 2


def test_langchain_anthropic(live_gateway, catalog, cells):
    import langchain_anthropic
    from langchain_anthropic import ChatAnthropic

    client_name = f"langchain-anthropic {langchain_anthropic.__version__}"
    with live_gateway(env=LIVE_ENV) as base:
        common = {"base_url": base, "api_key": catalog["raw"], "max_retries": 0, "max_tokens": 256}
        for model in ("c-mock", "c-openai", "c-claude"):
            chat = ChatAnthropic(model=model, **common)
            with cells.cell(client_name, f"invoke + stream ({model})"):
                assert chat.invoke("hello").content
                assert "".join(str(chunk.content) for chunk in chat.stream("hello"))
        mock = ChatAnthropic(model="c-mock", **common)
        with cells.cell(client_name, "bind_tools (mock)"):
            message = mock.bind_tools([get_weather]).invoke("Weather in Paris?")
            assert message.tool_calls[0]["name"] == "get_weather"
        with cells.cell(client_name, "with_structured_output (mock)"):
            assert isinstance(mock.with_structured_output(Forecast).invoke("Forecast?"), Forecast)
        with cells.cell(client_name, "extended thinking (Anthropic upstream)"):
            thinking = ChatAnthropic(
                model="c-claude", thinking={"type": "enabled", "budget_tokens": 1024}, **common
            )
            blocks = thinking.invoke("hello").content
            assert [b["type"] for b in blocks][0] == "thinking" and blocks[0]["signature"]
