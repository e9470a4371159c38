"""The one watch per broker for other processes' writes: which of the queues waited on in this
process the file changed under, and when their next message falls due (``swell.brokers.waiting``
has the design: one call for every waiting queue, each queue remembering what it has seen)."""

from __future__ import annotations

import sqlite3
from collections.abc import Set as AbstractSet
from typing import TYPE_CHECKING, NamedTuple

import msgspec

from swell.core.errors import BrokerError

if TYPE_CHECKING:
    from swell.brokers.sqlite.store import SqliteStore


class _Looked(NamedTuple):
    """What the watch's last look saw: the tripwire's data_version just before it, the broker
    connection's during it, and the queues it covered."""

    tripwire: int
    version: int
    queues: AbstractSet[str]


class Watch:
    """Asked by the store's waker, for every queue waited on at once; told by each claim which
    version of the file it looked at a queue in (``saw``)."""

    def __init__(self, store: SqliteStore) -> None:
        self._store = store
        # per queue: the file's data_version when this process last looked at the queue (a claim,
        # or this watch); written only on the broker's thread
        self._seen: dict[str, int] = {}
        self._looked: _Looked | None = None  # what the last look saw (see __call__)

    def saw(self, queue: str, version: int) -> None:
        """A claim looked at ``queue`` in the file's ``version`` (on the broker's thread)."""
        self._seen[queue] = version

    async def __call__(self, queues: AbstractSet[str]) -> dict[str, float | None]:
        """The waker's look for other processes' writes: of ``queues``, those the file changed
        under since this process last looked at them, each with its next due time. One hop for
        all of them, and no table read while nothing changed (``data_version`` moves only when
        another connection commits).

        While no connection at all committed since the last look (the tripwire's
        ``data_version``, a connection of its own, moves on every commit but its own: a cheap
        call on this thread), and every queue that started waiting since then had been looked
        at as of that look, nothing can have changed for any of them: no hop at all."""
        wire = self._store.tripwire
        before = None
        if wire is not None:
            try:
                before = wire.execute("PRAGMA data_version").fetchone()[0]
            except sqlite3.Error as exc:
                raise BrokerError(f"SQLite error on {self._store.path!r}: {exc}") from exc
            looked = self._looked
            if (looked is not None and looked.tripwire == before
                    and all(self._seen.get(q) == looked.version for q in queues - looked.queues)):
                return {}
        version, changed = await self._store.run(self._look, queues)
        if before is not None:
            self._looked = _Looked(before, version, queues)
        return changed

    def _look(self, conn: sqlite3.Connection, queues: AbstractSet[str]
              ) -> tuple[int, dict[str, float | None]]:
        version: int = conn.execute("PRAGMA data_version").fetchone()[0]
        stale = [q for q in queues if self._seen.get(q) != version]
        if not stale:
            return version, {}
        for q in stale:
            self._seen[q] = version
        # one index seek per queue (min over the ready index), not a scan of their messages
        return version, dict(conn.execute(
            "SELECT value, (SELECT min(visible_at) FROM swell_messages WHERE queue = value) "
            "FROM json_each(?)", (msgspec.json.encode(stale).decode(),)).fetchall())
