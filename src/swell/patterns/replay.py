"""Replays and backfills: a consumer group's handler run again over a time range of its stream.

The range is cut into time slices; at most ``concurrency`` run at once, each partition of a slice
in order. Every event's progress is checkpointed in the kv store under the replay's own id (a hash
of stream, group, range, slice and sink), so Ctrl-C pauses and the same command resumes where it
stopped; the live group's offsets are never read for work nor written. With a staging ``sink``
(a topic), whatever the handler publishes goes there instead of where it was meant to go, with a
dedup id derived from the replay, the source event and the publish's order in that event's own
handling (partitions run at once: nothing of one event's handling is shared with another's), so
an event done again after a crash publishes nothing new (counted as a duplicate suppressed), as
long as it comes within the topic's dedup window (``dedup_window``; on NATS the stream's duplicate
window: a repeat after it publishes copies).

This module plans and drives a replay and keeps its progress; running the handler on a record
(with the function's retries) is the ``handle`` it is given: ``swell.runtime.replay.Replay`` gives
the group function's own, through the runtime's executor and settle rules.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec

from swell.brokers.base import Broker, Record
from swell.brokers.producer import Producer, Target, target_name
from swell.core import keys
from swell.core.config import seconds
from swell.core.errors import ConfigError

PREFIX = keys.REPLAYS
_AGO = re.compile(r"\d+(?:\.\d+)?\s*(?:ms|s|m|h|d)")
READ_BATCH = 200


@dataclass
class SliceResult:
    index: int
    start: float
    end: float
    events: int = 0
    failures: int = 0
    duplicates: int = 0
    done: bool = False


Handle = Callable[[Record, Producer], Awaitable[bool]]
"""Run the group's handler on one record, with its retries, publishing through the producer
given; whether it succeeded in the end."""


@dataclass
class Plan:
    """What a replay covers: its id, slices, and per slice and partition the offsets to do."""

    id: str
    function: str
    slices: list[SliceResult]
    total: int
    resumed: int = 0
    results: list[SliceResult] = field(default_factory=list)


def parse_time(value: str, now: float) -> float:
    """An instant: ISO 8601 (``2026-11-27T10:00``, UTC unless it says otherwise), epoch seconds,
    or a duration ago (``2h`` is two hours before now)."""
    text = value.strip()
    if _AGO.fullmatch(text):
        return now - seconds(text, name="time")  # a duration with its unit: that long ago
    try:
        return float(text) if text.replace(".", "", 1).isdigit() else _iso(text)
    except ValueError:
        raise ConfigError(f"{value!r} is not a time: use ISO 8601 (2026-11-27T10:00:00Z), epoch "
                          "seconds, or a duration ago (2h)") from None


def _iso(text: str) -> float:
    t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return (t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp()


class RangeReplay:
    """One replay run of ``function`` (the group's): plan, then run with ``progress`` called per
    event and ``handle`` per record."""

    def __init__(self, function: str, handle: Handle, broker: Broker, stream: str, group: str,
                 start: str, end: str, slice_s: float, concurrency: int, sink: str | None, *,
                 now: float) -> None:
        """``start`` and ``end`` as the user wrote them (see ``parse_time``); the replay's id comes
        from what was written, and the times they meant are kept with its progress, so the same
        command resumes the same range even when it was written relative to now (``2h``)."""
        if slice_s <= 0 or concurrency < 1:
            raise ConfigError("--slice must be positive and --concurrency at least 1")
        self.function = function
        self.handle = handle
        self.broker = broker
        self.stream, self.group = stream, group
        self.start, self.end = parse_time(start, now), parse_time(end, now)
        if self.end <= self.start:
            raise ConfigError("--to must be after --from")
        self.slice_s = slice_s
        self.concurrency = concurrency
        self.sink = sink
        key = msgspec.json.encode([stream, group, start, end, slice_s, sink])
        self.id = hashlib.sha256(key).hexdigest()[:16]
        self.stop = asyncio.Event()
        self.partitions = 0

    async def restore(self, restart: bool) -> bool:
        """Take the range of an earlier run of this command (whether it resumes), or record this
        one's; ``restart`` forgets an earlier run's progress."""
        key = f"{PREFIX}{self.stream}/{self.group}/{self.id}/range"
        if restart:
            for e in await self.broker.kv.scan(f"{PREFIX}{self.stream}/{self.group}/{self.id}/"):
                await self.broker.kv.delete(e.key)
        entry = await self.broker.kv.get(key)
        if entry is not None:
            self.start, self.end = msgspec.json.decode(entry.value, type=tuple[float, float])
            return True
        await self.broker.kv.put(key, msgspec.json.encode((self.start, self.end)))
        return False

    @property
    def source(self) -> str:
        """The CloudEvents source of what the replay publishes."""
        return f"/swell/replay/{self.id}"

    def _key(self, index: int, p: int) -> str:
        return f"{PREFIX}{self.stream}/{self.group}/{self.id}/{index}/{p}"

    async def plan(self) -> Plan:
        spec = await self.broker.stream_spec(self.stream)
        self.partitions = spec.partitions
        known = {t.spec.name for t in await self.broker.topics()} if self.sink else set()
        if self.sink is not None and self.sink not in known:
            raise ConfigError(f"--sink {self.sink!r} is not a topic on this broker (declare it "
                              "with app.topic(...) and run the app once)")
        n = max(1, math.ceil((self.end - self.start) / self.slice_s))
        slices = [SliceResult(i, self.start + i * self.slice_s,
                              min(self.end, self.start + (i + 1) * self.slice_s)) for i in range(n)]
        total = resumed = 0
        for s in slices:
            for p in range(spec.partitions):
                at = await self._offset_at(p, s.start)
                if at is None:
                    continue
                until = await self._offset_at(p, s.end)
                rest = 0 if until is None else await self._count_from(p, until)
                kept = await self._count_from(p, at)
                total += kept - rest
                done = await self._progress(s.index, p)
                if done is not None:
                    resumed += max(0, kept - max(rest, await self._count_from(p, done)))
        return Plan(self.id, self.function, slices, total, resumed)

    async def _count_from(self, p: int, offset: int) -> int:
        """Records of partition ``p`` kept at or after ``offset``."""
        offsets = [offset if q == p else 2 ** 62 for q in range(self.partitions)]
        return (await self.broker.lag(self.stream, offsets))[p]

    async def _offset_at(self, p: int, t: float) -> int | None:
        got = await self.broker.read(self.stream, p, 0, 1, since=t)
        return got[0].offset if got else None

    async def _progress(self, index: int, p: int) -> int | None:
        entry = await self.broker.kv.get(self._key(index, p))
        return None if entry is None else msgspec.json.decode(entry.value, type=int)

    async def run(self, plan: Plan, progress: Callable[[int], None]) -> list[SliceResult]:
        gate = asyncio.Semaphore(self.concurrency)

        async def one(s: SliceResult) -> SliceResult:
            async with gate:
                if not self.stop.is_set():
                    await asyncio.gather(*(self._partition(s, p, progress)
                                           for p in range(self.partitions)))
                    s.done = not self.stop.is_set()
            return s

        return list(await asyncio.gather(*(one(s) for s in plan.slices)))

    async def _partition(self, s: SliceResult, p: int, progress: Callable[[int], None]) -> None:
        done = await self._progress(s.index, p)
        position = done if done is not None else await self._offset_at(p, s.start)
        if position is None:
            return
        while not self.stop.is_set():
            records = await self.broker.read(self.stream, p, position, READ_BATCH)
            records = [r for r in records if r.timestamp < s.end]
            if not records:
                return
            for r in records:
                if self.stop.is_set():
                    return
                if r.timestamp >= s.start:
                    # each record gets a producer of its own: partitions run at once, and what
                    # one record's handling publishes must be named after that record alone
                    producer = self._producer(r)
                    ok = await self.handle(r, producer)
                    s.events += 1
                    s.failures += not ok
                    if isinstance(producer, SinkProducer):
                        s.duplicates += producer.duplicates
                    progress(1)
                position = r.offset + 1
                await self.broker.kv.put(self._key(s.index, p), msgspec.json.encode(position))

    def _producer(self, r: Record) -> Producer:
        if self.sink is None:
            return Producer(self.broker, source=self.source)
        return SinkProducer(self.broker, self.sink, self.id, f"{r.partition}:{r.offset}")


class SinkProducer(Producer):
    """Sends everything the handling of one record publishes to the staging topic, with dedup
    ids derived from the replay, the record and the publish's order within its handling (a
    retry publishes under the same ids: what its failed attempt stored is not stored again)."""

    def __init__(self, broker: Broker, sink: str, replay_id: str, record: str) -> None:
        super().__init__(broker, source=f"/swell/replay/{replay_id}", topics=[sink])
        self.sink = sink
        self.prefix = f"replay-{replay_id}-{record}"
        self.published = 0
        self.duplicates = 0
        """Publishes the topic had already (within its dedup window): not stored again."""

    async def send(self, queue: Target, data: Any, *, delay_s: float = 0.0, **attrs: Any) -> str:
        self.published += 1
        attrs["id"] = f"{self.prefix}-{self.published}"
        attributes = dict(attrs.pop("attributes", None) or {})
        attributes["replayof"] = target_name(queue)[:200]
        event = self.event(self.sink, data, attributes=attributes, **attrs)
        stored = await self.publish_events(self.sink, [event], delay_s=delay_s, dedup=True)
        self.duplicates += not stored[0]
        return event.id

    async def publish(self, target: Target, data: Any, *, delay_s: float = 0.0,
                      **attrs: Any) -> str:
        return await self.send(target, data, delay_s=delay_s, **attrs)


__all__ = ["Handle", "Plan", "RangeReplay", "SinkProducer", "SliceResult", "parse_time"]
