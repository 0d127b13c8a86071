"""Admin security: two-factor login for staff (django-otp TOTP) when required, login
throttling (django-axes), password validators, session expiry, the environment banner."""

from __future__ import annotations

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model, password_validation
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.test import Client, override_settings
from django_otp.oath import totp
from django_otp.plugins.otp_totp.models import TOTPDevice

from tenants.models import AuditEvent

pytestmark = pytest.mark.django_db

PASSWORD = "correct-horse-battery-staple-42"


@pytest.fixture
def staff():
    return get_user_model().objects.create_user(
        "ops", password=PASSWORD, is_staff=True, is_superuser=True
    )


def _login(client: Client, *, password: str = PASSWORD, token: str | None = None, device=None):
    data = {"username": "ops", "password": password, "next": "/admin/"}
    if token is not None:
        data["otp_token"] = token
    if device is not None:
        data["otp_device"] = device.persistent_id
    return client.post("/admin/login/?next=/admin/", data)


def _token(device: TOTPDevice) -> str:
    return f"{totp(device.bin_key, step=device.step, t0=device.t0, digits=device.digits):0{device.digits}d}"


def _enroll(capsys) -> tuple[TOTPDevice, str]:
    call_command("admin_2fa_enroll", "ops")
    url = capsys.readouterr().out.strip().splitlines()[-1]
    return TOTPDevice.objects.get(user__username="ops"), url


# -- two-factor login ------------------------------------------------------------------------
@override_settings(GATEWAY_ADMIN_REQUIRE_2FA=True)
def test_with_2fa_required_staff_need_password_and_a_current_totp_code(staff, capsys):
    client = Client()
    assert "otp_token" in client.get("/admin/login/").content.decode()
    # No device yet: the password alone does not open the admin.
    assert _login(client).status_code == 200
    assert client.get("/admin/").status_code == 302

    device, url = _enroll(capsys)
    assert url.startswith("otpauth://totp/") and "secret=" in url
    assert AuditEvent.objects.filter(action="staff.totp_enroll", target="ops").exists()
    assert (
        _login(client, token="000000" if _token(device) != "000000" else "111111").status_code
        == 200
    )
    assert client.get("/admin/").status_code == 302

    # django-otp's two steps: the password shows the user's devices, then device + code.
    first = _login(client, token=_token(device))
    assert first.status_code == 200 and device.persistent_id in first.content.decode()
    answered = _login(client, token=_token(device), device=device)
    assert answered.status_code == 302 and answered["Location"] == "/admin/"
    assert client.get("/admin/").status_code == 200


@override_settings(GATEWAY_ADMIN_REQUIRE_2FA=True)
def test_with_2fa_required_a_password_only_session_is_not_an_admin_session(staff):
    client = Client()
    client.force_login(staff)  # authenticated, but not verified by a device
    assert client.get("/admin/").status_code == 302
    assert client.get("/admin/tenants/apikey/").status_code == 302
    assert client.get("/admin/usage/usageevent/dashboard/").status_code == 302


@override_settings(GATEWAY_ADMIN_REQUIRE_2FA=False)
def test_without_2fa_required_the_password_is_enough(staff):
    client = Client()
    assert "otp_token" not in client.get("/admin/login/").content.decode()
    assert _login(client).status_code == 302
    assert client.get("/admin/").status_code == 200


def test_enrollment_refuses_non_staff_and_a_second_device_unless_replacing(staff, capsys):
    get_user_model().objects.create_user("visitor", password=PASSWORD)
    with pytest.raises(Exception, match="staff"):
        call_command("admin_2fa_enroll", "visitor")
    _enroll(capsys)
    with pytest.raises(Exception, match="already has"):
        call_command("admin_2fa_enroll", "ops")
    call_command("admin_2fa_enroll", "ops", "--replace")
    assert TOTPDevice.objects.filter(user=staff).count() == 1


# -- throttling ------------------------------------------------------------------------------
def test_repeated_failed_logins_lock_the_username_out_even_with_the_right_password(staff):
    client = Client()
    for _ in range(settings.AXES_FAILURE_LIMIT):
        failed = _login(client, password="wrong-password-xyz")
        assert failed.status_code in (200, 429)
    locked = _login(client)
    assert locked.status_code == 429
    assert client.get("/admin/").status_code == 302
    # Another address is not locked out by these failures (username + address pair).
    other = Client(REMOTE_ADDR="127.0.0.9")
    assert _login(other).status_code == 302
    call_command("axes_reset")
    assert _login(Client()).status_code == 302


# -- passwords, sessions, banner -------------------------------------------------------------
def test_weak_passwords_are_refused_by_the_validators(staff):
    for weak in ("short-1", "password1234", "123456789012"):
        with pytest.raises(ValidationError):
            password_validation.validate_password(weak, user=staff)
    password_validation.validate_password(PASSWORD, user=staff)


@override_settings(GATEWAY_ADMIN_REQUIRE_2FA=False)
def test_admin_session_cookies_are_http_only_and_end_with_the_browser(staff):
    client = Client()
    response = _login(client)
    cookie = response.cookies[settings.SESSION_COOKIE_NAME]
    assert cookie["httponly"] and cookie["samesite"] == "Lax"
    assert not cookie["max-age"] and not cookie["expires"]  # a browser-session cookie
    assert client.session.get_expire_at_browser_close()
    assert 0 < client.session.get_expiry_age() <= 24 * 3600


@pytest.mark.parametrize(
    ("name", "kind"),
    [("production", "production"), ("staging-eu", "staging"), ("laptop", "development")],
)
def test_every_admin_page_shows_the_environment_banner(staff, name, kind):
    with override_settings(GATEWAY_ENVIRONMENT_NAME=name, GATEWAY_ADMIN_REQUIRE_2FA=False):
        anonymous = Client().get("/admin/login/").content.decode()
        assert f'class="env-banner env-{kind}"' in anonymous and f"Environment: {name}" in anonymous
        client = Client()
        client.force_login(staff)
        for url in ("/admin/", "/admin/tenants/apikey/", "/admin/usage/usageevent/dashboard/"):
            page = client.get(url).content.decode()
            assert f"Environment: {name}" in page, url


def test_the_banner_escapes_the_environment_name(staff):
    with override_settings(GATEWAY_ENVIRONMENT_NAME="<script>x</script>"):
        page = Client().get("/admin/login/").content.decode()
    assert "<script>x</script>" not in page and "&lt;script&gt;" in page
