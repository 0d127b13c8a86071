"""Outbound budget-alert webhooks, safe against SSRF.

A tenant admin chooses the URL and the server fetches it, so every request is checked twice:
when the URL is written (serializer, admin form, service) and when it is sent. At send time
the host name is resolved once, every address it resolves to must be public, and the
connection goes to that validated address (the name still rides as the Host header and as
the TLS SNI and certificate name), so a DNS answer that changes between check and connect
(rebinding) cannot steer the request elsewhere. Redirects are never followed.

Refused: anything not https (unless GATEWAY_WEBHOOK_ALLOW_HTTP, for development), user info
in the URL, and addresses that are loopback, private (RFC 1918, ULA), link-local (which holds
the cloud metadata address 169.254.169.254), CGNAT (100.64/10), multicast, reserved,
unspecified or otherwise not globally routable, for IPv4 and IPv6 alike, including IPv4
addresses wrapped in IPv6 (v4-mapped ::ffff:a.b.c.d, NAT64 64:ff9b::/96, 6to4 2002::/16,
Teredo 2001::/32, IPv4-compatible ::/96, IPv4-translated ::ffff:0:0:0/96, local-use NAT64
64:ff9b:1::/48) and site-local fec0::/10. Operators who really deliver to an internal receiver list its networks in
GATEWAY_WEBHOOK_ALLOWED_NETWORKS. With GATEWAY_WEBHOOK_PROXY set, requests leave through that
egress proxy (which then owns the network policy); literal addresses are still checked here.

Failures are logged with their details for operators; tenants only ever see generic text.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from django.conf import settings
from django.core.exceptions import ValidationError

logger = logging.getLogger("gateway.tenants")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# What a tenant sees when a send failed, whatever the reason (no port-scan oracle).
WEBHOOK_FAILED_TEXT = "webhook: not delivered"

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_TEREDO = ipaddress.ip_network("2001::/32")
# IPv6 ranges that carry or reach IPv4 or local networks but that Python's is_global lets
# through: IPv4-compatible ::a.b.c.d (deprecated), IPv4-translated ::ffff:0:a.b.c.d (SIIT),
# local-use NAT64 (RFC 8215), site-local fec0::/10 (deprecated) and SRv6 SIDs (RFC 9602).
_REFUSED_V6 = tuple(
    ipaddress.ip_network(n)
    for n in ("::/96", "::ffff:0:0:0/96", "64:ff9b:1::/48", "fec0::/10", "5f00::/16")
)


class WebhookRefused(Exception):
    """The URL or an address it resolves to is not allowed (details for logs only)."""


class WebhookFailed(Exception):
    """The receiver could not be reached or did not answer 2xx (details for logs only)."""


def _allowed_networks() -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [
        ipaddress.ip_network(n, strict=False) for n in settings.GATEWAY_WEBHOOK_ALLOWED_NETWORKS
    ]


def _embedded_v4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip in _NAT64:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if ip.sixtofour is not None:
            return ip.sixtofour
    return None


def address_allowed(ip: IPAddress) -> bool:
    """True when a webhook may connect to this address."""
    if any(ip in net for net in _allowed_networks() if net.version == ip.version):
        return True
    inner = _embedded_v4(ip)
    if inner is not None:
        return address_allowed(inner)
    if isinstance(ip, ipaddress.IPv6Address) and (
        ip in _TEREDO or any(ip in net for net in _REFUSED_V6)
    ):
        return False
    return ip.is_global and not ip.is_multicast


def _split(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an acceptable URL, else WebhookRefused with the reason."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise WebhookRefused("not a valid URL") from exc
    scheme = parts.scheme.lower()
    allowed = ("https", "http") if settings.GATEWAY_WEBHOOK_ALLOW_HTTP else ("https",)
    if scheme not in allowed:
        raise WebhookRefused("must be an https:// URL")
    if not parts.hostname:
        raise WebhookRefused("must name a host")
    if parts.username is not None or parts.password is not None:
        raise WebhookRefused("must not contain a user name or password")
    return scheme, parts.hostname, port or (443 if scheme == "https" else 80)


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _resolve(host: str, port: int) -> list[IPAddress]:
    literal = _literal(host)
    if literal is not None:
        return [literal]
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise WebhookFailed(f"cannot resolve {host}: {exc}") from exc
    # Scope ids ("fe80::1%eth0") are dropped; such addresses are link-local and refused anyway.
    found = [ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in infos]
    return list(dict.fromkeys(found))


def webhook_url_validate(url: str) -> None:
    """Write-time check (serializer, admin form, service). Raises ValidationError with a text
    fit for the tenant admin who typed the URL. A name that does not resolve now is accepted
    (DNS may be down); the send-time check is the one that decides."""
    if not url:
        return
    try:
        _scheme, host, port = _split(url)
        literal = _literal(host)
        if literal is not None:
            if not address_allowed(literal):
                raise WebhookRefused("points to a private, loopback or reserved address")
        elif not settings.GATEWAY_WEBHOOK_PROXY:
            try:
                addresses = _resolve(host, port)
            except WebhookFailed:
                addresses = []
            if any(not address_allowed(ip) for ip in addresses):
                raise WebhookRefused("resolves to a private, loopback or reserved address")
    except WebhookRefused as exc:
        raise ValidationError(f"Webhook URL {exc}.", code="webhook_refused") from exc


def _pinned_target(url: str) -> tuple[str, dict[str, str], dict[str, Any]]:
    """(URL to connect to, extra headers, httpx request extensions) for a send-time request:
    the validated address in the URL, the name in Host and SNI."""
    scheme, host, port = _split(url)
    if settings.GATEWAY_WEBHOOK_PROXY:
        literal = _literal(host)
        if literal is not None and not address_allowed(literal):
            raise WebhookRefused(f"address {literal} is not allowed")
        return url, {}, {}
    addresses = _resolve(host, port)
    refused = [str(ip) for ip in addresses if not address_allowed(ip)]
    if not addresses or refused:
        raise WebhookRefused(f"{host} resolves to refused addresses {refused}")
    ip = addresses[0]
    netloc = f"[{ip}]" if ip.version == 6 else str(ip)
    default_port = 443 if scheme == "https" else 80
    if port != default_port:
        netloc = f"{netloc}:{port}"
    parts = urlsplit(url)
    pinned = urlunsplit((scheme, netloc, parts.path or "/", parts.query, ""))
    host_header = host if port == default_port else f"{host}:{port}"
    if ":" in host and _literal(host) is not None:
        host_header = f"[{host}]" if port == default_port else f"[{host}]:{port}"
    extensions = {"sni_hostname": host} if scheme == "https" and _literal(host) is None else {}
    return pinned, {"Host": host_header}, extensions


def webhook_post(*, url: str, payload: dict[str, Any], timeout_s: float) -> None:
    """POST the payload as JSON to a tenant's webhook. Raises WebhookRefused (policy) or
    WebhookFailed (network, non-2xx, a redirect); never follows a redirect."""
    # Imported here: only alert delivery (a Celery task) uses it, and importing it in every
    # web worker costs ~17 MB of RSS.
    import httpx

    target, headers, extensions = _pinned_target(url)
    timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, 3.0))
    proxy = settings.GATEWAY_WEBHOOK_PROXY or None
    try:
        with httpx.Client(
            timeout=timeout, follow_redirects=False, proxy=proxy, trust_env=False
        ) as client:
            request = client.build_request(
                "POST", target, json=payload, headers=headers, extensions=extensions
            )
            response = client.send(request)
    except httpx.HTTPError as exc:
        raise WebhookFailed(f"{type(exc).__name__}: {exc}") from exc
    if response.is_redirect:
        raise WebhookFailed(f"redirect {response.status_code} refused (not followed)")
    if not response.is_success:
        raise WebhookFailed(f"status {response.status_code}")
