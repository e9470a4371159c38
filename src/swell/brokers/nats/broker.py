"""``NatsBroker``: the parts of the NATS backend behind the broker protocol."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

from swell.brokers.nats.client import NatsClient
from swell.brokers.nats.deliveries import NatsDeliveries
from swell.brokers.nats.kv import NatsKV
from swell.brokers.nats.leases import Leases
from swell.brokers.nats.logs import NatsLogs
from swell.brokers.nats.pulls import Puller
from swell.brokers.nats.queues import NatsQueues
from swell.brokers.nats.topics import NatsTopics
from swell.core.clock import SYSTEM_CLOCK, Clock
from swell.core.errors import BrokerError

if TYPE_CHECKING:
    from swell.brokers.base import (
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


class NatsBroker:
    """Queues, topics, streams and kv on NATS JetStream. How each call maps is in the docstrings
    of ``queues``, ``topics``, ``logs`` and ``kv``.

    ``url`` is ``nats://[user:pass@]host:port`` (several comma-separated for a cluster) with
    optional query options ``namespace``, ``replicas``, ``storage`` (``file`` or ``memory``) and
    ``connect_timeout`` (seconds); keyword arguments win over the URL. Every stream and bucket of
    one ``namespace`` belongs to it, so two apps (or test runs) on one server never meet.
    """

    def __init__(self, url: str, *, clock: Clock = SYSTEM_CLOCK, namespace: str | None = None,
                 replicas: int | None = None, storage: str | None = None,
                 connect_timeout_s: float | None = None) -> None:
        self.client = client = NatsClient(url, clock=clock, namespace=namespace, replicas=replicas,
                                          storage=storage, connect_timeout_s=connect_timeout_s)
        self.url = client.url
        self.clock = client.clock
        self.namespace = client.namespace
        self.replicas = client.replicas
        self.storage = client.storage
        self.connect_timeout_s = client.connect_timeout_s
        self._kv = NatsKV(client)
        self.topics_part = NatsTopics(client, self._kv)
        self.logs_part = NatsLogs(client)
        self.leases = Leases(client)
        self.queues_part = NatsQueues(client, self.leases, self.topics_part)
        self.deliveries = NatsDeliveries(client, self.queues_part, self.leases, self.topics_part,
                                         Puller(client))

    @property
    def kv(self) -> NatsKV:
        return self._kv

    def __repr__(self) -> str:
        return f"NatsBroker({self.url!r}, namespace={self.namespace!r})"

    # -- queues (see queues and deliveries) -------------------------------------------------
    async def declare_queue(self, spec: QueueSpec, *,
                            subscription: SubscriptionSpec | None = None) -> None:
        await self.queues_part.declare_queue(spec, subscription=subscription)

    async def queue_spec(self, queue: str) -> QueueSpec:
        return await self.queues_part.queue_spec(queue)

    async def queues(self) -> list[QueueSpec]:
        return await self.queues_part.queues()

    async def send(self, queue: str, messages: Sequence[Message]) -> list[bool]:
        return await self.queues_part.send(queue, messages)

    async def receive(self, queue: str, max_messages: int, visibility_timeout_s: float | None = None,
                      wait_s: float = 0.0) -> list[Delivery]:
        return await self.deliveries.receive(queue, max_messages, visibility_timeout_s, wait_s)

    async def ack(self, receipts: Sequence[Receipt]) -> list[Receipt]:
        return await self.deliveries.ack(receipts)

    async def release(self, receipts: Sequence[Receipt], delay_s: float = 0.0, *,
                      count: bool = True) -> list[Receipt]:
        return await self.deliveries.release(receipts, delay_s, count=count)

    async def extend(self, receipts: Sequence[Receipt], seconds: float) -> list[Receipt]:
        return await self.deliveries.extend(receipts, seconds)

    async def dead_letter(self, receipt: Receipt, reason: str, error: str | None = None) -> bool:
        return await self.deliveries.dead_letter(receipt, reason, error)

    async def redrive(self, queue: str, max_messages: int | None = None) -> int:
        return await self.deliveries.redrive(queue, max_messages)

    async def peek(self, queue: str, max_messages: int = 100) -> list[Delivery]:
        return await self.queues_part.peek(queue, max_messages)

    async def stats(self, queue: str) -> QueueStats:
        return await self.queues_part.stats(queue)

    async def stats_many(self, queues: Sequence[str]) -> dict[str, QueueStats]:
        return await self.queues_part.stats_many(queues)

    async def purge(self, queue: str) -> int:
        return await self.queues_part.purge(queue)

    # -- topics (see topics) ----------------------------------------------------------------
    async def declare_topic(self, spec: TopicSpec) -> None:
        await self.topics_part.declare(spec)

    async def subscribe(self, spec: SubscriptionSpec) -> None:
        await self.topics_part.check_subscription(spec)
        await self.queues_part.declare_queue(spec.queue, subscription=spec)

    async def publish(self, topic: str, messages: Sequence[Message]) -> list[bool]:
        return await self.topics_part.publish(topic, messages)

    async def topics(self) -> list[TopicInfo]:
        return await self.topics_part.topics()

    # -- streams (see logs) -----------------------------------------------------------------
    async def declare_stream(self, spec: StreamSpec) -> None:
        await self.logs_part.declare(spec)

    async def stream_spec(self, stream: str) -> StreamSpec:
        return await self.logs_part.stream_spec(stream)

    async def streams(self) -> list[StreamSpec]:
        return await self.logs_part.streams()

    async def append(self, stream: str, messages: Sequence[Message]) -> list[tuple[int, int]]:
        return await self.logs_part.append(stream, messages)

    async def read(self, stream: str, partition: int, offset: int = 0, max_records: int = 100, *,
                   since: float | None = None) -> list[Record]:
        return await self.logs_part.read(stream, partition, offset, max_records, since=since)

    async def end_offsets(self, stream: str) -> list[int]:
        return await self.logs_part.end_offsets(stream)

    async def lag(self, stream: str, offsets: Sequence[int]) -> list[int]:
        return await self.logs_part.lag(stream, offsets)

    # -- closing ----------------------------------------------------------------------------
    async def close(self) -> None:
        if self.client.closed:
            return
        if self.client.nc is not None:
            with contextlib.suppress(BrokerError):
                await self.topics_part.flush(force=True)  # this process's topic counts
        self.client.stop()  # a receive still waiting returns what it has: nothing
        await self.leases.close()
        await self.client.disconnect()
