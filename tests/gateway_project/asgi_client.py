"""An in-process ASGI client (what uvicorn does for one HTTP request, minus the socket), and an
event loop that counts every hand-off of work to a thread.

The client behaves like uvicorn's receive: the body first, then `receive()` blocks until the
response is complete or the client disconnects, and returns `http.disconnect` then."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson


@dataclass
class AsgiResponse:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body_parts: list[bytes] = field(default_factory=list)

    @property
    def body(self) -> bytes:
        return b"".join(self.body_parts)

    def json(self) -> Any:
        return orjson.loads(self.body)


class AsgiCall:
    """One request through an ASGI app. `disconnect()` makes the client go away."""

    def __init__(
        self,
        app: Callable[..., Awaitable[None]],
        method: str,
        path: str,
        *,
        headers: dict[str, str] | None = None,
        body: bytes = b"",
        on_body: Callable[[bytes], Awaitable[None]] | None = None,
    ) -> None:
        self.app = app
        self.response = AsgiResponse()
        self.started = asyncio.Event()
        self.complete = asyncio.Event()
        self._gone = asyncio.Event()
        self._body_sent = False
        self._body = body
        self._on_body = on_body
        all_headers = {"host": "testserver", **(headers or {})}
        if body:
            all_headers.setdefault("content-length", str(len(body)))
        self.scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "root_path": "",
            "query_string": b"",
            "headers": [(k.lower().encode(), v.encode()) for k, v in all_headers.items()],
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8000),
        }

    def disconnect(self) -> None:
        self._gone.set()

    async def _receive(self) -> dict[str, Any]:
        if not self._body_sent:
            self._body_sent = True
            return {"type": "http.request", "body": self._body, "more_body": False}
        if not self.complete.is_set() and not self._gone.is_set():
            waiters = [
                asyncio.ensure_future(self.complete.wait()),
                asyncio.ensure_future(self._gone.wait()),
            ]
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()
        return {"type": "http.disconnect"}

    async def _send(self, message: dict[str, Any]) -> None:
        if self._gone.is_set():
            return  # like uvicorn: writes to a closed connection are dropped
        if message["type"] == "http.response.start":
            self.response.status = message["status"]
            self.response.headers = {
                k.decode().lower(): v.decode() for k, v in message.get("headers", [])
            }
            self.started.set()
        elif message["type"] == "http.response.body":
            part = message.get("body", b"")
            if part:
                self.response.body_parts.append(part)
                if self._on_body is not None:
                    await self._on_body(part)
            if not message.get("more_body", False):
                self.complete.set()

    async def run(self) -> AsgiResponse:
        await self.app(self.scope, self._receive, self._send)
        return self.response


async def asgi_request(
    app: Callable[..., Awaitable[None]],
    method: str,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    json: Any = None,
    body: bytes = b"",
) -> AsgiResponse:
    if json is not None:
        body = orjson.dumps(json)
        headers = {"content-type": "application/json", **(headers or {})}
    return await AsgiCall(app, method, path, headers=headers, body=body).run()


class ThreadHopCountingLoop(asyncio.SelectorEventLoop):
    """An event loop that counts `run_in_executor` calls: every sync_to_async (thread-sensitive
    or not) and asyncio.to_thread goes through it, so zero means no work left the loop's
    thread."""

    def __init__(self) -> None:
        super().__init__()
        self.executor_calls = 0

    def run_in_executor(self, executor, func, *args):  # type: ignore[override]
        self.executor_calls += 1
        return super().run_in_executor(executor, func, *args)


def thread_idents() -> frozenset[int]:
    return frozenset(t.ident for t in threading.enumerate() if t.ident is not None)
