"""The log part of the SQLite broker: partitioned streams in ``swell_log``, each partition's next
offset in ``swell_log_heads``; records past the retention are trimmed as appends come."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

import msgspec

from swell.brokers.logs import check_partition, partition_change
from swell.brokers.sqlite.messages import decode_headers, encode_headers
from swell.brokers.sqlite.store import SqliteStore, transaction
from swell.brokers.types import Message, Record, StreamSpec, partition_of
from swell.core.errors import ConfigError, MessageTooLarge, UnknownStream


class SqliteLogs:
    """Streams in the store's file."""

    def __init__(self, store: SqliteStore) -> None:
        self.store = store
        self.clock = store.clock
        self._trimmed_at: dict[str, float] = {}

    def _stream(self, conn: sqlite3.Connection, stream: str) -> StreamSpec:
        row = conn.execute("SELECT spec FROM swell_streams WHERE name = ?", (stream,)).fetchone()
        if row is None:
            raise UnknownStream(stream)
        return msgspec.json.decode(row[0], type=StreamSpec)

    async def declare_stream(self, spec: StreamSpec) -> None:
        def run(conn: sqlite3.Connection) -> None:
            try:
                have = self._stream(conn, spec.name)
            except UnknownStream:
                have = None
            if have is not None and have.partitions != spec.partitions:
                raise ConfigError(partition_change(have, spec))
            conn.execute("INSERT INTO swell_streams (name, spec) VALUES (?, ?) "
                         "ON CONFLICT (name) DO UPDATE SET spec = excluded.spec",
                         (spec.name, msgspec.json.encode(spec)))

        await self.store.run(lambda c: transaction(c, run))

    async def stream_spec(self, stream: str) -> StreamSpec:
        return await self.store.run(self._stream, stream)

    async def streams(self) -> list[StreamSpec]:
        rows = await self.store.run(lambda c: c.execute(
            "SELECT spec FROM swell_streams ORDER BY name").fetchall())
        return [msgspec.json.decode(r[0], type=StreamSpec) for r in rows]

    async def append(self, stream: str, messages: Sequence[Message]) -> list[tuple[int, int]]:
        return await self.store.run(lambda c: transaction(c, self._append, stream, messages,
                                                          self.clock.time()))

    def _append(self, conn: sqlite3.Connection, stream: str, messages: Sequence[Message],
                now: float) -> list[tuple[int, int]]:
        spec = self._stream(conn, stream)
        for m in messages:
            if len(m.body) > spec.max_message_bytes:
                raise MessageTooLarge(stream, len(m.body), spec.max_message_bytes)
        (appended,) = conn.execute("UPDATE swell_streams SET appended = appended + ? WHERE name = ? "
                                   "RETURNING appended - ?", (len(messages), stream, len(messages))
                                   ).fetchone()
        heads = _heads(conn, stream)
        out, rows = [], []
        for i, m in enumerate(messages):
            p = partition_of(m.key, spec.partitions, appended + i)
            offset = heads.get(p, 0)
            heads[p] = offset + 1
            rows.append((stream, p, offset, now, m.key, encode_headers(m.headers), m.body))
            out.append((p, offset))
        conn.executemany("INSERT INTO swell_log (stream, part, offset, ts, key, headers, body) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        conn.executemany("INSERT INTO swell_log_heads (stream, part, next) VALUES (?, ?, ?) "
                         "ON CONFLICT (stream, part) DO UPDATE SET next = excluded.next",
                         [(stream, p, n) for p, n in heads.items()])
        if now - self._trimmed_at.get(stream, 0.0) > min(60.0, spec.retention_s / 10):
            self._trimmed_at[stream] = now
            conn.execute("DELETE FROM swell_log WHERE stream = ? AND ts < ?",
                         (stream, now - spec.retention_s))
        return out

    async def read(self, stream: str, partition: int, offset: int = 0, max_records: int = 100, *,
                   since: float | None = None) -> list[Record]:
        def run(conn: sqlite3.Connection) -> list[Record]:
            check_partition(self._stream(conn, stream), partition)
            start = offset
            if since is not None:
                (first,) = conn.execute("SELECT min(offset) FROM swell_log WHERE stream = ? AND "
                                        "part = ? AND ts >= ?", (stream, partition, since)).fetchone()
                start = max(start, first if first is not None else 2 ** 62)
            rows = conn.execute("SELECT offset, ts, key, headers, body FROM swell_log WHERE "
                                "stream = ? AND part = ? AND offset >= ? ORDER BY offset LIMIT ?",
                                (stream, partition, start, max(0, max_records))).fetchall()
            return [Record(partition=partition, offset=o, timestamp=ts, key=k,
                           headers=decode_headers(h), body=b) for o, ts, k, h, b in rows]

        return await self.store.run(run)

    async def end_offsets(self, stream: str) -> list[int]:
        def run(conn: sqlite3.Connection) -> list[int]:
            spec = self._stream(conn, stream)
            heads = _heads(conn, stream)
            return [heads.get(p, 0) for p in range(spec.partitions)]

        return await self.store.run(run)

    async def lag(self, stream: str, offsets: Sequence[int]) -> list[int]:
        def run(conn: sqlite3.Connection) -> list[int]:
            spec = self._stream(conn, stream)
            if len(offsets) != spec.partitions:
                raise ConfigError(f"stream {stream!r} has {spec.partitions} partitions, not "
                                  f"{len(offsets)}")
            return [conn.execute("SELECT count(*) FROM swell_log WHERE stream = ? AND part = ? AND "
                                 "offset >= ?", (stream, p, o)).fetchone()[0]
                    for p, o in enumerate(offsets)]

        return await self.store.run(run)


def _heads(conn: sqlite3.Connection, stream: str) -> dict[int, int]:
    """Per partition that has records, the offset its next record gets."""
    return dict(conn.execute("SELECT part, next FROM swell_log_heads WHERE stream = ?",
                             (stream,)).fetchall())
