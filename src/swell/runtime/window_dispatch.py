"""A window function on a consumer group: the group's dispatcher, with each event going through a
``WindowOperator`` of its partition instead of a handler, and the panes emitted to a channel.

Each partition has its own operator (a key's events all come from one partition, in order), which
advances on the partition's watermark: the latest event time it has seen minus the bound, so the
panes a partition gives depend on its events alone, and a run that resumes from a checkpoint gives
the same panes (with the same ids) as one that never stopped. A partition that has been silent for
the watermark's ``idle`` time (and has nothing left to read) stops holding the others back: its
operator follows the lowest watermark of this node's busy partitions instead (Beam's idle
sources; ``swell.windows.GroupWatermark`` is the same rule over a whole group, for a caller that
merges partitions).

The operator's state is stored in the kv store with the offset it covers, before the group's
offset is committed; a partition resumes from that state and offset (a crash repeats the events
after the last checkpoint, which give the same panes again, stored once by their ids)."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import msgspec

from swell.brokers.base import Broker, Message, Record, dead_letter_headers
from swell.brokers.producer import Kind, Producer
from swell.core import keys
from swell.core.clock import Clock
from swell.core.errors import BrokerUnavailable, SwellError
from swell.core.event import Event
from swell.patterns.windows import Pane, WindowOperator, WindowValueError
from swell.runtime.app import Function
from swell.runtime.app_windows import WindowSpec, event_time
from swell.runtime.executor import Executor
from swell.runtime.groups import GroupDispatcher, Partition

__all__ = ["PANE_TYPE", "WindowDispatcher"]

log = logging.getLogger("swell.windows")

PANE_TYPE = "swell.window.pane"
EMIT_RETRY_S = 1.0


class Checkpoint(msgspec.Struct, frozen=True):
    offset: int
    operator: msgspec.Raw
    max_seen: float | None
    """The latest event time the partition has seen (its watermark is this minus the bound)."""


class Track:
    """A partition's event-time progress: the latest event time seen, when an event last came
    (processing time), and the watermark its operator was last advanced to."""

    __slots__ = ("advanced", "last_seen", "max_seen")

    def __init__(self, max_seen: float = -math.inf) -> None:
        self.max_seen = max_seen
        self.last_seen: float | None = None
        self.advanced = -math.inf


class WindowDispatcher(GroupDispatcher):
    """Runs one window function (``app.window``) on its group."""

    def __init__(self, fn: Function, broker: Broker, producer: Producer, clock: Clock,
                 executor: Executor, node: str, *,
                 upstream: Callable[[], int] | None = None) -> None:
        super().__init__(fn, broker, producer, clock, executor, node, upstream=upstream)
        assert fn.window is not None
        self.spec: WindowSpec = fn.window
        self.ops: dict[int, WindowOperator] = {}
        self.tracks: dict[int, Track] = {}
        self.bound_s = self.spec.watermark.bound_s
        self.state_bytes: dict[int, int] = {}
        self._kind: Kind | None = None

    # -- state -----------------------------------------------------------------------------------
    def _key(self, p: int) -> str:
        return keys.window_state(self.group.stream.name, self.group.name, p)

    def _fresh(self, p: int) -> tuple[WindowOperator, Track]:
        op = self.ops[p] = self.spec.operator(self.fn.name)
        track = self.tracks[p] = Track()
        track.last_seen = self.clock.time()  # (a partition just taken is not idle at once)
        return op, track

    async def _resume(self, p: int, offset: int) -> int:
        op, track = self._fresh(p)
        entry = await self.broker.kv.get(self._key(p))
        if entry is None:
            return offset
        try:
            saved = msgspec.json.decode(entry.value, type=Checkpoint)
            op.restore(bytes(saved.operator))
        except (msgspec.DecodeError, SwellError) as exc:
            # the window's settings changed since (or the state is not readable): its windows
            # start afresh from the committed offset; windows open then give partial panes
            log.error("%s: partition %d's window state cannot be restored (%s): starting its "
                      "windows afresh from offset %d", self.fn.name, p, exc, offset)
            self._fresh(p)
            return offset
        track.max_seen = -math.inf if saved.max_seen is None else saved.max_seen
        track.advanced = op.watermark
        self.state_bytes[p] = len(entry.value)
        log.info("%s: partition %d resumes its windows at offset %d", self.fn.name, p, saved.offset)
        return saved.offset

    async def _save(self, part: Partition) -> None:
        op, track = self.ops.get(part.p), self.tracks.get(part.p)
        if op is None or track is None:
            return
        seen = None if track.max_seen == -math.inf else track.max_seen
        value = msgspec.json.encode(Checkpoint(part.position, msgspec.Raw(op.snapshot()), seen))
        await self.broker.kv.put(self._key(part.p), value)
        self.state_bytes[part.p] = len(value)

    # -- events ----------------------------------------------------------------------------------
    async def _handle(self, part: Partition, r: Record) -> None:
        m = self.metrics
        m.received += 1
        m.attempts += 1
        p = part.p
        op, track = (self.ops[p], self.tracks[p]) if p in self.ops else self._fresh(p)
        now = self.clock.time()
        try:
            event = Event.from_json(r.body)
            key = r.key if self.spec.key is None else str(self.spec.key(event))
            t = self._time(event, r)
            value = self.spec.value(event)
        except Exception as exc:  # a bad event is dead-lettered with the reason; the rest go on
            return await self._refuse(r, "bad event", f"{type(exc).__name__}: {exc}")
        if key != r.key or key is None:
            return await self._refuse(r, "window key is not the partition key", (
                f"the window key {key!r} is not the key the event was appended with ({r.key!r}): "
                "a key's events must all be in one partition; append with key= the window key"))
        try:
            panes = op.add(key, value, t, now=now)
        except WindowValueError as exc:
            return await self._refuse(r, "aggregate failed", str(exc))
        if side := op.take_side():  # (late="side"; once, however many windows it missed)
            await self._dead_letter(r, "too late", f"time {t:.3f} is past the end of its "
                                    f"window(s) ({', '.join(f'{x.window_end:.3f}' for x in side)}) "
                                    "and the allowed lateness", 1)
        track.last_seen = now
        if t > track.max_seen:
            track.max_seen = t
        mark = self._watermark(p, now)
        if mark > track.advanced:  # (the operator has nothing to do for a watermark it has)
            track.advanced = mark
            panes += op.advance(mark, now=now)
        if panes:
            await self._emit(panes, part)
        m.succeeded += 1

    async def _refuse(self, r: Record, reason: str, error: str) -> None:
        await self._dead_letter(r, reason, error, 1)
        self.metrics.dead_lettered += 1

    def _time(self, event: Event[Any], r: Record) -> float:
        how = self.spec.time_of
        if callable(how):
            return event_time(how(event))
        if how == "enqueued" or (event.time is None and how == "event_or_enqueued"):
            return r.timestamp
        if event.time is None:
            raise ValueError("the event has no time (time_of='event'; 'event_or_enqueued' would "
                             "take the time it was appended)")
        return event.time.timestamp()

    def _watermark(self, p: int, now: float) -> float:
        """Partition ``p``'s own watermark, or, while it is idle, the lowest of this node's busy
        partitions' (never lower than its own)."""
        own = self.tracks[p].max_seen - self.bound_s
        idle_s = self.spec.watermark.idle_s
        if idle_s is None or not self._idle(p, now, idle_s):
            return own
        busy = [t.max_seen - self.bound_s for q, t in self.tracks.items()
                if q != p and t.max_seen > -math.inf and not self._idle(q, now, idle_s)]
        return max(own, min(busy)) if busy else own

    def _idle(self, p: int, now: float, idle_s: float) -> bool:
        """Silent for ``idle_s`` and nothing left to read: idle (merely slow is never idle)."""
        seen = self.tracks[p].last_seen
        backlog = self.lags[p] if p < len(self.lags) else 0
        return backlog == 0 and (seen is None or now - seen >= idle_s)

    async def _quiet(self, part: Partition) -> None:
        op, track = self.ops.get(part.p), self.tracks.get(part.p)
        if op is None or track is None:
            return
        now = self.clock.time()
        panes = op.tick(now)
        mark = self._watermark(part.p, now)
        if mark > track.advanced:
            track.advanced = mark
            panes += op.advance(mark, now=now)
        await self._emit(panes, part)

    async def _emit(self, panes: list[Pane], part: Partition) -> None:
        """Put ``panes`` on the channel, each with its id as the event id. A broker that cannot be
        reached holds the partition and is tried again while the partition is this node's (once
        it is not, the next owner redoes them from the last checkpoint); a channel that refuses
        them (gone, a pane too large) gets them in the group's dead-letter queue instead."""
        if not panes:
            return
        events = [self.producer.event(self.spec.emit_to, _data(self.fn.name, pane), id=pane.id,
                                      type=PANE_TYPE, key=pane.key) for pane in panes]
        while self._holds(part):
            try:
                if self._kind is None:
                    self._kind = await self.producer.kind(self.spec.emit_to)
                await self.producer.put(self._kind)(
                    self.spec.emit_to, self.producer.messages(self._kind, events, dedup=True))
                return
            except BrokerUnavailable as exc:
                log.warning("%s: could not emit %d pane(s): %s; trying again", self.fn.name,
                            len(panes), exc)
                await self.clock.sleep(EMIT_RETRY_S)
            except SwellError as exc:
                log.error("%s: %s refused %d pane(s) (%s): they go to %s", self.fn.name,
                          self.spec.emit_to, len(panes), exc, self.group.dead_letter.name)
                try:
                    await self.broker.send(self.group.dead_letter.name, [Message(
                        body=e.to_json(), headers=dead_letter_headers(
                            None, source=self.fn.name, reason="pane not emitted", error=str(exc),
                            attempts=1, at=self.clock.time())) for e in events])
                    return
                except SwellError as again:  # the broker is failing: as if it could not be reached
                    log.warning("%s: could not dead-letter the panes either: %s", self.fn.name,
                                again)
                    await self.clock.sleep(EMIT_RETRY_S)

    async def _let_go(self, part: Partition) -> None:
        await super()._let_go(part)
        if part.p not in self._owned:  # (given up: its state is the next owner's now)
            for held in (self.ops, self.tracks, self.state_bytes):
                held.pop(part.p, None)

    # -- seeing it -------------------------------------------------------------------------------
    def window_status(self) -> dict[str, Any]:
        """The group's watermark (the lowest of this node's partitions'), its delay behind
        processing time, open windows, late events accepted and dropped, state size."""
        now = self.clock.time()
        marks = [self._watermark(p, now) for p in self.ops if p in self.tracks]
        finite = [w for w in marks if w > -math.inf]
        watermark = min(finite) if finite else None
        stats = [op.stats for op in self.ops.values()]
        return {"watermark": watermark,
                "delay_s": None if watermark is None else max(0.0, now - watermark),
                "open_windows": sum(s.open_windows for s in stats),
                "late_accepted": sum(s.late_accepted for s in stats),
                "late_dropped": sum(s.late_dropped for s in stats),
                "state_bytes": sum(self.state_bytes.get(p, 0) for p in self.ops)}


def _data(function: str, pane: Pane) -> dict[str, Any]:
    return {"window": function, "key": pane.key, "start": pane.start, "end": pane.end,
            "value": pane.value, "timing": pane.timing, "index": pane.index,
            "retraction": pane.retraction, "id": pane.id}
