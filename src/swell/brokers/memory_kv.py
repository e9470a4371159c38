"""The memory broker's kv store: one process, no durability."""

from __future__ import annotations

import itertools

from swell.brokers.types import KvEntry
from swell.core.clock import Clock


class MemoryKV:
    """The memory broker's kv store."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._data: dict[str, KvEntry] = {}
        self._revisions = itertools.count(1)

    def _live(self, key: str) -> KvEntry | None:
        e = self._data.get(key)
        if e is not None and e.expires_at is not None and e.expires_at <= self.clock.time():
            del self._data[key]
            return None
        return e

    def _write(self, key: str, value: bytes, ttl_s: float | None) -> int:
        rev = next(self._revisions)
        expires = None if ttl_s is None else self.clock.time() + ttl_s
        self._data[key] = KvEntry(key=key, value=bytes(value), revision=rev, expires_at=expires)
        return rev

    async def get(self, key: str) -> KvEntry | None:
        return self._live(key)

    async def put(self, key: str, value: bytes, ttl_s: float | None = None) -> int:
        return self._write(key, value, ttl_s)

    async def put_if_absent(self, key: str, value: bytes, ttl_s: float | None = None) -> int | None:
        return None if self._live(key) is not None else self._write(key, value, ttl_s)

    async def compare_and_set(self, key: str, value: bytes, revision: int,
                              ttl_s: float | None = None) -> int | None:
        e = self._live(key)
        if e is None or e.revision != revision:
            return None
        return self._write(key, value, ttl_s)

    async def delete(self, key: str, revision: int | None = None) -> bool:
        e = self._live(key)
        if e is None or (revision is not None and e.revision != revision):
            return False
        del self._data[key]
        return True

    async def scan(self, prefix: str) -> list[KvEntry]:
        keys = sorted(k for k in self._data if k.startswith(prefix))
        return [e for k in keys if (e := self._live(k)) is not None]
