"""What the queue and topic parts write alike: rows of ``swell_messages`` with their per-queue
counts, queue declarations, and dedup ids."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

import msgspec

from swell.brokers.types import Message, QueueSpec

INSERT = """INSERT INTO swell_messages (queue, visible_at, enqueued_at, headers, body)
            VALUES (?, ?, ?, ?, ?)"""
# Messages per queue (swell_sizes), for stats() without a scan. Kept by this package in the
# transaction that inserts or deletes (one statement per batch: a trigger would cost every row
# about 2 us on send and again on ack, measured). Every insert into or delete from swell_messages
# goes through resize.
RESIZE = """INSERT INTO swell_sizes (queue, total) VALUES (?, ?)
            ON CONFLICT (queue) DO UPDATE SET total = total + excluded.total"""
_DEDUP = """INSERT INTO swell_dedup (queue, dedup_id, expires_at) VALUES (?, ?, ?)
            ON CONFLICT (queue, dedup_id) DO UPDATE SET expires_at = excluded.expires_at
            WHERE swell_dedup.expires_at <= ?"""

_headers_enc = msgspec.json.Encoder()
_headers_dec = msgspec.json.Decoder(dict[str, str])


def encode_headers(h: dict[str, str] | None) -> bytes | None:
    return _headers_enc.encode(h) if h else None


def decode_headers(raw: bytes | None) -> dict[str, str]:
    return _headers_dec.decode(raw) if raw else {}


def resize(conn: sqlite3.Connection, queue: str, delta: int) -> None:
    if delta:
        conn.execute(RESIZE, (queue, delta))


def declare_queues(conn: sqlite3.Connection, specs: list[QueueSpec]) -> None:
    """Store a queue's spec and its dead-letter queue's (``specs``: the queue first)."""
    main, *dlq = specs
    conn.execute("INSERT OR REPLACE INTO swell_queues (name, spec) VALUES (?, ?)",
                 (main.name, msgspec.json.encode(main)))
    for s in dlq:  # a DLQ that was declared as a queue of its own keeps its own settings
        conn.execute("INSERT INTO swell_queues (name, spec) VALUES (?, ?) ON CONFLICT (name) "
                     "DO UPDATE SET spec = excluded.spec "
                     "WHERE json_extract(swell_queues.spec, '$.is_dead_letter')",
                     (s.name, msgspec.json.encode(s)))


class Dedup:
    """Dedup ids per scope (a queue's name, or ``#topic/<name>``), kept in ``swell_dedup``; one
    per broker, sweeping expired ids now and then."""

    def __init__(self) -> None:
        self._swept_at = 0.0

    def fresh(self, conn: sqlite3.Connection, scope: str, window_s: float,
              messages: Sequence[Message], now: float) -> list[bool]:
        """Per message, whether its dedup id (if any) is new in ``scope`` within ``window_s``;
        records the new ones."""
        if not any(m.dedup_id for m in messages):
            return [True] * len(messages)
        if now - self._swept_at > window_s / 10:
            conn.execute("DELETE FROM swell_dedup WHERE expires_at <= ?", (now,))
            self._swept_at = now
        return [m.dedup_id is None
                or conn.execute(_DEDUP, (scope, m.dedup_id, now + window_s, now)).rowcount > 0
                for m in messages]
