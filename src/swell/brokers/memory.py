"""The in-memory broker: public, supported, for tests and examples. One process, no durability."""

from __future__ import annotations

import bisect
import heapq
import itertools
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from swell.brokers.logs import check_partition, partition_change
from swell.brokers.memory_kv import MemoryKV
from swell.brokers.topics import Router, check_publish, route
from swell.brokers.types import (
    REASON_MAX_RECEIVES,
    Delivery,
    Message,
    QueueSpec,
    QueueStats,
    Receipt,
    Record,
    StreamSpec,
    SubscriptionSpec,
    SubscriptionStats,
    TopicInfo,
    TopicSpec,
    check_sizes,
    dead_letter_headers,
    partition_of,
    redrive_headers,
)
from swell.brokers.waiting import Waker
from swell.core.clock import SYSTEM_CLOCK, Clock
from swell.core.errors import ConfigError, MessageTooLarge, UnknownQueue, UnknownStream, UnknownTopic

V = TypeVar("V")


@dataclass(slots=True)
class _Record:
    id: int
    body: bytes
    headers: dict[str, str] | None
    enqueued_at: float
    visible_at: float
    receive_count: int = 0
    token: int | None = None  # set while leased (and after its lease expired, until re-leased)
    first_received_at: float | None = None
    leased: bool = False


@dataclass(slots=True)
class _Dedup:
    """The dedup ids seen within their window: id -> when it expires."""

    seen: dict[str, float] = field(default_factory=dict)

    def is_new(self, dedup_id: str | None, now: float, window_s: float) -> bool:
        """Whether ``dedup_id`` (if any) is new within the window; a new one is recorded."""
        if dedup_id is None:
            return True
        if self.seen.get(dedup_id, -1.0) > now:
            return False
        self.seen[dedup_id] = now + window_s
        return True

    def prune(self, now: float) -> None:
        if len(self.seen) > 1024:
            self.seen = {k: t for k, t in self.seen.items() if t > now}


@dataclass(slots=True)
class _Queue:
    spec: QueueSpec
    records: dict[int, _Record] = field(default_factory=dict)
    # (visible_at, id, visible_at-version): stale entries are skipped when popped
    heap: list[tuple[float, int]] = field(default_factory=list)
    dedup: _Dedup = field(default_factory=_Dedup)


@dataclass(slots=True)
class _Subscription:
    router: Router
    matched: int = 0
    filtered: int = 0


@dataclass(slots=True)
class _Topic:
    spec: TopicSpec
    subscriptions: dict[str, _Subscription] = field(default_factory=dict)
    dedup: _Dedup = field(default_factory=_Dedup)
    published: int = 0


@dataclass(slots=True)
class _Stream:
    spec: StreamSpec
    partitions: list[list[Record]]
    next_offsets: list[int]
    appended: int = 0


class MemoryBroker:
    """Queues held in process memory, with the same semantics as every other backend."""

    def __init__(self, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.clock = clock
        self._queues: dict[str, _Queue] = {}
        self._topics: dict[str, _Topic] = {}
        self._streams: dict[str, _Stream] = {}
        self._ids = itertools.count(1)
        self._waker = Waker(clock)
        self._kv = MemoryKV(clock)

    @property
    def kv(self) -> MemoryKV:
        return self._kv

    # -- declarations ------------------------------------------------------------------------
    async def declare_queue(self, spec: QueueSpec) -> None:
        for s in (spec, spec.dlq_spec()):
            if s is None:
                continue
            q = self._queues.get(s.name)
            if q is None:
                self._queues[s.name] = _Queue(s)
            elif s is spec or q.spec.is_dead_letter:
                q.spec = s

    def _q(self, name: str) -> _Queue:
        return _lookup(self._queues, name, UnknownQueue)

    async def queue_spec(self, queue: str) -> QueueSpec:
        return self._q(queue).spec

    async def queues(self) -> list[QueueSpec]:
        return [q.spec for q in self._queues.values()]

    # -- messages ----------------------------------------------------------------------------
    async def send(self, queue: str, messages: Sequence[Message]) -> list[bool]:
        q = self._q(queue)
        check_sizes(q.spec, messages)
        now = self.clock.time()
        accepted = [q.dedup.is_new(m.dedup_id, now, q.spec.dedup_window_s) for m in messages]
        self._put_all(q, [m for m, new in zip(messages, accepted, strict=True) if new], now)
        q.dedup.prune(now)
        self._waker.notify(queue)
        return accepted

    def _put_all(self, q: _Queue, messages: Sequence[Message], now: float) -> None:
        for m in messages:
            self._put(q, m.body, m.headers, now, now + max(m.delay_s, 0.0))

    def _put(self, q: _Queue, body: bytes, headers: dict[str, str] | None, enqueued_at: float,
             visible_at: float) -> None:
        rec = _Record(next(self._ids), body, headers, enqueued_at, visible_at)
        q.records[rec.id] = rec
        heapq.heappush(q.heap, (visible_at, rec.id))

    async def receive(self, queue: str, max_messages: int, visibility_timeout_s: float | None = None,
                      wait_s: float = 0.0) -> list[Delivery]:
        q = self._q(queue)

        async def attempt() -> tuple[list[Delivery], float | None]:
            got = self._claim(q, max_messages, visibility_timeout_s)
            return got, (q.heap[0][0] if q.heap else None)

        return await self._waker.wait_for(queue, attempt, wait_s)

    def _claim(self, q: _Queue, max_messages: int, vt: float | None) -> list[Delivery]:
        now = self.clock.time()
        lease = q.spec.visibility_timeout_s if vt is None else vt
        out: list[Delivery] = []
        while q.heap and len(out) < max_messages and q.heap[0][0] <= now:
            visible_at, rid = heapq.heappop(q.heap)
            rec = q.records.get(rid)
            if rec is None or rec.visible_at != visible_at:
                continue  # acked, or moved since this entry was pushed
            rec.receive_count += 1
            if 0 < q.spec.max_receives < rec.receive_count:
                self._move_to_dlq(q, rec, REASON_MAX_RECEIVES, None, rec.receive_count - 1)
                continue
            rec.token = random.getrandbits(62)
            rec.leased = True
            rec.visible_at = now + lease
            if rec.first_received_at is None:
                rec.first_received_at = now
            heapq.heappush(q.heap, (rec.visible_at, rid))
            out.append(Delivery(receipt=Receipt(q.spec.name, rid, rec.token), body=rec.body,
                                headers=dict(rec.headers or {}), receive_count=rec.receive_count,
                                enqueued_at=rec.enqueued_at, first_received_at=rec.first_received_at))
        out.sort(key=lambda d: d.receipt.id)  # a batch in message order, as on every backend
        return out

    def _held(self, r: Receipt) -> tuple[_Queue, _Record] | None:
        q = self._queues.get(r.queue)
        rec = q.records.get(r.id) if q else None
        if q is None or rec is None or rec.token != r.token:
            return None
        return q, rec

    async def ack(self, receipts: Sequence[Receipt]) -> list[Receipt]:
        stale = []
        for r in receipts:
            held = self._held(r)
            if held is None:
                stale.append(r)
            else:
                del held[0].records[r.id]
        return stale

    def _reschedule(self, q: _Queue, rec: _Record, visible_at: float, leased: bool) -> None:
        rec.visible_at = visible_at
        rec.leased = leased
        heapq.heappush(q.heap, (visible_at, rec.id))

    async def release(self, receipts: Sequence[Receipt], delay_s: float = 0.0, *,
                      count: bool = True) -> list[Receipt]:
        stale, now = [], self.clock.time()
        for r in receipts:
            held = self._held(r)
            if held is None:
                stale.append(r)
                continue
            q, rec = held
            rec.token = None
            if not count:
                rec.receive_count = max(0, rec.receive_count - 1)
            self._reschedule(q, rec, now + max(delay_s, 0.0), leased=False)
            self._waker.notify(q.spec.name)
        return stale

    async def extend(self, receipts: Sequence[Receipt], seconds: float) -> list[Receipt]:
        stale, now = [], self.clock.time()
        for r in receipts:
            held = self._held(r)
            if held is None:
                stale.append(r)
            else:
                self._reschedule(*held, now + seconds, leased=True)
        return stale

    async def dead_letter(self, receipt: Receipt, reason: str, error: str | None = None) -> bool:
        held = self._held(receipt)
        if held is None or held[0].spec.dead_letter_queue is None:
            return False
        q, rec = held
        self._move_to_dlq(q, rec, reason, error, rec.receive_count)
        return True

    def _move_to_dlq(self, q: _Queue, rec: _Record, reason: str, error: str | None,
                     attempts: int) -> None:
        del q.records[rec.id]
        name = q.spec.dead_letter_queue
        if name is None:
            return
        now = self.clock.time()
        headers = dead_letter_headers(rec.headers, source=q.spec.name, reason=reason, error=error,
                                      attempts=attempts, at=now)
        self._put(self._q(name), rec.body, headers, rec.enqueued_at, now)

    async def redrive(self, queue: str, max_messages: int | None = None) -> int:
        q = self._q(queue)
        name = q.spec.dead_letter_queue
        if name is None:
            return 0
        dlq, now, moved = self._q(name), self.clock.time(), 0
        for rec in sorted(dlq.records.values(), key=lambda r: r.id):
            if max_messages is not None and moved >= max_messages:
                break
            del dlq.records[rec.id]
            self._put(q, rec.body, redrive_headers(rec.headers), rec.enqueued_at, now)
            moved += 1
        if moved:
            self._waker.notify(queue)
        return moved

    async def peek(self, queue: str, max_messages: int = 100) -> list[Delivery]:
        recs = sorted(self._q(queue).records.values(), key=lambda r: r.id)[:max_messages]
        return [Delivery(receipt=Receipt(queue, r.id, -1), body=r.body, headers=dict(r.headers or {}),
                         receive_count=r.receive_count, enqueued_at=r.enqueued_at,
                         first_received_at=r.first_received_at) for r in recs]

    async def stats(self, queue: str) -> QueueStats:
        q, now = self._q(queue), self.clock.time()
        depth = in_flight = delayed = 0
        oldest = now
        for rec in q.records.values():
            oldest = min(oldest, rec.enqueued_at)
            if rec.visible_at <= now:
                depth += 1
            elif rec.leased:
                in_flight += 1
            else:
                delayed += 1
        return QueueStats(queue=queue, depth=depth, in_flight=in_flight, delayed=delayed,
                          oldest_age_s=max(0.0, now - oldest))

    async def stats_many(self, queues: Sequence[str]) -> dict[str, QueueStats]:
        return {q: await self.stats(q) for q in queues if q in self._queues}

    async def purge(self, queue: str) -> int:
        q = self._q(queue)
        n = len(q.records)
        q.records.clear()
        q.heap.clear()
        return n

    # -- topics ------------------------------------------------------------------------------
    def _topic(self, name: str) -> _Topic:
        return _lookup(self._topics, name, UnknownTopic)

    async def declare_topic(self, spec: TopicSpec) -> None:
        t = self._topics.get(spec.name)
        if t is None:
            self._topics[spec.name] = _Topic(spec)
        else:
            t.spec = spec

    async def subscribe(self, spec: SubscriptionSpec) -> None:
        t = self._topic(spec.topic)
        router = Router.of(spec)
        await self.declare_queue(spec.queue)
        sub = t.subscriptions.get(spec.name)
        if sub is None:
            t.subscriptions[spec.name] = _Subscription(router)
        else:
            sub.router = router

    async def publish(self, topic: str, messages: Sequence[Message]) -> list[bool]:
        t = self._topic(topic)
        check_publish(t.spec, messages)
        now = self.clock.time()
        accepted = [t.dedup.is_new(m.dedup_id, now, t.spec.dedup_window_s) for m in messages]
        fresh = [m for m, new in zip(messages, accepted, strict=True) if new]
        routed = route([s.router for s in t.subscriptions.values()], fresh)
        for r in routed:  # every queue's limits checked before anything is stored
            check_sizes(self._q(r.router.spec.queue.name).spec, r.messages)
        for r in routed:
            q = self._q(r.router.spec.queue.name)
            self._put_all(q, r.messages, now)
            sub = t.subscriptions[r.router.spec.name]
            sub.matched += len(r.messages)
            sub.filtered += r.filtered
            if r.messages:
                self._waker.notify(q.spec.name)
        t.published += len(fresh)
        t.dedup.prune(now)
        return accepted

    async def topics(self) -> list[TopicInfo]:
        return [TopicInfo(spec=t.spec, published=t.published, subscriptions=[
            SubscriptionStats(spec=s.router.spec, matched=s.matched, filtered=s.filtered)
            for s in t.subscriptions.values()]) for t in self._topics.values()]

    # -- streams -----------------------------------------------------------------------------
    def _stream(self, name: str) -> _Stream:
        return _lookup(self._streams, name, UnknownStream)

    async def declare_stream(self, spec: StreamSpec) -> None:
        s = self._streams.get(spec.name)
        if s is None:
            self._streams[spec.name] = _Stream(spec, [[] for _ in range(spec.partitions)],
                                               [0] * spec.partitions)
        elif s.spec.partitions != spec.partitions:
            raise ConfigError(partition_change(s.spec, spec))
        else:
            s.spec = spec

    async def stream_spec(self, stream: str) -> StreamSpec:
        return self._stream(stream).spec

    async def streams(self) -> list[StreamSpec]:
        return [s.spec for s in self._streams.values()]

    async def append(self, stream: str, messages: Sequence[Message]) -> list[tuple[int, int]]:
        s = self._stream(stream)
        for m in messages:
            if len(m.body) > s.spec.max_message_bytes:
                raise MessageTooLarge(stream, len(m.body), s.spec.max_message_bytes)
        now = self.clock.time()
        out = []
        for m in messages:
            p = partition_of(m.key, s.spec.partitions, s.appended)
            s.appended += 1
            offset = s.next_offsets[p]
            s.next_offsets[p] += 1
            s.partitions[p].append(Record(partition=p, offset=offset, timestamp=now, key=m.key,
                                          body=m.body, headers=dict(m.headers or {})))
            out.append((p, offset))
        for p, part in enumerate(s.partitions):  # retention
            cut = bisect.bisect_left([r.timestamp for r in part], now - s.spec.retention_s)
            if cut:
                s.partitions[p] = part[cut:]
        return out

    async def read(self, stream: str, partition: int, offset: int = 0, max_records: int = 100, *,
                   since: float | None = None) -> list[Record]:
        s = self._stream(stream)
        part = s.partitions[check_partition(s.spec, partition)]
        start = bisect.bisect_left([r.offset for r in part], offset)
        if since is not None:
            start = max(start, bisect.bisect_left([r.timestamp for r in part], since))
        return part[start:start + max(0, max_records)]

    async def end_offsets(self, stream: str) -> list[int]:
        return list(self._stream(stream).next_offsets)

    async def lag(self, stream: str, offsets: Sequence[int]) -> list[int]:
        s = self._stream(stream)
        return [len(part) - bisect.bisect_left([r.offset for r in part], offset)
                for part, offset in zip(s.partitions, offsets, strict=True)]

    async def close(self) -> None:
        self._waker.close()  # a receive still waiting returns what it has: nothing


def _lookup(table: dict[str, V], name: str, unknown: Callable[[str], Exception]) -> V:
    try:
        return table[name]
    except KeyError:
        raise unknown(name) from None
