"""The values a window operator gives out: panes, late events and counters; the error for a value
an aggregate refuses; event times as seconds."""

from __future__ import annotations

import hashlib
import math
from datetime import UTC, datetime
from typing import Any, Literal

import msgspec

from swell.core.errors import PayloadError

Timing = Literal["early", "on_time", "late"]


class Pane(msgspec.Struct, frozen=True):
    """One result of a window for a key: ``value`` over ``[start, end)`` (seconds since the epoch).

    ``index`` counts the panes of this key and window from 0. A retraction (``retraction=True``,
    ``late="retract"`` only) repeats the pane it takes back (its value, index and timing), so a
    downstream that adds panes and subtracts retractions stays right. ``id`` is derived from the
    operator's name, key, window, index and ``retraction``: the same pane has the same id in any
    process, so a sink can drop repeats after a restart.
    """

    key: str
    start: float
    end: float
    value: Any
    timing: Timing
    index: int
    retraction: bool
    id: str


class LateEvent(msgspec.Struct, frozen=True):
    """An event too late for the window ``[..., window_end)`` (``late="side"``), kept for the caller."""

    key: str
    value: Any
    time: float
    window_end: float


class WindowStats(msgspec.Struct, frozen=True):
    """What an operator has done. Late counts are per event and window (a sliding-window event counts
    once in each window it falls in); ``open_windows`` is the windows held in state now (open, or
    closed and within the allowed lateness)."""

    late_accepted: int = 0
    late_dropped: int = 0
    watermark_regressions: int = 0
    panes_emitted: int = 0
    open_windows: int = 0


class WindowValueError(PayloadError):
    """An event a window cannot take: its time is not a time, or the aggregate raised on its value.
    Nothing in the operator changed; the runtime dead-letters the event and goes on."""

    def __init__(self, reason: str, key: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.key = key


def pane_id(name: str, key: str, start: float, end: float, index: int, retraction: bool) -> str:
    """A stable id: ``<name>-`` and 32 hex digits of a SHA-256 of the pane's identity."""
    ident = msgspec.json.encode([name, key, repr(start), repr(end), index, retraction])
    return f"{name}-{hashlib.sha256(ident).hexdigest()[:32]}"


def event_seconds(time: object) -> float:
    """Seconds since the epoch from a float, an int or a ``datetime`` (naive: taken as UTC, as the
    CloudEvents codec does); anything else, or a time that is not finite, is a ``WindowValueError``."""
    if isinstance(time, datetime):
        out = (time if time.tzinfo is not None else time.replace(tzinfo=UTC)).timestamp()
    elif isinstance(time, int | float) and not isinstance(time, bool):
        out = float(time)
    else:
        raise WindowValueError(f"an event time is a datetime or seconds since the epoch, not {time!r}")
    if not math.isfinite(out):
        raise WindowValueError(f"an event time must be finite, got {time!r}")
    return out


def short(value: object, limit: int = 120) -> str:
    """``repr(value)`` cut to ``limit`` characters, for error messages."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
