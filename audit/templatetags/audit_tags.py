from __future__ import annotations

from django import template
from django.conf import settings

from audit.selectors import audit_entries_for_object

register = template.Library()


@register.simple_tag(takes_context=True)
def audit_entries(context, obj) -> list:
    """The audit entries of an audited object that the viewing user may read; [] otherwise."""
    request = context.get("request")
    label = getattr(getattr(obj, "_meta", None), "label", None)
    if request is None or label not in settings.GATEWAY_AUDIT_MODELS:
        return []
    return audit_entries_for_object(user=request.user, label=label.lower(), pk=obj.pk)
