"""The hot-path Redis client speaks TLS for rediss:// URLs (verifying the server's certificate)
and refuses other schemes with a clear message."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tenants.state.resp import RespClient, RespConnectionError, bulk, command


def _self_signed(tmp_path) -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "redis.crt", tmp_path / "redis.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_path), str(key_path)


async def _tls_resp_server(cert: str, key: str):
    """A TLS listener on loopback that answers every RESP command with +PONG (a stand-in for
    a Redis with TLS, which this machine does not run)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(4096):
                seen.append(data)
                writer.write(b"+PONG\r\n")
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    return server, server.sockets[0].getsockname()[1], seen


async def test_rediss_urls_connect_over_verified_tls(tmp_path):
    cert, key = _self_signed(tmp_path)
    server, port, seen = await _tls_resp_server(cert, key)
    async with server:
        client = RespClient(f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={cert}")
        try:
            assert await client.execute(command(1, [bulk(b"PING")])) == b"PONG"
        finally:
            client.close()
        assert seen and b"PING" in seen[0]
        # The system CA bundle does not trust this certificate: no silent plain-text fallback.
        untrusted = RespClient(f"rediss://127.0.0.1:{port}/0")
        with pytest.raises(RespConnectionError):
            await untrusted.execute(command(1, [bulk(b"PING")]))
        untrusted.close()


def test_unsupported_redis_schemes_are_refused_with_a_clear_message():
    with pytest.raises(ValueError, match="redis:// or rediss://"):
        RespClient("unix:///var/run/redis.sock")
