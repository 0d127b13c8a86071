"""The legacy text completions API (`POST /v1/completions`) over our chat types, as pure
functions: a prompt becomes one user message, the answer's text becomes a choice's `text`.

A list of prompts gives one choice per prompt (times `n`), in prompt order, as OpenAI does.
Token-array prompts are refused (which tokenizer they were made with is unknown here), and so
is `suffix` (insertion needs a model trained for it); `echo` prepends the prompt."""

from __future__ import annotations

import random
import time
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic import ValidationError as PydanticValidationError

from providers.types import ChatRequest, ChatResponse, Chunk, ProviderError, Usage
from routing.errors import GatewayError
from routing.sse import DONE, sse_event

MAX_PROMPTS = 32
# OpenAI's default when a completions request gives no max_tokens.
DEFAULT_MAX_TOKENS = 16


class CompletionsInvalid(GatewayError):
    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(
            status=400,
            message=message,
            code=code or ("invalid_value" if param else "invalid_request"),
            param=param,
        )


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


class CompletionsIn(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=256)
    prompt: str | list[str] | list[int] | list[list[int]] = ""
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    n: int = Field(default=1, ge=1, le=16)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    echo: bool = False
    suffix: str | None = None
    user: str | None = None
    seed: int | None = None

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value: str | list[str] | None) -> list[str] | None:
        if isinstance(value, str):
            return [value]
        if value is not None and len(value) > 4:
            raise ValueError("at most 4 stop sequences")
        return value


def completions_request_parse(body: bytes | dict) -> CompletionsIn:
    try:
        data = body if isinstance(body, dict) else orjson.loads(body)
    except orjson.JSONDecodeError:
        raise CompletionsInvalid("Request body is not valid JSON", code="invalid_json") from None
    if not isinstance(data, dict):
        raise CompletionsInvalid("Request body must be a JSON object")
    try:
        payload = CompletionsIn.model_validate(data)
    except PydanticValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first.get("loc", ()) if not str(p).startswith("list["))
        raise CompletionsInvalid(
            f"{first.get('msg', 'Invalid value')}" + (f" ({param})" if param else ""),
            param=param or None,
        ) from None
    if payload.suffix:
        raise CompletionsInvalid(
            "suffix is not supported by this gateway", param="suffix", code="unsupported_parameter"
        )
    prompts = completion_prompts(payload)
    if len(prompts) * payload.n > MAX_PROMPTS:
        raise CompletionsInvalid(
            f"at most {MAX_PROMPTS} choices per request (prompts x n)", param="n"
        )
    if payload.stream and len(prompts) * payload.n > 1:
        raise CompletionsInvalid(
            "stream=true takes one prompt and n=1 here; send one request per choice",
            param="n" if payload.n > 1 else "prompt",
            code="unsupported_parameter",
        )
    return payload


def completion_prompts(payload: CompletionsIn) -> list[str]:
    prompt = payload.prompt
    if isinstance(prompt, str):
        return [prompt]
    if not prompt:
        return [""]
    if all(isinstance(p, str) for p in prompt):
        if len(prompt) > MAX_PROMPTS:
            raise CompletionsInvalid(f"at most {MAX_PROMPTS} prompts", param="prompt")
        return list(prompt)  # type: ignore[arg-type]
    raise CompletionsInvalid(
        "token-array prompts are not supported: send the prompt as text",
        param="prompt",
        code="unsupported_parameter",
    )


def chat_request_from_prompt(payload: CompletionsIn, prompt: str) -> ChatRequest:
    extra: dict[str, Any] = {}
    if payload.seed is not None:
        extra["seed"] = payload.seed
    return ChatRequest(
        model=payload.model,
        messages=[{"role": "user", "content": prompt}],
        stream=payload.stream,
        max_tokens=payload.max_tokens or DEFAULT_MAX_TOKENS,
        temperature=payload.temperature,
        top_p=payload.top_p,
        stop=payload.stop,
        include_usage=True,
        user=payload.user,
        extra=extra,
    )


def new_completion_id() -> str:
    return f"cmpl-{random.getrandbits(116):029x}"


def completion_object(
    *,
    completion_id: str,
    model: str,
    choices: list[tuple[str, ChatResponse]],
    usage: Usage,
    echo: bool,
) -> dict[str, Any]:
    """`choices` are (prompt, answer) pairs in choice order."""
    return {
        "id": completion_id,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "text": (prompt if echo else "") + (answer.content or ""),
                "index": index,
                "logprobs": None,
                "finish_reason": answer.finish_reason or "stop",
            }
            for index, (prompt, answer) in enumerate(choices)
        ],
        "usage": usage.to_openai(),
    }


class CompletionsStreamEncoder:
    """Chunks -> `text_completion` SSE events (one choice), a usage event when asked,
    then `data: [DONE]`."""

    def __init__(
        self, *, completion_id: str, model: str, include_usage: bool, echo_prompt: str | None
    ) -> None:
        self.completion_id = completion_id
        self.model = model
        self.created = int(time.time())
        self._include_usage = include_usage
        self._echo = echo_prompt

    def _event(self, choices: list[dict[str, Any]], usage: Usage | None = None) -> bytes:
        body: dict[str, Any] = {
            "id": self.completion_id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if usage is not None:
            body["usage"] = usage.to_openai()
        return sse_event(orjson.dumps(body))

    def _choice(self, text: str, finish_reason: str | None) -> dict[str, Any]:
        return {"text": text, "index": 0, "logprobs": None, "finish_reason": finish_reason}

    def encode(self, chunk: Chunk) -> bytes | None:
        out = b""
        if self._echo is not None:
            out += self._event([self._choice(self._echo, None)])
            self._echo = None
        if chunk.content or chunk.finish_reason:
            out += self._event([self._choice(chunk.content or "", chunk.finish_reason)])
        return out or None

    def error(self, exc: ProviderError) -> bytes:
        body = {
            "error": {
                "message": exc.message,
                "type": exc.error_type,
                "param": None,
                "code": exc.code,
            }
        }
        return sse_event(orjson.dumps(body))

    def finish(self, call: Any, failure: ProviderError | None) -> bytes | None:
        out = b""
        if failure is None and self._include_usage:
            out += self._event([], getattr(call, "settled_usage", None) or Usage())
        return out + DONE
