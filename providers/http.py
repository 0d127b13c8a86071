"""The one outbound HTTP module: pooled aiohttp sessions per provider and event loop, explicit
timeouts from the provider's configuration, and the single place where transport failures and
upstream statuses become typed provider errors.

Timeouts (all from ProviderConfig):
- connect_timeout_s: TCP (and TLS) connect, enforced by aiohttp's sock_connect;
- first_byte_timeout_s: from the start of the request until the status line and headers;
- stream_idle_timeout_s: the longest gap between two reads of the body (stream chunks, or the
  whole body of a non-streamed answer);
- total_timeout_s: the whole exchange, body included; every phase deadline is capped by it.

Nothing here ever formats request headers, the secret or the URL's query into an error message
or a log record: messages are built from our own words plus the upstream's error text, which
is redacted (the secret and anything shaped like an API key) before it is used.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import functools
import logging
import re
import time
from collections.abc import AsyncIterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson

from providers.types import (
    ContentFiltered,
    ContextTooLong,
    ProviderAuthError,
    ProviderBadRequest,
    ProviderError,
    ProviderProtocolError,
    ProviderRateLimited,
    ProviderTimeout,
    ProviderUnavailable,
)

if TYPE_CHECKING:  # adapters import this module; the config type is only an annotation here
    from providers.adapters.base import ProviderConfig

logger = logging.getLogger("gateway.providers.http")

USER_AGENT = "llm-gateway/0.1 (+aiohttp)"
JSON_CONTENT_TYPE = "application/json"
# Error bodies are read for their message only; a misbehaving upstream cannot make us buffer
# more than this.
_ERROR_BODY_LIMIT = 64 * 1024
_MESSAGE_LIMIT = 500
_DEFAULT_POOL_LIMIT = 256
_DEFAULT_KEEPALIVE_S = 30.0

# Extra headers for the upstream calls made in the current context (W3C trace context:
# traceparent, tracestate). The caller sets them around one upstream call; they are added to
# whatever the adapter sends and never logged.
outbound_headers: ContextVar[Mapping[str, str] | None] = ContextVar(
    "outbound_headers", default=None
)


# -- pooled sessions ---------------------------------------------------------------------


@dataclass(slots=True)
class _Pool:
    session: aiohttp.ClientSession
    signature: tuple[Any, ...]


# Sessions are bound to the event loop that created them, so pools are kept per loop: a worker
# has one loop, but tests (and async_to_sync in admin actions) run several over a process's life.
_loops: dict[int, tuple[asyncio.AbstractEventLoop, dict[int, _Pool]]] = {}
_closing: set[asyncio.Task[None]] = set()


def _pool_signature(config: ProviderConfig) -> tuple[Any, ...]:
    options = config.options
    return (
        int(options.get("max_connections", _DEFAULT_POOL_LIMIT)),
        float(options.get("keepalive_s", _DEFAULT_KEEPALIVE_S)),
        bool(options.get("verify_tls", True)),
    )


def _session_new(signature: tuple[Any, ...]) -> aiohttp.ClientSession:
    limit, keepalive_s, verify_tls = signature
    connector = aiohttp.TCPConnector(
        limit=limit,
        limit_per_host=0,
        keepalive_timeout=keepalive_s,
        ttl_dns_cache=300,
        ssl=None if verify_tls else False,
    )
    return aiohttp.ClientSession(
        connector=connector,
        # Phase deadlines are ours (see module doc); the session only bounds the connect.
        timeout=aiohttp.ClientTimeout(total=None, connect=None, sock_read=None),
        headers={"User-Agent": USER_AGENT},
        auto_decompress=True,
        trust_env=False,
        raise_for_status=False,
    )


def _abandon(session: aiohttp.ClientSession) -> None:
    """Forget a session whose loop is closed: nothing can be awaited there any more, so mark
    its connector closed (no I/O happens on a closed loop) to avoid unclosed-session noise."""
    connector = session.connector
    if connector is not None and not connector.closed:
        with contextlib.suppress(Exception):
            connector._close()  # noqa: SLF001 - the only sync close aiohttp offers


def _close_later(loop: asyncio.AbstractEventLoop, session: aiohttp.ClientSession) -> None:
    task = loop.create_task(session.close())
    _closing.add(task)
    task.add_done_callback(_closing.discard)


def _pools_of_running_loop() -> dict[int, _Pool]:
    loop = asyncio.get_running_loop()
    entry = _loops.get(id(loop))
    if entry is not None and entry[0] is loop:
        return entry[1]
    # A new loop (or an id reused by a new loop object): drop pools of loops that are gone.
    for key, (old_loop, pools) in list(_loops.items()):
        if old_loop is loop or old_loop.is_closed():
            for pool in pools.values():
                _abandon(pool.session)
            del _loops[key]
    pools: dict[int, _Pool] = {}
    _loops[id(loop)] = (loop, pools)
    return pools


def http_pool_stats() -> dict[int, tuple[int, int, int]]:
    """Connections of this process's upstream pools by provider id: (in use, idle, limit),
    summed over event loops. Read-only peeks at aiohttp's connector (for metrics)."""
    stats: dict[int, tuple[int, int, int]] = {}
    for _loop, pools in list(_loops.values()):
        for provider_id, pool in list(pools.items()):
            connector = pool.session.connector
            if connector is None or connector.closed:
                continue
            in_use = len(getattr(connector, "_acquired", ()))
            idle = sum(len(conns) for conns in getattr(connector, "_conns", {}).values())
            before = stats.get(provider_id, (0, 0, 0))
            stats[provider_id] = (
                before[0] + in_use,
                before[1] + idle,
                before[2] + int(connector.limit or 0),
            )
    return stats


def http_session(config: ProviderConfig) -> aiohttp.ClientSession:
    """The pooled session of one provider on the running loop (created on first use)."""
    pools = _pools_of_running_loop()
    pool = pools.get(config.id)
    signature = _pool_signature(config)
    if pool is not None and pool.signature == signature and not pool.session.closed:
        return pool.session
    if pool is not None and not pool.session.closed:
        # The pool settings changed: let requests in flight finish on the old session.
        _close_later(asyncio.get_running_loop(), pool.session)
    session = _session_new(signature)
    pools[config.id] = _Pool(session=session, signature=signature)
    return session


async def http_client_close(provider_id: int) -> None:
    """Close one provider's pool on the running loop (when its configuration is dropped)."""
    pools = _pools_of_running_loop()
    pool = pools.pop(provider_id, None)
    if pool is not None:
        await pool.session.close()


async def http_clients_close() -> None:
    """Close every pool of the running loop and forget pools of closed loops (shutdown)."""
    loop = asyncio.get_running_loop()
    sessions: list[aiohttp.ClientSession] = []
    for key, (owner, pools) in list(_loops.items()):
        if owner is loop:
            sessions.extend(pool.session for pool in pools.values())
            del _loops[key]
        elif owner.is_closed():
            for pool in pools.values():
                _abandon(pool.session)
            del _loops[key]
    for session in sessions:
        await session.close()
    pending = [task for task in _closing if task.get_loop() is loop]
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)


@functools.lru_cache(maxsize=64)
def _client_timeout(connect_timeout_s: float) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(
        total=None, connect=None, sock_connect=connect_timeout_s, sock_read=None
    )


# -- redaction and messages --------------------------------------------------------------

_KEY_SHAPES = re.compile(
    r"(?:sk-[A-Za-z0-9_\-*]{6,}|(?i:bearer)\s+[A-Za-z0-9._\-~+/=*]+|AIza[0-9A-Za-z_\-]{20,})"
)


def redact(text: str, secret: str = "") -> str:
    """Text safe to show a client or a log: the secret and key-shaped tokens masked."""
    if secret and len(secret) >= 4:
        text = text.replace(secret, "***")
    text = _KEY_SHAPES.sub("***", text)
    if len(text) > _MESSAGE_LIMIT:
        text = text[:_MESSAGE_LIMIT] + "..."
    return text


# -- upstream error bodies and statuses --------------------------------------------------

_CONTEXT_CODES = frozenset({"context_length_exceeded", "string_above_max_length"})
_CONTEXT_PATTERN = re.compile(
    r"context[ _]length|context window|maximum context|prompt is too long|too many (input )?tokens"
    r"|reduce the length|input is too long|exceeds the (model's )?max",
    re.IGNORECASE,
)
# Matched against the code with underscores and spaces removed.
_FILTER_CODES = frozenset({"contentfilter", "contentpolicy", "responsibleaipolicy"})
_FILTER_PATTERN = re.compile(
    r"content (management )?polic|content[ _]filter|flagged by|safety system", re.IGNORECASE
)


@dataclass(frozen=True, slots=True)
class UpstreamErrorDetail:
    code: str
    message: str


def error_detail(body: Any) -> UpstreamErrorDetail:
    """Code and message of an upstream error body in any of the shapes seen in the wild:
    OpenAI/Azure {"error": {"message", "type", "code"}}, Anthropic {"type": "error",
    "error": {"type", "message"}}, {"error": "text"}, FastAPI {"detail": ...}, {"message"}."""
    if not isinstance(body, dict):
        return UpstreamErrorDetail(code="", message="")
    error = body.get("error")
    if isinstance(error, dict):
        code = error.get("code") or error.get("type") or ""
        inner = error.get("innererror")
        if isinstance(inner, dict) and inner.get("code"):
            code = f"{code} {inner['code']}".strip()
        return UpstreamErrorDetail(code=str(code), message=str(error.get("message") or ""))
    if isinstance(error, str):
        return UpstreamErrorDetail(code=str(body.get("code") or ""), message=error)
    detail = body.get("detail")
    if detail is not None:
        return UpstreamErrorDetail(code="", message=str(detail))
    return UpstreamErrorDetail(
        code=str(body.get("code") or ""), message=str(body.get("message") or "")
    )


def _parse_duration_s(value: str) -> float | None:
    """'2', '2.5', '20ms', '1s', '6m0s', '1h2m3.5s' -> seconds."""
    value = value.strip()
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    total = 0.0
    matched = False
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", value):
        matched = True
        total += float(number) * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[unit]
    return total if matched else None


def retry_after_from_headers(headers: Mapping[str, str]) -> float | None:
    """Seconds the upstream asks us to wait: retry-after-ms, Retry-After (seconds or an HTTP
    date), then the rate-limit reset headers (durations, epoch seconds or RFC 3339 times)."""
    value = headers.get("retry-after-ms")
    if value:
        with contextlib.suppress(ValueError):
            return max(0.0, float(value) / 1000.0)
    value = headers.get("retry-after")
    if value:
        seconds = _parse_duration_s(value)
        if seconds is not None:
            return max(0.0, seconds)
        with contextlib.suppress(TypeError, ValueError, IndexError):
            when = email.utils.parsedate_to_datetime(value)
            return max(0.0, when.timestamp() - time.time())
    resets: list[float] = []
    for name in (
        "x-ratelimit-reset",
        "x-ratelimit-reset-requests",
        "x-ratelimit-reset-tokens",
        "anthropic-ratelimit-requests-reset",
        "anthropic-ratelimit-tokens-reset",
    ):
        value = headers.get(name)
        if not value:
            continue
        seconds = _parse_duration_s(value)
        if seconds is None:
            seconds = _rfc3339_delta_s(value)
        elif seconds > 1_000_000_000:  # an epoch timestamp, not a duration
            seconds = seconds - time.time()
        if seconds is not None:
            resets.append(max(0.0, seconds))
    return max(resets) if resets else None


def _rfc3339_delta_s(value: str) -> float | None:
    from datetime import datetime

    with contextlib.suppress(ValueError):
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() - time.time()
    return None


def error_for_status(
    config: ProviderConfig,
    status: int,
    *,
    body: Any = None,
    headers: Mapping[str, str] | None = None,
) -> ProviderError:
    """The typed error for a non-2xx upstream answer (or an in-stream error event whose
    status we infer). The one status mapping of the gateway."""
    detail = error_detail(body)
    upstream_text = redact(detail.message, config.secret) if detail.message else ""
    suffix = f": {upstream_text}" if upstream_text else ""
    prefix = f"Upstream provider '{config.name}' returned {status}"
    code = detail.code.lower()
    if status in (401, 403):
        return ProviderAuthError(
            f"Upstream provider '{config.name}' rejected the gateway's credentials ({status})",
            upstream_status=status,
        )
    if status == 429:
        return ProviderRateLimited(
            f"{prefix} (rate limited){suffix}",
            retry_after=retry_after_from_headers(headers or {}),
            upstream_status=status,
        )
    if status == 408:
        return ProviderTimeout(f"{prefix} (request timeout){suffix}", upstream_status=status)
    if 400 <= status < 500:
        if any(c in code for c in _CONTEXT_CODES) or _CONTEXT_PATTERN.search(detail.message):
            return ContextTooLong(f"{prefix} (context too long){suffix}", upstream_status=status)
        squashed = code.replace("_", "").replace(" ", "")
        if any(c in squashed for c in _FILTER_CODES) or _FILTER_PATTERN.search(detail.message):
            return ContentFiltered(f"{prefix} (content filtered){suffix}", upstream_status=status)
        return ProviderBadRequest(f"{prefix}{suffix}", upstream_status=status)
    return ProviderUnavailable(f"{prefix}{suffix}", upstream_status=status)


def _log_failure(config: ProviderConfig, error: ProviderError, phase: str) -> ProviderError:
    logger.info(
        "provider.request_failed",
        extra={
            "provider_id": config.id,
            "provider": config.name,
            "phase": phase,
            "error_code": error.code,
            "upstream_status": error.upstream_status,
        },
    )
    return error


def _transport_error(
    config: ProviderConfig, exc: BaseException, *, phase: str, timeout_s: float | None = None
) -> ProviderError:
    """Typed error for an exception of the transport (never its text: aiohttp's messages can
    carry the URL, and URLs of some compatible providers carry keys)."""
    name = config.name
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        error: ProviderError = ProviderTimeout(
            f"Upstream provider '{name}' did not accept a connection within "
            f"{config.connect_timeout_s:g}s"
        )
    elif isinstance(exc, TimeoutError):
        what = {
            "headers": "send response headers",
            "body": "send the response body",
            "stream": "send the next stream chunk",
        }.get(phase, "answer")
        error = ProviderTimeout(
            f"Upstream provider '{name}' did not {what} within {timeout_s:g}s"
            if timeout_s is not None
            else f"Upstream provider '{name}' timed out"
        )
    elif isinstance(exc, aiohttp.ClientPayloadError):
        error = ProviderProtocolError(f"Upstream provider '{name}' cut the response body")
    elif isinstance(exc, aiohttp.ClientConnectorError):
        reason = exc.os_error.strerror if exc.os_error and exc.os_error.strerror else "refused"
        error = ProviderUnavailable(f"Upstream provider '{name}' cannot be reached ({reason})")
    elif isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError):
        if phase in ("body", "stream"):
            error = ProviderProtocolError(
                f"Upstream provider '{name}' closed the connection mid-response"
            )
        else:
            error = ProviderUnavailable(f"Upstream provider '{name}' closed the connection")
    elif isinstance(exc, aiohttp.InvalidURL):
        error = ProviderUnavailable(f"Upstream provider '{name}' has an invalid base URL")
    else:
        error = ProviderUnavailable(
            f"Upstream provider '{name}' request failed ({type(exc).__name__})"
        )
    return _log_failure(config, error, phase)


# -- requests ----------------------------------------------------------------------------


def json_body(payload: Any) -> bytes:
    return orjson.dumps(payload)


def _is_total(phase_deadline: float, total_deadline: float) -> bool:
    """Whether a phase's deadline was the request's total deadline (for the message)."""
    return phase_deadline >= total_deadline


async def _open(
    config: ProviderConfig,
    url: str,
    *,
    headers: Mapping[str, str],
    body: bytes,
    deadline: float,
) -> aiohttp.ClientResponse:
    """POST and wait for the status line and headers; a non-2xx answer becomes its typed
    error (its body read for the message, bounded in size and time)."""
    loop = asyncio.get_running_loop()
    session = http_session(config)
    extra = outbound_headers.get()
    if extra:
        headers = {**headers, **extra}
    phase_deadline = min(loop.time() + config.first_byte_timeout_s, deadline)
    try:
        async with asyncio.timeout_at(phase_deadline):
            response = await session.post(
                url, data=body, headers=headers, timeout=_client_timeout(config.connect_timeout_s)
            )
    except (aiohttp.ClientError, TimeoutError) as exc:
        total = _is_total(phase_deadline, deadline)
        raise _transport_error(
            config,
            exc,
            phase="total" if total and not isinstance(exc, aiohttp.ClientError) else "headers",
            timeout_s=config.total_timeout_s if total else config.first_byte_timeout_s,
        ) from None
    if response.status < 300:
        return response
    try:
        error_body = await _read_error_body(config, response, deadline)
        raise _log_failure(
            config,
            error_for_status(config, response.status, body=error_body, headers=response.headers),
            "status",
        )
    finally:
        response.release()


async def _read_error_body(
    config: ProviderConfig, response: aiohttp.ClientResponse, deadline: float
) -> Any:
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout_at(min(loop.time() + config.stream_idle_timeout_s, deadline)):
            raw = await response.content.read(_ERROR_BODY_LIMIT)
    except (aiohttp.ClientError, TimeoutError):
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        text = raw.decode("utf-8", "replace").strip()
        return {"message": text[:_MESSAGE_LIMIT]} if text else None


async def post_json(
    config: ProviderConfig, url: str, *, headers: Mapping[str, str], body: bytes
) -> Any:
    """One non-streamed JSON exchange: the parsed response body, or a typed error."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + config.total_timeout_s
    response = await _open(config, url, headers=headers, body=body, deadline=deadline)
    phase_deadline = min(loop.time() + config.stream_idle_timeout_s, deadline)
    try:
        async with asyncio.timeout_at(phase_deadline):
            raw = await response.read()
    except (aiohttp.ClientError, TimeoutError) as exc:
        response.close()
        total = _is_total(phase_deadline, deadline)
        raise _transport_error(
            config,
            exc,
            phase="total" if total and not isinstance(exc, aiohttp.ClientError) else "body",
            timeout_s=config.total_timeout_s if total else config.stream_idle_timeout_s,
        ) from None
    except BaseException:
        response.close()
        raise
    response.release()
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise _log_failure(
            config,
            ProviderProtocolError(f"Upstream provider '{config.name}' returned malformed JSON"),
            "body",
        ) from None


def _parse_event(block: bytes) -> tuple[bytes | None, bytes | None]:
    """(event name, data) of one SSE event block; data lines joined by newlines."""
    event: bytes | None = None
    data: list[bytes] = []
    for line in block.split(b"\n"):
        if line.startswith(b"data:"):
            data.append(line[6:] if line[5:6] == b" " else line[5:])
        elif line.startswith(b"event:"):
            event = line[6:].strip()
        # comments (":"), id: and retry: lines carry nothing we use
    return event, (b"\n".join(data) if data else None)


async def post_sse(
    config: ProviderConfig, url: str, *, headers: Mapping[str, str], body: bytes
) -> AsyncIterator[tuple[bytes | None, bytes]]:
    """POST and yield the answer's server-sent events as (event name or None, data bytes).

    Reads the body until EOF (so a finished stream's connection returns to the pool); any
    other exit (aclose by the consumer, cancellation, an error) closes the connection at once,
    which is how a client that goes away stops the upstream generation."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + config.total_timeout_s
    response = await _open(config, url, headers=headers, body=body, deadline=deadline)
    content = response.content
    idle = config.stream_idle_timeout_s
    buffer = b""
    finished = False
    try:
        while True:
            phase_deadline = min(loop.time() + idle, deadline)
            try:
                async with asyncio.timeout_at(phase_deadline):
                    data = await content.readany()
            except (aiohttp.ClientError, TimeoutError) as exc:
                total = _is_total(phase_deadline, deadline)
                raise _transport_error(
                    config,
                    exc,
                    phase="total"
                    if total and not isinstance(exc, aiohttp.ClientError)
                    else "stream",
                    timeout_s=config.total_timeout_s if total else idle,
                ) from None
            if not data:
                finished = True
                break
            if b"\r" in data:
                data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            buffer = buffer + data if buffer else data
            start = 0
            while True:
                end = buffer.find(b"\n\n", start)
                if end < 0:
                    break
                block = buffer[start:end]
                start = end + 2
                # Fast path: OpenAI-style single-line `data: {...}` events.
                if block.startswith(b"data: ") and b"\n" not in block:
                    yield None, block[6:]
                    continue
                event, payload = _parse_event(block)
                if payload is not None or event is not None:
                    yield event, payload if payload is not None else b""
            buffer = buffer[start:] if start else buffer
        if buffer.strip():
            # A last event without its blank line: the stream ended abruptly but the event
            # itself is whole; hand it over and let the adapter judge the ending.
            event, payload = _parse_event(buffer.strip(b"\n"))
            if payload is not None:
                yield event, payload
    finally:
        if finished:
            response.release()
        else:
            response.close()
