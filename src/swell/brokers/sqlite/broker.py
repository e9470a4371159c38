"""``SqliteBroker``: the parts of the SQLite broker (queues, topics, logs, kv) over one store."""

from __future__ import annotations

from collections.abc import Sequence

from swell.brokers.sqlite.kv import SqliteKV
from swell.brokers.sqlite.logs import SqliteLogs
from swell.brokers.sqlite.messages import Dedup
from swell.brokers.sqlite.queues import SqliteQueues
from swell.brokers.sqlite.store import SqliteStore
from swell.brokers.sqlite.topics import SqliteTopics
from swell.brokers.types import (
    Delivery,
    Message,
    QueueSpec,
    QueueStats,
    Receipt,
    Record,
    StreamSpec,
    SubscriptionSpec,
    TopicInfo,
    TopicSpec,
)
from swell.core.clock import SYSTEM_CLOCK, Clock


class SqliteBroker:
    """Queues, topics, streams and kv in a SQLite file. ``synchronous`` is SQLite's: ``normal``
    (default) survives a process crash; ``full`` also survives power loss, at the cost of an fsync
    per commit."""

    def __init__(self, path: str, *, clock: Clock = SYSTEM_CLOCK, synchronous: str = "normal") -> None:
        self.store = SqliteStore(path, clock=clock, synchronous=synchronous)
        self.path = path
        self.clock = clock
        dedup = Dedup()  # one sweep of expired dedup ids for queues and topics alike
        self._queues = SqliteQueues(self.store, dedup)
        self._topics = SqliteTopics(self.store, dedup)
        self._logs = SqliteLogs(self.store)
        self._kv = SqliteKV(self.store)

    @property
    def kv(self) -> SqliteKV:
        return self._kv

    # -- queues ------------------------------------------------------------------------------
    async def declare_queue(self, spec: QueueSpec) -> None:
        await self._queues.declare_queue(spec)

    async def queue_spec(self, queue: str) -> QueueSpec:
        return await self._queues.queue_spec(queue)

    async def queues(self) -> list[QueueSpec]:
        return await self._queues.queues()

    async def send(self, queue: str, messages: Sequence[Message]) -> list[bool]:
        return await self._queues.send(queue, messages)

    async def receive(self, queue: str, max_messages: int, visibility_timeout_s: float | None = None,
                      wait_s: float = 0.0) -> list[Delivery]:
        return await self._queues.receive(queue, max_messages, visibility_timeout_s, wait_s)

    async def ack(self, receipts: Sequence[Receipt]) -> list[Receipt]:
        return await self._queues.ack(receipts)

    async def release(self, receipts: Sequence[Receipt], delay_s: float = 0.0, *,
                      count: bool = True) -> list[Receipt]:
        return await self._queues.release(receipts, delay_s, count=count)

    async def extend(self, receipts: Sequence[Receipt], seconds: float) -> list[Receipt]:
        return await self._queues.extend(receipts, seconds)

    async def dead_letter(self, receipt: Receipt, reason: str, error: str | None = None) -> bool:
        return await self._queues.dead_letter(receipt, reason, error)

    async def redrive(self, queue: str, max_messages: int | None = None) -> int:
        return await self._queues.redrive(queue, max_messages)

    async def peek(self, queue: str, max_messages: int = 100) -> list[Delivery]:
        return await self._queues.peek(queue, max_messages)

    async def stats(self, queue: str) -> QueueStats:
        return await self._queues.stats(queue)

    async def stats_many(self, queues: Sequence[str]) -> dict[str, QueueStats]:
        return await self._queues.stats_many(queues)

    async def purge(self, queue: str) -> int:
        return await self._queues.purge(queue)

    # -- topics ------------------------------------------------------------------------------
    async def declare_topic(self, spec: TopicSpec) -> None:
        await self._topics.declare_topic(spec)

    async def subscribe(self, spec: SubscriptionSpec) -> None:
        await self._topics.subscribe(spec)

    async def publish(self, topic: str, messages: Sequence[Message]) -> list[bool]:
        return await self._topics.publish(topic, messages)

    async def topics(self) -> list[TopicInfo]:
        return await self._topics.topics()

    # -- streams -----------------------------------------------------------------------------
    async def declare_stream(self, spec: StreamSpec) -> None:
        await self._logs.declare_stream(spec)

    async def stream_spec(self, stream: str) -> StreamSpec:
        return await self._logs.stream_spec(stream)

    async def streams(self) -> list[StreamSpec]:
        return await self._logs.streams()

    async def append(self, stream: str, messages: Sequence[Message]) -> list[tuple[int, int]]:
        return await self._logs.append(stream, messages)

    async def read(self, stream: str, partition: int, offset: int = 0, max_records: int = 100, *,
                   since: float | None = None) -> list[Record]:
        return await self._logs.read(stream, partition, offset, max_records, since=since)

    async def end_offsets(self, stream: str) -> list[int]:
        return await self._logs.end_offsets(stream)

    async def lag(self, stream: str, offsets: Sequence[int]) -> list[int]:
        return await self._logs.lag(stream, offsets)

    async def close(self) -> None:
        if self.store.closed:
            return
        await self._queues.released_orphans()
        await self.store.close(self._topics.flush_at_close)
