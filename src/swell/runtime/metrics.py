"""Per-function counters the runtime keeps; the scaler, ``swell status`` and /metrics read them."""

from __future__ import annotations

import math
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime

import msgspec

from swell.brokers.base import Delivery
from swell.core.clock import Clock
from swell.core.slo import SLO, ObjectiveReport

Counts = tuple[int, int, int, int]
"""An SLO's counts: success good, success bad, latency good, latency bad."""


@dataclass(slots=True)
class FunctionMetrics:
    """Running totals for one function (counters only grow), plus recent service times."""

    received: int = 0
    succeeded: int = 0
    retried: int = 0
    dead_lettered: int = 0
    attempts: int = 0
    """Handler runs that ended: ok, failed, timed out, crashed or throttled."""
    errors: int = 0
    """Failed, timed-out and crashed attempts."""
    throttles: int = 0
    duplicates: int = 0
    """Events acked without running: their idempotency key was done already."""
    in_flight: int = 0
    service_times_s: deque[float] = field(default_factory=lambda: deque(maxlen=2048))
    _tick_times: list[float] = field(default_factory=list)
    slo: SloCounter | None = None
    """For a function with an SLO on a runtime: its finished events counted against it (set by
    ``swell.runtime.slo.watch``; a replay's are never counted)."""

    @property
    def finished(self) -> int:
        """Events done for good: acked or dead-lettered."""
        return self.succeeded + self.dead_lettered

    def service(self, seconds: float) -> None:
        self.service_times_s.append(seconds)
        self._tick_times.append(seconds)

    def take_tick_times(self) -> tuple[float, ...]:
        """Service times recorded since the last call."""
        out, self._tick_times = tuple(self._tick_times), []
        return out

    def percentile_s(self, q: float) -> float | None:
        if not self.service_times_s:
            return None
        xs = sorted(self.service_times_s)
        return xs[min(len(xs) - 1, int(q * len(xs)))]


class _EventTime(msgspec.Struct):
    time: datetime | None = None


_event_time = msgspec.json.Decoder(_EventTime)


@dataclass(slots=True)
class SloCounter:
    """One function's events counted against its ``SLO`` on this node since it started (counters
    only grow), with what ``swell.runtime.slo`` keeps between its flushes to the broker."""

    slo: SLO
    clock: Clock
    good: int = 0
    """Events acked (the success objective's good)."""
    bad: int = 0
    """Events dead-lettered."""
    fast: int = 0
    """Events whose successful attempt ended within the latency objective."""
    slow: int = 0
    writer: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    """The name of this counter's own records in the broker: each writes only its own, with its
    running totals, so a write repeated (or committed, then cancelled) never counts twice; a
    restarted node is a new writer, and its old records keep their counts."""
    placed: Counts = (0, 0, 0, 0)
    """The counts already placed in ``records``."""
    records: dict[tuple[str, int], dict[int, list[int]]] = field(default_factory=dict)
    """This writer's totals per record (level ``m`` or ``h``, its start) and slot (its minute
    or hour): the current ones, and older ones not yet written."""
    unwritten: set[tuple[str, int]] = field(default_factory=set)
    """The records changed since the broker last took them."""
    due_at: float = -math.inf
    """When (clock time) the next flush is due."""
    report: tuple[ObjectiveReport, ...] = ()
    """The latest reading of the broker's records: each objective's burn rates and alerts."""

    def acked(self, delivery: Delivery | None, ran: bool) -> None:
        """An event acked; ``ran``: by an attempt that succeeded (not a duplicate), whose latency
        counts too when ``delivery`` says when the event began."""
        self.good += 1
        limit = self.slo.latency_s
        if not ran or limit is None or delivery is None:
            return
        if self.clock.time() - self._since(delivery) <= limit:
            self.fast += 1
        else:
            self.slow += 1

    def _since(self, d: Delivery) -> float:
        """Where an event's latency starts: its enqueue, or its event time (if it has one)."""
        if self.slo.measure_from == "event_time":
            try:
                t = _event_time.decode(d.body).time
            except (msgspec.DecodeError, ValueError):  # not JSON: the queue's time, then
                t = None
            if t is not None and t.tzinfo is not None:
                return t.timestamp()
        return d.enqueued_at

    def counts(self) -> Counts:
        return self.good, self.bad, self.fast, self.slow
