"""JSON log lines carrying the request id. Never a key, a secret or prompt text: callers pass
ids and counts in `extra=`, and the formatter drops any field whose name looks secret."""

from __future__ import annotations

import atexit
import contextvars
import logging
import threading
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


class BufferedStreamHandler(logging.StreamHandler):
    """A stream handler that writes INFO lines in batches (at most every `interval_s`, or at
    64 KiB) instead of one write syscall per line; WARNING and above are written at once.
    One daemon thread per process does the timed flush; exit flushes the rest."""

    def __init__(self, stream=None, interval_s: float = 0.2, max_bytes: int = 65536) -> None:
        super().__init__(stream)
        self.interval_s = interval_s
        self.max_bytes = max_bytes
        self._pending: list[str] = []
        self._pending_bytes = 0
        self._flusher: threading.Thread | None = None
        self._stop = threading.Event()
        atexit.register(self.close)

    def _ensure_flusher(self) -> None:
        if self._flusher is None or not self._flusher.is_alive():
            # A forked worker inherits the object but not the thread: start our own.
            self._flusher = threading.Thread(
                target=self._flush_periodically, name="log-flusher", daemon=True
            )
            self._flusher.start()

    def _flush_periodically(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.acquire()
            try:
                self._write_pending()
            finally:
                self.release()

    def _write_pending(self) -> None:
        if self._pending:
            data = "".join(self._pending)
            self._pending.clear()
            self._pending_bytes = 0
            try:
                self.stream.write(data)
                self.stream.flush()
            except (OSError, ValueError):  # stream closed at shutdown
                pass

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
        except Exception:  # noqa: BLE001 - logging must never break the request
            self.handleError(record)
            return
        self._pending.append(line)
        self._pending_bytes += len(line)
        if record.levelno >= logging.WARNING or self._pending_bytes >= self.max_bytes:
            self._write_pending()
        else:
            self._ensure_flusher()

    def flush(self) -> None:
        self.acquire()
        try:
            self._write_pending()
        finally:
            self.release()

    def close(self) -> None:
        self._stop.set()
        self.flush()
        super().close()


# Record attributes the JSON lines never carry; computing them costs a syscall per record.
logging.logProcesses = False
logging.logThreads = False
logging.logMultiprocessing = False
