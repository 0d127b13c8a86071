"""Writes. Each service makes one state change completely: validation, the write, an audit
event, and (on commit) a move of the shared config version, so every gateway process drops its
cached key policies within a second."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from tenants.admission import config_changed_notify
from tenants.keys import (
    api_key_display_prefix,
    api_key_generate,
    api_key_hash,
    operator_token_generate,
)
from tenants.models import (
    AlertScope,
    ApiKey,
    AuditEvent,
    BudgetAlert,
    BudgetPeriod,
    OperatorToken,
    OperatorTokenScope,
    Tenant,
    TenantMembership,
)
from tenants.webhooks import (
    WEBHOOK_FAILED_TEXT,
    WebhookFailed,
    WebhookRefused,
    webhook_post,
    webhook_url_validate,
)

logger = logging.getLogger("gateway.tenants")


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()
"""Marks an argument the caller did not pass (None already means 'unlimited')."""

LIMIT_FIELDS = ("budget_usd", "budget_period", "rpm_limit", "tpm_limit", "max_concurrency")


class BudgetAlertDeliveryError(Exception):
    """A notification could not be delivered; the task retries (sent ones are not repeated)."""


# -- validation ----------------------------------------------------------------------------
def _json_safe(value: Any) -> Any:
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, list | tuple | frozenset | set):
        return [_json_safe(v) for v in value]
    return value


def _validate_limits(values: dict[str, Any]) -> None:
    errors: dict[str, str] = {}
    budget = values.get("budget_usd")
    if budget is not None:
        try:
            budget = Decimal(str(budget))
        except ArithmeticError:
            errors["budget_usd"] = "must be a decimal amount in USD"
        else:
            if budget < 0 or budget.as_tuple().exponent < -4 or budget >= Decimal("1e10"):
                errors["budget_usd"] = "must be >= 0, below 10^10, with at most 4 decimals"
            values["budget_usd"] = budget
    period = values.get("budget_period")
    if period is not None and period not in BudgetPeriod.values:
        errors["budget_period"] = f"must be one of {', '.join(BudgetPeriod.values)}"
    for name in ("rpm_limit", "tpm_limit", "max_concurrency"):
        value = values.get(name)
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or value < 0
        ):
            errors[name] = "must be a whole number >= 0 (or empty for unlimited)"
    if errors:
        raise ValidationError(errors)


def _validate_timezone(name: str) -> None:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValidationError({"timezone": f"unknown time zone {name!r}"}) from exc


def _validate_thresholds(values: Any) -> list[int]:
    if not isinstance(values, list | tuple) or not all(
        isinstance(v, int) and not isinstance(v, bool) and 0 < v <= 1000 for v in values
    ):
        raise ValidationError({"alert_thresholds": "must be a list of percents in 1..1000"})
    return sorted(set(values))


def _validate_webhook(url: str) -> None:
    try:
        webhook_url_validate(url)
    except ValidationError as exc:
        raise ValidationError({"alert_webhook_url": exc.messages}) from exc


def _audit(*, tenant: Tenant | None, actor: str, action: str, target: str, details: dict) -> None:
    AuditEvent.objects.create(
        tenant=tenant,
        actor=actor[:200],
        action=action,
        target=target[:200],
        details={k: _json_safe(v) for k, v in details.items()},
    )


def _apply(obj: Tenant | ApiKey, changes: dict[str, Any]) -> dict[str, list[Any]]:
    """Set the fields that really change; returns {field: [old, new]} for the audit."""
    diff: dict[str, list[Any]] = {}
    for name, value in changes.items():
        if value is UNSET:
            continue
        old = getattr(obj, name)
        if old != value:
            diff[name] = [_json_safe(old), _json_safe(value)]
            setattr(obj, name, value)
    return diff


def _notify_on_commit() -> None:
    transaction.on_commit(config_changed_notify)


# -- tenants -------------------------------------------------------------------------------
@transaction.atomic
def tenant_create(
    *,
    slug: str,
    name: str = "",
    actor: str = "",
    timezone_name: str = "UTC",
    budget_usd: Decimal | None = None,
    budget_period: str = BudgetPeriod.MONTHLY,
    rpm_limit: int | None = None,
    tpm_limit: int | None = None,
    max_concurrency: int | None = None,
    alert_thresholds: list[int] | None = None,
    alert_webhook_url: str = "",
    alert_email: str = "",
) -> Tenant:
    limits = {
        "budget_usd": budget_usd,
        "budget_period": budget_period,
        "rpm_limit": rpm_limit,
        "tpm_limit": tpm_limit,
        "max_concurrency": max_concurrency,
    }
    _validate_limits(limits)
    _validate_timezone(timezone_name)
    _validate_webhook(alert_webhook_url)
    if Tenant.objects.filter(slug=slug).exists():
        raise ValidationError({"slug": f"a tenant with slug {slug!r} already exists"})
    tenant = Tenant(
        slug=slug,
        name=name or slug,
        timezone=timezone_name,
        alert_webhook_url=alert_webhook_url,
        alert_email=alert_email,
        **limits,
    )
    if alert_thresholds is not None:
        tenant.alert_thresholds = _validate_thresholds(alert_thresholds)
    tenant.full_clean()
    tenant.save()
    _audit(
        tenant=tenant,
        actor=actor,
        action="tenant.create",
        target=tenant.slug,
        details={**limits, "timezone": timezone_name},
    )
    _notify_on_commit()
    logger.info("tenants.tenant_created", extra={"tenant_id": tenant.id, "actor": actor})
    return tenant


@transaction.atomic
def tenant_update_limits(
    *,
    tenant: Tenant,
    actor: str = "",
    budget_usd: Decimal | None = UNSET,
    budget_period: str = UNSET,
    rpm_limit: int | None = UNSET,
    tpm_limit: int | None = UNSET,
    max_concurrency: int | None = UNSET,
    timezone_name: str = UNSET,
    alert_thresholds: list[int] = UNSET,
    alert_webhook_url: str = UNSET,
    alert_email: str = UNSET,
    is_active: bool = UNSET,
) -> Tenant:
    """Change a tenant's limits, budget, time zone, alert settings or activity."""
    tenant = Tenant.objects.select_for_update().get(pk=tenant.pk)
    limits = {
        "budget_usd": budget_usd,
        "budget_period": budget_period,
        "rpm_limit": rpm_limit,
        "tpm_limit": tpm_limit,
        "max_concurrency": max_concurrency,
    }
    _validate_limits({k: v for k, v in limits.items() if v is not UNSET})
    if budget_usd is not UNSET and budget_usd is not None:
        limits["budget_usd"] = Decimal(str(budget_usd))
    other: dict[str, Any] = {
        "alert_webhook_url": alert_webhook_url,
        "alert_email": alert_email,
        "is_active": is_active,
    }
    if alert_webhook_url is not UNSET:
        _validate_webhook(alert_webhook_url)
    if timezone_name is not UNSET:
        _validate_timezone(timezone_name)
        other["timezone"] = timezone_name
    if alert_thresholds is not UNSET:
        other["alert_thresholds"] = _validate_thresholds(alert_thresholds)
    diff = _apply(tenant, {**limits, **other})
    if not diff:
        return tenant
    tenant.full_clean()
    tenant.save()
    _audit(tenant=tenant, actor=actor, action="tenant.update", target=tenant.slug, details=diff)
    _notify_on_commit()
    return tenant


# -- API keys ------------------------------------------------------------------------------
def _clean_models(models: Iterable[str] | None) -> list[str]:
    names = sorted({m.strip() for m in models or () if m and m.strip()})
    if any(len(n) > 200 for n in names):
        raise ValidationError({"allowed_models": "model names are at most 200 characters"})
    return names


def _validate_expiry(expires_at: datetime | None) -> None:
    if expires_at is not None and timezone.is_naive(expires_at):
        raise ValidationError({"expires_at": "must include a time zone (e.g. ...Z or +02:00)"})


@transaction.atomic
def api_key_create(
    *,
    tenant: Tenant,
    actor: str = "",
    name: str = "",
    budget_usd: Decimal | None = None,
    budget_period: str = BudgetPeriod.MONTHLY,
    rpm_limit: int | None = None,
    tpm_limit: int | None = None,
    max_concurrency: int | None = None,
    allowed_models: Iterable[str] | None = None,
    expires_at: datetime | None = None,
) -> tuple[ApiKey, str]:
    """Issue a key. Returns the row and the raw key: the only time the raw key exists outside
    the caller's hands; only its SHA-256 is stored."""
    limits = {
        "budget_usd": budget_usd,
        "budget_period": budget_period,
        "rpm_limit": rpm_limit,
        "tpm_limit": tpm_limit,
        "max_concurrency": max_concurrency,
    }
    _validate_limits(limits)
    _validate_expiry(expires_at)
    raw = api_key_generate()
    key = ApiKey(
        tenant=tenant,
        name=name,
        prefix=api_key_display_prefix(raw),
        key_hash=api_key_hash(raw),
        allowed_models=_clean_models(allowed_models),
        expires_at=expires_at,
        **limits,
    )
    key.full_clean(exclude=["key_hash"])
    key.save()
    _audit(
        tenant=tenant,
        actor=actor,
        action="api_key.create",
        target=key.prefix,
        details={
            **limits,
            "name": name,
            "allowed_models": key.allowed_models,
            "expires_at": expires_at,
        },
    )
    _notify_on_commit()
    logger.info(
        "tenants.api_key_created",
        extra={"tenant_id": tenant.id, "api_key_id": key.id, "prefix": key.prefix},
    )
    return key, raw


@transaction.atomic
def api_key_revoke(*, key: ApiKey, actor: str = "") -> ApiKey:
    """Revoke a key (idempotent: a revoked key keeps its first revocation time)."""
    key = ApiKey.objects.select_for_update().select_related("tenant").get(pk=key.pk)
    if key.revoked_at is not None:
        return key
    key.revoked_at = timezone.now()
    key.save(update_fields=["revoked_at", "updated_at"])
    _audit(
        tenant=key.tenant,
        actor=actor,
        action="api_key.revoke",
        target=key.prefix,
        details={"api_key_id": key.id},
    )
    _notify_on_commit()
    logger.info("tenants.api_key_revoked", extra={"api_key_id": key.id, "prefix": key.prefix})
    return key


MAX_ROTATION_GRACE_SECONDS = 30 * 86400


@transaction.atomic
def api_key_delete(*, key: ApiKey, actor: str = "") -> None:
    """Delete a key row (platform staff in the admin; revoking is the usual way). Like a
    revocation, every process stops accepting it within a second (config version on commit)."""
    _audit(
        tenant=key.tenant,
        actor=actor,
        action="api_key.delete",
        target=key.prefix,
        details={"api_key_id": key.id},
    )
    key.delete()
    _notify_on_commit()
    logger.info("tenants.api_key_deleted", extra={"prefix": key.prefix, "actor": actor})


@transaction.atomic
def tenant_delete(*, tenant: Tenant, actor: str = "") -> None:
    """Delete a tenant and (cascade) its keys; every process stops accepting them within a
    second (config version on commit)."""
    _audit(
        tenant=None,
        actor=actor,
        action="tenant.delete",
        target=tenant.slug,
        details={"tenant_id": tenant.id},
    )
    tenant.delete()
    _notify_on_commit()
    logger.info("tenants.tenant_deleted", extra={"slug": tenant.slug, "actor": actor})


@transaction.atomic
def api_key_rotate(
    *, key: ApiKey, actor: str = "", grace_seconds: int | None = None
) -> tuple[ApiKey, str]:
    """Give a key a new secret, in place: the record (id, `public_id`, name, limits, budget,
    models, expiry and usage history) stays; the old secret keeps working for `grace_seconds`
    (default GATEWAY_KEY_ROTATION_GRACE_SECONDS; 0 stops it at once), billed to this same
    record. Rotating again during a grace period ends the older secret at once. Returns the
    row and the new raw key."""
    if grace_seconds is None:
        grace_seconds = settings.GATEWAY_KEY_ROTATION_GRACE_SECONDS
    if (
        not isinstance(grace_seconds, int)
        or isinstance(grace_seconds, bool)
        or not 0 <= grace_seconds <= MAX_ROTATION_GRACE_SECONDS
    ):
        raise ValidationError(
            {
                "grace_seconds": f"must be a whole number of seconds in 0..{MAX_ROTATION_GRACE_SECONDS}"
            }
        )
    key = ApiKey.objects.select_for_update().select_related("tenant").get(pk=key.pk)
    if key.revoked_at is not None:
        raise ValidationError("a revoked key cannot be rotated")
    now = timezone.now()
    raw = api_key_generate()
    old_prefix = key.prefix
    key.previous_key_hash = key.key_hash
    key.previous_valid_until = now + timedelta(seconds=grace_seconds)
    key.key_hash = api_key_hash(raw)
    key.prefix = api_key_display_prefix(raw)
    key.rotated_at = now
    key.grace_reminded_at = None
    key.save(
        update_fields=[
            "previous_key_hash",
            "previous_valid_until",
            "key_hash",
            "prefix",
            "rotated_at",
            "grace_reminded_at",
            "updated_at",
        ]
    )
    _audit(
        tenant=key.tenant,
        actor=actor,
        action="api_key.rotate",
        target=key.public_id,
        details={
            "api_key_id": key.id,
            "old_prefix": old_prefix,
            "new_prefix": key.prefix,
            "previous_valid_until": key.previous_valid_until,
        },
    )
    _notify_on_commit()
    logger.info(
        "tenants.api_key_rotated",
        extra={"api_key_id": key.id, "public_id": key.public_id, "grace_seconds": grace_seconds},
    )
    return key, raw


@transaction.atomic
def api_key_update_limits(
    *,
    key: ApiKey,
    actor: str = "",
    name: str = UNSET,
    budget_usd: Decimal | None = UNSET,
    budget_period: str = UNSET,
    rpm_limit: int | None = UNSET,
    tpm_limit: int | None = UNSET,
    max_concurrency: int | None = UNSET,
    allowed_models: Iterable[str] = UNSET,
    expires_at: datetime | None = UNSET,
) -> ApiKey:
    key = ApiKey.objects.select_for_update().select_related("tenant").get(pk=key.pk)
    limits = {
        "budget_usd": budget_usd,
        "budget_period": budget_period,
        "rpm_limit": rpm_limit,
        "tpm_limit": tpm_limit,
        "max_concurrency": max_concurrency,
    }
    checked = {k: v for k, v in limits.items() if v is not UNSET}
    _validate_limits(checked)
    limits.update(checked)
    changes: dict[str, Any] = {**limits, "name": name}
    if allowed_models is not UNSET:
        changes["allowed_models"] = _clean_models(allowed_models)
    if expires_at is not UNSET:
        _validate_expiry(expires_at)
        changes["expires_at"] = expires_at
    diff = _apply(key, changes)
    if not diff:
        return key
    if "expires_at" in diff:
        key.expiry_reminded_at = None  # a new date earns a new reminder
    key.full_clean(exclude=["key_hash"])
    key.save()
    _audit(tenant=key.tenant, actor=actor, action="api_key.update", target=key.prefix, details=diff)
    _notify_on_commit()
    return key


# -- operator tokens (management and reports APIs) ---------------------------------------------
@transaction.atomic
def operator_token_create(
    *,
    user: Any,
    actor: str = "",
    name: str = "",
    scope: str = OperatorTokenScope.READ,
    tenant: Tenant | None = None,
    expires_in_days: int | None = None,
) -> tuple[OperatorToken, str]:
    """Issue an API token for `user`. Returns the row and the raw token: the only time it
    exists outside the caller's hands; only its SHA-256 is stored. Read-only by default, and
    it expires (GATEWAY_OPERATOR_TOKEN_DAYS unless given, at most
    GATEWAY_OPERATOR_TOKEN_MAX_DAYS)."""
    if scope not in OperatorTokenScope.values:
        raise ValidationError({"scope": f"must be one of {', '.join(OperatorTokenScope.values)}"})
    days = settings.GATEWAY_OPERATOR_TOKEN_DAYS if expires_in_days is None else expires_in_days
    if not 0 < days <= settings.GATEWAY_OPERATOR_TOKEN_MAX_DAYS:
        raise ValidationError(
            {"expires_in_days": f"must be 1..{settings.GATEWAY_OPERATOR_TOKEN_MAX_DAYS}"}
        )
    if not (user.is_active and (user.is_superuser or user.tenant_memberships.exists())):
        raise ValidationError("only superusers and tenant admins may hold operator tokens")
    if (
        tenant is not None
        and not user.is_superuser
        and not TenantMembership.objects.filter(user=user, tenant=tenant).exists()
    ):
        raise ValidationError({"tenant": "the user does not administer this tenant"})
    raw = operator_token_generate()
    token = OperatorToken.objects.create(
        user=user,
        name=name,
        prefix=api_key_display_prefix(raw),
        key_hash=api_key_hash(raw),
        scope=scope,
        tenant=tenant,
        expires_at=timezone.now() + timedelta(days=days),
    )
    _audit(
        tenant=tenant,
        actor=actor,
        action="operator_token.create",
        target=token.prefix,
        details={"user": user.get_username(), "scope": scope, "expires_at": token.expires_at},
    )
    logger.info(
        "tenants.operator_token_created",
        extra={"token_id": token.id, "user_id": user.pk, "scope": scope},
    )
    return token, raw


@transaction.atomic
def operator_token_revoke(*, token: OperatorToken, actor: str = "") -> OperatorToken:
    """Revoke an operator token (idempotent)."""
    token = OperatorToken.objects.select_for_update().get(pk=token.pk)
    if token.revoked_at is None:
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
        _audit(
            tenant=token.tenant,
            actor=actor,
            action="operator_token.revoke",
            target=token.prefix,
            details={"token_id": token.id},
        )
    return token


# -- budget alerts (called by tenants.tasks, off the request path) ---------------------------
def _alert_payload(alert: BudgetAlert, tenant: Tenant) -> dict[str, Any]:
    return {
        "type": "budget.threshold_crossed",
        "tenant": tenant.slug,
        "tenant_id": tenant.id,
        "scope": alert.scope,
        "scope_id": alert.scope_id,
        "api_key_prefix": alert.api_key.prefix if alert.api_key_id else None,
        "period": alert.period_key,
        "threshold_percent": alert.threshold,
        "budget_usd": format(alert.budget_usd, "f"),
        "spend_usd": format(alert.spend_usd, "f"),
        "created_at": alert.created_at.isoformat(),
    }


def _alert_claim(alert_id: int) -> BudgetAlert | None:
    """Take the delivery lease of one alert with one conditional UPDATE (no row stays locked
    while the network is used). None when another run holds the lease or nothing is left to
    send. A run that dies loses its lease when it expires; the retried task then sends."""
    now = timezone.now()
    lease = timedelta(seconds=settings.GATEWAY_ALERT_WEBHOOK_TIMEOUT_SECONDS * 2 + 30)
    claimed = (
        BudgetAlert.objects.filter(pk=alert_id)
        .filter(Q(delivery_claimed_until__isnull=True) | Q(delivery_claimed_until__lt=now))
        .filter(
            Q(webhook_sent_at__isnull=True, tenant__alert_webhook_url__gt="")
            | Q(email_sent_at__isnull=True, tenant__alert_email__gt="")
        )
        .update(delivery_claimed_until=now + lease)
    )
    if not claimed:
        return None
    return BudgetAlert.objects.select_related("tenant", "api_key").get(pk=alert_id)


def _alert_deliver(alert_id: int) -> str:
    """Send what has not been sent for one alert; returns the tenant-visible error text or ''.
    Runs outside any row lock: the lease taken by _alert_claim keeps concurrent runs of the
    task for the same alert from sending twice."""
    alert = _alert_claim(alert_id)
    if alert is None:
        return ""
    tenant = alert.tenant
    errors: list[str] = []
    payload = _alert_payload(alert, tenant)
    sent: dict[str, Any] = {}
    if tenant.alert_webhook_url and alert.webhook_sent_at is None:
        try:
            webhook_post(
                url=tenant.alert_webhook_url,
                payload=payload,
                timeout_s=settings.GATEWAY_ALERT_WEBHOOK_TIMEOUT_SECONDS,
            )
        except (WebhookRefused, WebhookFailed) as exc:
            # The details are for operators; the tenant reads only the generic text.
            logger.warning(
                "tenants.budget_alert_webhook_failed",
                extra={
                    "alert_id": alert.pk,
                    "tenant_id": tenant.pk,
                    "refused": isinstance(exc, WebhookRefused),
                    "error": str(exc)[:300],
                },
            )
            errors.append(WEBHOOK_FAILED_TEXT)
        else:
            sent["webhook_sent_at"] = timezone.now()
    if tenant.alert_email and alert.email_sent_at is None:
        who = f"API key {payload['api_key_prefix']}…" if alert.scope == "key" else "Tenant"
        subject = f"[gateway] {tenant.slug}: {who} reached {alert.threshold}% of its budget"
        body = (
            f"{who} of tenant {tenant.slug} has spent {payload['spend_usd']} USD of its "
            f"{payload['budget_usd']} USD budget for period {alert.period_key} "
            f"({alert.threshold}% threshold)."
        )
        try:
            send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, [tenant.alert_email])
        except OSError as exc:
            logger.warning(
                "tenants.budget_alert_email_failed",
                extra={"alert_id": alert.pk, "tenant_id": tenant.pk, "error": repr(exc)[:300]},
            )
            errors.append("email: not delivered")
        else:
            sent["email_sent_at"] = timezone.now()
    last_error = "; ".join(errors)[:500]
    BudgetAlert.objects.filter(pk=alert.pk).update(
        **sent, last_error=last_error, delivery_claimed_until=None
    )
    return last_error


def budget_alerts_record(
    *,
    tenant_id: int,
    scope: str,
    scope_id: int,
    period_key: str,
    thresholds: list[int],
    budget_usd: str,
    spend_usd: str,
) -> list[BudgetAlert]:
    """Record crossed thresholds once per (scope, threshold, period) and notify. Idempotent:
    a second call for the same crossing changes nothing and sends nothing. Raises
    BudgetAlertDeliveryError when a notification failed (the task retries it)."""
    tenant = Tenant.objects.filter(pk=tenant_id).first()
    if tenant is None or scope not in AlertScope.values:
        return []
    api_key_id = scope_id if scope == AlertScope.KEY else None
    if api_key_id is not None and not ApiKey.objects.filter(pk=api_key_id, tenant=tenant).exists():
        return []
    alerts: list[BudgetAlert] = []
    for threshold in sorted(set(thresholds)):
        try:
            alert, created = BudgetAlert.objects.get_or_create(
                scope=scope,
                scope_id=scope_id,
                period_key=period_key,
                threshold=threshold,
                defaults={
                    "tenant": tenant,
                    "api_key_id": api_key_id,
                    "budget_usd": Decimal(budget_usd),
                    "spend_usd": Decimal(spend_usd),
                },
            )
        except IntegrityError:
            alert, created = (
                BudgetAlert.objects.get(
                    scope=scope, scope_id=scope_id, period_key=period_key, threshold=threshold
                ),
                False,
            )
        if created:
            _audit(
                tenant=tenant,
                actor="system",
                action="budget.alert",
                target=f"{scope}:{scope_id}",
                details={"threshold": threshold, "period": period_key, "spend_usd": spend_usd},
            )
            logger.info(
                "tenants.budget_alert_recorded",
                extra={"scope": scope, "scope_id": scope_id, "threshold": threshold},
            )
        alerts.append(alert)
    failures = [error for error in (_alert_deliver(a.pk) for a in alerts) if error]
    if failures:
        raise BudgetAlertDeliveryError("; ".join(failures))
    return alerts


# -- key expiry reminders (called by tenants.tasks.api_key_reminders_dispatch, beat) ---------
def _reminder_webhook_post(url: str, payload: dict[str, Any]) -> str:
    """POST a reminder to the tenant's alert webhook through the SSRF-hardened sender budget
    alerts use (tenants.webhooks: public addresses only, pinned, no redirects); returns the
    tenant-visible error text (generic, never the error class) or ''."""
    try:
        webhook_post(
            url=url, payload=payload, timeout_s=settings.GATEWAY_ALERT_WEBHOOK_TIMEOUT_SECONDS
        )
    except (WebhookRefused, WebhookFailed) as exc:
        logger.warning(
            "tenants.key_reminder_webhook_failed",
            extra={"refused": isinstance(exc, WebhookRefused), "error": str(exc)[:300]},
        )
        return WEBHOOK_FAILED_TEXT
    return ""


def _reminder_send(*, key: ApiKey, kind: str, when: datetime) -> bool:
    """Send one reminder through the tenant's alert channels; True when it reached at least
    one of them (or the tenant has none: the audit event is then the only record)."""
    tenant = key.tenant
    payload = {
        "type": f"api_key.{kind}_soon",
        "tenant": tenant.slug,
        "tenant_id": tenant.id,
        "api_key_public_id": key.public_id,
        "api_key_prefix": key.prefix,
        "api_key_name": key.name,
        "at": when.isoformat(),
    }
    label = f"API key {key.name or '(unnamed)'} ({key.public_id}, {key.prefix}…)"
    if kind == "expiry":
        subject = f"[gateway] {tenant.slug}: an API key expires soon"
        body = f"{label} of tenant {tenant.slug} expires at {when.isoformat()}."
    else:
        subject = f"[gateway] {tenant.slug}: a rotated API key's old secret stops soon"
        body = (
            f"{label} of tenant {tenant.slug} was rotated; the secret it replaced stops "
            f"working at {when.isoformat()}. Move every client to the new secret before then."
        )
    delivered, errors = False, []
    if tenant.alert_webhook_url:
        error = _reminder_webhook_post(tenant.alert_webhook_url, payload)
        if error:
            errors.append(error)
        else:
            delivered = True
    if tenant.alert_email:
        try:
            send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, [tenant.alert_email])
        except OSError as exc:
            errors.append(f"email: {type(exc).__name__}")
        else:
            delivered = True
    if not (tenant.alert_webhook_url or tenant.alert_email):
        delivered = True
    if delivered:
        _audit(
            tenant=tenant,
            actor="system",
            action=f"api_key.{kind}_reminder",
            target=key.public_id,
            details={"api_key_id": key.id, "at": when, "errors": errors},
        )
    else:
        logger.warning(
            "tenants.key_reminder_failed",
            extra={"api_key_id": key.id, "kind": kind, "errors": "; ".join(errors)},
        )
    return delivered


def api_key_reminders_send(*, now: datetime | None = None) -> int:
    """Remind tenants (webhook, email, audit) of keys that expire within
    GATEWAY_KEY_EXPIRY_REMINDER_DAYS and of rotated keys whose old secret's grace period ends
    within that window. Once per date: a reminded key is marked, a new date (changed expiry,
    another rotation) earns a new reminder. Idempotent and safe to run concurrently (each key
    is claimed under a row lock, skipping rows another run holds). Returns reminders sent."""
    now = now or timezone.now()
    horizon = now + timedelta(days=settings.GATEWAY_KEY_EXPIRY_REMINDER_DAYS)
    live = ApiKey.objects.filter(revoked_at__isnull=True, tenant__is_active=True)
    due = {
        "expiry": live.filter(
            expires_at__gt=now, expires_at__lte=horizon, expiry_reminded_at__isnull=True
        ),
        "grace": live.filter(
            previous_valid_until__gt=now,
            previous_valid_until__lte=horizon,
            grace_reminded_at__isnull=True,
        ),
    }
    sent = 0
    for kind, queryset in due.items():
        marker = f"{kind}_reminded_at"
        for key_id in list(queryset.values_list("id", flat=True)[:1000]):
            # Claim under a row lock, commit, then send with no lock held (a slow receiver
            # must not block revoking or rotating the key); a failed send releases the claim
            # for the next run. The marker is the claim: other runs skip marked keys.
            with transaction.atomic():
                key = (
                    queryset.select_for_update(skip_locked=True, of=("self",))
                    .select_related("tenant")
                    .filter(pk=key_id)
                    .first()
                )
                if key is None:
                    continue  # reminded meanwhile, changed, or held by another run
                claimed = timezone.now()
                setattr(key, marker, claimed)
                key.save(update_fields=[marker])
            when = key.expires_at if kind == "expiry" else key.previous_valid_until
            if _reminder_send(key=key, kind=kind, when=when):
                sent += 1
            else:
                ApiKey.objects.filter(pk=key.pk, **{marker: claimed}).update(**{marker: None})
    return sent


# -- staff two-factor devices (admin security; docs/admin-security.md) -----------------------
@transaction.atomic
def staff_totp_device_create(
    *, user, name: str = "authenticator", replace: bool = False, actor: str = ""
):
    """A confirmed TOTP device for a staff user (django-otp). With `replace`, the user's other
    TOTP devices are deleted first (a lost phone). Audited; the secret is never logged."""
    from django_otp.plugins.otp_totp.models import TOTPDevice

    if not (user.is_active and user.is_staff):
        raise ValidationError("only active staff users log in to the admin")
    existing = TOTPDevice.objects.filter(user=user)
    if existing.exists() and not replace:
        raise ValidationError(
            "the user already has a TOTP device (pass replace to issue a new one)"
        )
    removed = existing.count()
    existing.delete()
    device = TOTPDevice.objects.create(user=user, name=name[:64], confirmed=True)
    _audit(
        tenant=None,
        actor=actor,
        action="staff.totp_enroll",
        target=user.get_username(),
        details={"device": device.name, "replaced": removed},
    )
    logger.info("tenants.staff_totp_enrolled", extra={"user_id": user.pk, "replaced": removed})
    return device
