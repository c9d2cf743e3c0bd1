"""Log output: plain text or one JSON object a line, each tagged with the tool call it belongs to.

The request id of a tool call is its ledger call id (:meth:`~caelum_mcp.serving.runtime.ToolRuntime.invoke`
makes it, and :func:`request_scope` holds it in a context variable while the call runs), so one id
finds a call's log lines, its ledger rows (``calls.call_id``, ``tool_calls.id``) and its row on the
dashboard. Tasks started inside the call inherit the variable, so the pool's and the router's log
lines carry it too.

Logs go to stderr: on stdio, stdout belongs to the MCP protocol. Every line, text or JSON, passes
the secrets redaction (a key quoted in an error message is logged as ``AKIA…(20 chars)``).
"""

from __future__ import annotations

import json
import logging
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Literal

from caelum_mcp.core.redaction import redact_secrets

LogFormat = Literal["text", "json"]

_request_id: ContextVar[str | None] = ContextVar("caelum_request_id", default=None)

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Loggers of the libraries beneath us: their INFO lines are per request and drown ours.
NOISY_LOGGERS = ("httpx2", "httpcore2", "mcp", "uvicorn.access")


def new_request_id() -> str:
    """A fresh id for one tool call (16 hex characters, as the ledger's call ids)."""
    return uuid.uuid4().hex[:16]


def current_request_id() -> str | None:
    """The id of the tool call running in this context, if any."""
    return _request_id.get()


@contextmanager
def request_scope(request_id: str) -> Iterator[str]:
    """Tag everything logged in this context (and the tasks it starts) with ``request_id``."""
    token = _request_id.set(request_id)
    try:
        yield request_id
    finally:
        _request_id.reset(token)


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` (None outside a tool call) to every record that passes the handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = _request_id.get()
        return True


class RedactingFormatter(logging.Formatter):
    """The text format, each whole line (message and traceback) through the secrets redaction."""

    def format(self, record: logging.LogRecord) -> str:
        return redact_secrets(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts`` (UTC, ISO 8601), ``level``, ``logger``, ``message``,
    ``request_id`` when inside a tool call, and ``exception`` with the traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact_secrets(record.getMessage()),
        }
        request_id = getattr(record, "request_id", None) or _request_id.get()
        if request_id:
            entry["request_id"] = request_id
        if record.exc_info:
            entry["exception"] = redact_secrets(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(level: str, log_format: LogFormat = "text") -> None:
    """Send the process's logs to stderr in ``log_format`` at ``level`` (replacing earlier setup)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else RedactingFormatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    # uvicorn's own loggers carry handlers of their own; route them through ours so that a JSON
    # log stays one format from end to end.
    for name in ("uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
