"""Log lines that say which attempt they are about, and JSON logs on request.

The runtime names the attempt being run in ``ATTEMPT`` (a context variable: each handler's task
and thread sees its own), so every line logged while it runs — swell's own, the handler's
``ctx.logger``, or any logger of the user's — carries its function, event id, attempt,
correlation id and trace id in ``swell run --log-format json``.
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Literal

from swell.core.codec import encode_json
from swell.core.event import Event

__all__ = ["ATTEMPT", "FORMATS", "TEXT_FORMAT", "JsonFormatter", "configure"]

ATTEMPT: ContextVar[tuple[str, int, Event[Any]] | None] = ContextVar("swell_attempt", default=None)
"""The attempt being run here, or settled: (function, attempt, event). Set only while ``NAMED``."""
NAMED = False
"""Whether the runtime names attempts in ``ATTEMPT``: once a ``JsonFormatter`` exists (text logs
have no use for it, and it is per event)."""

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


def _trace_id(traceparent: str | None) -> str | None:
    """The trace id of the current span (tracing on), else of the event's ``traceparent``."""
    api = sys.modules.get("opentelemetry.trace")
    if api is not None:
        sc = api.get_current_span().get_span_context()
        if sc.is_valid:
            return f"{sc.trace_id:032x}"
    if traceparent and len(traceparent) >= 35:
        return traceparent[3:35]
    return None


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the attempt's fields (when the
    line is about one), ``exception`` with its traceback, and any ``extra`` given."""

    def __init__(self) -> None:
        super().__init__()
        global NAMED
        NAMED = True

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname, "logger": record.name, "message": record.getMessage(),
        }
        attempt = ATTEMPT.get()
        if attempt is not None:
            function, n, event = attempt
            out.update(function=function, event_id=event.id, attempt=n,
                       correlation_id=event.correlationid or event.id)
            trace_id = _trace_id(event.traceparent)
            if trace_id is not None:
                out["trace_id"] = trace_id
        for name, value in record.__dict__.items():
            if name not in _STANDARD and not name.startswith("_") and name not in out:
                out[name] = value if isinstance(value, str | int | float | bool | None) else repr(value)
        if record.exc_info:
            out["exception"] = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        elif record.exc_text:
            out["exception"] = record.exc_text
        if record.stack_info:
            out["stack"] = record.stack_info
        try:
            return encode_json(out).decode()
        except UnicodeEncodeError:  # a lone surrogate (a file name decoded with surrogateescape)
            return json.dumps(out, default=repr)  # (\u escapes: the line is never lost)


def configure(level: str, format: Literal["text", "json"] = "text") -> None:
    """Set up the root logger for ``swell run``: human lines, or JSON ones."""
    logging.basicConfig(level=level.upper(), format=TEXT_FORMAT)
    if format == "json":
        for handler in logging.getLogger().handlers:
            if type(handler) is logging.StreamHandler:
                handler.setFormatter(JsonFormatter())
