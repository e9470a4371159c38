"""What one attempt at an event ended as: the ``Outcome`` an executor reports and every consumer
(a queue's dispatcher, a consumer group, a replay) settles by (see ``swell.runtime.settle``)."""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from swell.core.describe import describe
from swell.core.errors import Throttled

__all__ = ["Kind", "Outcome", "outcome_of"]

Kind = Literal["ok", "failed", "invalid", "malformed", "throttled", "timeout", "crashed", "duplicate"]


class Outcome(msgspec.Struct, frozen=True):
    """How one attempt went. ``service_s`` is the handler's own time. (A Struct, not a frozen
    dataclass: one is made per event, and a Struct is several times quicker to make.)"""

    kind: Kind
    error: str | None = None
    retry_after_s: float | None = None
    service_s: float = 0.0
    result: Any = None
    """What the handler returned (inline handlers), kept for an idempotency key."""


def outcome_of(exc: BaseException, timeout_s: float | None, timed_out: bool, service_s: float
               ) -> Outcome:
    """The outcome of a handler that raised. ``SystemExit`` and ``KeyboardInterrupt`` out of a
    handler are its own failure, not a request to stop the runtime."""
    if isinstance(exc, Throttled):
        return Outcome("throttled", describe(exc), exc.retry_after_s, service_s)
    if timed_out:
        return Outcome("timeout", f"timed out after {timeout_s:g}s", None, service_s)
    error = describe(exc)
    if isinstance(exc, SystemExit | KeyboardInterrupt):
        error += " (raised by the handler)"
    return Outcome("failed", error, None, service_s)
