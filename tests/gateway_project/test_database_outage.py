"""Issue 14, item 7: a PostgreSQL outage is not a full outage. A live gateway reaches the
(shared, never stopped) PostgreSQL server through a TCP proxy this test owns on loopback;
cutting the proxy is the outage. With caches warm: known keys keep being served from the last
good key policies and routing snapshot, an unknown key gets 503 (OpenAI shape, Retry-After)
within a second, readiness says the database is down within a second; when the proxy comes
back, so does everything."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest

from tests.conftest import test_database_url as database_url_of_tests
from tests.routing.support import caches_clear, mock_provider, model_on, route, tenant_key

pytestmark = pytest.mark.live_server_process

POSTGRES = ("127.0.0.1", 5432)
HELLO = {"model": "outage-chat", "messages": [{"role": "user", "content": "hello"}]}


class LoopbackProxy:
    """A TCP proxy 127.0.0.1:<port> -> PostgreSQL. `cut()` closes the listener and every
    connection through it (new connections are refused); `restore()` listens again."""

    def __init__(self) -> None:
        self.port = 0
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            try:
                upstream = socket.create_connection(POSTGRES, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._conns += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._lock:
            conns, self._conns = self._conns, []
        for sock in conns:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    restore = start


@pytest.fixture
def proxy():
    proxied = LoopbackProxy()
    proxied.start()
    yield proxied
    proxied.cut()


@pytest.fixture
def outage_catalog(transactional_db):
    route("outage-chat", [model_on(mock_provider("outage-mock"), "outage-model")])
    _tenant, _key, cached_raw = tenant_key()
    _tenant, _key, other_raw = tenant_key()
    caches_clear()
    return cached_raw, other_raw


def _timed(call):
    started = time.monotonic()
    response = call()
    return response, time.monotonic() - started


def test_database_cut_mid_run_keeps_cached_keys_working_and_answers_503_fast(
    live_gateway, outage_catalog, proxy
):
    cached_raw, other_raw = outage_catalog
    url = database_url_of_tests().replace(f"{POSTGRES[0]}:{POSTGRES[1]}", f"127.0.0.1:{proxy.port}")
    assert str(proxy.port) in url
    env = {
        "DATABASE_URL": url,
        "GATEWAY_SNAPSHOT_TTL_SECONDS": "0.3",  # caches expire during the outage
        "GATEWAY_STALE_MAX_SECONDS": "600",
        "GATEWAY_DB_RETRY_SECONDS": "0.2",
    }
    with live_gateway(env=env) as base, httpx.Client(base_url=base, timeout=10) as client:
        auth = {"authorization": f"Bearer {cached_raw}"}
        # Warm: the first admission of a process drops the caches it filled before it saw the
        # shared config version, the second fills them for good.
        for _ in range(2):
            assert client.post("/v1/chat/completions", json=HELLO, headers=auth).status_code == 200
        assert client.get("/health/ready").status_code == 200

        proxy.cut()
        time.sleep(0.5)  # past every cache TTL: each request now wants a reload

        # Known key, routes from the last good snapshot: still answered.
        for _ in range(5):
            response, _elapsed = _timed(
                lambda: client.post("/v1/chat/completions", json=HELLO, headers=auth)
            )
            assert response.status_code == 200, response.text
            assert response.json()["choices"][0]["message"]["content"]
        assert client.get("/v1/models", headers=auth).status_code == 200

        # A key this process never saw: 503 in OpenAI's shape, within a second.
        for raw in (other_raw, "gw-never-issued-key"):
            response, elapsed = _timed(
                lambda raw=raw: client.post(
                    "/v1/chat/completions",
                    json=HELLO,
                    headers={"authorization": f"Bearer {raw}"},
                )
            )
            assert response.status_code == 503, response.text
            assert elapsed < 1.0
            error = response.json()["error"]
            assert error["type"] == "server_error" and error["code"] == "database_unavailable"
            assert set(error) == {"message", "type", "param", "code"}
            assert response.headers["retry-after"] == "1"

        # Readiness: down within a second, and says which dependency.
        ready, elapsed = _timed(lambda: client.get("/health/ready"))
        assert elapsed < 1.0
        assert ready.status_code == 503
        checks = ready.json()["checks"]
        assert checks["database"] == "down" and checks.get("redis", "ok") == "ok"

        # The database comes back: the background probe notices, unknown keys are read again.
        proxy.restore()
        deadline = time.monotonic() + 15
        status = None
        while time.monotonic() < deadline:
            status = client.post(
                "/v1/chat/completions",
                json=HELLO,
                headers={"authorization": f"Bearer {other_raw}"},
            ).status_code
            if status == 200:
                break
            time.sleep(0.2)
        assert status == 200
        assert client.get("/health/ready").status_code == 200


def test_past_the_staleness_bound_a_cached_key_is_refused_with_503_too(
    live_gateway, outage_catalog, proxy
):
    cached_raw, _other = outage_catalog
    url = database_url_of_tests().replace(f"{POSTGRES[0]}:{POSTGRES[1]}", f"127.0.0.1:{proxy.port}")
    env = {
        "DATABASE_URL": url,
        "GATEWAY_SNAPSHOT_TTL_SECONDS": "0.3",
        "GATEWAY_STALE_MAX_SECONDS": "1",
        "GATEWAY_DB_RETRY_SECONDS": "0.2",
    }
    with live_gateway(env=env) as base, httpx.Client(base_url=base, timeout=10) as client:
        auth = {"authorization": f"Bearer {cached_raw}"}
        for _ in range(2):
            assert client.post("/v1/chat/completions", json=HELLO, headers=auth).status_code == 200
        proxy.cut()
        time.sleep(1.2)  # the copies loaded before the cut are now older than the bound
        response = client.post("/v1/chat/completions", json=HELLO, headers=auth)
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "database_unavailable"
