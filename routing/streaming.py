"""Feeding one client stream (SSE or websocket) from an InferenceCall's chunk iterator.

`ChunkPump` pulls the upstream in its own task into a small bounded queue:

- back-pressure: the queue holds at most `max_ahead` chunks; when the client reads slowly the
  ASGI `send` awaits, the queue fills, the pump stops pulling and the upstream socket's TCP
  window closes. Nothing accumulates in the gateway beyond that bound.
- keep-alive: one timer per stream, re-armed once per interval (not per chunk); when the
  upstream has been silent for a whole interval it drops a KEEPALIVE marker into the empty
  queue, which SSE writers turn into a `: keep-alive` comment. Flowing chunks cost a float
  store each, nothing else.
- cancellation: closing the pump (the client left, or asked to cancel) cancels the pump task
  at once, which closes the upstream iterator and with it the upstream HTTP request.

The pump's source is `InferenceCall.run_stream`, which settles the call however the stream
ends. `stream_start` waits for the first chunk (up to one keep-alive interval) before the response
headers go out, so a request that fails before any output (every fallback exhausted, 429, a
circuit open) still gets a real HTTP status and error body instead of a 200 with an in-band
error. `sse_stream` is the body of every SSE response: it writes what an encoder makes of the
chunks, ends in-band on a failure after the first byte, and settles the call (exactly one
usage event) before the last bytes go out, whatever happened."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Protocol

from django.conf import settings

from providers.types import ChatRequest, Chunk, ProviderError
from routing.errors import provider_error_log
from routing.inference import InferenceCall
from routing.sse import DONE, ChunkEncoder, is_usage_only

logger = logging.getLogger("gateway.routing.streaming")

KEEPALIVE_COMMENT = b": keep-alive\n\n"


class _Marker:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<{self.name}>"


KEEPALIVE = _Marker("keepalive")
_END = _Marker("end")


class _Failed:
    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


class GatewayStreamError(ProviderError):
    """A fault of ours while streaming (never an upstream's): the client sees a generic
    in-band error, the log has the details."""

    status = 500
    error_type = "server_error"
    code = "internal_error"
    retryable = False
    public_message = "Internal gateway error while streaming"


class ChunkPump:
    def __init__(
        self,
        source: AsyncIterator[Chunk],
        *,
        keepalive_s: float | None = None,
        max_ahead: int = 4,
    ) -> None:
        self._source = source
        self._queue: asyncio.Queue[Chunk | _Marker | _Failed] = asyncio.Queue(maxsize=max_ahead)
        self._keepalive_s = keepalive_s if keepalive_s and keepalive_s > 0 else None
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last_activity = 0.0
        self._pending: Chunk | _Marker | None = None
        self._finished = False

    # -- producer ----------------------------------------------------------------------
    def start(self) -> ChunkPump:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._last_activity = loop.time()
        self._task = loop.create_task(self._produce())
        if self._keepalive_s is not None:
            self._timer = loop.call_at(self._last_activity + self._keepalive_s, self._tick)
        return self

    async def _produce(self) -> None:
        assert self._loop is not None
        loop = self._loop
        last: _Marker | _Failed = _END
        try:
            async with aclosing(self._source) as source:  # type: ignore[type-var]
                async for chunk in source:
                    self._last_activity = loop.time()
                    await self._queue.put(chunk)
        except ProviderError as exc:
            last = _Failed(exc)
        except Exception as exc:  # noqa: BLE001 - handed to the consumer, which logs it
            last = _Failed(exc)
        self._stop_timer()
        await self._queue.put(last)

    def _tick(self) -> None:
        """The one keep-alive timer: fires at most once per interval."""
        self._timer = None
        if self._finished or self._loop is None or self._keepalive_s is None:
            return
        now = self._loop.time()
        if now - self._last_activity >= self._keepalive_s:
            # Only into an empty queue: a full one means the client is the slow side.
            if self._queue.empty():
                self._queue.put_nowait(KEEPALIVE)
            self._last_activity = now
        self._timer = self._loop.call_at(self._last_activity + self._keepalive_s, self._tick)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- consumer ----------------------------------------------------------------------
    async def wait_first(self, timeout_s: float | None) -> None:
        """Wait up to `timeout_s` (None: no limit) for the first item. Raises the source's
        error when it failed before producing anything."""
        try:
            if timeout_s is None:
                item = await self._queue.get()
            else:
                item = await asyncio.wait_for(self._queue.get(), timeout_s)
        except TimeoutError:
            return
        if isinstance(item, _Failed):
            self._finished = True
            raise item.error
        self._pending = item

    def __aiter__(self) -> ChunkPump:
        return self

    async def __anext__(self) -> Chunk | _Marker:
        if self._pending is not None:
            item: Chunk | _Marker | _Failed = self._pending
            self._pending = None
        elif self._finished:
            raise StopAsyncIteration
        else:
            item = await self._queue.get()
        if item is _END:
            self._finished = True
            raise StopAsyncIteration
        if isinstance(item, _Failed):
            self._finished = True
            raise item.error
        return item  # type: ignore[return-value]

    async def aclose(self) -> None:
        """Stop pulling and close the upstream now. Safe to call more than once."""
        self._finished = True
        self._stop_timer()
        task = self._task
        if task is None:
            return
        if not task.done():
            task.cancel()
            # wait() never raises the task's CancelledError into us; if *we* get cancelled
            # meanwhile, that propagates, and the pump task finishes closing on its own.
            await asyncio.wait({task})


def keepalive_interval() -> float | None:
    value = settings.GATEWAY_SSE_KEEPALIVE_SECONDS
    return value if value and value > 0 else None


async def stream_start(
    call: InferenceCall, chat: ChatRequest, *, keepalive_s: float | None = None
) -> ChunkPump:
    """Start the call's stream; return once its first chunk is in (or one keep-alive
    interval passed). Raises ProviderError when it failed before any output: the caller
    answers with a real status and finishes the call. A cancelled caller (the client left
    while we waited) closes the upstream and settles the call as cancelled."""
    pump = ChunkPump(call.run_stream(chat), keepalive_s=keepalive_s).start()
    try:
        await pump.wait_first(keepalive_s)
    except ProviderError:
        await pump.aclose()
        raise
    except asyncio.CancelledError:
        await asyncio.shield(_abandon(pump, call))
        raise
    return pump


async def _abandon(pump: ChunkPump, call: InferenceCall) -> None:
    await pump.aclose()
    await call.finish(status_code=499, outcome="cancelled", error_type="client_disconnected")


class StreamEncoder(Protocol):
    """Turns chunks into one wire format's bytes."""

    def encode(self, chunk: Chunk) -> bytes | None: ...

    def error(self, exc: ProviderError) -> bytes: ...

    def finish(self, call: InferenceCall, failure: ProviderError | None) -> bytes | None: ...


async def sse_stream(
    *, call: InferenceCall, pump: ChunkPump, encoder: StreamEncoder
) -> AsyncIterator[bytes]:
    """The body of an SSE response. Exactly one `call.finish` whatever happens: the stream
    ends (ok), the upstream dies mid-way (error, in-band), or the client goes away (the ASGI
    handler cancels us or closes this generator: cancelled, with the tokens produced so
    far)."""
    outcome, status, error_type = "cancelled", 499, "client_disconnected"
    failure: ProviderError | None = None
    try:
        async for item in pump:
            if item is KEEPALIVE:
                yield KEEPALIVE_COMMENT
                continue
            data = encoder.encode(item)  # type: ignore[arg-type]
            if data:
                yield data
        outcome, status, error_type = "ok", 200, ""
    except ProviderError as exc:
        failure = exc
        outcome, status, error_type = "error", exc.status, exc.code
        # The headers are gone already: the error travels in-band, then the stream ends.
        yield encoder.error(exc)
    except Exception as exc:  # noqa: BLE001 - a bug of ours must still end the stream cleanly
        logger.error("stream.encode_failed", exc_info=exc, extra={"request_id": call.request_id})
        failure = GatewayStreamError("Internal gateway error while streaming")
        outcome, status, error_type = "error", 500, failure.code
        yield encoder.error(failure)
    finally:
        # Close the upstream at once; the call's own iterator settles as it closes (a client
        # that left: cancelled). A fault of ours is settled first, so it is recorded as one.
        if status == 500:
            await asyncio.shield(
                call.finish(status_code=status, outcome=outcome, error_type=error_type)
            )
        await asyncio.shield(pump.aclose())
        await asyncio.shield(
            call.finish(status_code=status, outcome=outcome, error_type=error_type)
        )
    tail = encoder.finish(call, failure)
    if tail:
        yield tail


def stream_headers(call: InferenceCall) -> dict[str, str]:
    """Headers of a stream response: what is known once the first chunk is in (the cost
    is not, so it is left out)."""
    headers = call.gateway_headers()
    headers.pop("x-gateway-cost-usd", None)
    headers["Cache-Control"] = "no-cache"
    headers["X-Accel-Buffering"] = "no"
    return headers


class OpenAIStreamEncoder:
    """OpenAI chat.completion.chunk events, ending in `data: [DONE]` (after an error too,
    as OpenAI-compatible clients expect)."""

    def __init__(self, *, completion_id: str, model: str, include_usage: bool) -> None:
        self._encoder = ChunkEncoder(completion_id=completion_id, model=model)
        self._include_usage = include_usage

    def encode(self, chunk: Chunk) -> bytes | None:
        if not self._include_usage and is_usage_only(chunk):
            return None
        return self._encoder.encode(chunk)

    def error(self, exc: ProviderError) -> bytes:
        provider_error_log(exc)
        return self._encoder.error(message=exc.message, error_type=exc.error_type, code=exc.code)

    def finish(self, call: InferenceCall, failure: ProviderError | None) -> bytes | None:
        return DONE
