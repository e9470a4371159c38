"""The broker protocol (queue part) and the value types every backend shares.

A backend stores bytes; the runtime encodes events. Every call is batch-first. A backend is done
when it passes ``tests/brokers/`` against a real server.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import msgspec

KiB = 1024

#: Headers a dead-lettered message carries.
H_REASON = "swell-dlq-reason"
H_ERROR = "swell-dlq-error"
H_ATTEMPTS = "swell-dlq-attempts"
H_SOURCE = "swell-dlq-source"
H_AT = "swell-dlq-at"
DLQ_HEADERS = (H_REASON, H_ERROR, H_ATTEMPTS, H_SOURCE, H_AT)

REASON_MAX_RECEIVES = "max_receives exceeded"


class QueueSpec(msgspec.Struct, frozen=True, kw_only=True):
    """A queue's settings, as an app declares them.

    ``max_receives=0`` never dead-letters on the receive count; explicit dead letters (invalid
    payloads, exhausted retries) still go to ``dead_letter``, by default ``<name>.dlq``. A
    dead-letter queue (``is_dead_letter``) has none of its own.
    """

    name: str
    visibility_timeout_s: float = 30.0
    max_receives: int = 5
    dead_letter: str | None = None
    max_message_bytes: int = 256 * KiB
    dedup_window_s: float = 300.0
    is_dead_letter: bool = False

    @property
    def dead_letter_queue(self) -> str | None:
        if self.is_dead_letter:
            return None
        return self.dead_letter or f"{self.name}.dlq"

    def dlq_spec(self) -> QueueSpec | None:
        """The spec of this queue's dead-letter queue: it keeps messages until redriven."""
        name = self.dead_letter_queue
        if name is None:
            return None
        return QueueSpec(name=name, visibility_timeout_s=self.visibility_timeout_s, max_receives=0,
                         max_message_bytes=self.max_message_bytes + 16 * KiB, is_dead_letter=True)


class Message(msgspec.Struct, frozen=True, kw_only=True):
    """A message to send: its body, headers, optional dedup id and delay; ``subject`` is its
    routing key when it is published to a topic."""

    body: bytes
    headers: dict[str, str] | None = None
    dedup_id: str | None = None
    delay_s: float = 0.0
    subject: str | None = None
    key: str | None = None
    """Appended to a stream: its partition is a stable hash of ``key``."""


class TopicSpec(msgspec.Struct, frozen=True, kw_only=True):
    """A topic's settings. A topic stores nothing of its own on SQLite and in memory (a publish
    goes straight into the subscriptions' queues); on NATS it is a stream that keeps what was
    published for ``retention_s``, from which the subscriptions' queues are fed."""

    name: str
    retention_s: float = 86400.0
    max_message_bytes: int = 256 * KiB
    dedup_window_s: float = 300.0


class SubscriptionSpec(msgspec.Struct, frozen=True, kw_only=True):
    """A subscription to a topic: the events whose routing key matches ``subject`` (a pattern
    with ``*`` and ``>``; ``None``: every event) and whose content matches ``filter`` (an event
    pattern's canonical JSON; ``None``: no filter) go into the subscription's own ``queue``."""

    topic: str
    name: str
    queue: QueueSpec
    subject: str | None = None
    filter: str | None = None


class SubscriptionStats(msgspec.Struct, frozen=True, kw_only=True):
    """What a subscription let through (``matched``) and what its filter kept out (``filtered``;
    events whose routing key did not match are not counted)."""

    spec: SubscriptionSpec
    matched: int
    filtered: int


class StreamSpec(msgspec.Struct, frozen=True, kw_only=True):
    """A partitioned, append-only log. A record's partition is a stable hash of its key (records
    without a key are spread round-robin); order holds within a partition; records older than
    ``retention_s`` may be dropped."""

    name: str
    partitions: int = 8
    retention_s: float = 7 * 86400.0
    max_message_bytes: int = 256 * KiB


class Record(msgspec.Struct, frozen=True, kw_only=True):
    """A record read from a stream. Offsets grow within a partition (on some backends with gaps:
    the next record after ``offset`` is read from ``offset + 1``)."""

    partition: int
    offset: int
    timestamp: float
    key: str | None
    body: bytes
    headers: dict[str, str]


def partition_of(key: str | None, partitions: int, fallback: int) -> int:
    """The partition of a key: CRC-32 of its UTF-8 bytes, the same in every process and on every
    backend; ``fallback`` (a round-robin count) for a record without a key."""
    if key is None:
        return fallback % partitions
    return zlib.crc32(key.encode()) % partitions


class TopicInfo(msgspec.Struct, frozen=True, kw_only=True):
    spec: TopicSpec
    published: int
    subscriptions: list[SubscriptionStats]


class Receipt(msgspec.Struct, frozen=True):
    """The handle of one lease: valid until the message is received again."""

    queue: str
    id: int
    token: int


class Delivery(msgspec.Struct, frozen=True, kw_only=True):
    """A leased message. Delivery facts travel here, beside the body."""

    receipt: Receipt
    body: bytes
    headers: dict[str, str]
    receive_count: int
    enqueued_at: float
    first_received_at: float | None


class QueueStats(msgspec.Struct, frozen=True, kw_only=True):
    """``depth`` is ready now; ``oldest_age_s`` is the age of the oldest message not yet acked."""

    queue: str
    depth: int
    in_flight: int
    delayed: int
    oldest_age_s: float

    @property
    def total(self) -> int:
        return self.depth + self.in_flight + self.delayed


class KvEntry(msgspec.Struct, frozen=True, kw_only=True):
    """A value in the kv store. ``revision`` grows on every write and is never reused for a key,
    so a compare-and-set against an old revision always fails."""

    key: str
    value: bytes
    revision: int
    expires_at: float | None = None


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
class Broker(Protocol):
    """Queues with leases. Time comes from the broker's clock."""

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

    @property
    def kv(self) -> KV:
        """The backend's kv store."""

    async def close(self) -> None: ...


def check_sizes(spec: QueueSpec, messages: Sequence[Message]) -> None:
    """Refuse a batch with any message over the queue's limit, before anything is stored."""
    from swell.core.errors import MessageTooLarge

    limit = spec.max_message_bytes
    for m in messages:
        size = len(m.body)
        if size > limit:
            raise MessageTooLarge(spec.name, size, limit)


def dead_letter_headers(headers: dict[str, str] | None, *, source: str, reason: str,
                        error: str | None, attempts: int, at: float) -> dict[str, str]:
    """The headers of a message as it enters a dead-letter queue."""
    out = dict(headers or {})
    out.update({H_SOURCE: source, H_REASON: reason, H_ATTEMPTS: str(attempts), H_AT: f"{at:.3f}"})
    if error:
        out[H_ERROR] = error[:4000]
    return out


def redrive_headers(headers: dict[str, str] | None) -> dict[str, str] | None:
    """The headers of a message as it leaves a dead-letter queue."""
    if not headers:
        return None
    out = {k: v for k, v in headers.items() if k not in DLQ_HEADERS}
    return out or None
