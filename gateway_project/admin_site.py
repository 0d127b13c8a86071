"""The admin site: Django's, plus two-factor login for staff (django-otp, TOTP) when
GATEWAY_ADMIN_REQUIRE_2FA is on, and the environment's name in every admin page's header.

Installed through `gateway_project.apps.GatewayAdminConfig` in place of
`django.contrib.admin`, so `admin.site` (and every `@admin.register`) is this site."""

from __future__ import annotations

from django.conf import settings
from django.contrib.admin import AdminSite
from django.http import HttpRequest
from django_otp.admin import OTPAdminAuthenticationForm, OTPAdminSite


class GatewayAdminSite(AdminSite):
    site_header = "LLM Gateway administration"
    site_title = "LLM Gateway admin"
    index_title = "Operations"

    # Read per request (not fixed at import), so the setting is the one switch.
    @property
    def login_form(self):
        return OTPAdminAuthenticationForm if settings.GATEWAY_ADMIN_REQUIRE_2FA else None

    @property
    def login_template(self):
        return OTPAdminSite.login_template if settings.GATEWAY_ADMIN_REQUIRE_2FA else None

    def has_permission(self, request: HttpRequest) -> bool:
        """Staff as usual; with 2FA required, only a session verified by the user's TOTP
        device (a password-only session is treated as not logged in to the admin)."""
        if not super().has_permission(request):
            return False
        if not settings.GATEWAY_ADMIN_REQUIRE_2FA:
            return True
        is_verified = getattr(request.user, "is_verified", None)
        return bool(is_verified and is_verified())


def environment(request: HttpRequest) -> dict[str, str]:
    """Template context: the environment banner of the admin pages."""
    name = settings.GATEWAY_ENVIRONMENT_NAME
    lowered = name.lower()
    kind = (
        "production"
        if lowered.startswith("prod")
        else ("staging" if lowered.startswith(("stag", "pre", "test", "qa")) else "development")
    )
    return {"gateway_environment_name": name, "gateway_environment_kind": kind}
