"""The thread-free ASGI handler of the inference API.

Django's stock `ASGIHandler` costs ~0.9 ms per request on these machines, almost all of it
thread hops: every request runs inside asgiref's `ThreadSensitiveContext` (a fresh executor
thread per request), `request_started` goes through `asend` (its sync receivers in that
thread), every `MiddlewareMixin` middleware runs `process_request`/`process_response` through
`sync_to_async`, error responses are logged through `sync_to_async`, and the response is
closed through `sync_to_async` (for `request_finished`). `InferenceASGIHandler` keeps what the
inference API needs from Django - the request object, URL resolution, a (natively async)
middleware chain, the Ninja views, the client-disconnect listener - and drops those hops:

* no `ThreadSensitiveContext`: the rare sync work left (a cold-cache ORM read) runs in
  asgiref's one process-wide thread-sensitive executor, like any async Django code outside a
  request;
* the middleware chain is `settings.INFERENCE_MIDDLEWARE`, and only native async middleware is
  accepted there (a `MiddlewareMixin` class is refused at startup, since it would hop twice per
  request);
* `request_started`/`request_finished`: their stock receivers only deal with database
  connections (`close_old_connections`, `reset_queries`), caches (`close_caches`) and the
  urlconf (`reset_urlconf`). A warm request opens no database connection, so there is nothing
  for them to do; when a request did use the ORM, `request_finished` is sent from the ORM's own
  thread after the response, exactly as Django would (that closes the connection, i.e. hands it
  back to psycopg's pool, and drops a broken one). Any other receiver connected to these signals
  switches the handler back to sending them on every request, the stock way (see
  `_SignalPolicy`);
* the request body is read into memory and capped at `GATEWAY_MAX_BODY_BYTES`: a bigger body is
  refused with 413 before it is read, instead of being spooled to disk; a body that arrives
  too slowly (past `GATEWAY_BODY_READ_TIMEOUT_S`, or below `GATEWAY_BODY_MIN_RATE_BYTES` per
  second after `GATEWAY_BODY_MIN_RATE_GRACE_S`) is cut with 408 and the connection closed;
* the view runs in the server's own task; a small listener task cancels it when the client goes
  away, which cancels the upstream call (and the iteration of a streaming response).

Admin, the DRF API, /metrics and every other (sync) view stay on Django's stock handler: see
`gateway_project.asgi` and docs/asgi.md.
"""

from __future__ import annotations

import asyncio
import io
import logging
import threading
import weakref
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from typing import Any

import orjson
from asgiref.sync import iscoroutinefunction, sync_to_async
from django.conf import settings
from django.core import signals
from django.core.exceptions import ImproperlyConfigured, MiddlewareNotUsed
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.core.handlers.base import reset_urlconf
from django.core.handlers.exception import convert_exception_to_response
from django.db import close_old_connections, reset_queries
from django.db.backends.signals import connection_created
from django.http import HttpRequest, HttpResponseBase
from django.urls import set_script_prefix, set_urlconf
from django.utils.deprecation import MiddlewareMixin
from django.utils.log import log_response
from django.utils.module_loading import import_string

from gateway_project.middleware import new_request_id

logger = logging.getLogger("gateway.asgi")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def _signal_receivers(signal: signals.Signal) -> list[Callable[..., Any]]:
    sync_receivers, async_receivers = signal._live_receivers(None)
    return [*sync_receivers, *async_receivers]


def _close_caches_receiver() -> Callable[..., Any] | None:
    from django.core import cache

    return getattr(cache, "close_caches", None)


class _SignalPolicy:
    """Decides, once at startup, whether `request_started`/`request_finished` must be sent on
    every request. Their stock receivers have nothing to do when a request touched no database
    connection; an unknown receiver might, so its presence restores the stock behaviour."""

    def __init__(self) -> None:
        known_started = {reset_queries, close_old_connections}
        known_finished = {close_old_connections, reset_urlconf, _close_caches_receiver()}
        self.unknown_started = [
            r for r in _signal_receivers(signals.request_started) if r not in known_started
        ]
        self.unknown_finished = [
            r for r in _signal_receivers(signals.request_finished) if r not in known_finished
        ]
        for name, receivers in (
            ("request_started", self.unknown_started),
            ("request_finished", self.unknown_finished),
        ):
            if receivers:
                logger.warning(
                    "asgi.signal_receivers_need_thread",
                    extra={
                        "signal": name,
                        "receivers": [getattr(r, "__qualname__", repr(r)) for r in receivers],
                    },
                )

    @property
    def send_started(self) -> bool:
        return bool(self.unknown_started)

    @property
    def send_finished_always(self) -> bool:
        return bool(self.unknown_finished)


class OrmConnections:
    """Which database connections the async ORM holds open, seen from the event loop without a
    thread hop.

    Django keeps connections per thread; the async ORM runs in asgiref's thread-sensitive
    executor, so they live in that thread, out of reach of the loop. Every connection is noted
    when it opens (`connection_created`, cold path only); after a request, one still open on a
    thread other than the loop's means: send request_finished in the thread-sensitive executor,
    which closes it there (back to psycopg's pool). A connection that this does not reach (one
    opened by some other thread) is forgotten after that one attempt, so it never costs a hop
    per request; it is noted again if it reconnects."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: weakref.WeakSet[Any] = weakref.WeakSet()
        connection_created.connect(
            self._on_connection_created, weak=False, dispatch_uid="gateway.fast_asgi.orm"
        )

    def _on_connection_created(self, sender: Any, connection: Any, **kwargs: Any) -> None:
        with self._lock:
            self._pending.add(connection)

    def open_elsewhere(self) -> bool:
        """True when a noted connection is open on a thread other than this one (the loop's)."""
        if not self._pending:
            return False
        here = threading.get_ident()
        with self._lock:
            wrappers = list(self._pending)
        return any(w.connection is not None and w._thread_ident != here for w in wrappers)

    def finish_in_orm_thread(self, sender: type) -> None:
        """Runs in the thread-sensitive executor: Django's own end-of-request cleanup there,
        then forget every connection that is closed now or that this thread cannot close."""
        signals.request_finished.send(sender=sender)
        here = threading.get_ident()
        with self._lock:
            for wrapper in list(self._pending):
                if wrapper.connection is None or wrapper._thread_ident != here:
                    self._pending.discard(wrapper)


class _Cycle:
    """What the disconnect listener and the request share."""

    __slots__ = ("done", "disconnected")

    def __init__(self) -> None:
        self.done = False
        self.disconnected = False


class InferenceASGIHandler(ASGIHandler):
    """ASGI handler for the inference API: Django's request, URL resolution, async middleware
    and views, with no thread per request."""

    def __init__(self, middleware: list[str] | None = None) -> None:
        # BaseHandler.__init__ only declares the middleware lists; ASGIHandler.__init__ would
        # load settings.MIDDLEWARE, which is the stock (sync, hopping) chain.
        self._view_middleware = None
        self._template_response_middleware = None
        self._exception_middleware = None
        self._middleware_chain = None
        self._load_async_middleware(
            settings.INFERENCE_MIDDLEWARE if middleware is None else middleware
        )
        self.max_body_bytes: int = settings.GATEWAY_MAX_BODY_BYTES
        self._security_headers: list[tuple[bytes, str, bytes]] = [
            (name.encode("ascii"), name.lower(), value.encode("latin1"))
            for name, value in settings.GATEWAY_SECURITY_HEADERS.items()
            if value
        ]
        hsts = settings.SECURE_HSTS_SECONDS
        self._hsts: str | None = None
        if hsts:
            self._hsts = f"max-age={hsts}"
            if settings.SECURE_HSTS_INCLUDE_SUBDOMAINS:
                self._hsts += "; includeSubDomains"
            if settings.SECURE_HSTS_PRELOAD:
                self._hsts += "; preload"
        self.body_timeout_s: float = settings.GATEWAY_BODY_READ_TIMEOUT_S
        self.body_min_rate: int = settings.GATEWAY_BODY_MIN_RATE_BYTES
        self.body_rate_grace_s: float = settings.GATEWAY_BODY_MIN_RATE_GRACE_S
        self.signal_policy = _SignalPolicy()
        self.orm = OrmConnections()

    # -- middleware --------------------------------------------------------------------
    def _load_async_middleware(self, paths: list[str]) -> None:
        self._view_middleware = []
        self._template_response_middleware = []
        self._exception_middleware = []
        handler = convert_exception_to_response(self._get_response_async)
        for path in reversed(paths):
            middleware = import_string(path)
            if issubclass(middleware, MiddlewareMixin) or not getattr(
                middleware, "async_capable", False
            ):
                raise ImproperlyConfigured(
                    f"INFERENCE_MIDDLEWARE: {path} is not a native async middleware (a "
                    "MiddlewareMixin or sync middleware would hop to a thread on every request)"
                )
            try:
                instance = middleware(handler)
            except MiddlewareNotUsed:
                continue
            if not iscoroutinefunction(instance):
                raise ImproperlyConfigured(f"INFERENCE_MIDDLEWARE: {path} is not async here")
            for hook, target in (
                ("process_view", self._view_middleware),
                ("process_template_response", self._template_response_middleware),
                ("process_exception", self._exception_middleware),
            ):
                method = getattr(instance, hook, None)
                if method is None:
                    continue
                if not iscoroutinefunction(method):
                    raise ImproperlyConfigured(
                        f"INFERENCE_MIDDLEWARE: {path}.{hook} must be a coroutine function"
                    )
                if hook == "process_view":
                    target.insert(0, method)
                else:
                    target.append(method)
            handler = convert_exception_to_response(instance)
        self._middleware_chain = handler

    # -- entry point -------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            raise ValueError(f"InferenceASGIHandler serves HTTP only, not {scope['type']}")
        await self.handle(scope, receive, send)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await self._read_body(scope, receive, send)
        if body is None:
            return
        set_script_prefix(get_script_prefix(scope))
        if self.signal_policy.send_started:
            await signals.request_started.asend(sender=self.__class__, scope=scope)
        request, error_response = self.create_request(scope, body)
        if request is None:
            body.close()
            await self.send_response(error_response, send)
            return

        task = asyncio.current_task()
        assert task is not None
        cycle = _Cycle()
        listener = asyncio.create_task(self._cancel_on_disconnect(receive, task, cycle))
        response: HttpResponseBase | None = None
        try:
            response = await self.run_get_response(request)
            await self.send_response(response, send)
        except asyncio.CancelledError:
            if not cycle.disconnected:
                raise
            # The client went away: the view (and its upstream call) has been cancelled and
            # has settled what it owed; there is nobody left to answer.
            task.uncancel()
        finally:
            cycle.done = True
            listener.cancel()
            await asyncio.shield(self._finish(request, response))

    async def _cancel_on_disconnect(
        self, receive: Receive, task: asyncio.Task, cycle: _Cycle
    ) -> None:
        message = await receive()
        if cycle.done:
            return
        if message["type"] == "http.disconnect":
            cycle.disconnected = True
            task.cancel()
        else:  # pragma: no cover - a server bug, not a client's
            logger.error("asgi.unexpected_message", extra={"message_type": message["type"]})

    async def _finish(self, request: HttpRequest, response: HttpResponseBase | None) -> None:
        """HttpResponse.close() minus its synchronous request_finished send."""
        closers = response._resource_closers if response is not None else [request.close]
        for closer in closers:
            try:
                closer()
            except Exception:  # noqa: BLE001 - Django ignores closer failures too
                logger.warning("asgi.closer_failed", exc_info=True)
        if response is not None:
            response._resource_closers.clear()
            response.closed = True
        if self.signal_policy.send_finished_always or self.orm.open_elsewhere():
            await sync_to_async(self.orm.finish_in_orm_thread, thread_sensitive=True)(
                self.__class__
            )

    # -- request and response ----------------------------------------------------------
    async def _read_body(self, scope: Scope, receive: Receive, send: Send) -> io.BytesIO | None:
        """The whole body in memory, or None when the request was answered (413, 408) or the
        client left before sending it.

        Slowloris: the body must be complete within `body_timeout_s`, and after a grace of
        `body_rate_grace_s` it must keep up `body_min_rate` bytes per second on average (a
        client that sent `size` bytes may wait until `grace + size / rate` seconds after the
        start). A body that falls behind is answered 408 and its connection closed."""
        limit = self.max_body_bytes
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > limit:
                    await self._refuse_body(send, 413)
                    return None
                break
        parts: list[bytes] = []
        size = 0
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + self.body_timeout_s
        while True:
            wait = deadline - loop.time()
            if self.body_min_rate > 0:
                rate_deadline = started + self.body_rate_grace_s + size / self.body_min_rate
                wait = min(wait, rate_deadline - loop.time())
            try:
                if wait <= 0:
                    raise TimeoutError
                async with asyncio.timeout(wait):
                    message = await receive()
            except TimeoutError:
                logger.warning(
                    "asgi.body_read_timeout",
                    extra={
                        "path": scope.get("path", ""),
                        "received_bytes": size,
                        "elapsed_s": round(loop.time() - started, 3),
                    },
                )
                await self._refuse_body(send, 408)
                return None
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > limit:
                    await self._refuse_body(send, 413)
                    return None
                parts.append(chunk)
            if not message.get("more_body", False):
                break
        return io.BytesIO(parts[0] if len(parts) == 1 else b"".join(parts))

    async def _refuse_body(self, send: Send, status: int) -> None:
        if status == 413:
            message, code = "Request body too large", "request_too_large"
        else:
            message, code = "Request body not received in time", "request_timeout"
        body = orjson.dumps(
            {
                "error": {
                    "message": message,
                    "type": "invalid_request_error",
                    "param": None,
                    "code": code,
                }
            }
        )
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"x-request-id", new_request_id().encode()),
                    # The rest of the body is never read: the connection cannot be reused.
                    (b"connection", b"close"),
                    *((name, value) for name, _, value in self._security_headers),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def get_response_async(self, request: HttpRequest) -> HttpResponseBase:
        set_urlconf(settings.INFERENCE_URLCONF)
        request.urlconf = settings.INFERENCE_URLCONF
        response = await self._middleware_chain(request)
        response._resource_closers.append(request.close)
        if self._hsts is not None and request.is_secure():
            response.headers.setdefault("Strict-Transport-Security", self._hsts)
        if response.status_code >= 400:
            # Stock Django logs this through sync_to_async; a logger call needs no thread.
            log_response(
                "%s: %s", response.reason_phrase, request.path, response=response, request=request
            )
        return response

    async def send_response(self, response: HttpResponseBase, send: Send) -> None:
        headers = [
            (
                name.encode("ascii") if isinstance(name, str) else bytes(name),
                value.encode("latin1") if isinstance(value, str) else bytes(value),
            )
            for name, value in response.items()
        ]
        # Security headers on every answer (nosniff, frame denial, referrer policy): one list
        # built at startup, skipped only where the view set its own.
        for name, lower, value in self._security_headers:
            if lower not in response.headers:
                headers.append((name, value))
        if response.cookies:
            headers.extend(
                (b"Set-Cookie", c.output(header="").encode("ascii").strip())
                for c in response.cookies.values()
            )
        await send(
            {"type": "http.response.start", "status": response.status_code, "headers": headers}
        )
        if not response.streaming:
            content = response.content
            if len(content) <= self.chunk_size:
                await send({"type": "http.response.body", "body": content})
                return
            for chunk, last in self.chunk_bytes(content):
                await send({"type": "http.response.body", "body": chunk, "more_body": not last})
            return
        # Each part goes out as soon as it exists (SSE events are flushed one by one), and the
        # next part is pulled only once the server took this one: uvicorn's send waits while
        # the socket's write buffer is above its high-water mark, so a slow client pushes
        # back on the upstream read instead of letting the body pile up in memory.
        chunk_size = self.chunk_size
        async with aclosing(aiter(response)) as content:
            async for part in content:
                if len(part) <= chunk_size:
                    await send({"type": "http.response.body", "body": part, "more_body": True})
                    continue
                for chunk, _ in self.chunk_bytes(part):
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body"})
