"""The broker protocol as three capabilities a backend implements each on its own: queues
(``QueueBroker``: leases, dead letters, dedup; ``TopicBroker`` adds topics that fan out into
queues), logs (``LogBroker``: partitioned streams) and kv (``KvBroker``: a ``KV`` store with TTLs);
``Broker`` is all of them.

A backend stores bytes; the runtime encodes events. Every call is batch-first; time comes from the
broker's clock. A backend can land capability by capability: the conformance suite
(``tests/brokers/``) runs each capability's tests against the backends that declare it, and a
backend is done when it passes them all against a real server. The value types (specs, messages,
deliveries...) live in ``swell.brokers.types`` and are importable from here too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from swell.brokers.types import (
    DLQ_HEADERS,
    H_AT,
    H_ATTEMPTS,
    H_ERROR,
    H_REASON,
    H_SOURCE,
    REASON_MAX_RECEIVES,
    Delivery,
    KiB,
    KvEntry,
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

__all__ = [
    "DLQ_HEADERS", "H_AT", "H_ATTEMPTS", "H_ERROR", "H_REASON", "H_SOURCE", "KV", "REASON_MAX_RECEIVES",
    "Broker", "Closable", "Delivery", "KiB", "KvBroker", "KvEntry", "LogBroker", "Message",
    "QueueBroker", "QueueSpec", "QueueStats", "Receipt", "Record", "StreamSpec", "SubscriptionSpec",
    "SubscriptionStats", "TopicBroker", "TopicInfo", "TopicSpec",
    "check_sizes", "dead_letter_headers", "partition_of", "redrive_headers",
]


@runtime_checkable
class KV(Protocol):
    """Small shared state with TTLs: idempotency records, checkpoints, leader and membership leases,
    shared limiters, status. An expired entry is the same as an absent one."""

    async def get(self, key: str) -> KvEntry | None: ...

    async def put(self, key: str, value: bytes, ttl_s: float | None = None) -> int:
        """Write unconditionally; returns the new revision."""

    async def put_if_absent(self, key: str, value: bytes, ttl_s: float | None = None) -> int | None:
        """Create ``key`` if absent (or expired); the new revision, or ``None`` if it exists."""

    async def compare_and_set(self, key: str, value: bytes, revision: int,
                              ttl_s: float | None = None) -> int | None:
        """Write if ``key`` is still at ``revision``; the new revision, or ``None`` if not."""

    async def delete(self, key: str, revision: int | None = None) -> bool:
        """Delete (only at ``revision`` if given); whether something was deleted."""

    async def scan(self, prefix: str) -> list[KvEntry]:
        """Live entries whose key starts with ``prefix``, in key order."""


@runtime_checkable
class Closable(Protocol):
    """What every capability has: a broker is closed once, after which its calls fail."""

    async def close(self) -> None: ...


@runtime_checkable
class QueueBroker(Closable, Protocol):
    """Queues with leases, dead-letter queues and dedup."""

    async def declare_queue(self, spec: QueueSpec) -> None:
        """Create the queue (and its dead-letter queue) or update its settings."""

    async def queue_spec(self, queue: str) -> QueueSpec:
        """The declared settings of ``queue``; ``UnknownQueue`` if it was never declared."""

    async def queues(self) -> list[QueueSpec]:
        """Every declared queue."""

    async def send(self, queue: str, messages: Sequence[Message]) -> list[bool]:
        """Store messages; per message, ``False`` if it was a duplicate inside the dedup window.

        Raises ``MessageTooLarge`` (storing none of the batch) and ``UnknownQueue``.
        """

    async def receive(self, queue: str, max_messages: int, visibility_timeout_s: float | None = None,
                      wait_s: float = 0.0) -> list[Delivery]:
        """Lease up to ``max_messages``, waiting up to ``wait_s`` for the first one."""

    async def ack(self, receipts: Sequence[Receipt]) -> list[Receipt]:
        """Delete leased messages; returns the stale receipts, which were refused."""

    async def release(self, receipts: Sequence[Receipt], delay_s: float = 0.0, *,
                      count: bool = True) -> list[Receipt]:
        """Give leases back, visible again after ``delay_s``; returns the stale receipts.

        ``count=False`` takes the delivery back off the receive count (a throttled attempt is
        not a failed one, so it must not bring the message closer to its dead-letter queue)."""

    async def extend(self, receipts: Sequence[Receipt], seconds: float) -> list[Receipt]:
        """Hold leases for ``seconds`` from now; returns the stale receipts."""

    async def dead_letter(self, receipt: Receipt, reason: str, error: str | None = None) -> bool:
        """Move a leased message to its dead-letter queue; ``False`` (and the message stays) if the
        receipt was stale or the queue is itself a dead-letter queue."""

    async def redrive(self, queue: str, max_messages: int | None = None) -> int:
        """Move messages from ``queue``'s dead-letter queue back to it, receive count reset."""

    async def peek(self, queue: str, max_messages: int = 100) -> list[Delivery]:
        """Look at messages without leasing them (receipts in the result are not usable)."""

    async def stats(self, queue: str) -> QueueStats: ...

    async def stats_many(self, queues: Sequence[str]) -> dict[str, QueueStats]:
        """``stats`` of several queues at once (in one trip where the backend can: a runtime
        reads every function's queue each tick); a queue that was never declared is left out."""

    async def purge(self, queue: str) -> int:
        """Delete every message of ``queue``; returns how many."""


@runtime_checkable
class TopicBroker(QueueBroker, Protocol):
    """Topics: a publish goes into the queues of the subscriptions it matches, so a backend with
    topics has queues too."""

    async def declare_topic(self, spec: TopicSpec) -> None:
        """Create the topic or update its settings."""

    async def subscribe(self, spec: SubscriptionSpec) -> None:
        """Create the subscription and its queue, or update them; it receives what is published
        from now on, never what was published before. ``UnknownTopic`` if the topic is not
        declared; a ``PatternError`` for an invalid subject pattern or filter."""

    async def publish(self, topic: str, messages: Sequence[Message]) -> list[bool]:
        """Deliver each message to every subscription it matches, or to none (all of a batch,
        or nothing of it). Per message, ``False`` if it was a duplicate within the dedup window.
        Raises ``UnknownTopic``, ``MessageTooLarge``, and ``PayloadError`` for a routing key
        that is not dot-separated tokens."""

    async def topics(self) -> list[TopicInfo]:
        """Every topic, its subscriptions and their counts."""


@runtime_checkable
class LogBroker(Closable, Protocol):
    """Partitioned, append-only streams. Consumer groups keep their offsets in the kv store
    (``swell.brokers.logs``)."""

    async def declare_stream(self, spec: StreamSpec) -> None:
        """Create the stream or update its retention; a different partition count than the
        stored one is a ``ConfigError`` (it would move keys between partitions)."""

    async def stream_spec(self, stream: str) -> StreamSpec:
        """The stream's settings; ``UnknownStream`` if it was never declared."""

    async def streams(self) -> list[StreamSpec]: ...

    async def append(self, stream: str, messages: Sequence[Message]) -> list[tuple[int, int]]:
        """Append records (all of the batch, or none of it); per message its (partition, offset).
        Raises ``UnknownStream`` and ``MessageTooLarge``."""

    async def read(self, stream: str, partition: int, offset: int = 0, max_records: int = 100, *,
                   since: float | None = None) -> list[Record]:
        """Up to ``max_records`` records of one partition in order, from the first at or after
        ``offset`` (and, with ``since``, whose timestamp is at or after it)."""

    async def end_offsets(self, stream: str) -> list[int]:
        """Per partition, the offset the next record will have at least (the head): a consumer
        whose next offset is this has read everything."""

    async def lag(self, stream: str, offsets: Sequence[int]) -> list[int]:
        """Per partition, how many records are kept at or after ``offsets[partition]`` (what a
        consumer standing there has still to read)."""


@runtime_checkable
class KvBroker(Closable, Protocol):
    """A kv store with TTLs, beside the broker's other parts."""

    @property
    def kv(self) -> KV:
        """The backend's kv store."""


@runtime_checkable
class Broker(TopicBroker, LogBroker, KvBroker, Protocol):
    """Every capability: what the runtime needs."""
