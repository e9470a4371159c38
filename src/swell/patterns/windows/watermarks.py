"""Watermarks: how far event time has surely got, per partition and for a consumer group.

A partition's watermark is the latest event time seen in it minus a bound on how out of order its
events come (``BoundedOutOfOrder``). A group's is the lowest of its partitions', except partitions
that are idle: no events for ``idle`` seconds of processing time and nothing waiting to be read (a
partition with a backlog is merely slow and always holds the watermark back). If every partition is
idle the group's watermark is the highest of theirs: all is quiet, so the windows the data seen so
far fills may close. It never goes backwards: a lower value (an idle partition waking up behind the
others) is ignored and counted in ``regressions``.

Processing time is the caller's clock (``now``, seconds), so this is pure and testable.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime

import msgspec

from swell.core.config import Duration, seconds, whole
from swell.core.errors import ConfigError
from swell.patterns.windows.panes import event_seconds


class BoundedOutOfOrder:
    """Events come at most ``bound`` late in event time; a partition with no events for ``idle``
    (processing time) and no backlog stops holding its group's watermark back (``None``: never)."""

    __slots__ = ("bound_s", "idle_s")

    def __init__(self, bound: Duration, idle: Duration | None = None) -> None:
        self.bound_s = seconds(bound, name="BoundedOutOfOrder bound")
        self.idle_s = None if idle is None else seconds(idle, name="BoundedOutOfOrder idle",
                                                         positive=True)

    def watermark(self, max_event_time: float) -> float:
        """The watermark after events up to ``max_event_time``."""
        return max_event_time - self.bound_s

    def __repr__(self) -> str:
        idle = "" if self.idle_s is None else f", idle={self.idle_s:g}"
        return f"BoundedOutOfOrder({self.bound_s:g}{idle})"


class _Snapshot(msgspec.Struct):
    version: int
    settings: str
    max: list[float | None]  # None: -inf (no event yet)
    seen: list[float | None]
    start: float | None
    current: float | None
    regressions: int


class GroupWatermark:
    """The watermark of a group of ``partitions`` partitions, fed with ``observe``."""

    def __init__(self, strategy: BoundedOutOfOrder, partitions: int) -> None:
        if not isinstance(strategy, BoundedOutOfOrder):
            raise ConfigError(f"strategy must be a BoundedOutOfOrder(...), not {strategy!r}")
        self.strategy = strategy
        self.partitions = whole(partitions, name="partitions", low=1)
        self._max = [-math.inf] * self.partitions
        self._seen: list[float | None] = [None] * self.partitions
        self._start: float | None = None  # the first processing time seen: silence counts from it
        self._current = -math.inf
        #: how many times the group's watermark would have gone backwards (and did not)
        self.regressions = 0

    def _check(self, p: int) -> int:
        if isinstance(p, bool) or not isinstance(p, int) or not 0 <= p < self.partitions:
            raise ConfigError(f"partition {p!r} is not one of 0..{self.partitions - 1}")
        return p

    def observe(self, partition: int, event_time: float | datetime, now: float) -> None:
        """An event of ``event_time`` read from ``partition`` at processing time ``now``."""
        p = self._check(partition)
        t = event_time if type(event_time) is float else event_seconds(event_time)
        if not math.isfinite(t):
            event_seconds(t)  # raises the usual WindowValueError
        if t > self._max[p]:
            self._max[p] = t
        seen = self._seen[p]
        self._seen[p] = now if seen is None else max(seen, now)
        if self._start is None:
            self._start = now

    def partition(self, p: int) -> float:
        """Partition ``p``'s own watermark: its latest event time minus the bound (``-inf`` before
        any event)."""
        return self._max[self._check(p)] - self.strategy.bound_s

    def last_seen(self, p: int) -> float | None:
        """When (processing time) partition ``p`` last had an event; ``None`` before any."""
        return self._seen[self._check(p)]

    def idle(self, p: int, now: float, backlog: Mapping[int, int] | None = None) -> bool:
        """Whether partition ``p`` is idle at ``now``: no events for ``idle`` seconds (counted from
        its last event, or from the first ``now`` this group saw) and no backlog."""
        idle_s = self.strategy.idle_s
        if idle_s is None or (backlog is not None and backlog.get(p, 0) > 0):
            return False
        since = self._seen[self._check(p)]
        if since is None:
            since = now if self._start is None else self._start
        return now - since >= idle_s

    def current(self, now: float, backlog: Mapping[int, int] | None = None) -> float:
        """The group's watermark at processing time ``now``; ``backlog[p] > 0`` says partition ``p``
        has events waiting to be read (so it is slow, not idle)."""
        if self._start is None:
            self._start = now
        marks = [m - self.strategy.bound_s for m in self._max]
        busy = [m for p, m in enumerate(marks) if not self.idle(p, now, backlog)]
        candidate = min(busy) if busy else max(marks)
        if candidate < self._current:
            self.regressions += 1
            return self._current
        self._current = candidate
        return candidate

    def snapshot(self) -> bytes:
        """All state as JSON bytes."""
        return msgspec.json.encode(_Snapshot(
            1, repr(self.strategy), [_finite(m) for m in self._max], list(self._seen), self._start,
            _finite(self._current), self.regressions))

    def restore(self, data: bytes) -> None:
        """Replace all state with a ``snapshot()`` of a group with the same settings."""
        try:
            snap = msgspec.json.decode(data, type=_Snapshot)
        except msgspec.DecodeError as exc:
            raise ConfigError(f"not a GroupWatermark snapshot: {exc}") from exc
        if snap.settings != repr(self.strategy) or len(snap.max) != self.partitions:
            raise ConfigError(f"this snapshot is of {snap.settings} over {len(snap.max)} partitions, "
                              f"not {self.strategy!r} over {self.partitions}")
        self._max = [-math.inf if m is None else m for m in snap.max]
        self._seen = list(snap.seen)
        self._start = snap.start
        self._current = -math.inf if snap.current is None else snap.current
        self.regressions = snap.regressions


def _finite(value: float) -> float | None:
    return None if value == -math.inf else value
