"""Authentication and scopes of the management and reports APIs: operator tokens
(tenants.models.OperatorToken), stored hashed, expiring, read-only or read-write, optionally
limited to one tenant. Sent as `Authorization: Token <token>` (or `Bearer <token>`)."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions, permissions

from tenants.keys import api_key_hash
from tenants.models import OperatorToken, OperatorTokenScope

_LAST_USED_EVERY = timedelta(minutes=5)


class OperatorTokenAuthentication(authentication.BaseAuthentication):
    keywords = ("token", "bearer")

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).split()
        if not header or header[0].lower().decode(errors="replace") not in self.keywords:
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed("Invalid token header.")
        try:
            raw = header[1].decode()
        except UnicodeError as exc:
            raise exceptions.AuthenticationFailed("Invalid token header.") from exc
        token = (
            OperatorToken.objects.select_related("user").filter(key_hash=api_key_hash(raw)).first()
        )
        now = timezone.now()
        # One answer for unknown, revoked and expired tokens: no oracle for which it was.
        if (
            token is None
            or token.revoked_at is not None
            or token.expires_at <= now
            or not token.user.is_active
        ):
            raise exceptions.AuthenticationFailed("Invalid or expired token.")
        if token.last_used_at is None or now - token.last_used_at > _LAST_USED_EVERY:
            OperatorToken.objects.filter(pk=token.pk).update(last_used_at=now)
        return token.user, token

    def authenticate_header(self, request) -> str:
        return "Token"


def request_token(request) -> OperatorToken | None:
    auth = getattr(request, "auth", None)
    return auth if isinstance(auth, OperatorToken) else None


def request_tenant_limit(request) -> int | None:
    """The one tenant a tenant-limited token may touch (None: no such limit)."""
    token = request_token(request)
    return token.tenant_id if token is not None else None


class TokenScopeAllows(permissions.BasePermission):
    """A read-only token may only read (GET, HEAD, OPTIONS)."""

    message = "This token is read-only."

    def has_permission(self, request, view) -> bool:
        token = request_token(request)
        if token is None or token.scope == OperatorTokenScope.WRITE:
            return True
        return request.method in permissions.SAFE_METHODS


class OperatorTokenScheme(OpenApiAuthenticationExtension):
    """How the OpenAPI documents describe the operator token."""

    target_class = "tenants.api.auth.OperatorTokenAuthentication"
    name = "operatorToken"

    def get_security_definition(self, auto_schema):
        return {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": "`Token <operator token>` (manage.py create_operator_token)",
        }
