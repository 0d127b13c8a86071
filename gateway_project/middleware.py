from __future__ import annotations

import uuid

from asgiref.sync import iscoroutinefunction, markcoroutinefunction

from gateway_project.logging import request_id_var


def new_request_id() -> str:
    return f"req_{uuid.uuid4().hex}"


class RequestIdMiddleware:
    """Gives every request an id (or keeps a sane client-supplied one) and echoes it back."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def _assign(self, request) -> str:
        supplied = request.headers.get("x-request-id", "")
        request_id = (
            supplied if 0 < len(supplied) <= 128 and supplied.isprintable() else new_request_id()
        )
        request.request_id = request_id
        request_id_var.set(request_id)
        return request_id

    def __call__(self, request):
        if self.is_async:
            return self.__acall__(request)
        request_id = self._assign(request)
        response = self.get_response(request)
        response["x-request-id"] = request_id
        return response

    async def __acall__(self, request):
        request_id = self._assign(request)
        response = await self.get_response(request)
        response["x-request-id"] = request_id
        return response
