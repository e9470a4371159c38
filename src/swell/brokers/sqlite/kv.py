"""The kv part of the SQLite broker, in the same file."""

from __future__ import annotations

import sqlite3

from swell.brokers.sqlite.store import SqliteStore, transaction
from swell.brokers.types import KvEntry


class SqliteKV:
    """The kv store in the same file; revisions come from one counter, so none is ever reused."""

    def __init__(self, store: SqliteStore) -> None:
        self._store = store

    def _live(self, conn: sqlite3.Connection, key: str) -> KvEntry | None:
        row = conn.execute("SELECT value, revision, expires_at FROM swell_kv WHERE key = ? AND "
                           "(expires_at IS NULL OR expires_at > ?)",
                           (key, self._store.clock.time())).fetchone()
        return None if row is None else KvEntry(key=key, value=row[0], revision=row[1],
                                                 expires_at=row[2])

    def _write(self, conn: sqlite3.Connection, key: str, value: bytes, ttl_s: float | None) -> int:
        rev: int = conn.execute(
            "INSERT INTO swell_counters (name, value) VALUES ('kv', 1) ON CONFLICT (name) "
            "DO UPDATE SET value = value + 1 RETURNING value").fetchone()[0]
        expires = None if ttl_s is None else self._store.clock.time() + ttl_s
        conn.execute("INSERT OR REPLACE INTO swell_kv (key, value, revision, expires_at) "
                     "VALUES (?, ?, ?, ?)", (key, bytes(value), rev, expires))
        return rev

    async def get(self, key: str) -> KvEntry | None:
        return await self._store.run(self._live, key)

    async def put(self, key: str, value: bytes, ttl_s: float | None = None) -> int:
        return await self._store.write(self._write, key, value, ttl_s)

    async def put_if_absent(self, key: str, value: bytes, ttl_s: float | None = None) -> int | None:
        def run(conn: sqlite3.Connection) -> int | None:
            return None if self._live(conn, key) else self._write(conn, key, value, ttl_s)
        return await self._store.write(run)

    async def compare_and_set(self, key: str, value: bytes, revision: int,
                              ttl_s: float | None = None) -> int | None:
        def run(conn: sqlite3.Connection) -> int | None:
            e = self._live(conn, key)
            if e is None or e.revision != revision:
                return None
            return self._write(conn, key, value, ttl_s)
        return await self._store.write(run)

    async def delete(self, key: str, revision: int | None = None) -> bool:
        def run(conn: sqlite3.Connection) -> bool:
            e = self._live(conn, key)
            if e is None or (revision is not None and e.revision != revision):
                return False
            conn.execute("DELETE FROM swell_kv WHERE key = ?", (key,))
            return True
        return await self._store.write(run)

    async def scan(self, prefix: str) -> list[KvEntry]:
        def run(conn: sqlite3.Connection) -> list[KvEntry]:
            now = self._store.clock.time()
            conn.execute("DELETE FROM swell_kv WHERE expires_at <= ?", (now,))
            # a range on the primary key, not LIKE: prefixes may hold % and _
            rows = conn.execute("SELECT key, value, revision, expires_at FROM swell_kv "
                                "WHERE key >= ? AND key < ? ORDER BY key",
                                (prefix, prefix + "\U0010ffff")).fetchall()
            return [KvEntry(key=k, value=v, revision=r, expires_at=x) for k, v, r, x in rows]
        return await self._store.run(lambda c: transaction(c, run))
