"""Normalized types every adapter speaks: one request, one response, one chunk, one usage,
and a family of typed provider errors that the gateway maps to client statuses in one place."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    # True when counted by the gateway (tokenizer) because the upstream did not report it.
    estimated: bool = False

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_openai(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }
        if self.cache_read_tokens:
            data["prompt_tokens_details"] = {"cached_tokens": self.cache_read_tokens}
        return data


@dataclass(frozen=True, slots=True)
class NativeRequest:
    """The client's request in a provider protocol the ingress spoke (today: "anthropic" from
    /v1/messages): an adapter of that protocol sends `body` as it is (only the model, stream
    and max_tokens set by routing), plus `headers` (e.g. anthropic-beta), so nothing the
    normalized request cannot express is lost. Adapters of other protocols ignore it."""

    protocol: str
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class ChatRequest:
    """An OpenAI-shaped chat request after validation. `model` is the upstream model id once
    an adapter receives it; `body` keeps the client's original fields for pass-through."""

    model: str
    messages: list[dict[str, Any]]
    stream: bool = False
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    include_usage: bool = False
    user: str | None = None
    # Every other OpenAI field the client sent (n, seed, response_format, ...), forwarded as is.
    extra: dict[str, Any] = field(default_factory=dict)
    native: NativeRequest | None = None


@dataclass(slots=True)
class ChatResponse:
    id: str
    model: str
    content: str | None
    finish_reason: str | None
    usage: Usage
    tool_calls: list[dict[str, Any]] | None = None
    created: int = 0
    # The upstream's own OpenAI-shaped body, when it has one, for cheap pass-through.
    raw: dict[str, Any] | None = None
    # The upstream's body in the request's native protocol (request.native), when it has one.
    native: dict[str, Any] | None = None


@dataclass(slots=True)
class Chunk:
    """One streamed delta. `raw` is the upstream's OpenAI-shaped `data:` payload (bytes, no
    framing) when the adapter can forward it verbatim; usage arrives on the last chunk."""

    content: str | None = None
    role: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    finish_reason: str | None = None
    usage: Usage | None = None
    raw: bytes | None = None
    # The upstream's event in the request's native protocol (request.native), SSE-framed, for
    # verbatim forwarding; a chunk may carry only this (events with no OpenAI form).
    native: bytes | None = None


@dataclass(slots=True)
class EmbeddingRequest:
    model: str
    input: list[str] | list[list[int]]
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class EmbeddingResponse:
    model: str
    data: list[list[float]] | list[str]
    usage: Usage
    raw: dict[str, Any] | None = None


class ProviderError(Exception):
    """Base of the typed errors. `status`, `code` and `message` are what the client sees;
    `retryable` tells strategies whether a retry or a fallback may help.

    `detail` (also `str(exc)`) is the full text for logs: upstream error bodies (redacted),
    provider and upstream model names. `message` is generic per class (plus the upstream's
    status), so none of that reaches a client; only a bad request the gateway itself detected
    (no upstream status) keeps its own text, which names the client's mistake."""

    status = 502
    error_type = "upstream_error"
    code = "upstream_error"
    retryable = True
    public_message = "The upstream provider failed."
    own_text_is_public = False

    def __init__(self, message: str, *, upstream_status: int | None = None) -> None:
        super().__init__(message)
        self.detail = message
        self.upstream_status = upstream_status
        if self.own_text_is_public and upstream_status is None:
            self.message = message
        elif upstream_status is not None:
            self.message = f"{self.public_message} (upstream status {upstream_status})"
        else:
            self.message = self.public_message


class ProviderAuthError(ProviderError):
    status = 502
    error_type = "upstream_error"
    code = "upstream_auth_failed"
    public_message = "The upstream provider rejected the gateway's credentials."
    retryable = True  # another deployment in the chain may have valid credentials


class ProviderRateLimited(ProviderError):
    status = 429
    error_type = "rate_limit_error"
    code = "upstream_rate_limited"
    public_message = "The upstream provider is rate limiting requests; retry later."
    retryable = True

    def __init__(
        self, message: str, *, retry_after: float | None = None, upstream_status: int | None = 429
    ) -> None:
        super().__init__(message, upstream_status=upstream_status)
        self.retry_after = retry_after


class ProviderTimeout(ProviderError):
    status = 504
    error_type = "timeout_error"
    code = "upstream_timeout"
    public_message = "The upstream provider timed out."
    retryable = True


class ProviderUnavailable(ProviderError):
    """5xx, 529 overloaded, connection refused or reset."""

    status = 502
    error_type = "upstream_error"
    code = "upstream_unavailable"
    public_message = "The upstream provider is unavailable."
    retryable = True


class ProviderCredentialsUnavailable(ProviderError):
    """The provider's credential cannot be loaded (a sealed secret no configured key opens, a
    secret_env name not allowed or unset): the request is not sent rather than sent with an
    empty credential. Another deployment in the chain may still serve it."""

    status = 503
    error_type = "upstream_error"
    code = "upstream_credentials_unavailable"
    public_message = "The upstream provider has no usable credentials configured."
    retryable = True


class ProviderBadRequest(ProviderError):
    status = 400
    error_type = "invalid_request_error"
    code = "upstream_bad_request"
    public_message = "The upstream provider rejected the request."
    own_text_is_public = True  # when raised by our own checks (no upstream status)
    retryable = False


class ContextTooLong(ProviderBadRequest):
    code = "context_length_exceeded"
    public_message = "The request exceeds the model's context window."


class ContentFiltered(ProviderBadRequest):
    code = "content_filter"
    public_message = "The upstream provider's content filter rejected the request."


class ProviderProtocolError(ProviderError):
    """The upstream answered something we cannot parse (malformed JSON, a cut stream)."""

    status = 502
    error_type = "upstream_error"
    code = "upstream_malformed_response"
    public_message = "The upstream provider answered with a malformed response."
    retryable = True


class EmbeddingsNotSupported(ProviderBadRequest):
    code = "embeddings_not_supported"
    public_message = "This model does not support embeddings."
    own_text_is_public = False
