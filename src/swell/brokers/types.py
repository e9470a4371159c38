"""The value types every backend shares (specs, messages, deliveries, records, stats, kv
entries) and the small rules on them that every backend applies alike (size limits, the headers
of a dead letter, the partition of a key). The protocols are in ``swell.brokers.base``."""

from __future__ import annotations

import zlib
from collections.abc import Sequence

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
