"""A small pipelined Redis client for the two hot-path calls (admission and settlement).

Why not redis-py here: its asyncio client spends most of a request's Redis time in Python
(connection pool checkout, per-argument encoding of ~30 EVALSHA arguments, a RESP3 reader
that resumes once per line). The hot path sends the same key names again and again, so this
client takes pre-encoded argument fragments (cached per scope and period by the store) and
keeps ONE connection per event loop on which every request's commands are pipelined: Redis
answers in order, each reply resolves the oldest waiting future. Everything else (seeding,
the config version, scripts, the usage drain) stays on redis-py.

Failure handling: a reply that does not come within the timeout, or a lost connection, fails
every command in flight on that connection with RespConnectionError and drops the connection;
the next command reconnects. Cancelling a waiting caller leaves its future in the queue so the
replies of the others stay matched."""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from redis.exceptions import RedisError

CRLF = b"\r\n"


class RespError(RedisError):
    """An error reply from Redis (`-ERR ...`)."""


class RespNoScript(RespError):
    """`-NOSCRIPT`: the script is not in Redis's cache (restart, SCRIPT FLUSH)."""


class RespConnectionError(ConnectionError):
    """The connection failed, was lost, or a reply did not come in time."""


_INCOMPLETE = object()


def bulk(value: bytes) -> bytes:
    """One RESP bulk string: the unit the store caches for key names."""
    return b"$%d\r\n%b\r\n" % (len(value), value)


def bulk_int(value: int) -> bytes:
    digits = b"%d" % value
    return b"$%d\r\n%b\r\n" % (len(digits), digits)


def command(count: int, fragments: list[bytes]) -> bytes:
    """A command of `count` arguments whose bulk strings are already encoded."""
    return b"*%d\r\n%b" % (count, b"".join(fragments))


def _parse(buffer: bytearray, pos: int) -> tuple[Any, int] | object:
    end = buffer.find(CRLF, pos)
    if end < 0:
        return _INCOMPLETE
    kind = buffer[pos]
    if kind == 58:  # ':' integer
        return int(buffer[pos + 1 : end]), end + 2
    if kind == 36:  # '$' bulk string
        length = int(buffer[pos + 1 : end])
        if length < 0:
            return None, end + 2
        stop = end + 2 + length
        if len(buffer) < stop + 2:
            return _INCOMPLETE
        return bytes(buffer[end + 2 : stop]), stop + 2
    if kind == 42:  # '*' array
        count = int(buffer[pos + 1 : end])
        if count < 0:
            return None, end + 2
        items = []
        cursor = end + 2
        for _ in range(count):
            parsed = _parse(buffer, cursor)
            if parsed is _INCOMPLETE:
                return _INCOMPLETE
            item, cursor = parsed  # type: ignore[misc]
            items.append(item)
        return items, cursor
    if kind == 43:  # '+' simple string
        return bytes(buffer[pos + 1 : end]), end + 2
    if kind == 45:  # '-' error
        message = buffer[pos + 1 : end].decode(errors="replace")
        error_class = RespNoScript if message.startswith("NOSCRIPT") else RespError
        return error_class(message), end + 2
    raise RespConnectionError(f"unexpected RESP type byte {kind!r}")


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiters: deque[asyncio.Future] = deque()
        self.closed = False
        # Commands of one loop iteration leave in one write (one syscall) instead of one each.
        self.outgoing: list[bytes] = []
        self.flush_scheduled = False

    def queue(self, payload: bytes) -> None:
        self.outgoing.append(payload)
        if not self.flush_scheduled:
            self.flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self.flush_scheduled = False
        if self.outgoing and not self.closed and self.transport is not None:
            payload = self.outgoing[0] if len(self.outgoing) == 1 else b"".join(self.outgoing)
            self.outgoing.clear()
            self.transport.write(payload)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        pos = 0
        try:
            while self.waiters:
                parsed = _parse(buffer, pos)
                if parsed is _INCOMPLETE:
                    break
                value, pos = parsed  # type: ignore[misc]
                waiter = self.waiters.popleft()
                if not waiter.done():
                    if isinstance(value, RespError):
                        waiter.set_exception(value)
                    else:
                        waiter.set_result(value)
        except (ValueError, RespConnectionError) as exc:
            self.fail(RespConnectionError(f"malformed reply from Redis: {exc}"))
            return
        if pos:
            del buffer[:pos]

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(RespConnectionError("connection to Redis lost"))

    def fail(self, error: Exception) -> None:
        self.closed = True
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_exception(error)
        if self.transport is not None:
            self.transport.abort()


def tls_context_from_url(url: str) -> ssl.SSLContext:
    """The TLS context of a rediss:// URL, read from the query parameters redis-py uses too:
    ssl_ca_certs (a CA bundle file; default: the system's), ssl_cert_reqs (required, the
    default, or none), ssl_check_hostname (true unless ssl_cert_reqs=none), ssl_certfile and
    ssl_keyfile (a client certificate)."""
    query = {k: v[-1] for k, v in parse_qs(urlsplit(url).query).items()}
    context = ssl.create_default_context(cafile=query.get("ssl_ca_certs") or None)
    if query.get("ssl_certfile"):
        context.load_cert_chain(query["ssl_certfile"], query.get("ssl_keyfile") or None)
    reqs = (query.get("ssl_cert_reqs") or "required").lower()
    if reqs not in ("required", "none"):
        raise ValueError("ssl_cert_reqs in REDIS_URL must be 'required' or 'none'")
    check_hostname = (query.get("ssl_check_hostname") or "true").lower() in ("1", "true", "yes")
    if reqs == "none":
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context.check_hostname = check_hostname
    return context


class RespClient:
    """One pipelined connection per event loop. Not thread-safe (one loop)."""

    def __init__(self, url: str, *, timeout_s: float = 5.0) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss", ""):
            raise ValueError(
                f"REDIS_URL scheme {parts.scheme!r} is not supported by the hot-path Redis "
                "client: use redis:// or rediss:// (TLS)"
            )
        self.ssl = tls_context_from_url(url) if parts.scheme == "rediss" else None
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 6379
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None
        path = parts.path.lstrip("/")
        self.db = int(path) if path else 0
        self.timeout_s = timeout_s
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Future | None = None

    async def _connect(self) -> _Protocol:
        if self._connecting is not None:
            return await asyncio.shield(self._connecting)
        loop = asyncio.get_running_loop()
        self._connecting = loop.create_future()
        try:
            try:
                _, protocol = await asyncio.wait_for(
                    loop.create_connection(
                        _Protocol,
                        self.host,
                        self.port,
                        ssl=self.ssl,
                        server_hostname=self.host if self.ssl is not None else None,
                    ),
                    self.timeout_s,
                )
            except (OSError, TimeoutError) as exc:
                raise RespConnectionError(f"cannot connect to Redis: {exc}") from None
            if self.password:
                auth = [b"AUTH"] + ([self.username.encode()] if self.username else [])
                auth.append(self.password.encode())
                await self._send(protocol, command(len(auth), [bulk(a) for a in auth]))
            if self.db:
                await self._send(protocol, command(2, [bulk(b"SELECT"), bulk_int(self.db)]))
            self._protocol = protocol
            self._connecting.set_result(protocol)
            return protocol
        except BaseException as exc:
            self._connecting.set_exception(
                exc
                if isinstance(exc, RespConnectionError | RespError)
                else RespConnectionError(str(exc))
            )
            self._connecting.exception()  # retrieved: no "never retrieved" warning
            raise
        finally:
            self._connecting = None

    def _expire(self, protocol: _Protocol, waiter: asyncio.Future) -> None:
        if not waiter.done():
            # The replies on this connection can no longer be matched: drop it.
            protocol.fail(RespConnectionError(f"no reply from Redis within {self.timeout_s}s"))

    async def _send(self, protocol: _Protocol, payload: bytes) -> Any:
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        protocol.waiters.append(waiter)
        protocol.queue(payload)
        timer = loop.call_later(self.timeout_s, self._expire, protocol, waiter)
        try:
            return await waiter
        finally:
            timer.cancel()

    async def execute(self, payload: bytes) -> Any:
        """Send one encoded command (see `command`) and return its decoded reply."""
        protocol = self._protocol
        if protocol is None or protocol.closed:
            self._protocol = None
            protocol = await self._connect()
        return await self._send(protocol, payload)

    def close(self) -> None:
        protocol, self._protocol = self._protocol, None
        if protocol is not None and protocol.transport is not None:
            protocol.transport.close()
