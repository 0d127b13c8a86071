"""JSON log lines carrying the request id. Never a key, a secret or prompt text: callers pass
ids and counts in `extra=`, and the formatter drops any field whose name looks secret."""

from __future__ import annotations

import contextvars
import logging
from datetime import UTC, datetime

import orjson

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "gateway_request_id", default=None
)

_STANDARD_ATTRS = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", (), None)).keys() | {"message", "asctime"}
)
_SECRET_MARKERS = ("key", "secret", "token", "password", "authorization", "prompt", "content")
_ALLOWED_FIELDS = frozenset({"key_id", "api_key_id", "key_prefix", "tokens_in", "tokens_out"})


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "event": record.getMessage(),
        }
        request_id = request_id_var.get()
        if request_id:
            payload["request_id"] = request_id
        for name, value in record.__dict__.items():
            if name in _STANDARD_ATTRS or name.startswith("_"):
                continue
            lowered = name.lower()
            if name not in _ALLOWED_FIELDS and any(m in lowered for m in _SECRET_MARKERS):
                continue
            payload[name] = value
        if record.exc_info and record.exc_info[0] is not None:
            # The exception type only: tracebacks can carry request data.
            payload["exc_type"] = record.exc_info[0].__name__
        return orjson.dumps(payload, default=str).decode()
