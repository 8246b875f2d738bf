"""Logging for the server: human lines or one JSON object per line (LOG_FORMAT), request and job context
carried by contextvars, and a filter that keeps secrets (API keys, Authorization values) out of every line.

`configure_logging(settings)` installs one handler on the root logger; uvicorn's loggers propagate to it,
so its lines share the format and the redaction. Context fields (`request_id`, `job_id`, `audio_id`, ...)
come from `log_context()` / `bind()`, set by the request middleware and the worker threads.
"""

from __future__ import annotations

import contextvars
import logging
import sys
import traceback
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pythonjsonlogger.json import JsonFormatter

from motif.config import Settings
from motif.service.redact import redact_secrets as redact

_HANDLER_MARK = "_motif_handler"

_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("motif_log_context", default=None)


@contextmanager
def log_context(**fields: Any) -> Iterator[dict[str, Any]]:
    """Log lines inside carry `fields` (plus the enclosing context's); `bind()` adds to this same dict.

    The dict is shared, not copied, with threads started inside (anyio.to_thread copies the context),
    so a route running in the thread pool can `bind(audio_id=...)` for the request's own log line.
    """
    current = dict(_context.get() or {})
    current.update({k: v for k, v in fields.items() if v is not None})
    token = _context.set(current)
    try:
        yield current
    finally:
        _context.reset(token)


def bind(**fields: Any) -> None:
    """Add fields to the innermost `log_context` (no-op outside one)."""
    current = _context.get()
    if current is not None:
        current.update({k: v for k, v in fields.items() if v is not None})


def current_context() -> dict[str, Any]:
    return dict(_context.get() or {})


def new_error_id() -> str:
    """A short random id that ties an HTTP answer or a job's error to the log line with the details."""
    return uuid.uuid4().hex[:16]


def log_internal_error(logger: logging.Logger, error: BaseException, where: str) -> str:
    """Log `error` with its traceback under a new error id (in the message and as `error_id`); return the id."""
    error_id = new_error_id()
    logger.error("internal error %s in %s", error_id, where, exc_info=error, extra={"error_id": error_id})
    return error_id


class ContextFilter(logging.Filter):
    """Copies the log context onto each record (as attributes the formatters print)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in (_context.get() or {}).items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


class RedactSecrets(logging.Filter):
    """Renders the message and any traceback now, with secrets replaced, so no formatter sees the raw text."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        if record.exc_info:
            record.exc_text = "".join(traceback.format_exception(*record.exc_info)).rstrip()
            record.exc_info = None
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


class HumanFormatter(logging.Formatter):
    """`time LEVEL logger: message [key=value ...]` with the context and extra fields at the end."""

    _standard = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = {k: v for k, v in record.__dict__.items() if k not in self._standard and not k.startswith("_")}
        if extras:
            head, sep, tail = line.partition("\n")  # keep a traceback below the fields
            line = head + " [" + " ".join(f"{k}={v}" for k, v in extras.items()) + "]" + sep + tail
        return redact(line)


class JsonLineFormatter(JsonFormatter):
    """One JSON object per line: time, level, logger, message, context and extra fields, exc_info."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s",
                         rename_fields={"asctime": "time", "levelname": "level", "name": "logger"})  # fmt: skip

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def adopt_library_logging() -> None:
    """transformers and torch print through handlers of their own (`[transformers] ...`, glog-style `W1201 ...`),
    not propagated: send their records to the root handler instead, so they are in LOG_FORMAT and redacted.
    Imports transformers (about a second): call it where the engine is loaded anyway, never at start-up."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_default_handler()
    transformers_logging.enable_propagation()
    names = [n for n in list(logging.root.manager.loggerDict) if n == "torch" or n.startswith("torch.")]
    for name in names:
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True


def configure_logging(settings: Settings) -> None:
    """Route every logger (ours, uvicorn's, libraries') through one stderr handler in LOG_FORMAT."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, _HANDLER_MARK, False):
            root.removeHandler(handler)  # ours from an earlier call (another app in the same process)
    handler = logging.StreamHandler(sys.stderr)
    setattr(handler, _HANDLER_MARK, True)
    handler.addFilter(ContextFilter())
    handler.addFilter(RedactSecrets())
    handler.setFormatter(JsonLineFormatter() if settings.log_format == "json" else HumanFormatter())
    root.addHandler(handler)
    root.setLevel(settings.log_level)
    logging.captureWarnings(True)  # Python warnings become log lines in the same format
    for name in ("uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers.clear()  # uvicorn's own config (when it ran first) would print around our handler
        logger.propagate = True
    # uvicorn's access lines carry raw paths with query strings (where secrets hide) in their own format;
    # the request middleware's line (route template, status, duration, request id) replaces them.
    access = logging.getLogger("uvicorn.access")
    access.handlers.clear()
    access.propagate = False
