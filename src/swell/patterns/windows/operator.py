"""The window operator: events in, panes out, driven by the caller's watermark and clock.

It is pure (no broker, no clock, no I/O): the runtime feeds it, checkpoints its ``snapshot()`` with
the group's offsets and restores it after a crash, and the same inputs then give the same panes, with
the same ids. The semantics are Apache Beam's; where swell differs is said in the docstring of
``swell.patterns.windows``.
"""

from __future__ import annotations

import math
from bisect import insort
from datetime import datetime
from heapq import heappop, heappush
from typing import Any, Literal

from swell.core.config import Duration, seconds
from swell.core.errors import ConfigError
from swell.patterns.windows.aggregates import Aggregate
from swell.patterns.windows.panes import (
    LateEvent,
    Pane,
    Timing,
    WindowStats,
    WindowValueError,
    event_seconds,
    pane_id,
    short,
)
from swell.patterns.windows.state import Win, decode, encode
from swell.patterns.windows.windows import Session, Sliding, Tumbling, Window

Late = Literal["update", "retract", "drop", "side"]
LATE_MODES = ("update", "retract", "drop", "side")


class WindowOperator:
    """Windowed aggregation per key over event time.

    ``window``: ``Tumbling``, ``Sliding`` or ``Session``; ``aggregate``: ``Count()``, ``Sum()``,
    ``Mean()``, ``Min()``, ``Max()`` or a ``Reducer``. A watermark ``W`` (``advance``) says no more
    events with time ``< W`` are expected: a window ``[start, end)`` holding data fires its on-time
    pane when ``W >= end``. An event for a window with ``end <= W`` is late: it is accepted while
    ``W < end + allowed_lateness`` and dropped (counted) after, when the window's state is freed.

    ``late``: what an accepted late event gives. ``"update"``: a late pane with the window's new
    value (a downstream keeps the last pane per window). ``"retract"``: a retraction of the last pane
    and then the new one (a downstream adds panes and subtracts retractions); in this mode every pane
    after a window's first (early, on-time or late) comes after a retraction of the one before, and
    sessions a merge replaces are retracted. ``"drop"``: late events are dropped and counted
    (``allowed_lateness`` must be 0). ``"side"``: as ``"update"``, but events too late to accept are
    kept for ``take_side()`` instead of only counted.

    ``early_every``: every this much processing time (the ``now`` given to ``tick``, ``add`` or
    ``advance``; the first ``now`` starts the clock), an early pane for each open window that
    changed since its last pane.
    """

    def __init__(self, window: Window, aggregate: Aggregate, *, allowed_lateness: Duration = 0,
                 late: Late = "update", early_every: Duration | None = None,
                 name: str = "window") -> None:
        if not isinstance(window, Tumbling | Sliding | Session):
            raise ConfigError(f"window must be Tumbling(...), Sliding(...) or Session(...), "
                              f"not {window!r}")
        if not isinstance(aggregate, Aggregate):
            raise ConfigError(f"aggregate must be Count(), Sum(), Mean(), Min(), Max() or a "
                              f"Reducer(...), not {aggregate!r}")
        if isinstance(window, Session) and not aggregate.mergeable:
            raise ConfigError(f"{aggregate!r} cannot merge, and Session windows merge: give the "
                              "Reducer a merge=")
        if late not in LATE_MODES:
            raise ConfigError(f"late must be one of {', '.join(map(repr, LATE_MODES))}, not {late!r}")
        lateness = seconds(allowed_lateness, name="allowed_lateness")
        if late == "drop" and lateness:
            raise ConfigError(f"late='drop' drops every late event, so allowed_lateness "
                              f"({lateness:g} s) would do nothing: use late='update' or 'retract' "
                              "to accept late events, or drop allowed_lateness")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"name must be a non-empty string, not {name!r}")
        self.window, self.aggregate, self.late, self.name = window, aggregate, late, name
        self.allowed_lateness = lateness
        self.early_every = (None if early_every is None
                            else seconds(early_every, name="early_every", positive=True))
        self._fixed = None if isinstance(window, Session) else window
        self._size = window.size if isinstance(window, Tumbling) else 0.0  # the fast path's
        self._gap = window.gap if isinstance(window, Session) else 0.0
        self._retract, self._side_out = late == "retract", late == "side"
        self._early = self.early_every is not None
        self._init, self._add, self._result = aggregate.init, aggregate.add, aggregate.result
        self._reset()

    def _reset(self) -> None:
        self.watermark = -math.inf
        self._wins: dict[tuple[str, float], Win] = {}  # fixed windows by (key, start)
        self._sessions: dict[str, list[Win]] = {}  # session windows of a key, by start
        self._fire: list[tuple[float, int, Win]] = []  # heap of (end, seq, window) not yet fired
        self._expire: list[tuple[float, int, Win]] = []  # heap of (end + lateness, seq, window)
        self._changed: dict[Win, None] = {}  # open windows changed since their last pane, in order
        self._side: list[LateEvent] = []
        self._next_early: float | None = None
        self._seq = self._open = 0
        self._late_accepted = self._late_dropped = self._regressions = self._panes = 0

    # -- events ---------------------------------------------------------------------------------

    def add(self, key: str, value: Any, time: float | datetime, *,
            now: float | None = None) -> list[Pane]:
        """Add an event; the panes it causes (late ones, and early ones if ``now`` makes them due).

        ``time``: a ``datetime`` (naive ones are taken as UTC) or seconds since the epoch. A time
        that is not one, or a value the aggregate raises on, is a ``WindowValueError`` (a
        ``PayloadError``) and changes nothing."""
        t = time if type(time) is float else event_seconds(time)
        size = self._size
        if size:  # Tumbling, on time: the common case, kept lean
            start = t - t % size
            end = start + size
            if end > self.watermark:  # false for a NaN, which the slow path refuses
                k = (key, start)
                w = self._wins.get(k)
                try:
                    acc = self._add(self._init() if w is None else w.acc, value)
                except Exception as exc:
                    raise self._refused(key, value, exc) from exc
                if w is None:
                    w = self._open_window(key, start, end, acc, k)
                else:
                    w.acc = acc
                if self._early:
                    self._changed[w] = None
                return [] if now is None else self.tick(now)
        if not math.isfinite(t):
            raise WindowValueError(f"an event time must be finite, got {time!r}", key)
        out = self._add_session(key, value, t) if self._gap else self._add_fixed(key, value, t)
        if now is not None:
            out += self.tick(now)
        return out

    def _grow(self, key: str, value: Any, acc: Any) -> Any:
        try:
            return self._add(acc, value)
        except Exception as exc:
            raise self._refused(key, value, exc) from exc

    def _merge(self, key: str, value: Any, accs: list[Any]) -> Any:
        try:
            out = accs[0]
            for acc in accs[1:]:
                out = self.aggregate.merge(out, acc)
            return out
        except Exception as exc:
            raise self._refused(key, value, exc) from exc

    def _refused(self, key: str, value: Any, exc: Exception) -> WindowValueError:
        return WindowValueError(f"window {self.name!r}: {self.aggregate!r} cannot take {short(value)} "
                                f"(key {key!r}): {type(exc).__name__}: {exc}", key)

    def _add_fixed(self, key: str, value: Any, t: float) -> list[Pane]:
        assert self._fixed is not None
        w_now, lateness, size = self.watermark, self.allowed_lateness, self._fixed.size
        dropped: list[float] = []
        plan: list[tuple[float, float, Win | None, Any]] = []
        for start in self._fixed.starts(t):  # every acc first: a refusal changes nothing
            end = start + size
            if end + lateness <= w_now:
                dropped.append(end)
                continue
            w = self._wins.get((key, start))
            plan.append((start, end, w, self._grow(key, value, self._init() if w is None else w.acc)))
        out: list[Pane] = []
        for end in dropped:
            self._drop(key, value, t, end)
        for start, end, w, acc in plan:
            if w is None:
                w = self._open_window(key, start, end, acc, (key, start))
            else:
                w.acc = acc
            self._changed_window(w, out)
        return out

    def _add_session(self, key: str, value: Any, t: float) -> list[Pane]:
        end = t + self._gap
        if end + self.allowed_lateness <= self.watermark:  # as Beam: judged on the event's own window
            self._drop(key, value, t, end)
            return []
        single = self._grow(key, value, self._init())
        hits = [s for s in self._sessions.get(key, ()) if s.start < end and t < s.end]
        if len(hits) == 1 and hits[0].start <= t and end <= hits[0].end:  # inside one: same window
            w = hits[0]
            w.acc = self._merge(key, value, [w.acc, single])
            out: list[Pane] = []
            self._changed_window(w, out)
            return out
        accs = ([s.acc for s in hits if s.start <= t] + [single]
                + [s.acc for s in hits if s.start > t])
        acc = self._merge(key, value, accs)
        out = []
        for s in hits:  # replaced by the merged session
            if self._retract and s.index:
                out.append(self._pane(s, s.last, s.last_timing, s.index - 1, True))
            self._free(s)
        start = min([t] + [s.start for s in hits])
        end = max([end] + [s.end for s in hits])
        w = self._open_window(key, start, end, acc, None)
        self._changed_window(w, out)
        return out

    def _changed_window(self, w: Win, out: list[Pane]) -> None:
        if w.end <= self.watermark:
            self._late_accepted += 1
            self._emit(w, "late", out)
        elif self._early:
            self._changed[w] = None

    def _drop(self, key: str, value: Any, t: float, end: float) -> None:
        self._late_dropped += 1
        if self._side_out:
            self._side.append(LateEvent(key, value, t, end))

    def _open_window(self, key: str, start: float, end: float, acc: Any,
                     k: tuple[str, float] | None) -> Win:
        w = Win(key, start, end, acc, self._seq)
        self._seq += 1
        self._open += 1
        if k is not None:
            self._wins[k] = w
        else:
            insort(self._sessions.setdefault(key, []), w, key=Win.by_start)
        self._schedule(w)
        return w

    def _schedule(self, w: Win) -> None:
        if w.end > self.watermark:
            heappush(self._fire, (w.end, w.seq, w))
        else:
            heappush(self._expire, (w.end + self.allowed_lateness, w.seq, w))

    def _free(self, w: Win) -> None:
        w.live = False
        self._open -= 1
        self._changed.pop(w, None)
        if self._gap:
            sessions = self._sessions[w.key]
            sessions.remove(w)
            if not sessions:
                del self._sessions[w.key]
        else:
            del self._wins[(w.key, w.start)]

    # -- panes ----------------------------------------------------------------------------------

    def _emit(self, w: Win, timing: Timing, out: list[Pane]) -> None:
        value = self._result(w.acc)
        if self._retract:
            if w.index:
                out.append(self._pane(w, w.last, w.last_timing, w.index - 1, True))
            w.last, w.last_timing = value, timing
        out.append(self._pane(w, value, timing, w.index, False))
        w.index += 1

    def _pane(self, w: Win, value: Any, timing: Timing, index: int, retraction: bool) -> Pane:
        self._panes += 1
        return Pane(w.key, w.start, w.end, value, timing, index, retraction,
                    pane_id(self.name, w.key, w.start, w.end, index, retraction))

    def advance(self, watermark: float | datetime, *, now: float | None = None) -> list[Pane]:
        """Move the watermark to ``watermark`` (``math.inf`` closes every window): the on-time panes
        of the windows it passes, in order of their ends; windows past their allowed lateness are
        freed. A watermark that would go backwards, or is not a number, is ignored and counted."""
        w_now = watermark if type(watermark) is float else _watermark_seconds(watermark)
        out: list[Pane] = []
        if w_now > self.watermark:
            self.watermark = w_now
            lateness, fire, expire = self.allowed_lateness, self._fire, self._expire
            while fire and fire[0][0] <= w_now:
                end, seq, w = heappop(fire)
                if not w.live:  # a session a merge replaced
                    continue
                self._changed.pop(w, None)
                self._emit(w, "on_time", out)
                if end + lateness <= w_now:
                    self._free(w)
                else:
                    heappush(expire, (end + lateness, seq, w))
            while expire and expire[0][0] <= w_now:
                w = heappop(expire)[2]
                if w.live:
                    self._free(w)
        elif w_now != self.watermark:  # backwards, or NaN
            self._regressions += 1
        if now is not None:
            out += self.tick(now)
        return out

    def tick(self, now: float) -> list[Pane]:
        """Early panes, if ``early_every`` has passed since the last ones (``now``: the caller's
        processing time, seconds)."""
        every = self.early_every
        if every is None or now != now:
            return []
        due = self._next_early
        if due is None or now < due:
            if due is None:
                self._next_early = now + every
            return []
        self._next_early = due + every * (math.floor((now - due) / every) + 1)
        out: list[Pane] = []
        changed, self._changed = self._changed, {}
        for w in changed:
            self._emit(w, "early", out)
        return out

    def take_side(self) -> list[LateEvent]:
        """The events too late to accept (``late="side"``) since the last call."""
        out, self._side = self._side, []
        return out

    @property
    def stats(self) -> WindowStats:
        """The counters now."""
        return WindowStats(self._late_accepted, self._late_dropped, self._regressions, self._panes,
                           self._open)

    # -- snapshots ------------------------------------------------------------------------------

    def settings(self) -> str:
        """The settings a snapshot must be restored under."""
        return (f"{self.window!r} {self.aggregate!r} allowed_lateness={self.allowed_lateness!r} "
                f"late={self.late} early_every={self.early_every!r} name={self.name!r}")

    def _windows(self) -> list[Win]:
        if self._gap:
            return sorted((w for ws in self._sessions.values() for w in ws), key=Win.by_seq)
        return sorted(self._wins.values(), key=Win.by_seq)

    def snapshot(self) -> bytes:
        """All state as JSON: windows and their accumulators, pane indexes and last values, the
        watermark, counters, the early timer and undrained side output."""
        counters = [self._late_accepted, self._late_dropped, self._regressions, self._panes]
        return encode(self.settings(), self.watermark, self._next_early, self._seq, counters,
                      self._windows(), list(self._changed), self._side)

    def restore(self, data: bytes) -> None:
        """Replace all state with a ``snapshot()`` taken by an operator with the same settings."""
        snap = decode(data)
        if snap.settings != self.settings():
            raise ConfigError(f"this snapshot was taken with other settings ({snap.settings}), "
                              f"not {self.settings()}")
        self._reset()
        self.watermark = float(snap.watermark)
        self._next_early = None if snap.next_early is None else float(snap.next_early)
        self._seq = snap.seq
        self._late_accepted, self._late_dropped, self._regressions, self._panes = snap.counters
        by_seq: dict[int, Win] = {}
        for w in snap.windows():
            by_seq[w.seq] = w
            self._open += 1
            if self._gap:
                self._sessions.setdefault(w.key, []).append(w)
            else:
                self._wins[(w.key, w.start)] = w
            self._schedule(w)
        for ws in self._sessions.values():
            ws.sort(key=Win.by_start)
        self._changed = {by_seq[seq]: None for seq in snap.changed}
        self._side = list(snap.side)


def _watermark_seconds(watermark: object) -> float:
    if isinstance(watermark, datetime | bool) or not isinstance(watermark, int | float):
        return event_seconds(watermark)
    return float(watermark)  # an int, or a float subclass; inf and NaN pass (NaN is ignored)
