"""The queue part of the SQLite broker: leases, settling, dead letters, stats.

Leases are rows whose ``visible_at`` lies ahead, with a random ``token`` that every receive renews,
so a stale receipt matches no row. A claim is one ``UPDATE ... RETURNING`` in a write transaction,
and no two claims (in any process) can take the same row.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
from collections import Counter
from collections.abc import Sequence
from typing import Any

import msgspec

from swell.brokers.sqlite.messages import (
    INSERT,
    Dedup,
    declare_queues,
    decode_headers,
    encode_headers,
    resize,
)
from swell.brokers.sqlite.store import SqliteStore, transaction
from swell.brokers.types import (
    REASON_MAX_RECEIVES,
    Delivery,
    Message,
    QueueSpec,
    QueueStats,
    Receipt,
    check_sizes,
    dead_letter_headers,
    redrive_headers,
)
from swell.core.errors import UnknownQueue

_CLAIM = """
UPDATE swell_messages
   SET visible_at = :lease_until, receive_count = receive_count + 1, token = :token, leased = 1,
       first_received_at = coalesce(first_received_at, :now)
 WHERE id IN (SELECT id FROM swell_messages
               WHERE queue = :queue AND visible_at <= :now
               ORDER BY visible_at LIMIT :max)
RETURNING id, receive_count, enqueued_at, first_received_at, headers, body
"""
#: One statement, so one snapshot. Rows whose visible_at lies ahead (leased or delayed) are
#: counted on the ready index, and are few; the ready ones are the queue's total minus those.
#: "Oldest" is the earliest enqueue time among those rows and the row ready longest (the first
#: of the ready index): exact but for a ready message that was received before (an expired lease
#: or a retry) and is older than that row.
STATS = """
SELECT coalesce((SELECT total FROM swell_sizes WHERE queue = :q), 0),
       count(*), coalesce(sum(leased), 0), min(enqueued_at),
       (SELECT enqueued_at FROM swell_messages WHERE queue = :q AND visible_at <= :now
         ORDER BY visible_at LIMIT 1)
  FROM swell_messages WHERE queue = :q AND visible_at > :now
"""


class SqliteQueues:
    """Queues in the store's file; receivers wait on the store's waker."""

    def __init__(self, store: SqliteStore, dedup: Dedup) -> None:
        self.store = store
        self.clock = store.clock
        self._dedup = dedup
        self._specs: dict[str, tuple[bytes, QueueSpec]] = {}  # decoded once per stored version
        self._declared: set[str] = set()  # queues known to exist (for stats_many; thread only)
        self._orphan_releases: set[asyncio.Task[list[Receipt]]] = set()

    # -- declarations ------------------------------------------------------------------------
    async def declare_queue(self, spec: QueueSpec) -> None:
        specs = [s for s in (spec, spec.dlq_spec()) if s is not None]
        await self.store.run(lambda c: transaction(c, declare_queues, specs))

    def _spec(self, conn: sqlite3.Connection, queue: str) -> QueueSpec:
        """The stored spec, read in the caller's hop, so another process's declare is seen."""
        row = conn.execute("SELECT spec FROM swell_queues WHERE name = ?", (queue,)).fetchone()
        if row is None:
            raise UnknownQueue(queue)
        cached = self._specs.get(queue)
        if cached is None or cached[0] != row[0]:
            cached = self._specs[queue] = (row[0], msgspec.json.decode(row[0], type=QueueSpec))
        return cached[1]

    def _on_queue(self, conn: sqlite3.Connection, queue: str) -> sqlite3.Connection:
        """``conn``, once ``queue`` is known to exist (else ``UnknownQueue``)."""
        self._spec(conn, queue)
        return conn

    async def queue_spec(self, queue: str) -> QueueSpec:
        return await self.store.run(self._spec, queue)

    async def queues(self) -> list[QueueSpec]:
        rows = await self.store.run(lambda c: c.execute(
            "SELECT spec FROM swell_queues ORDER BY name").fetchall())
        return [msgspec.json.decode(r[0], type=QueueSpec) for r in rows]

    # -- send --------------------------------------------------------------------------------
    async def send(self, queue: str, messages: Sequence[Message]) -> list[bool]:
        return await self.store.run(lambda c: transaction(c, self._send, queue, messages,
                                                          self.clock.time()), wake=(queue,))

    def _send(self, conn: sqlite3.Connection, queue: str, messages: Sequence[Message],
              now: float) -> list[bool]:
        spec = self._spec(conn, queue)
        check_sizes(spec, messages)
        accepted = self._dedup.fresh(conn, spec.name, spec.dedup_window_s, messages, now)
        conn.executemany(INSERT, [(spec.name, now + m.delay_s if m.delay_s > 0 else now, now,
                                   encode_headers(m.headers), m.body)
                                  for m, new in zip(messages, accepted, strict=True) if new])
        resize(conn, spec.name, sum(accepted))
        return accepted

    # -- receive -----------------------------------------------------------------------------
    async def receive(self, queue: str, max_messages: int, visibility_timeout_s: float | None = None,
                      wait_s: float = 0.0) -> list[Delivery]:
        async def attempt() -> tuple[list[Delivery], float | None]:
            claim = asyncio.ensure_future(self.store.run(self._claim, queue, max_messages,
                                                         visibility_timeout_s))
            try:
                got, due, dead = await asyncio.shield(claim)
            except asyncio.CancelledError:
                # the claim runs on in its thread: give back whatever it takes, at once
                claim.add_done_callback(self._release_orphans)
                raise
            if dead:
                self._wake_dlq(queue)
            return got, due

        return await self.store.waker.wait_for(queue, attempt, wait_s)

    def _claim(self, conn: sqlite3.Connection, queue: str, max_messages: int,
               lease_s: float | None) -> tuple[list[Delivery], float | None, int]:
        """Lease up to ``max_messages``: (what was leased, when the next message falls due if
        nothing was, how many went to the dead-letter queue instead)."""
        # read before the queue: a commit after this changes the version again, so the watch
        # looks at this queue once more (never less)
        version = conn.execute("PRAGMA data_version").fetchone()[0]
        now = self.clock.time()
        spec = self._spec(conn, queue)
        self.store.watch.saw(spec.name, version)
        due = _next_due(conn, spec.name)
        if due is None or due > now:
            # nothing ready: no write lock, which a sender in another process would wait for
            # (SQLite's busy handler sleeps a millisecond or more), and no empty transaction
            return [], due, 0
        conn.execute("BEGIN IMMEDIATE")
        try:
            lease = spec.visibility_timeout_s if lease_s is None else lease_s
            out: list[Delivery] = []
            token = random.getrandbits(62)
            dead = 0
            while len(out) < max_messages:  # again if some of a claim went to the DLQ instead
                rows = conn.execute(_CLAIM, {"lease_until": now + lease, "token": token, "now": now,
                                             "queue": spec.name, "max": max_messages - len(out)}
                                    ).fetchall()
                over = 0
                for rid, count, enqueued_at, first_at, headers, body in rows:
                    if 0 < spec.max_receives < count:
                        _to_dlq(conn, spec, rid, enqueued_at, headers, body,
                                REASON_MAX_RECEIVES, None, count - 1, now)
                        over += 1
                        continue
                    out.append(Delivery(receipt=Receipt(spec.name, rid, token), body=body,
                                        headers=decode_headers(headers), receive_count=count,
                                        enqueued_at=enqueued_at, first_received_at=first_at))
                dead += over
                if not over:
                    break
            due = None if out else _next_due(conn, spec.name)
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
        out.sort(key=lambda d: d.receipt.id)
        return out, due, dead

    def _release_orphans(self, claim: asyncio.Future[tuple[list[Delivery], float | None, int]]
                         ) -> None:
        if claim.cancelled() or claim.exception() is not None or not claim.result()[0]:
            return
        # never given to anyone: not a delivery, so not counted as a receive
        task = asyncio.ensure_future(self.release([d.receipt for d in claim.result()[0]],
                                                  count=False))
        self._orphan_releases.add(task)
        task.add_done_callback(self._orphan_releases.discard)

    async def released_orphans(self) -> None:
        """Wait for the releases of what cancelled receives had claimed (before closing)."""
        if self._orphan_releases:
            await asyncio.gather(*self._orphan_releases, return_exceptions=True)

    # -- settle ------------------------------------------------------------------------------
    async def ack(self, receipts: Sequence[Receipt]) -> list[Receipt]:
        return await self._settle("DELETE FROM swell_messages", receipts, deletes=True)

    async def release(self, receipts: Sequence[Receipt], delay_s: float = 0.0, *,
                      count: bool = True) -> list[Receipt]:
        at = self.clock.time() + max(delay_s, 0.0)
        uncount = 0 if count else 1
        stale = await self._settle(
            "UPDATE swell_messages SET visible_at = ?, token = NULL, leased = 0, "
            "receive_count = max(0, receive_count - ?)", receipts, at, uncount, wake=True)
        return stale

    async def extend(self, receipts: Sequence[Receipt], seconds: float) -> list[Receipt]:
        at = self.clock.time() + seconds
        return await self._settle("UPDATE swell_messages SET visible_at = ?, leased = 1",
                                  receipts, at)

    async def _settle(self, change: str, receipts: Sequence[Receipt], *args: Any,
                      deletes: bool = False, wake: bool = False) -> list[Receipt]:
        """Apply ``change`` (an UPDATE or DELETE, with ``args`` for its placeholders) to the rows
        that ``receipts`` still hold; returns the stale receipts, which changed nothing."""
        if not receipts:
            return []
        # one statement per lease (a batch usually holds one or two), not one per row: fewer
        # statements, and each one costs this thread the GIL back from a busy event loop
        sql = f"{change} WHERE token = ? AND id IN (SELECT value FROM json_each(?))"

        def run(conn: sqlite3.Connection) -> list[Receipt]:
            leases: dict[int, list[int]] = {}
            for r in receipts:
                leases.setdefault(r.token, []).append(r.id)
            changed = sum(conn.execute(sql, (*args, token, _ids_json(ids))).rowcount
                          for token, ids in leases.items())
            stale: list[Receipt] = []
            if changed != len(receipts):  # rare: find which ones matched nothing
                conn.rollback()
                conn.execute("BEGIN IMMEDIATE")
                stale = [r for r in receipts
                         if conn.execute(sql, (*args, r.token, f"[{r.id}]")).rowcount == 0]
            if deletes:
                gone = Counter(r.queue for r in receipts)
                gone.subtract(r.queue for r in stale)
                for queue, n in gone.items():
                    resize(conn, queue, -n)
            return stale

        return await self.store.run(lambda c: transaction(c, run),
                                    wake={r.queue for r in receipts} if wake else ())

    # -- dead letters --------------------------------------------------------------------------
    async def dead_letter(self, receipt: Receipt, reason: str, error: str | None = None) -> bool:
        # (woken when the move is done, even if this caller is cancelled meanwhile, as a send)
        return await self.store.run(lambda c: transaction(c, self._dead_letter, receipt, reason,
                                                          error, self.clock.time()),
                                    wake=self._dlq_of(receipt.queue))

    def _dlq_of(self, queue: str) -> tuple[str, ...]:
        """``queue``'s dead-letter queue, if its spec is known here (it is, for a leased one)."""
        spec = self._specs.get(queue)
        return () if spec is None or spec[1].dead_letter_queue is None else (
            spec[1].dead_letter_queue,)

    def _wake_dlq(self, queue: str) -> None:
        """Something went into ``queue``'s dead-letter queue: wake whoever waits on that."""
        for dlq in self._dlq_of(queue):
            self.store.waker.notify(dlq)

    def _dead_letter(self, conn: sqlite3.Connection, r: Receipt, reason: str,
                     error: str | None, now: float) -> bool:
        spec = self._spec(conn, r.queue)
        if spec.dead_letter_queue is None:
            return False
        row = conn.execute("SELECT receive_count, enqueued_at, headers, body FROM swell_messages "
                           "WHERE id = ? AND token = ?", (r.id, r.token)).fetchone()
        if row is None:
            return False
        count, enqueued_at, headers, body = row
        _to_dlq(conn, spec, r.id, enqueued_at, headers, body, reason, error, count, now)
        return True

    async def redrive(self, queue: str, max_messages: int | None = None) -> int:
        def run(conn: sqlite3.Connection) -> int:
            dlq = self._spec(conn, queue).dead_letter_queue
            if dlq is None:
                return 0
            rows = conn.execute("SELECT id, enqueued_at, headers, body FROM swell_messages "
                                "WHERE queue = ? ORDER BY id LIMIT ?",
                                (dlq, -1 if max_messages is None else max_messages)).fetchall()
            now = self.clock.time()
            conn.executemany("DELETE FROM swell_messages WHERE id = ?", [(r[0],) for r in rows])
            conn.executemany(INSERT, [(queue, now, enq, encode_headers(redrive_headers(
                decode_headers(h))), body) for _, enq, h, body in rows])
            resize(conn, dlq, -len(rows))
            resize(conn, queue, len(rows))
            return len(rows)

        return await self.store.run(lambda c: transaction(c, run), wake=(queue,))

    # -- looking -------------------------------------------------------------------------------
    async def peek(self, queue: str, max_messages: int = 100) -> list[Delivery]:
        rows = await self.store.run(lambda c: self._on_queue(c, queue).execute(
            "SELECT id, receive_count, enqueued_at, first_received_at, headers, body "
            "FROM swell_messages WHERE queue = ? ORDER BY id LIMIT ?",
            (queue, max_messages)).fetchall())
        return [Delivery(receipt=Receipt(queue, rid, -1), body=body, headers=decode_headers(h),
                         receive_count=n, enqueued_at=enq, first_received_at=first)
                for rid, n, enq, first, h, body in rows]

    async def stats(self, queue: str) -> QueueStats:
        now = self.clock.time()
        row = await self.store.run(
            lambda c: self._on_queue(c, queue).execute(STATS, {"now": now, "q": queue}).fetchone())
        return _stats(queue, now, row)

    async def stats_many(self, queues: Sequence[str]) -> dict[str, QueueStats]:
        """One hop and one snapshot for all of them; a queue holding no message (by its count in
        ``swell_sizes``) costs no read of ``swell_messages``."""
        def run(conn: sqlite3.Connection) -> dict[str, QueueStats]:
            unknown = [q for q in queues if q not in self._declared]
            if unknown:  # (a queue is never undeclared: once seen, known for good)
                self._declared.update(name for (name,) in conn.execute(
                    "SELECT name FROM swell_queues WHERE name IN (SELECT value FROM json_each(?))",
                    (msgspec.json.encode(unknown).decode(),)))
            now = self.clock.time()
            conn.execute("BEGIN")
            try:
                busy = {q for (q,) in conn.execute("SELECT queue FROM swell_sizes WHERE total != 0")}
                return {q: _stats(q, now, conn.execute(STATS, {"now": now, "q": q}).fetchone())
                        if q in busy else QueueStats(queue=q, depth=0, in_flight=0, delayed=0,
                                                     oldest_age_s=0.0)
                        for q in queues if q in self._declared}
            finally:
                conn.commit()

        return await self.store.run(run)

    async def purge(self, queue: str) -> int:
        def run(conn: sqlite3.Connection) -> int:
            n: int = self._on_queue(conn, queue).execute(
                "DELETE FROM swell_messages WHERE queue = ?", (queue,)).rowcount
            resize(conn, queue, -n)
            return n
        return await self.store.run(lambda c: transaction(c, run))


def _next_due(conn: sqlite3.Connection, queue: str) -> float | None:
    """When the next message of ``queue`` is (or was) visible: lease ends included."""
    due: float | None = conn.execute("SELECT min(visible_at) FROM swell_messages WHERE queue = ?",
                                     (queue,)).fetchone()[0]
    return due


def _to_dlq(conn: sqlite3.Connection, spec: QueueSpec, rid: int, enqueued_at: float,
            headers: bytes | None, body: bytes, reason: str, error: str | None,
            attempts: int, now: float) -> None:
    resize(conn, spec.name, -conn.execute("DELETE FROM swell_messages WHERE id = ?",
                                          (rid,)).rowcount)
    name = spec.dead_letter_queue
    if name is None:
        return
    h = dead_letter_headers(decode_headers(headers), source=spec.name, reason=reason,
                            error=error, attempts=attempts, at=now)
    conn.execute(INSERT, (name, now, enqueued_at, encode_headers(h), body))
    resize(conn, name, 1)


def _ids_json(ids: list[int]) -> str:
    # text, not bytes: newer SQLite reads a BLOB argument of json_each as JSONB
    return msgspec.json.encode(ids).decode()


def _stats(queue: str, now: float, row: tuple[int, int, int, float | None, float | None]
           ) -> QueueStats:
    total, ahead, leased, oldest_ahead, oldest_ready = row
    oldest = min((t for t in (oldest_ahead, oldest_ready) if t is not None), default=None)
    # (not below zero even if the counts drifted: an older swell writing the same file keeps none)
    return QueueStats(queue=queue, depth=max(0, total - ahead), in_flight=leased,
                      delayed=ahead - leased,
                      oldest_age_s=0.0 if oldest is None else max(0.0, now - oldest))
