"""Sets the audit actor for admin and management-API requests (the stock chain only; the
inference handler does not run it and writes nothing audited)."""

from __future__ import annotations

from functools import partial

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest

from audit.context import _actor


def _request_actor(request: HttpRequest) -> str:
    # Read when a change is recorded, not when the request comes in: DRF authenticates in the
    # view and then sets request.user (and request.auth for a token) on this HttpRequest.
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return "anonymous"
    name = user.get_username()
    if request.path.startswith("/admin/"):
        return f"admin:{name}"
    if getattr(request, "auth", None) is not None:
        return f"api-token:{name}"
    return f"api:{name}"


class AuditActorMiddleware:
    sync_capable = True
    async_capable = True

    def __init__(self, get_response) -> None:
        self.get_response = get_response
        self._async = iscoroutinefunction(get_response)
        if self._async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest):
        if self._async:
            return self._acall(request)
        token = _actor.set(partial(_request_actor, request))
        try:
            return self.get_response(request)
        finally:
            _actor.reset(token)

    async def _acall(self, request: HttpRequest):
        token = _actor.set(partial(_request_actor, request))
        try:
            return await self.get_response(request)
        finally:
            _actor.reset(token)
