"""Records every save and delete of the audited models (settings.GATEWAY_AUDIT_MODELS) as an
AuditEntry, whoever made it. Model signals, connected per audited model only: a save of any
other model (usage events, rollups...) does not reach these receivers, and nothing on the
inference path writes an audited model.

This is the one place in the project where a signal does work, and the work is only the
record: no business rule depends on it. Writes that bypass signals (QuerySet.update(),
bulk_create(), raw SQL) are not recorded, so the code that changes audited rows uses save();
tests/audit pins each write path."""

from __future__ import annotations

import datetime
import re
import uuid
from decimal import Decimal
from typing import Any

from django.apps import apps
from django.conf import settings
from django.db import models
from django.db.models.signals import post_delete, post_save, pre_save

from audit.context import audit_actor_current
from audit.models import AuditEntry

REDACTED = "[redacted]"
# Field names (and JSON keys inside JSON fields, such as provider options.headers) whose
# values are never recorded: only the fact that they changed.
# Whole words between "-"/"_" separators, so "key_hash" and "x-api-key" are secret while
# "max_output_tokens" is not.
_SECRET_NAME = re.compile(
    r"(^|[-_])(secret|password|passwd|token|hash|authorization|api[-_]?key)([-_]|$)", re.I
)
_IGNORED_FIELDS = frozenset({"updated_at"})
_BEFORE = "_audit_before"


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dict):
        return {
            str(k): REDACTED if _SECRET_NAME.search(str(k)) else _plain(v) for k, v in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    if isinstance(value, bytes | memoryview):
        return REDACTED
    return value


def _headers_redacted(value: Any) -> Any:
    # Any header may carry a credential (x-goog-api-key, cookies, custom auth): keep the
    # names, never the values.
    if isinstance(value, dict) and isinstance(value.get("headers"), dict):
        return {**value, "headers": dict.fromkeys(value["headers"], REDACTED)}
    return value


class _Audited:
    def __init__(self, label: str, spec: dict[str, Any]) -> None:
        self.model = apps.get_model(label)
        self.label = self.model._meta.label_lower
        self.tenant_attr: str | None = spec.get("tenant")
        self.parent: tuple[str, str] | None = spec.get("parent")
        self.redact = frozenset(spec.get("redact", ()))
        self.fields = [
            f
            for f in self.model._meta.concrete_fields
            if f.attname not in _IGNORED_FIELDS and not f.primary_key
        ]

    def values(self, instance: models.Model) -> dict[str, Any]:
        return {f.attname: getattr(instance, f.attname) for f in self.fields}

    def is_secret(self, attname: str) -> bool:
        return attname in self.redact or bool(_SECRET_NAME.search(attname))

    def shown(self, attname: str, value: Any) -> Any:
        if self.is_secret(attname):
            return REDACTED if value not in (None, "") else value
        return _plain(_headers_redacted(value))

    def diff(self, before: dict[str, Any], after: dict[str, Any]) -> dict[str, list[Any]]:
        changes: dict[str, list[Any]] = {}
        for name, new in after.items():
            old = before.get(name)
            if old != new:
                changes[name] = [self.shown(name, old), self.shown(name, new)]
        return changes

    def tenant_id(self, instance: models.Model) -> int | None:
        return getattr(instance, self.tenant_attr) if self.tenant_attr else None

    def parent_of(self, instance: models.Model) -> str:
        if not self.parent:
            return ""
        label, attname = self.parent
        value = getattr(instance, attname, None)
        return f"{label}:{value}" if value is not None else ""

    def record(self, instance: models.Model, action: str, changes: dict, using: str) -> None:
        AuditEntry.objects.using(using).create(
            tenant_id=self.tenant_id(instance),
            actor=audit_actor_current(),
            action=action,
            object_type=self.label,
            object_id=str(instance.pk),
            object_repr=str(instance)[:200],
            parent=self.parent_of(instance),
            changes=changes,
        )


_registry: dict[type[models.Model], _Audited] = {}


def _pre_save(sender, instance, raw=False, using="default", update_fields=None, **kwargs) -> None:
    audited = _registry[sender]
    if raw or instance._state.adding or instance.pk is None:
        return
    names = [f.attname for f in audited.fields]
    if update_fields is not None:
        names = [n for n in names if n in update_fields or n.removesuffix("_id") in update_fields]
    before = sender._base_manager.using(using).filter(pk=instance.pk).values(*names).first()
    setattr(instance, _BEFORE, before)


def _post_save(sender, instance, created, raw=False, using="default", **kwargs) -> None:
    if raw:
        return
    audited = _registry[sender]
    after = audited.values(instance)
    if created:
        changes = {
            name: [None, audited.shown(name, value)]
            for name, value in after.items()
            if value not in (None, "", [], {})
        }
        audited.record(instance, AuditEntry.Action.CREATE, changes, using)
        return
    before = instance.__dict__.pop(_BEFORE, None)
    if before is None:  # saved with an explicit pk that did not exist: an insert after all
        before = {}
    changes = audited.diff(before, {k: v for k, v in after.items() if k in before or not before})
    if changes:
        audited.record(instance, AuditEntry.Action.UPDATE, changes, using)


def _post_delete(sender, instance, using="default", **kwargs) -> None:
    audited = _registry[sender]
    changes = {
        name: [audited.shown(name, value), None]
        for name, value in audited.values(instance).items()
        if value not in (None, "", [], {})
    }
    audited.record(instance, AuditEntry.Action.DELETE, changes, using)


def audit_receivers_connect() -> None:
    """Connect the receivers for each audited model (called once, from AuditConfig.ready)."""
    for label, spec in settings.GATEWAY_AUDIT_MODELS.items():
        audited = _Audited(label, spec)
        _registry[audited.model] = audited
        uid = f"audit:{audited.label}"
        pre_save.connect(_pre_save, sender=audited.model, dispatch_uid=uid)
        post_save.connect(_post_save, sender=audited.model, dispatch_uid=uid)
        post_delete.connect(_post_delete, sender=audited.model, dispatch_uid=uid)
